"""hpc.ssh against the live local testbed sshd (127.0.0.1:2222, user hpcuser)."""

import base64
import os
import socket
import threading
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hpc.ssh import (
    ClusterFiles,
    SSHAuthFailed,
    SSHChannelError,
    SSHConnection,
    SSHError,
    SSHHostKeyMismatch,
    SSHHostKeyUnknown,
    SSHKeyError,
    SSHPool,
    SSHTarget,
    SSHTimeout,
    SSHUnreachable,
    probe,
    quote,
)

ENV_FILE = "/var/lib/hpc-testbed/testbed.env"


def _testbed_env() -> dict:
    env = {}
    with open(ENV_FILE) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                env[key] = value
    return env


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


if not os.path.exists(ENV_FILE):
    pytest.skip(f"testbed not installed ({ENV_FILE} missing)", allow_module_level=True)
ENV = _testbed_env()
HOST = ENV.get("TESTBED_SSH_HOST", "127.0.0.1")
PORT = int(ENV.get("TESTBED_SSH_PORT", "2222"))
if not _port_open(HOST, PORT):
    pytest.skip(f"testbed sshd not listening on {HOST}:{PORT}", allow_module_level=True)

PINNED = f"{ENV['TESTBED_HOST_KEY_TYPE']} {ENV['TESTBED_HOST_KEY_B64']}"


def _target(**changes) -> SSHTarget:
    fields = dict(
        host=HOST,
        port=PORT,
        username=ENV["TESTBED_SSH_USER"],
        key_path=ENV["TESTBED_SSH_KEY"],
        known_hosts=ENV["TESTBED_KNOWN_HOSTS"],
        connect_timeout=5.0,
    )
    fields.update(changes)
    return SSHTarget(**fields)


def _random_public_key() -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture
def conn():
    connection = SSHConnection(_target())
    yield connection
    connection.close()


@pytest.fixture
def remote_dir(conn):
    path = conn.run("mktemp -d").stdout.strip()
    assert path.startswith("/")
    yield path
    conn.run(f"rm -rf -- {quote(path)}")


# -- commands -----------------------------------------------------------------


def test_exit_code_stdout_stderr_apart(conn):
    result = conn.run("echo out; echo err >&2; exit 3")
    assert result.exit_code == 3
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.truncated is False


def test_stdin_delivered(conn):
    data = base64.b64encode(os.urandom(3_750_000))  # 5 MB of text
    assert len(data) == 5_000_000
    result = conn.run("cat", stdin=data, max_output=8 * 1024 * 1024, timeout=60)
    assert result.exit_code == 0
    assert result.stdout == data.decode()
    assert result.truncated is False


def test_stdin_to_a_slow_reader(conn):
    # The send window stays full for a second: the writer must wait, not give up.
    result = conn.run("sleep 1; wc -c", stdin=b"x" * 5_000_000, timeout=30)
    assert result.stdout.strip() == "5000000"


def test_stdin_of_a_command_that_reads_nothing(conn):
    result = conn.run("echo done", stdin=b"x" * 5_000_000, timeout=20)
    assert result.exit_code == 0
    assert result.stdout == "done\n"


def test_no_stdin_means_eof(conn):
    started = time.monotonic()
    assert conn.run("cat", timeout=10).stdout == ""
    assert time.monotonic() - started < 5


def test_large_output_capped(conn):
    started = time.monotonic()
    result = conn.run("head -c 20000000 /dev/zero | tr '\\0' a", max_output=1_000_000, timeout=60)
    elapsed = time.monotonic() - started
    assert result.exit_code == 0
    assert result.truncated is True
    assert result.stdout == "a" * 1_000_000
    assert elapsed < 30


def test_large_stdout_and_stderr_together(conn):
    command = "head -c 6000000 /dev/zero | tr '\\0' e >&2 & head -c 6000000 /dev/zero | tr '\\0' o; wait"
    result = conn.run(command, max_output=8 * 1024 * 1024, timeout=60)
    assert result.exit_code == 0
    assert result.stdout == "o" * 6_000_000
    assert result.stderr == "e" * 6_000_000
    assert result.truncated is False


def test_stderr_cap_flags_truncated(conn):
    result = conn.run("head -c 3000 /dev/zero | tr '\\0' e >&2; echo ok", max_output=1000)
    assert result.truncated is True
    assert result.stderr == "e" * 1000
    assert result.stdout == "ok\n"


def test_invalid_utf8_replaced(conn):
    result = conn.run(r"printf 'a\377b'")
    assert result.stdout == "a\ufffdb"


def test_timeout(conn):
    started = time.monotonic()
    with pytest.raises(SSHTimeout, match="timed out"):
        conn.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 2
    # The connection stays usable.
    assert conn.run("echo still").stdout == "still\n"


def test_timeout_while_stdin_is_pending(conn):
    started = time.monotonic()
    with pytest.raises(SSHTimeout):
        conn.run("sleep 30", stdin=b"z" * 10_000_000, timeout=1)
    assert time.monotonic() - started < 2.5
    assert conn.run("echo still").stdout == "still\n"
    assert conn.connections_opened == 1


def test_killed_by_signal_reports_minus_one(conn):
    assert conn.run("kill -9 $$").exit_code == -1


def test_concurrent_runs_share_one_transport(conn):
    results: dict[int, object] = {}

    def work(i: int) -> None:
        try:
            results[i] = conn.run(f"echo {i}; sleep 0.2")
        except Exception as e:  # collected and asserted below
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {i: getattr(r, "stdout", r) for i, r in results.items()} == {i: f"{i}\n" for i in range(20)}
    assert conn.connections_opened == 1
    assert conn.commands_run == 20


def test_many_short_commands_keep_the_transport(conn):
    # paramiko sends the EOF / window adjust it built under the channel lock
    # after releasing it, so it could follow its own CLOSE; OpenSSH then drops
    # the whole connection ("ieof packet referred to nonexistent channel",
    # paramiko issues 1115 and 1705). Short commands in parallel hit it.
    errors = []

    def work() -> None:
        for _ in range(15):
            try:
                conn.run("true")
                conn.run("echo x", stdin=b"y" * 100_000)
            except Exception as e:  # collected and asserted below
                errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert conn.connections_opened == 1
    assert conn.commands_run == 600


def test_max_channels_limits_concurrency():
    connection = SSHConnection(_target(max_channels=2))
    try:
        connection.connect()
        started = time.monotonic()
        threads = [threading.Thread(target=connection.run, args=("sleep 0.5",)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        # Six half-second commands two at a time.
        assert time.monotonic() - started >= 1.4
    finally:
        connection.close()


def test_a_subsystem_stream_holds_a_channel_until_closed():
    connection = SSHConnection(_target(max_channels=1))
    try:
        stream = connection.open_stream("sftp")
        with pytest.raises(SSHTimeout, match="no free channel"):
            connection.run("true", timeout=0.5)
        stream.close()
        stream.close()  # idempotent: the slot is released once
        assert connection.run("echo free").stdout == "free\n"
    finally:
        connection.close()


def test_the_deferred_close_handler_is_installed_and_runs(conn, monkeypatch):
    # client.py replaces paramiko's CLOSE handler per transport (Transport._channel_handler_table, a private
    # attribute of paramiko 5.1) to fix a race (see _on_server_close). If paramiko renamed the table, the
    # assignment would silently create a dead attribute: this fails instead.
    import hpc.ssh.client as client

    calls = []
    original = client._on_server_close
    monkeypatch.setattr(client, "_on_server_close", lambda channel, message: (calls.append(1),
                                                                             original(channel, message)))
    connection = SSHConnection(_target())
    try:
        assert connection.run("echo closed by the server").exit_code == 0
        assert calls != []
        assert connection.run("true").exit_code == 0  # and the channel is closed cleanly after it
    finally:
        connection.close()


def test_reconnect_after_transport_closed(conn):
    assert conn.run("true").exit_code == 0
    conn._transport.close()
    assert conn.is_alive() is False
    assert conn.run("echo back").stdout == "back\n"
    assert conn.connections_opened == 2


def test_drop_mid_command_raises_channel_error(conn):
    conn.connect()
    timer = threading.Timer(0.5, conn._transport.close)
    timer.start()
    try:
        with pytest.raises(SSHChannelError, match="lost"):
            conn.run("sleep 5", timeout=10)
    finally:
        timer.cancel()


def test_connect_is_idempotent(conn):
    conn.connect()
    conn.connect()
    assert conn.connections_opened == 1
    assert conn.is_alive() is True


def test_close_then_run_reconnects(conn):
    conn.connect()
    conn.close()
    assert conn.is_alive() is False
    assert conn.run("true").exit_code == 0
    assert conn.connections_opened == 2


# -- host keys ----------------------------------------------------------------


def test_known_hosts_ok(conn):
    conn.connect()
    assert conn.host_key == PINNED
    assert conn.host_key_fingerprint == ENV["TESTBED_HOST_KEY_FINGERPRINT"]


def test_pinned_host_key_ok():
    with SSHConnection(_target(known_hosts=None, host_key=PINNED + " comment")) as connection:
        assert connection.run("true").exit_code == 0


def test_pinned_key_takes_precedence_over_known_hosts():
    wrong = _random_public_key()
    with pytest.raises(SSHHostKeyMismatch):
        SSHConnection(_target(host_key=wrong)).connect()


def test_wrong_pinned_key_mismatch():
    wrong = _random_public_key()
    target = _target(known_hosts=None, host_key=wrong, trust_on_first_use=True)
    with pytest.raises(SSHHostKeyMismatch) as info:
        SSHConnection(target).connect()
    error = info.value
    assert error.got == ENV["TESTBED_HOST_KEY_FINGERPRINT"]
    assert error.expected.startswith("SHA256:")
    assert error.expected in error.reason
    assert error.got in error.reason
    assert error.host_key == PINNED


def test_known_hosts_mismatch(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(f"[{HOST}]:{PORT} {_random_public_key()}\n")
    with pytest.raises(SSHHostKeyMismatch):
        SSHConnection(_target(known_hosts=str(known), trust_on_first_use=True)).connect()


def test_unknown_host_key_rejected(tmp_path):
    known = tmp_path / "known_hosts"
    # The right key, but filed under port 22: not this server.
    known.write_text(f"{HOST} {PINNED}\n")
    with pytest.raises(SSHHostKeyUnknown) as info:
        SSHConnection(_target(known_hosts=str(known))).connect()
    assert info.value.host_key == PINNED
    with pytest.raises(SSHHostKeyUnknown):
        SSHConnection(_target(known_hosts=None)).connect()


def test_unknown_host_key_trusted_on_first_use():
    with SSHConnection(_target(known_hosts=None, trust_on_first_use=True)) as connection:
        connection.connect()
        assert connection.host_key == PINNED
        assert connection.run("echo tofu").stdout == "tofu\n"


def test_host_key_checked_before_authentication(tmp_path):
    # A mismatch wins over a key the server would refuse: the key is never offered.
    stranger = tmp_path / "stranger"
    stranger.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    target = _target(key_path=str(stranger), known_hosts=None, host_key=_random_public_key())
    with pytest.raises(SSHHostKeyMismatch):
        SSHConnection(target).connect()


def test_invalid_pinned_key():
    with pytest.raises(SSHError, match="pinned host key is not valid"):
        SSHConnection(_target(host_key="ssh-ed25519 notbase64!")).connect()


# -- authentication -------------------------------------------------------------


def test_passphrase_key_right_passphrase():
    target = _target(key_path=ENV["TESTBED_SSH_KEY_PW"], passphrase=ENV["TESTBED_SSH_KEY_PASSPHRASE"])
    with SSHConnection(target) as connection:
        assert connection.run("whoami").stdout.strip() == ENV["TESTBED_SSH_USER"]


def test_passphrase_key_wrong_passphrase():
    target = _target(key_path=ENV["TESTBED_SSH_KEY_PW"], passphrase="definitely wrong")
    with pytest.raises(SSHKeyError, match="wrong passphrase"):
        SSHConnection(target).connect()


def test_passphrase_key_missing_passphrase():
    with pytest.raises(SSHKeyError, match="passphrase required"):
        SSHConnection(_target(key_path=ENV["TESTBED_SSH_KEY_PW"])).connect()


def test_inline_key_data():
    with open(ENV["TESTBED_SSH_KEY"]) as f:
        target = _target(key_path=None, key_data=f.read())
    with SSHConnection(target) as connection:
        assert connection.run("true").exit_code == 0


def test_auth_refused_for_unknown_key(tmp_path):
    stranger = tmp_path / "stranger"
    stranger.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    with pytest.raises(SSHAuthFailed, match="refused the key"):
        SSHConnection(_target(key_path=str(stranger))).connect()


def test_missing_key_file():
    with pytest.raises(SSHKeyError, match="key file not found"):
        SSHConnection(_target(key_path="/nonexistent/id_ed25519")).connect()


# -- reachability -----------------------------------------------------------------


def test_unreachable_port_fast():
    started = time.monotonic()
    with pytest.raises(SSHUnreachable):
        SSHConnection(_target(port=1)).connect()
    assert time.monotonic() - started < 1


def test_unresolvable_host():
    with pytest.raises(SSHUnreachable, match="resolve"):
        SSHConnection(_target(host="no-such-host.invalid")).connect()


def test_not_an_ssh_server_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises((SSHTimeout, SSHUnreachable)):
            SSHConnection(_target(port=port, connect_timeout=1.0)).connect()
        assert time.monotonic() - started < 5
    finally:
        listener.close()


# -- probe and pool -------------------------------------------------------------------


def test_probe_returns_host_key():
    assert probe(_target()) == PINNED
    assert probe(_target(known_hosts=None, trust_on_first_use=True), timeout=5) == PINNED


def test_probe_raises_connection_errors():
    with pytest.raises(SSHHostKeyUnknown):
        probe(_target(known_hosts=None))


def test_pool_reuses_and_replaces():
    pool = SSHPool()
    try:
        first = pool.get("cluster", _target())
        assert pool.get("cluster", _target()) is first
        first.run("true")
        changed = pool.get("cluster", _target(keepalive=30))
        assert changed is not first
        assert first.is_alive() is False
        changed.run("true")
        changed.run("true")
        assert pool.stats() == {"cluster": {"connections_opened": 1, "commands_run": 2, "alive": True,
                                            "data_connections_opened": 0}}
        pool.drop("cluster")
        assert changed.is_alive() is False
        assert pool.stats() == {}
        pool.drop("cluster")
    finally:
        pool.close_all()


def test_open_dedicated_is_a_separate_transport(conn):
    conn.connect()
    other = conn.open_dedicated()
    try:
        assert other is not conn
        assert other._transport is not conn._transport
        assert other.run("echo dedicated").stdout == "dedicated\n"
        assert conn.connections_opened == 1
    finally:
        other.close()
    assert conn.is_alive() is True


# -- SFTP and quoting ------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["openssh", "paramiko"])
def test_sftp_put_get(conn, remote_dir, engine):
    data = os.urandom(3 * 1024 * 1024)
    remote = f"{remote_dir}/file.bin"
    files = ClusterFiles(conn, engine)
    try:
        writer = files.open_writer(remote, 0, create=True, dedicated=True)
        writer.write(data)
        writer.close()
        assert files.stat(remote).size == len(data)
        assert b"".join(files.read(remote, 0, len(data), dedicated=True)) == data
    finally:
        files.close()
    assert conn.run(f"cksum < {quote(remote)}").stdout.split()[1] == str(len(data))


HOSTILE_NAMES = [
    "$(touch MARKER)",
    "`touch MARKER`",
    'it\'s "quoted"',
    "new\nline",
    "EOF",
    ";touch MARKER",
    "-rf",
    "sp ace & amp | pipe",
    "ünïcödé ✓",
]


def test_hostile_filenames_round_trip(conn, remote_dir):
    for name in HOSTILE_NAMES:
        result = conn.run(f"cd {quote(remote_dir)} && touch -- {quote(name)}")
        assert result.exit_code == 0, result.stderr
    listing = conn.run(f"cd {quote(remote_dir)} && printf '%s\\0' *").stdout
    assert sorted(listing.split("\0")[:-1]) == sorted(HOSTILE_NAMES)
    assert conn.run(f"test -e {quote(remote_dir + '/MARKER')}").exit_code == 1
    for name in HOSTILE_NAMES:
        assert conn.run(f"test -f {quote(remote_dir + '/' + name)}").exit_code == 0


def test_unique_remote_names_do_not_collide(conn, remote_dir):
    name = f"{remote_dir}/{uuid.uuid4()}"
    assert conn.run(f"echo x > {quote(name)} && cat {quote(name)}").stdout == "x\n"
