"""The SFTP client (hpc.ssh.sftp) against OpenSSH's own sftp-server, run locally over a socketpair.

No SSH here: the server program is the one sshd runs for the ``sftp`` subsystem, so every request and
status code is answered by the real implementation, in a temporary directory.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from hpc.ssh.sftp import REQUEST_SIZE, SFTPSession, SocketStream
from hpc.transport import EOF, FAILURE, NO_SUCH_FILE, PERMISSION_DENIED, RemoteFileError, TransportError

SERVER = Path("/usr/lib/openssh/sftp-server")
pytestmark = pytest.mark.skipif(not SERVER.exists(), reason="OpenSSH's sftp-server is not installed")


@pytest.fixture
def session(tmp_path):
    ours, theirs = socket.socketpair()
    process = subprocess.Popen([str(SERVER), "-d", str(tmp_path)], stdin=theirs, stdout=theirs,
                               stderr=subprocess.DEVNULL)
    theirs.close()
    sftp = SFTPSession(SocketStream(ours, timeout=10), "local sftp-server")
    yield sftp
    sftp.close()
    process.wait(timeout=10)


def test_the_version_exchange_finds_the_openssh_extensions(session):
    assert "posix-rename@openssh.com" in session.extensions


def test_pipelined_writes_are_acknowledged_in_order_and_read_back(session, tmp_path):
    data = os.urandom(3 * REQUEST_SIZE + 1234)
    acks = []
    writer = session.writer(str(tmp_path / "f.bin"), 0, create=True, on_ack=acks.append, window=2)
    writer.write(memoryview(data)[:1000])
    writer.write(memoryview(data)[1000:])
    writer.close()
    assert acks == sorted(acks)
    assert acks[-1] == len(data) == writer.acked
    assert (tmp_path / "f.bin").read_bytes() == data
    back = b"".join(session.read(str(tmp_path / "f.bin"), 5, len(data), window=3))
    assert back == data[5:]


def test_a_writer_at_an_offset_keeps_what_is_before(session, tmp_path):
    (tmp_path / "f.bin").write_bytes(b"a" * 100)
    writer = session.writer(str(tmp_path / "f.bin"), 50, create=False)
    writer.write(b"b" * 100)
    writer.close()
    assert (tmp_path / "f.bin").read_bytes() == b"a" * 50 + b"b" * 100


def test_reading_past_the_end_is_an_eof_status(session, tmp_path):
    (tmp_path / "short").write_bytes(b"x" * 10)
    with pytest.raises(RemoteFileError) as ended:
        b"".join(session.read(str(tmp_path / "short"), 0, 20))
    assert ended.value.status == EOF


def test_errors_carry_the_sftp_status_code(session, tmp_path):
    assert session.stat(str(tmp_path / "missing")) is None
    with pytest.raises(RemoteFileError) as missing:
        session.remove(str(tmp_path / "missing"))
    assert missing.value.status == NO_SUCH_FILE
    assert missing.value.retryable is False
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(RemoteFileError) as onto_directory:
        session.rename(str(tmp_path / "f"), str(tmp_path / "d"))
    assert onto_directory.value.status == FAILURE
    with pytest.raises(RemoteFileError) as exists:
        session.mkdir(str(tmp_path / "d"))
    assert exists.value.status == FAILURE
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root ignores permission bits
        with pytest.raises(RemoteFileError) as denied:
            session.writer(str(locked / "x"), 0, create=True)
        assert denied.value.status == PERMISSION_DENIED


def test_stat_setstat_rename_and_listing(session, tmp_path):
    path = str(tmp_path / "f")
    (tmp_path / "f").write_bytes(b"0123456789")
    info = session.stat(path)
    assert (info.size, info.kind, info.mode) == (10, "file", (tmp_path / "f").stat().st_mode & 0o7777)
    session.setstat(path, size=4, mode=0o600)
    assert (tmp_path / "f").read_bytes() == b"0123"
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o600
    (tmp_path / "g").write_bytes(b"old")
    session.rename(path, str(tmp_path / "g"))  # replaces, as rename(2) does
    assert (tmp_path / "g").read_bytes() == b"0123"
    for n in range(250):  # more entries than one READDIR answer holds
        (tmp_path / f"n{n:03d}").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    entries = session.listdir(str(tmp_path))
    assert len(entries) == 252
    kinds = {e.name: e.kind for e in entries}
    assert (kinds["sub"], kinds["g"]) == ("directory", "file")


def test_many_small_files_in_one_pipeline_each_with_its_own_outcome(session, tmp_path):
    files = [(str(tmp_path / f"f{n}"), os.urandom(n * 1000)) for n in range(300)]
    files.insert(7, (str(tmp_path / "no-such-dir" / "x"), b"data"))
    outcomes = session.write_many(files, 0o640)
    assert [o is None for o in outcomes] == [path.find("no-such-dir") < 0 for path, _ in files]
    assert outcomes[7].status == NO_SUCH_FILE
    for path, data in files[:7] + files[8:]:
        assert Path(path).read_bytes() == data
    wanted = [(path, len(data)) for path, data in files[:7] + files[8:]]
    wanted.append((str(tmp_path / "f5"), 99))  # listed with another size: it changed
    read = session.read_many(wanted)
    assert [hashlib.sha256(r).hexdigest() for r in read[:-1]] == [hashlib.sha256(d).hexdigest()
                                                                   for _, d in files[:7] + files[8:]]
    assert isinstance(read[-1], RemoteFileError)
    moved = session.rename_many([(str(tmp_path / "f1"), str(tmp_path / "g1")),
                                 (str(tmp_path / "nope"), str(tmp_path / "g2"))])
    assert moved[0] is None
    assert moved[1].status == NO_SUCH_FILE


def test_abort_from_another_thread_ends_a_blocked_read():
    ours, theirs = socket.socketpair()

    def server():
        theirs.recv(9)  # the client's INIT...
        theirs.sendall(struct.pack(">IBI", 5, 2, 3))  # ...answered with VERSION 3, and then nothing more

    threading.Thread(target=server, daemon=True).start()
    session = SFTPSession(SocketStream(ours, timeout=30), "a silent server")
    threading.Timer(0.2, session.abort).start()
    with pytest.raises(TransportError):
        session.stat("/anything")
    assert session.alive is False
    theirs.close()


def test_writes_from_a_local_file_go_by_sendfile_and_arrive_whole(session, tmp_path):
    data = os.urandom(2 * REQUEST_SIZE + 777)
    local = tmp_path / "spool"
    local.write_bytes(b"head" + data)
    fd = os.open(local, os.O_RDONLY)
    try:
        writer = session.writer(str(tmp_path / "out"), 0, create=True)
        writer.write_from(fd, 4, len(data))
        writer.close()
    finally:
        os.close(fd)
    assert writer.acked == len(data)
    assert (tmp_path / "out").read_bytes() == data
