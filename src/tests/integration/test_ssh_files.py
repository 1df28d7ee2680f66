"""hpc.ssh.files (the transport interface over SSH) against the live testbed sshd, with both data engines;
and the OpenSSH engine's guarantees: host key pinned, private key only in a private agent, no leftovers."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc.ssh import ClusterFiles, SSHConnection, SSHTarget, quote
from hpc.ssh.errors import SSHChannelError
from hpc.ssh.openssh import OpenSSHEngine, agent
from hpc.ssh.sftp import SFTPSession
from hpc.transport import EOF, FAILURE, NO_SUCH_FILE, CommandResult, FileInfo, RemoteFileError, TransportError

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
HOSTILE = ["$(touch MARKER)", "it's \"quoted\"", "new\nline", "back\\slash", "sp ace", "ünï ✓", "-rf"]


@pytest.fixture(scope="module")
def target(testbed) -> SSHTarget:
    return SSHTarget(host=testbed["TESTBED_SSH_HOST"], port=int(testbed["TESTBED_SSH_PORT"]),
                     username=testbed["TESTBED_SSH_USER"], key_path=testbed["TESTBED_SSH_KEY_PW"],
                     passphrase=testbed["TESTBED_SSH_KEY_PASSPHRASE"], known_hosts=testbed["TESTBED_KNOWN_HOSTS"],
                     connect_timeout=10)


@pytest.fixture(scope="module")
def connection(target):
    conn = SSHConnection(target)
    yield conn
    conn.close()


@pytest.fixture(params=["openssh", "paramiko"])
def files(request, connection):
    cluster = ClusterFiles(connection, request.param, io_timeout=20)
    assert cluster.engine == request.param
    yield cluster
    cluster.close()


@pytest.fixture
def remote_dir(connection):
    path = connection.run("mktemp -d").stdout.strip()
    yield path
    connection.run(f"rm -rf -- {quote(path)}")


def test_only_plain_types_cross_the_interface(files, remote_dir):
    assert isinstance(files.run("echo hi"), CommandResult)
    files.write_file(f"{remote_dir}/a", b"data", 0o640)
    info = files.stat(f"{remote_dir}/a")
    assert info == FileInfo(f"{remote_dir}/a", 4, info.mtime, "file", 0o640)
    assert files.stat(f"{remote_dir}/missing") is None
    assert [type(e) for e in files.listdir(remote_dir)] == [FileInfo]
    assert all(type(piece) is memoryview for piece in files.read(f"{remote_dir}/a", 0, 4))


def test_directories_renames_removal_and_truncation(files, remote_dir):
    files.mkdir(f"{remote_dir}/x/y/z", 0o700)
    files.mkdir(f"{remote_dir}/x/y/z")  # exists: fine
    assert files.stat(f"{remote_dir}/x/y/z").is_dir
    files.write_file(f"{remote_dir}/x/f", b"0123456789")
    with pytest.raises(RemoteFileError) as under_a_file:
        files.mkdir(f"{remote_dir}/x/f/sub")
    assert under_a_file.value.status == FAILURE
    files.truncate(f"{remote_dir}/x/f", 3)
    files.write_file(f"{remote_dir}/x/g", b"old")
    files.rename(f"{remote_dir}/x/f", f"{remote_dir}/x/g")
    assert files.read_file(f"{remote_dir}/x/g") == b"012"
    with pytest.raises(RemoteFileError) as onto_a_directory:
        files.rename(f"{remote_dir}/x/g", f"{remote_dir}/x/y")
    assert onto_a_directory.value.status == FAILURE
    with pytest.raises(RemoteFileError) as missing:
        files.rename(f"{remote_dir}/nope", f"{remote_dir}/x/h")
    assert missing.value.status == NO_SUCH_FILE
    files.remove(f"{remote_dir}/x/g")
    files.remove(f"{remote_dir}/x/g")  # already gone: fine
    assert files.stat(f"{remote_dir}/x/g") is None


def test_hostile_names_are_written_hashed_and_listed_as_given(files, remote_dir):
    paths = [f"{remote_dir}/{name}" for name in HOSTILE]
    outcomes = files.write_files([(p, p.encode()) for p in paths])
    assert outcomes == [None] * len(paths)
    assert sorted(e.name for e in files.listdir(remote_dir)) == sorted(HOSTILE)
    hashes = files.hash_files(paths)
    assert hashes == {p: hashlib.sha256(p.encode()).hexdigest() for p in paths}
    assert files.run(f"test -e {quote(remote_dir + '/MARKER')}").exit_code == 1


def test_a_big_file_is_written_pipelined_and_hashed_by_range_on_the_cluster(files, remote_dir):
    data = os.urandom(9 * MiB + 3)
    acks = []
    writer = files.open_writer(f"{remote_dir}/big", 0, create=True, dedicated=True, on_ack=acks.append)
    for at in range(0, len(data), 4 * MiB):
        writer.write(memoryview(data)[at : at + 4 * MiB])
    writer.close()
    assert acks == sorted(acks) and acks[-1] == len(data)
    ranges = [(0, MiB), (5 * MiB, len(data))]
    got = files.hash(f"{remote_dir}/big", ranges, whole=True, size_hint=len(data))
    assert got.size == len(data)
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.ranges == tuple(hashlib.sha256(data[s:e]).hexdigest() for s, e in ranges)
    assert b"".join(files.read(f"{remote_dir}/big", 3, len(data))) == data[3:]
    with pytest.raises(RemoteFileError) as short:
        b"".join(files.read(f"{remote_dir}/big", 0, len(data) + 10))
    assert short.value.status == EOF


def test_many_small_files_cost_a_few_round_trips(files, remote_dir, connection):
    contents = [(f"{remote_dir}/m/{n}", os.urandom(4096 + n)) for n in range(500)]
    files.mkdir(f"{remote_dir}/m")
    commands = connection.commands_run
    started = time.monotonic()
    assert files.write_files(contents) == [None] * 500
    hashes = files.hash_files([p for p, _ in contents])
    assert files.rename_many([(p, p + ".done") for p, _ in contents]) == [None] * 500
    back = files.read_files([(p + ".done", len(d)) for p, d in contents])
    elapsed = time.monotonic() - started
    assert back == [d for _, d in contents]
    assert hashes == {p: hashlib.sha256(d).hexdigest() for p, d in contents}
    assert connection.commands_run - commands == 1  # one hashing command for 500 files
    assert elapsed < 30


@pytest.mark.parametrize("interpreter", ["python3", "no-such-python"])  # the follower, and its fallback
def test_a_growing_file_is_hashed_as_it_arrives_and_a_removed_one_ends_the_hash(files, remote_dir, monkeypatch,
                                                                                  interpreter):
    import hpc.ssh.files as module
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(module, "_PYTHON", interpreter)
    data = os.urandom(6 * MiB)
    path = f"{remote_dir}/growing"
    files.write_file(path, b"")
    with ThreadPoolExecutor(2) as pool:
        follower = pool.submit(files.hash_growing, path, len(data))
        writer = files.open_writer(path, 0, dedicated=True)
        for at in range(0, len(data), MiB):
            writer.write(data[at : at + MiB])
            time.sleep(0.05)
        writer.close()
        assert follower.result(timeout=30) == hashlib.sha256(data).hexdigest()
        files.write_file(f"{remote_dir}/never-complete", b"x")
        abandoned = pool.submit(files.hash_growing, f"{remote_dir}/never-complete", MiB)
        time.sleep(1)
        started = time.monotonic()
        files.remove(f"{remote_dir}/never-complete")
        assert abandoned.result(timeout=30) is None
        assert time.monotonic() - started < 5
    leftovers = files.run("pgrep -u \"$(id -u)\" -f 'never-complet[e]' || true").stdout.strip()
    assert leftovers == ""


def test_a_dropped_data_session_is_a_retryable_transport_error(files, remote_dir):
    writer = files.open_writer(f"{remote_dir}/drop", 0, create=True, dedicated=True)
    writer.write(b"x" * MiB)
    writer.abort()
    with pytest.raises(TransportError) as lost:
        writer.write(b"y" * MiB)
        writer.close()
    assert lost.value.retryable is True
    assert files.stat(f"{remote_dir}/drop") is not None  # the pool carries on with fresh sessions


# -- the OpenSSH engine ------------------------------------------------------------------------


def test_the_openssh_engine_checks_the_host_key(target, connection):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    impostor = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    from hpc.ssh.keys import openssh_private_bytes

    engine = OpenSSHEngine(target.host, target.port, target.username, impostor, connection.client_key_id(),
                           lambda: openssh_private_bytes(target.key_path, None, target.passphrase), 10)
    stream = engine.open_stream(10)
    with pytest.raises(TransportError):
        SFTPSession(stream, "impostor")
    error = engine.failure(stream, TransportError("x"))
    assert isinstance(error, SSHChannelError)
    assert "Host key verification failed" in error.reason


def test_the_private_key_is_held_only_by_the_agent(files, connection, testbed):
    if files.engine != "openssh":
        pytest.skip("the paramiko engine keeps the key in the gateway process")
    files.stat("/")
    directory = agent().directory
    assert directory.stat().st_mode & 0o777 == 0o700
    names = sorted(p.name for p in directory.iterdir())
    assert "agent.sock" in names
    assert all(n == "agent.sock" or n.endswith((".pub", ".known_hosts")) for n in names)
    passphrase_protected = Path(testbed["TESTBED_SSH_KEY_PW"]).read_bytes()
    for path in directory.iterdir():
        if path.is_file():
            text = path.read_bytes()
            assert b"PRIVATE KEY" not in text
            assert text != passphrase_protected
    listing = subprocess.run(["ssh-add", "-l"], env={"SSH_AUTH_SOCK": str(agent().socket_path), "PATH": "/usr/bin"},
                             capture_output=True, text=True)
    assert connection.client_key_id() in listing.stdout


def test_a_killed_gateway_leaves_no_agent_behind(testbed):
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from hpc.ssh import SSHConnection, SSHTarget, ClusterFiles
from hpc.ssh.openssh import agent
target = SSHTarget(host={testbed['TESTBED_SSH_HOST']!r}, port={testbed['TESTBED_SSH_PORT']},
                   username={testbed['TESTBED_SSH_USER']!r},
                   key_path={testbed['TESTBED_SSH_KEY']!r}, known_hosts={testbed['TESTBED_KNOWN_HOSTS']!r})
files = ClusterFiles(SSHConnection(target), "openssh")
files.stat("/")
print(agent().directory, flush=True)
import time; time.sleep(60)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    directory = Path(process.stdout.readline().strip())
    assert (directory / "agent.sock").exists()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while directory.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert directory.exists() is False
    agents = subprocess.run(["pgrep", "-f", f"ssh-agent -D -a {directory}/agent.sock"], capture_output=True)
    assert agents.stdout == b""


@pytest.mark.parametrize("engine", ["openssh", "paramiko"])
def test_a_retired_key_drops_its_files_and_what_runs_finishes(target, remote_dir, engine):
    # PATCH of an infrastructure retires its pooled connection: the data sessions opened with the old
    # settings must go with it (idle ones at once, the one in use when it is given back), and the next
    # caller must get files over the new connection; a write under way is not cut off.
    from hpc.ssh import SSHPool

    pool = SSHPool(engine, io_timeout=20)
    try:
        old = pool.files("tb", target)
        writer = old.open_writer(f"{remote_dir}/busy", create=True)  # a session in use across the retire
        assert old.stat(remote_dir).is_dir  # another session, then kept idle
        assert old.idle_sessions == 1
        pool.retire("tb", grace=10)
        assert old.idle_sessions == 0
        new = pool.files("tb", target)
        assert new is not old
        writer.write(b"x" * 1000)
        writer.close()
        assert old.idle_sessions == 0  # given back to retired files: closed, not kept
        assert new.stat(f"{remote_dir}/busy").size == 1000
    finally:
        pool.close_all()
