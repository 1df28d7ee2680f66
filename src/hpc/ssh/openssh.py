"""The OpenSSH data path: SFTP sessions carried by ``ssh`` processes, keys held only in a private agent.

Bulk data costs a Python SSH implementation one core per ~200 MB/s (every 32 KiB packet built, encrypted
and sent from Python: ``docs/performance.md``). An ``ssh`` process does the same in C on another core,
so the gateway runs one per bulk SFTP session and speaks SFTP to it over a socketpair
(:mod:`hpc.ssh.sftp`). paramiko keeps the control path (commands), which checks the server's host key
first; this module then trusts exactly that key and nothing else:

- the host key: written (it is public) to a known_hosts file of its own under an alias, with
  ``StrictHostKeyChecking=yes``, ``HostKeyAlgorithms`` limited to its type, no global known_hosts,
  no user configuration (``-F /dev/null``), no host key updates;
- the private key: decrypted in memory and handed through a pipe (``ssh-add -``) to an ``ssh-agent``
  private to this gateway process (socket in a 0700 directory), never written to disk; ``ssh`` finds it
  there through its public half (``IdentityFile=<key>.pub``, ``IdentitiesOnly=yes``). The agent runs
  under a watchdog shell that stops it when the gateway's pipe to it closes, so even a gateway killed
  with SIGKILL leaves no agent (and no key) behind.

Each ``ssh`` process ends when its socket closes (end of file on its standard input).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization

from hpc.ssh.errors import SSHChannelError, SSHError
from hpc.ssh.sftp import SocketStream

log = logging.getLogger(__name__)

CIPHERS = ",".join((
    # AES-GCM first: 1.6-2x chacha20 with AES-NI (shared/PERFORMANCE-NOTES.md); the rest as OpenSSH orders them.
    "aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
    "aes128-ctr", "aes192-ctr", "aes256-ctr",
))
_HOST_KEY_ALGORITHMS = {"ssh-rsa": "rsa-sha2-512,rsa-sha2-256,ssh-rsa"}


def available() -> bool:
    """Whether the OpenSSH client programs this data path needs are installed."""
    return all(shutil.which(program) for program in ("ssh", "ssh-agent", "ssh-add"))


class PrivateAgent:
    """An ``ssh-agent`` of this process alone, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._process: subprocess.Popen | None = None
        self._directory: Path | None = None
        self._keys: set[str] = set()

    @property
    def directory(self) -> Path:
        self._ensure()
        assert self._directory is not None
        return self._directory

    @property
    def socket_path(self) -> Path:
        return self.directory / "agent.sock"

    def _ensure(self) -> None:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            self._keys.clear()
            directory = Path(tempfile.mkdtemp(prefix="hpcgw-ssh-"))
            os.chmod(directory, 0o700)
            sock = directory / "agent.sock"
            # The watchdog: `read` returns when the gateway's end of the pipe closes (exit or SIGKILL);
            # then the agent is stopped and its directory removed.
            script = ('ssh-agent -D -a "$1/agent.sock" >/dev/null 2>&1 & a=$!; '
                      'read -r _; kill "$a" 2>/dev/null; wait "$a"; rm -rf -- "$1"')
            process = subprocess.Popen(["sh", "-c", script, "sh", str(directory)], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
            deadline = time.monotonic() + 10
            while not sock.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    shutil.rmtree(directory, ignore_errors=True)
                    raise SSHChannelError("the private ssh-agent did not start")
                time.sleep(0.01)
            self._process, self._directory = process, directory
            log.debug("private ssh-agent started in %s", directory)

    def add(self, fingerprint: str, private_key: Callable[[], bytes]) -> Path:
        """Makes sure the agent holds the key (``private_key()`` is called only if it does not yet).

        Returns:
            The path of the key's public half (what ``IdentityFile`` names).
        """
        self._ensure()
        public = self.directory / (hashlib.sha256(fingerprint.encode()).hexdigest()[:16] + ".pub")
        with self._lock:
            if fingerprint in self._keys:
                return public
            secret = private_key()
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSH_AUTH_SOCK": str(self.socket_path)}
            result = subprocess.run(["ssh-add", "-q", "-"], input=secret, env=env, capture_output=True, timeout=30)
            if result.returncode != 0:
                raise SSHChannelError(f"the private ssh-agent refused the key (ssh-add exit {result.returncode})")
            public.write_text(_public_line(secret) + "\n")
            self._keys.add(fingerprint)
        return public

    def close(self) -> None:
        with self._lock:
            process, self._process = self._process, None
            self._keys.clear()
        if process is not None and process.poll() is None:
            try:
                process.stdin.close()
                process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()


_AGENT = PrivateAgent()
_FILES_LOCK = threading.Lock()


def agent() -> PrivateAgent:
    """The agent of this gateway process."""
    return _AGENT


class OpenSSHEngine:
    """Starts ``ssh -s sftp`` processes to one server, trusting one host key, with one client key.

    Args:
        host, port, username: Where to connect.
        host_key: The server key the control connection checked: ``"type base64"``.
        key_id: A stable identifier of the client key (its public fingerprint).
        private_key: Returns the decrypted private key in OpenSSH format (called once per agent).
        connect_timeout: Seconds for connecting and authenticating.
    """

    def __init__(self, host: str, port: int, username: str, host_key: str, key_id: str,
                 private_key: Callable[[], bytes], connect_timeout: float = 10.0):
        self.host, self.port, self.username = host, port, username
        self._host_key = host_key
        self._key_id = key_id
        self._private_key = private_key
        self._connect_timeout = connect_timeout
        self.where = f"{username}@{host}:{port}"
        key_type = host_key.split()[0]
        self._alias = "hpcgw-" + hashlib.sha256(f"{host}\0{port}\0{host_key}".encode()).hexdigest()[:16]
        self._algorithms = _HOST_KEY_ALGORITHMS.get(key_type, key_type)

    def _files(self) -> tuple[Path, Path, Path]:
        with _FILES_LOCK:  # sessions start from several threads; each file is written once, whole
            private = agent()
            public = private.add(self._key_id, self._private_key)
            known = private.directory / f"{self._alias}.known_hosts"
            if not known.exists():
                tmp = known.with_name(known.name + ".tmp")
                tmp.write_text(f"{self._alias} {self._host_key}\n")
                tmp.replace(known)
            return private.socket_path, public, known

    def command(self, *remote: str, subsystem: bool = False) -> list[str]:
        """The ``ssh`` command line for a remote command (or subsystem)."""
        sock, public, known = self._files()
        options = {
            "BatchMode": "yes", "IdentitiesOnly": "yes", "IdentityAgent": str(sock), "IdentityFile": str(public),
            "HostKeyAlias": self._alias, "UserKnownHostsFile": str(known), "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "yes", "UpdateHostKeys": "no", "CheckHostIP": "no",
            "HostKeyAlgorithms": self._algorithms, "Ciphers": CIPHERS,
            "ConnectTimeout": str(max(1, int(self._connect_timeout))),
            "ServerAliveInterval": "15", "ServerAliveCountMax": "4", "LogLevel": "ERROR",
            "ControlMaster": "no", "ControlPath": "none", "ProxyCommand": "none", "ProxyJump": "none",
            "PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no", "ForwardAgent": "no",
            "ClearAllForwardings": "yes", "EscapeChar": "none", "RequestTTY": "no",
        }
        argv = ["ssh", "-F", "/dev/null", "-T", "-x", "-a", "-p", str(self.port), "-l", self.username]
        for name, value in options.items():
            argv += ["-o", f"{name}={value}"]
        if subsystem:
            argv.append("-s")
        return argv + ["--", self.host, *remote]

    def open_stream(self, timeout: float) -> SocketStream:
        """A new ``ssh`` process running the sftp subsystem; its socket as a stream.

        Raises:
            SSHChannelError: ``ssh`` could not be started.
        """
        argv = self.command("sftp", subsystem=True)
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(argv, stdin=theirs, stdout=theirs, stderr=subprocess.PIPE,
                                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
                                       start_new_session=True)
        except OSError as exc:
            ours.close()
            raise SSHChannelError(f"cannot start ssh: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        watched = _Watched(process)
        return SocketStream(ours, timeout, on_close=watched.stop, process=watched)

    def failure(self, stream: SocketStream, error: BaseException) -> SSHError:
        """The error for a session that failed to start: ``ssh``'s own last words, if it has ended."""
        watched = stream.process
        detail = ""
        if isinstance(watched, _Watched) and watched.ended.wait(self._connect_timeout):
            detail = watched.last_words or f"ssh exited {watched.process.returncode}"
        return SSHChannelError(f"SFTP over OpenSSH to {self.where} failed: {detail or error}")


class _Watched:
    """An ``ssh`` process: its standard error kept (the last lines), its end awaited, stopped if need be."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.last_words = ""
        self.ended = threading.Event()
        threading.Thread(target=self._watch, name="ssh-watch", daemon=True).start()

    def _watch(self) -> None:
        lines: list[str] = []
        try:
            for raw in self.process.stderr:
                lines = (lines + [raw.decode("utf-8", "replace").strip()])[-5:]
        except (OSError, ValueError):
            pass
        self.process.wait()
        self.last_words = next((line for line in reversed(lines) if line), "")[:300]
        self.process.stderr.close()
        self.ended.set()

    def stop(self) -> None:
        """The socket was closed: ``ssh`` ends at end of input; stopped if it has not within 10 s."""
        def stop_late() -> None:
            if not self.ended.wait(10):
                self.process.kill()

        threading.Thread(target=stop_late, name="ssh-stop", daemon=True).start()


def _public_line(private_openssh: bytes) -> str:
    """``type base64`` of the public half of a private key in OpenSSH format."""
    private = serialization.load_ssh_private_key(private_openssh, password=None)
    return private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()
