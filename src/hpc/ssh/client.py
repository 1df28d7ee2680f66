"""SSH connections to infrastructures: checked host keys, pooled channels, bounded commands.

One :class:`SSHConnection` holds one authenticated paramiko ``Transport``;
commands and SFTP sessions are channels multiplexed over it. The host key is
checked right after the key exchange and before the client key is offered, so
a key is never sent to an impostor.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import paramiko
from paramiko.common import MSG_CHANNEL_CLOSE

from hpc.ssh.errors import (
    SSHAuthFailed,
    SSHChannelError,
    SSHError,
    SSHHostKeyMismatch,
    SSHHostKeyUnknown,
    SSHTimeout,
    SSHUnreachable,
)
from hpc.ssh.hostkeys import (
    expected_host_keys,
    fingerprint,
    host_key_name,
    key_line,
    preferred_key_types,
)
from hpc.ssh.keys import load_private_key
from hpc.transport import CommandResult

log = logging.getLogger(__name__)

# AES-GCM is 1.1-1.3x faster than paramiko's default aes128-ctr+hmac on
# machines with AES-NI (shared/PERFORMANCE-NOTES.md); the defaults follow.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

_READ_CHUNK = 65536
# Granularity of the deadline checks while a stream is silent.
_POLL_SECONDS = 0.2
# paramiko's default max packet size: one send() takes a whole slice, so no
# slice is copied twice.
_WRITE_CHUNK = 32768


@dataclass(frozen=True)
class SSHTarget:
    """Where and how to connect.

    Attributes:
        host: Server host name or address.
        port: Server port.
        username: Remote user.
        key_path: Private key file (OpenSSH or PEM; ed25519, RSA or ECDSA).
        key_data: Or the private key text itself.
        passphrase: Passphrase of an encrypted key.
        host_key: Pinned server key ``"type base64"``; takes precedence over known_hosts.
        known_hosts: Path of an OpenSSH known_hosts file (``[host]:port`` entries off port 22).
        trust_on_first_use: Accept an unknown server key; a mismatching one is never accepted.
        connect_timeout: Seconds for TCP connect, handshake and authentication each.
        keepalive: Seconds between keepalive packets (0 disables).
        max_channels: Concurrent channels on one connection (sshd MaxSessions defaults to 10).
    """

    host: str
    port: int = 22
    username: str = ""
    key_path: str | None = None
    key_data: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    host_key: str | None = None
    known_hosts: str | None = None
    trust_on_first_use: bool = False
    connect_timeout: float = 10.0
    keepalive: int = 15
    max_channels: int = 8


class SSHConnection:
    """One authenticated paramiko Transport to one target, reconnecting on demand, thread-safe.

    Attributes:
        target: The target connected to.
        connections_opened: Transports opened over the life of this object.
        commands_run: Commands started.
    """

    def __init__(self, target: SSHTarget):
        self.target = target
        self.connections_opened = 0
        self.commands_run = 0
        self._lock = threading.Lock()  # guards connecting and _transport
        self._counter_lock = threading.Lock()
        self._channels = threading.BoundedSemaphore(max(1, target.max_channels))
        self._transport: paramiko.Transport | None = None
        self._pkey: paramiko.PKey | None = None
        self._server_key: paramiko.PKey | None = None
        # Key accepted on first use: later reconnects must see the same one.
        self._tofu_key: paramiko.PKey | None = None
        self._retired = False  # replaced in its pool: never reconnects

    def __repr__(self) -> str:
        t = self.target
        return f"SSHConnection({t.username}@{t.host}:{t.port}, alive={self.is_alive()})"

    def __enter__(self) -> SSHConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection -------------------------------------------------------

    def connect(self) -> None:
        """Open and authenticate the transport unless it is already up.

        Raises:
            SSHKeyError, SSHUnreachable, SSHTimeout, SSHHostKeyUnknown,
            SSHHostKeyMismatch, SSHAuthFailed: See :mod:`hpc.ssh.errors`.
        """
        self._ensure_transport()

    @property
    def host_key(self) -> str:
        """The server key seen, ``"type base64"`` (connects first if never connected)."""
        if self._server_key is None:
            self.connect()
        assert self._server_key is not None
        return key_line(self._server_key)

    @property
    def host_key_fingerprint(self) -> str:
        """SHA256 fingerprint of the server key seen (connects first if never connected)."""
        if self._server_key is None:
            self.connect()
        assert self._server_key is not None
        return fingerprint(self._server_key)

    @property
    def username(self) -> str:
        """The remote user (the local user's name when the target names none, as OpenSSH does)."""
        return self.target.username or _local_user()

    def client_key_id(self) -> str:
        """SHA256 fingerprint of the client key (loaded, and decrypted, on first use)."""
        if self._pkey is None:
            self._pkey = load_private_key(self.target.key_path, self.target.key_data, self.target.passphrase)
        return fingerprint(self._pkey)

    def is_alive(self) -> bool:
        """Whether the transport is up and authenticated (no round trip)."""
        t = self._transport
        return t is not None and t.is_active() and t.is_authenticated()

    def close(self) -> None:
        """Close the transport; a later command reconnects."""
        with self._lock:
            t, self._transport = self._transport, None
        if t is not None:
            t.close()

    def retire(self, grace: float) -> None:
        """Close once the commands and SFTP sessions in progress have ended, or after ``grace`` seconds;
        from now on the connection never reconnects (its pool holds a new one for the same key)."""
        self._retired = True
        slots = max(1, self.target.max_channels)
        deadline = time.monotonic() + grace
        taken = 0
        try:
            while taken < slots and self._channels.acquire(timeout=max(0.0, deadline - time.monotonic())):
                taken += 1
        finally:
            self.close()
            for _ in range(taken):
                self._channels.release()

    def open_dedicated(self) -> SSHConnection:
        """Open a new, separate transport to the same target (for parallel bulk transfers).

        Returns:
            A connected :class:`SSHConnection`; the caller closes it.
        """
        other = SSHConnection(self.target)
        # Reuse the decrypted key (no second KDF) and the key trusted on first
        # use (the dedicated connection must reach the same server).
        other._pkey = self._pkey
        other._tofu_key = self._tofu_key
        other.connect()
        return other

    def _ensure_transport(self) -> paramiko.Transport:
        t = self._transport
        if t is not None and t.is_active():
            return t
        with self._lock:
            t = self._transport
            if t is None or not t.is_active():
                if t is not None:
                    t.close()
                self._transport = None
                if self._retired:
                    raise SSHChannelError(f"the connection to {self.target.host}:{self.target.port} was replaced "
                                          "(its infrastructure changed)")
                t = self._open_transport()
                self._transport = t
            return t

    def _discard(self, transport: paramiko.Transport) -> None:
        # Only the transport that failed is dropped: another thread may have
        # replaced it already.
        with self._lock:
            if self._transport is transport:
                self._transport = None
        transport.close()

    def _open_transport(self) -> paramiko.Transport:
        target = self.target
        started = time.monotonic()
        name = host_key_name(target.host, target.port)
        expected, source = expected_host_keys(target.host, target.port, target.host_key, target.known_hosts)
        known = list((expected.lookup(name) or {}).values())
        if not known and self._tofu_key is not None:
            known, source = [self._tofu_key], "key trusted on first use"
        if self._pkey is None:
            # Before any network traffic: a bad key needs no round trip.
            self._pkey = load_private_key(target.key_path, target.key_data, target.passphrase)
        username = target.username or _local_user()

        sock = self._socket()
        transport = paramiko.Transport(sock)
        # Per transport, not global: the class table stays paramiko's own.
        transport._channel_handler_table = {
            **paramiko.Transport._channel_handler_table,
            MSG_CHANNEL_CLOSE: _on_server_close,
        }
        try:
            transport.banner_timeout = target.connect_timeout
            transport.handshake_timeout = target.connect_timeout
            transport.auth_timeout = target.connect_timeout
            options = transport.get_security_options()
            options.ciphers = _cipher_order(options.ciphers)
            if known:
                options.key_types = preferred_key_types(known, options.key_types)
            self._handshake(transport)
            server_key = transport.get_remote_server_key()
            self._check_host_key(server_key, known, source)
            self._authenticate(transport, username)
            if target.keepalive:
                transport.set_keepalive(target.keepalive)
        except BaseException:
            transport.close()
            sock.close()
            raise
        self._server_key = server_key
        with self._counter_lock:
            self.connections_opened += 1
        log.debug(
            "connected to %s@%s:%d host key %s cipher %s in %.3fs",
            username,
            target.host,
            target.port,
            fingerprint(server_key),
            transport.local_cipher,
            time.monotonic() - started,
        )
        return transport

    def _socket(self) -> socket.socket:
        target = self.target
        where = f"{target.host}:{target.port}"
        try:
            sock = socket.create_connection((target.host, target.port), timeout=target.connect_timeout)
        except TimeoutError:
            raise SSHTimeout(f"connect to {where} timed out after {target.connect_timeout:g}s") from None
        except socket.gaierror as e:
            raise SSHUnreachable(f"cannot resolve {target.host}: {e.strerror}") from None
        except OSError as e:
            raise SSHUnreachable(f"cannot connect to {where}: {e.strerror or e}") from None
        # Commands are request/response exchanges of small packets; Nagle
        # would hold some of them back for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _handshake(self, transport: paramiko.Transport) -> None:
        where = f"{self.target.host}:{self.target.port}"
        try:
            transport.start_client(timeout=self.target.connect_timeout)
            # start_client returns silently when its timeout expires.
            if not transport.is_active() or not transport.initial_kex_done:
                raise SSHTimeout(
                    f"SSH handshake with {where} timed out after {self.target.connect_timeout:g}s"
                )
        except paramiko.SSHException as e:
            if _is_timeout(e):
                raise SSHTimeout(f"SSH handshake with {where} timed out: {e}") from None
            raise SSHUnreachable(f"SSH handshake with {where} failed: {e}") from None
        except (EOFError, OSError) as e:
            raise SSHUnreachable(f"SSH handshake with {where} failed: {e or type(e).__name__}") from None

    def _check_host_key(self, server_key: paramiko.PKey, known: list[paramiko.PKey], source: str) -> None:
        target = self.target
        name = host_key_name(target.host, target.port)
        got = fingerprint(server_key)
        line = key_line(server_key)
        if known:
            if any(k.asbytes() == server_key.asbytes() for k in known):
                return
            expected = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in known)
            log.error(
                "host key mismatch for %s: expected %s, got %s %s", name, expected, server_key.get_name(), got
            )
            raise SSHHostKeyMismatch(
                f"host key of {name} does not match the {source}: "
                f"expected {expected}, got {server_key.get_name()} {got}",
                expected=", ".join(fingerprint(k) for k in known),
                got=got,
                host_key=line,
            )
        if not target.trust_on_first_use:
            raise SSHHostKeyUnknown(
                f"host key of {name} is unknown ({source}): {server_key.get_name()} {got}",
                got=got,
                host_key=line,
            )
        log.warning("trusting unknown host key of %s on first use: %s %s", name, server_key.get_name(), got)
        self._tofu_key = server_key

    def _authenticate(self, transport: paramiko.Transport, username: str) -> None:
        where = f"{username}@{self.target.host}:{self.target.port}"
        try:
            remaining = transport.auth_publickey(username, self._pkey)
        except paramiko.BadAuthenticationType as e:
            raise SSHAuthFailed(
                f"{where}: server does not accept public keys (allows {', '.join(e.allowed_types)})"
            ) from None
        except paramiko.AuthenticationException as e:
            if _is_timeout(e):
                raise SSHTimeout(f"authentication of {where} timed out") from None
            raise SSHAuthFailed(f"{where}: server refused the key") from None
        except paramiko.SSHException as e:
            if _is_timeout(e):
                raise SSHTimeout(f"authentication of {where} timed out") from None
            raise SSHUnreachable(f"authentication of {where} failed: {e}") from None
        except (EOFError, OSError) as e:
            raise SSHUnreachable(f"authentication of {where} failed: {e or type(e).__name__}") from None
        if remaining or not transport.is_authenticated():
            raise SSHAuthFailed(f"{where}: server requires more authentication ({', '.join(remaining)})")

    # -- commands ---------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        stdin: bytes | None = None,
        timeout: float = 60.0,
        max_output: int = 4 * 1024 * 1024,
    ) -> CommandResult:
        """Run a command on a new channel and wait for it to exit.

        Stdin is written (then closed) while stdout and stderr are read, so large
        output in either direction cannot deadlock. A transport found dead
        before the command starts is reconnected once. The remote process is
        not killed on timeout (SSH has no portable way to); wrap long commands
        in ``timeout(1)`` remotely when that matters.

        Args:
            command: The command line; quote every value with :func:`hpc.shell.quote`.
            stdin: Bytes fed to the command's standard input (EOF is sent in any case).
            timeout: Seconds for the whole command, including waiting for a free channel.
            max_output: Bytes kept per stream; the rest is read and dropped.

        Returns:
            Exit code, stdout and stderr kept apart.

        Raises:
            SSHTimeout: The command did not finish in time (its channel is closed).
            SSHChannelError: The connection dropped mid-command, or no channel could be opened.
            SSHError: Any connection error of :meth:`connect`.
        """
        started = time.monotonic()
        deadline = started + timeout
        where = f"{self.target.host}:{self.target.port}"
        word = _first_word(command)
        if not self._channels.acquire(timeout=max(0.0, timeout)):
            raise SSHTimeout(f"no free channel on {where} within {timeout:g}s")
        try:
            transport, channel = self._start(command, deadline)
            stop = threading.Event()
            writer = None
            try:
                with self._counter_lock:
                    self.commands_run += 1
                channel.settimeout(_POLL_SECONDS)
                if stdin:
                    writer = threading.Thread(
                        target=_feed, args=(channel, stdin, deadline, stop), name="ssh-stdin", daemon=True
                    )
                    writer.start()
                else:
                    channel.shutdown_write()
                out, err, truncated, finished = _collect(channel, deadline, max_output)
                if not finished:
                    raise _command_timeout(word, timeout, where)
                if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                    raise _command_timeout(word, timeout, where)
                # exit_status stays -1 until an exit-status message arrives
                # (exit_status_ready() is also true for a merely closed channel).
                exit_code = channel.exit_status
                if exit_code == -1 and not transport.is_active():
                    raise SSHChannelError(f"connection to {where} lost during {word!r}")
            except (OSError, EOFError, paramiko.SSHException) as e:
                # Raised by paramiko when the transport dies under a send.
                raise SSHChannelError(f"connection to {where} lost during {word!r}: {e!r}") from None
            finally:
                # Our CLOSE must be the channel's last message: stop the
                # stdin writer first (it checks `stop` every _POLL_SECONDS).
                stop.set()
                if writer is not None:
                    writer.join(timeout=1.0)
                _close_channel(channel)
        finally:
            self._channels.release()
        log.debug(
            "ran %r on %s exit %d in %.3fs%s",
            word,
            where,
            exit_code,
            time.monotonic() - started,
            " (output truncated)" if truncated else "",
        )
        return CommandResult(
            exit_code=exit_code,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            truncated=truncated,
        )

    def _start(self, command: str, deadline: float) -> tuple[paramiko.Transport, paramiko.Channel]:
        where = f"{self.target.host}:{self.target.port}"
        for attempt in (1, 2):
            transport = self._ensure_transport()
            open_timeout = max(0.1, min(self.target.connect_timeout, deadline - time.monotonic()))
            try:
                channel = transport.open_session(timeout=open_timeout)
                channel._hpc_defer_close = True  # see _on_server_close
            except paramiko.ChannelException as e:
                # The server said no (e.g. MaxSessions reached): the transport is fine.
                raise SSHChannelError(f"{where} refused a channel: {e}") from None
            except (paramiko.SSHException, EOFError, OSError) as e:
                # Dead, or silent for connect_timeout: either way no channel
                # will come from this transport.
                self._discard(transport)
                if attempt == 1 and time.monotonic() < deadline:
                    log.debug("reconnecting to %s: %s", where, e)
                    continue
                if _is_timeout(e):
                    raise SSHTimeout(f"opening a channel on {where} timed out") from None
                raise SSHChannelError(f"cannot open a channel on {where}: {e}") from None
            try:
                channel.exec_command(command)
            except (paramiko.SSHException, EOFError, OSError) as e:
                _close_channel(channel)
                if not transport.is_active() and attempt == 1 and time.monotonic() < deadline:
                    self._discard(transport)
                    log.debug("reconnecting to %s: %s", where, e)
                    continue
                raise SSHChannelError(f"cannot start a command on {where}: {e}") from None
            return transport, channel
        raise AssertionError("unreachable")

    # -- subsystems (SFTP) ------------------------------------------------

    def open_sftp(self) -> paramiko.SFTPClient:
        """Open an SFTP session on a new channel of the pooled transport (paramiko's client, for the
        few file operations :mod:`hpc.ssh.cluster_files` makes; the data path is :mod:`hpc.ssh.files`).

        The session counts against ``max_channels`` until it is closed; close it
        (or use it as a context manager). Never share one SFTP client between
        threads that write pipelined: that corrupts data.

        Returns:
            A ``paramiko.SFTPClient``.

        Raises:
            SSHTimeout: No channel slot freed within ``connect_timeout``.
            SSHChannelError: The server refused the channel or the sftp subsystem.
            SSHError: Any connection error of :meth:`connect`.
        """
        return self._open_subsystem("sftp", _PooledSFTPClient)

    def open_stream(self, subsystem: str = "sftp", timeout: float | None = None) -> ChannelStream:
        """Start a subsystem on a new channel of the pooled transport: a byte stream to it.

        The channel counts against ``max_channels`` until the stream is closed. Used by
        :mod:`hpc.ssh.files` for SFTP when the gateway's data path runs over paramiko.

        Raises:
            SSHTimeout: No channel slot freed within ``connect_timeout``.
            SSHChannelError: The server refused the channel or the subsystem.
            SSHError: Any connection error of :meth:`connect`.
        """
        limit = timeout or self.target.connect_timeout * 6
        return self._open_subsystem(subsystem, lambda channel, release: ChannelStream(channel, limit, release))

    def _open_subsystem(self, subsystem: str, wrap):
        """A new channel of the pooled transport running ``subsystem``, handed to ``wrap(channel,
        release)``; the channel slot is released once, when what ``wrap`` made is closed or collected."""
        where = f"{self.target.host}:{self.target.port}"
        if not self._channels.acquire(timeout=self.target.connect_timeout):
            raise SSHTimeout(f"no free channel on {where} within {self.target.connect_timeout:g}s")
        release = _Once(self._channels.release)
        try:
            for attempt in (1, 2):
                transport = self._ensure_transport()
                try:
                    channel = transport.open_session(timeout=self.target.connect_timeout)
                except paramiko.ChannelException as e:
                    raise SSHChannelError(f"{where} refused a channel: {e}") from None
                except (paramiko.SSHException, EOFError, OSError) as e:
                    self._discard(transport)
                    if attempt == 1:
                        continue
                    raise SSHChannelError(f"cannot open a channel on {where}: {e}") from None
                try:
                    channel.invoke_subsystem(subsystem)
                    handle = wrap(channel, release)
                except (paramiko.SSHException, EOFError, OSError) as e:
                    channel.close()
                    raise SSHChannelError(f"{subsystem} subsystem on {where} failed: {e}") from None
                weakref.finalize(handle, release)
                return handle
            raise AssertionError("unreachable")
        except BaseException:
            release()
            raise

class _Once:
    """Calls a function at most once (a semaphore slot is released exactly once)."""

    def __init__(self, fn):
        self._fn = fn
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._fn()


class ChannelStream:
    """A paramiko channel as the byte stream :class:`hpc.ssh.sftp.SFTPSession` speaks over."""

    def __init__(self, channel: paramiko.Channel, timeout: float, release: Callable[[], None]):
        self._channel = channel
        self._release = release
        self.on_close: Callable[[], None] | None = None
        channel.settimeout(timeout)

    def send(self, parts) -> None:
        for part in parts:
            view = memoryview(part).cast("B")
            while len(view):
                # Channel.send takes any buffer and sends what the window allows, without copying the rest.
                sent = self._channel.send(view)
                if sent <= 0:
                    raise EOFError()
                view = view[sent:]

    def recv_into(self, buffer: memoryview) -> int:
        data = self._channel.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._channel.close()
        finally:
            self._release()
            if self.on_close is not None:
                self.on_close()


class _PooledSFTPClient(paramiko.SFTPClient):
    """SFTP client whose close() also frees its slot of the connection's channel cap."""

    def __init__(self, channel: paramiko.Channel, release: _Once):
        self._release_slot = release
        super().__init__(channel)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release_slot()


class SSHPool:
    """Keeps one SSHConnection per key (infrastructure name)."""

    def __init__(self, data_engine: str = "auto", io_timeout: float = 60.0, command_timeout: float = 60.0) -> None:
        self._lock = threading.Lock()
        self._connections: dict[str, SSHConnection] = {}
        self._files: dict[str, tuple[SSHConnection, Any]] = {}  # key -> (pooled connection, its ClusterFiles)
        self.data_engine = data_engine
        self.io_timeout = io_timeout
        self.command_timeout = command_timeout

    def get(self, key: str, target: SSHTarget) -> SSHConnection:
        """Return the connection of ``key``, replacing it if the target changed.

        Connections are made lazily: the first command connects.

        Args:
            key: The infrastructure name.
            target: Where it connects; a target that differs in any field
                (including passphrase or host key) closes the old connection.
        """
        stale = None
        with self._lock:
            conn = self._connections.get(key)
            if conn is not None and conn.target == target:
                return conn
            stale = conn
            conn = SSHConnection(target)
            self._connections[key] = conn
        if stale is not None:
            stale.close()
        return conn

    def files(self, key: str, target: SSHTarget, view: Callable[[SSHConnection], Any] | None = None,
              on_connection: Callable[[], None] | None = None):
        """The :class:`~hpc.ssh.files.ClusterFiles` over the connection of ``key`` (kept with it).

        ``view`` wraps the connection the files use for commands and sessions (the service's metered view
        of it); the pooled connection is what decides whether the kept files are still current.
        ``on_connection`` is called for each ``ssh`` process the OpenSSH data engine starts.
        """
        from hpc.ssh.files import ClusterFiles

        conn = self.get(key, target)
        with self._lock:
            pooled, files = self._files.get(key, (None, None))
            if files is not None and pooled is conn:
                return files
            stale = files
            files = ClusterFiles(view(conn) if view else conn, self.data_engine, self.io_timeout,
                                 self.command_timeout, on_connection)
            self._files[key] = (conn, files)
        if stale is not None:
            stale.close()
        return files

    def retire(self, key: str, grace: float) -> None:
        """Forget the connection of ``key`` at once (the next :meth:`get` opens a new one) and close it in
        the background once the commands and SFTP sessions using it have ended, or after ``grace`` seconds:
        what runs when an infrastructure's connection changes is not cut off."""
        with self._lock:
            conn = self._connections.pop(key, None)
            _, files = self._files.pop(key, (None, None))
        if files is not None:
            files.close()  # its idle data sessions were opened with the old settings; those in use run on
        if conn is not None:
            threading.Thread(target=conn.retire, args=(grace,), name=f"ssh-retire-{key}", daemon=True).start()

    def drop(self, key: str) -> None:
        """Close and forget the connection of ``key`` (no error if absent)."""
        with self._lock:
            conn = self._connections.pop(key, None)
            _, files = self._files.pop(key, (None, None))
        if files is not None:
            files.close()
        if conn is not None:
            conn.close()

    def close_all(self) -> None:
        """Close and forget every connection."""
        with self._lock:
            conns = list(self._connections.values())
            files = [item for _, item in self._files.values()]
            self._connections.clear()
            self._files.clear()
        for item in files + conns:
            item.close()

    def stats(self) -> dict:
        """Counters per key: ``{key: {"connections_opened", "commands_run", "alive",
        "data_connections_opened"}}``; the last counts the connections its files opened for data beside
        the pooled one (ssh processes of the OpenSSH engine, dedicated connections for big files)."""
        with self._lock:
            items = list(self._connections.items())
            files = {key: item for key, (_, item) in self._files.items()}
        return {
            key: {
                "connections_opened": conn.connections_opened,
                "commands_run": conn.commands_run,
                "alive": conn.is_alive(),
                "data_connections_opened": files[key].connections_opened if key in files else 0,
            }
            for key, conn in items
        }


def probe(target: SSHTarget, timeout: float | None = None) -> str:
    """Check that a target works: connect afresh, run ``true``, close.

    Args:
        target: The target to check.
        timeout: Overrides ``connect_timeout`` and bounds the command too.

    Returns:
        The server host key ``"type base64"`` (to pin it after trust on first use).

    Raises:
        SSHError: Any error of :meth:`SSHConnection.connect` or :meth:`SSHConnection.run`,
            or ``true`` failing (a restricted shell or forced command).
    """
    if timeout is not None:
        target = dataclasses.replace(target, connect_timeout=timeout)
    conn = SSHConnection(target)
    try:
        conn.connect()
        result = conn.run("true", timeout=target.connect_timeout)
        if result.exit_code != 0:
            raise SSHError(
                f"'true' exited {result.exit_code} on {target.host}:{target.port}: {result.stderr.strip()[:200]}"
            )
        return conn.host_key
    finally:
        conn.close()


def _feed(channel: paramiko.Channel, data: bytes, deadline: float, stop: threading.Event) -> None:
    """Write stdin, then EOF; stops quietly when the command stops reading or run() ends."""
    offset = 0
    try:
        while offset < len(data):
            if stop.is_set() or getattr(channel, "_hpc_server_closed", False):
                return
            try:
                # send(), not sendall(): the channel timeout (_POLL_SECONDS)
                # also bounds the wait for send window, and sendall() loses
                # count of what went out when it raises.
                sent = channel.send(data[offset : offset + _WRITE_CHUNK])
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return
                continue
            if sent == 0:
                return
            offset += sent
        channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException) as e:
        # The command exited or the channel was closed (timeout) before
        # reading all of its input, like a broken pipe locally.
        log.debug("stdin not fully delivered (%d of %d bytes): %s", offset, len(data), e)


def _on_server_close(channel: paramiko.Channel, message: paramiko.Message) -> None:
    """Handle the server's CLOSE of a command channel without answering it yet.

    paramiko answers a CLOSE from its transport thread at once, while another
    thread may hold an EOF, data or window-adjust message that it built under
    the channel lock but has not sent yet; that message then follows our
    CLOSE, and OpenSSH drops the whole connection ("ieof packet referred to
    nonexistent channel"; paramiko issues 1115 and 1705, open in 5.1.0, seen
    here with 20 threads running short commands). For the channels run()
    opens, the CLOSE only ends reading here; run() sends ours from
    _close_channel once its own threads are done sending.
    """
    with channel.lock:
        defer = getattr(channel, "_hpc_defer_close", False) and not channel.closed
        if defer:
            channel._hpc_server_closed = True
            channel.in_buffer.close()
            channel.in_stderr_buffer.close()
            channel.out_buffer_cv.notify_all()
            channel.event.set()
            channel.status_event.set()
    if not defer:
        paramiko.Channel._handle_close(channel, message)


def _close_channel(channel: paramiko.Channel) -> None:
    """Send EOF (if not sent) and CLOSE; forget the channel if the server closed it first."""
    with channel.lock:
        messages = channel._close_internal()
        if getattr(channel, "_hpc_server_closed", False):
            channel.transport._unlink_channel(channel.chanid)
    try:
        for m in messages:
            if m is not None:
                channel.transport._send_user_message(m)
    except (OSError, EOFError, paramiko.SSHException):
        # The transport is gone: there is nothing left to close.
        pass


def _collect(channel: paramiko.Channel, deadline: float, max_output: int) -> tuple[bytes, bytes, bool, bool]:
    """Read stdout and stderr until EOF or the deadline, keeping at most max_output bytes of each.

    stderr is read by a helper thread while this thread reads stdout: a stream
    nobody reads stops refilling its SSH window and stalls the command.
    (Waiting on both with select() on ``channel.fileno()`` loses wakeups:
    paramiko's OR-pipe of the two streams is not locked; seen here as a 60 s
    hang of 6 MB on each stream, paramiko 5.1.0.)

    Returns:
        stdout, stderr, whether either was cut, and whether both reached EOF.
    """
    stderr_result: list[tuple[bytes, bool, bool]] = []
    reader = threading.Thread(
        target=lambda: stderr_result.append(_read_stream(channel.recv_stderr, deadline, max_output)),
        name="ssh-stderr",
        daemon=True,
    )
    reader.start()
    out, out_cut, out_done = _read_stream(channel.recv, deadline, max_output)
    reader.join(max(0.0, deadline - time.monotonic()) + 2 * _POLL_SECONDS)
    err, err_cut, err_done = stderr_result[0] if stderr_result else (b"", False, False)
    return out, err, out_cut or err_cut, out_done and err_done


def _read_stream(recv, deadline: float, limit: int) -> tuple[bytes, bool, bool]:
    """Read one stream until EOF (True) or the deadline (False), keeping limit bytes."""
    buffer = bytearray()
    cut = False
    while True:
        try:
            data = recv(_READ_CHUNK)
        except TimeoutError:
            if time.monotonic() >= deadline:
                return bytes(buffer), cut, False
            continue
        except (OSError, EOFError, paramiko.SSHException):
            # The transport died; run() tells it from a normal end by the exit status.
            return bytes(buffer), cut, True
        if not data:
            return bytes(buffer), cut, True
        cut |= _append(buffer, data, limit)


def _append(buffer: bytearray, data: bytes, limit: int) -> bool:
    room = limit - len(buffer)
    if len(data) <= room:
        buffer += data
        return False
    if room > 0:
        buffer += data[:room]
    return True


def _command_timeout(word: str, timeout: float, where: str) -> SSHTimeout:
    return SSHTimeout(f"{word!r} on {where} timed out after {timeout:g}s")


def _first_word(command: str) -> str:
    parts = command.split(None, 1)
    word = parts[0] if parts else ""
    # "VAR=value cmd": the value may be a secret.
    if "=" in word:
        word = word.split("=", 1)[0] + "=..."
    return word[:64]


def _cipher_order(available: tuple[str, ...]) -> tuple[str, ...]:
    first = tuple(c for c in PREFERRED_CIPHERS if c in available)
    return first + tuple(c for c in available if c not in first)


def _is_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, socket.timeout) or "timeout" in text or "timed out" in text


def _local_user() -> str:
    # OpenSSH's default when no user is given.
    return getpass.getuser()
