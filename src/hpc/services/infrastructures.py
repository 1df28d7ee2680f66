"""Registering clusters, reaching them over SSH, and reading their scheduler's view (telemetry)."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from hpc.config import Config
from hpc.errors import (
    ClusterRefused,
    ClusterTimeout,
    ClusterUnavailable,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
)
from hpc.schedulers import SchedulerCommandError, SchedulerParseError, get_scheduler
from hpc.security import Principal, SecretBox, fingerprint
from hpc.services import metrics
from hpc.ssh import (
    ClusterFiles,
    CommandResult,
    SSHAuthFailed,
    SSHConnection,
    SSHError,
    SSHHostKeyMismatch,
    SSHHostKeyUnknown,
    SSHKeyError,
    SSHPool,
    SSHTarget,
    SSHTimeout,
    SSHUnreachable,
    quote,
)
from hpc.staging.addresses import AddressPolicy, parse_networks
from hpc.staging.errors import SourceError, UnsafeAddress
from hpc.store import DuplicateKey, Store
from hpc.transport import TransportError
from hpc.store.tables import utcnow

log = logging.getLogger(__name__)

# The program each scheduler must offer on the login node, checked at registration. Grid Engine is
# told apart from the Torque/PBS commands of the same names by qconf, which only Grid Engine has.
_SCHEDULER_PROBE = {"slurm": "sbatch", "pbs": "qsub", "sge": "qconf"}


SETUP_FAILED = "hpc-gateway: the last of the infrastructure's command_setup_lines failed"


def with_command_setup(command: str, setup_lines: list[str] | tuple[str, ...] | None) -> str:
    """``command`` preceded by an infrastructure's ``command_setup_lines`` (trusted, verbatim).

    The setup's output is discarded so it cannot be read as the command's, and it reads no stdin (a
    submit command's script arrives there). When its last line fails the command is not run: another
    scheduler's program of the same name may be first on the PATH without it (Torque's qsub vs Grid
    Engine's on the testbed).
    """
    if not setup_lines:
        return command
    setup = "\n".join(setup_lines)
    return (f"{{\n{setup}\n}} >/dev/null 2>&1 </dev/null || "
            f"{{ echo {quote(SETUP_FAILED)} >&2; exit 127; }}\n{command}")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_host_name(host: str) -> str:
    """``host`` as given when it is an IP address or a DNS name (IDNA accepted), else InvalidInput.

    Checked before any lookup: a name such as ``a..b`` made the resolver raise UnicodeError (a 500).
    """
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host
    except ValueError:
        pass
    try:
        ascii_name = host.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        ascii_name = ""
    if not ascii_name or len(ascii_name) > 253 or not all(_LABEL.match(label) for label in ascii_name.split(".")):
        raise InvalidInput("host must be an IP address or a DNS name (labels of letters, digits and '-')", "host")
    return host


def check_settings(settings: dict[str, Any]) -> None:
    """The site settings that later reach every job's script, checked once at registration.

    ``mpi_launcher`` is split like a shell line (an unbalanced quote would break every SERRANO job);
    ``job_root`` and ``allowed_roots`` are paths, which a newline or another control character would
    cut or turn into a second command.
    """
    launcher = settings.get("mpi_launcher")
    if launcher is not None:
        if _CONTROL.search(launcher):
            raise InvalidInput("settings.mpi_launcher must not contain control characters", "settings.mpi_launcher")
        try:
            shlex.split(launcher)
        except ValueError as exc:
            raise InvalidInput(f"settings.mpi_launcher is not a valid shell command line: {exc}",
                               "settings.mpi_launcher") from None
    paths = [("job_root", settings.get("job_root"))]
    paths += [(f"allowed_roots.{i}", root) for i, root in enumerate(settings.get("allowed_roots") or ())]
    for field, value in paths:
        if value is not None and (_CONTROL.search(value) or not value.strip()):
            raise InvalidInput(f"settings.{field} must be a path without control characters", f"settings.{field}")


def ssh_failure(exc: TransportError, action: str) -> Exception:
    """The domain error for an SSH (or SFTP) failure on a registered infrastructure."""
    if isinstance(exc, SSHTimeout):
        return ClusterTimeout(f"{action}: {exc.reason}")
    return ClusterUnavailable(f"{action}: {exc.reason}")


class InfrastructureService:
    """Infrastructures: registration (checked over SSH), lookup, removal, telemetry, SSH access."""

    def __init__(self, config: Config, store: Store, secrets: SecretBox, pool: SSHPool, active_work):
        self.config = config
        self.store = store
        self.secrets = secrets
        self.pool = pool
        # Callable(name) -> (active jobs, active transfers); given by the gateway to avoid a cycle.
        self._active_work = active_work

    # -- registration -------------------------------------------------------------------------

    def register(self, request: Any, principal: Principal) -> dict[str, Any]:
        """Registers an infrastructure after connecting to it with the given key.

        Args:
            request: An ``hpc.api.models.Infrastructure``.
            principal: The caller; must be an admin.

        Raises:
            Forbidden, Conflict, InvalidInput, ClusterRefused, ClusterTimeout.
        """
        self._require_admin(principal)
        if self.store.infrastructures.get(request.name) is not None:
            raise Conflict(f"an infrastructure named {request.name!r} exists already", "name")
        settings = request.settings.model_dump(mode="json", exclude_none=True) if request.settings else {}
        check_settings(settings)
        self._check_address(check_host_name(request.host), request.port or 22)
        key = request.ssh_key
        if bool(key.path) == bool(key.private_key):
            raise InvalidInput("give exactly one of ssh_key.path and ssh_key.private_key", "ssh_key.path")
        key_path = self._checked_key_path(key.path) if key.path else None
        host_key = self._checked_host_key(request.host_key)
        target = self._target(
            host=request.host,
            port=request.port or 22,
            username=request.username,
            key_path=key_path,
            key_data=key.private_key,
            passphrase=key.password,
            host_key=host_key,
        )
        setup_lines = request.settings.command_setup_lines if request.settings else None
        seen_key = self._check_reachable(target, request.scheduler.value, [line.root for line in setup_lines or []])
        if host_key is None and target.trust_on_first_use:
            log.warning("infrastructure %s: trusting host key %s on first use", request.name, fingerprint(seen_key))
        # The key just verified (pinned, from known_hosts, or trusted on first use) is pinned on the
        # infrastructure, so its identity cannot change behind the gateway's back later.
        host_key = seen_key
        now = utcnow()
        try:
            row = self.store.infrastructures.insert(
                {
                    "name": request.name,
                    "host": request.host,
                    "port": request.port or 22,
                    "username": request.username,
                    "hostname": request.hostname,
                    "scheduler": request.scheduler.value,
                    "key_type": key.type.value if key.type else None,
                    "key_path": key_path,
                    "key_data_enc": self.secrets.encrypt(key.private_key),
                    "passphrase_enc": self.secrets.encrypt(key.password),
                    "host_key": host_key,
                    "settings": settings,
                    "owner": principal.name,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        except DuplicateKey:
            raise Conflict(f"an infrastructure named {request.name!r} exists already", "name") from None
        log.info("registered infrastructure %s (%s@%s:%s, %s)", row["name"], row["username"], row["host"],
                 row["port"], row["scheduler"])
        return row

    def update(self, name: str, request: Any, principal: Principal) -> dict[str, Any]:
        """Changes a registered infrastructure (admin), checked as at registration, all or nothing.

        When a connection field (host, port, username, ssh_key, host_key) is given, the new values are
        verified over a fresh SSH connection first (host key, login, the scheduler's command); only then
        is the row written, in one UPDATE, and the pooled connection dropped, so the next command (job
        tracking included) connects with the new values. A refusal leaves every old value in force.

        Args:
            request: An ``hpc.api.models.InfrastructurePatch``.

        Raises:
            Forbidden, NotFound, InvalidInput (a refused value, ``field`` naming it), ClusterRefused or
            ClusterTimeout (the new connection does not work).
        """
        self._require_admin(principal)
        row = self.get(name)
        given = request.model_fields_set
        changes: dict[str, Any] = {}
        if "settings" in given or "reset_settings" in given:
            settings = dict(row["settings"] or {})
            for key in request.reset_settings or ():
                settings.pop(key.value, None)
            if request.settings is not None:  # only the settings given: the contract's defaults would reset others
                settings.update(request.settings.model_dump(mode="json", exclude_unset=True, exclude_none=True))
            check_settings(settings)
            changes["settings"] = settings
        if request.hostname is not None:
            changes["hostname"] = request.hostname
        connection = {"host", "port", "username", "ssh_key", "host_key"} & given
        setup_lines = (changes.get("settings") or row["settings"] or {}).get("command_setup_lines") or []
        if connection or ("settings" in changes and setup_lines != ((row["settings"] or {}).get("command_setup_lines")
                                                                    or [])):
            # New connection values, or new lines run before every command: proven over SSH first.
            changes.update(self._new_connection(row, request, given, setup_lines))
        if not changes:
            return row
        if not self.store.infrastructures.update(name, **changes):
            raise NotFound(f"no infrastructure named {name!r}", "infrastructure")
        if connection:
            # The next command connects with the new values; those running on the old connection finish.
            self.pool.retire(name, grace=self.config.ssh_command_timeout)
        log.info("infrastructure %s changed by %s: %s", name, principal.name, ", ".join(sorted(
            key for key in changes if key not in ("key_data_enc", "passphrase_enc"))))
        return self.get(name)

    def _new_connection(self, row: dict[str, Any], request: Any, given: set[str],
                        setup_lines: list[str]) -> dict[str, Any]:
        """The connection columns for ``request``'s new values, after they worked over SSH."""
        host = request.host if request.host is not None else row["host"]
        port = request.port if request.port is not None else row["port"]
        username = request.username if request.username is not None else row["username"]
        if request.host is not None or request.port is not None:
            self._check_address(check_host_name(host), port)
        key_type, key_path = row["key_type"], row["key_path"]
        key_data, passphrase = self.secrets.decrypt(row["key_data_enc"]), self.secrets.decrypt(row["passphrase_enc"])
        key = request.ssh_key
        if key is not None:
            if key.path and key.private_key:
                raise InvalidInput("give at most one of ssh_key.path and ssh_key.private_key", "ssh_key.path")
            if not (key.path or key.private_key or key.password is not None):
                raise InvalidInput("ssh_key needs a path, a private_key, or a password for the current key",
                                   "ssh_key")
            if key.path or key.private_key:
                key_path = self._checked_key_path(key.path) if key.path else None
                key_data = key.private_key or None
            passphrase = key.password
            key_type = key.type.value if key.type else key_type
        host_key = self._checked_host_key(request.host_key) if "host_key" in given else row["host_key"]
        target = self._target(host=host, port=port, username=username, key_path=key_path, key_data=key_data,
                              passphrase=passphrase, host_key=host_key)
        seen_key = self._check_reachable(target, row["scheduler"], setup_lines)
        if host_key is None and target.trust_on_first_use:
            log.warning("infrastructure %s: trusting host key %s on first use", row["name"], fingerprint(seen_key))
        return {"host": host, "port": port, "username": username, "key_type": key_type, "key_path": key_path,
                "key_data_enc": self.secrets.encrypt(key_data), "passphrase_enc": self.secrets.encrypt(passphrase),
                "host_key": seen_key}

    @staticmethod
    def _checked_host_key(text: str | None) -> str | None:
        """A host key to pin, ``type base64`` (None for none or an empty one), refused unless it reads as one."""
        host_key = (text or "").strip() or None
        if host_key:
            try:
                fingerprint(host_key)
            except (IndexError, ValueError):
                raise InvalidInput("host_key must read like a known_hosts key: 'ssh-ed25519 AAAA...'",
                                   "host_key") from None
        return host_key

    def _check_address(self, host: str, port: int) -> None:
        """Every address ``host`` resolves to, checked before any connection is opened: the same policy
        as transfer sources (link-local and metadata addresses never; non-public ones only inside
        ``cluster_allow_networks``)."""
        policy = AddressPolicy(allow=parse_networks(self.config.cluster_allow_networks))
        try:
            policy.resolve(host, port)
        except UnsafeAddress as exc:
            raise InvalidInput(f"host: {exc}", "host") from None
        except SourceError as exc:
            raise ClusterRefused(f"the host cannot be reached over SSH: {exc}", "host") from None

    def _checked_key_path(self, path: str) -> str:
        """The key file's real path, refused unless it lies inside the configured key directory."""
        key_dir = self.config.resolved_key_dir.resolve()
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = key_dir / candidate
        real = Path(os.path.realpath(candidate))
        if real != key_dir and key_dir not in real.parents:
            raise InvalidInput(f"ssh_key.path must lie inside the key directory {key_dir}", "ssh_key.path")
        if not real.is_file():
            raise InvalidInput(f"key file not found: {path}", "ssh_key.path")
        return str(real)

    def _check_reachable(self, target: SSHTarget, scheduler: str, setup_lines: list[str]) -> str:
        """Connects, checks the scheduler's submit command exists; returns the host key seen."""
        connection = metrics.MeteredConnection(SSHConnection(target), "(registration)")
        try:
            connection.connect()
            program = _SCHEDULER_PROBE[scheduler]
            result = connection.run(with_command_setup(f"command -v {program}", setup_lines),
                                    timeout=self.config.ssh_command_timeout)
            if SETUP_FAILED in result.stderr:
                raise ClusterRefused("the host answers over SSH but the last of command_setup_lines failed",
                                     "settings.command_setup_lines")
            if result.exit_code != 0:
                raise ClusterRefused(
                    f"the host answers over SSH but has no '{program}' command for the {scheduler} scheduler",
                    "scheduler",
                )
            return connection.host_key
        except SSHKeyError as exc:
            field = "ssh_key.password" if "passphrase" in exc.reason else "ssh_key"
            raise InvalidInput(f"the SSH key cannot be used: {exc.reason}", field) from None
        except SSHAuthFailed as exc:
            raise ClusterRefused(f"the host refused the SSH key: {exc.reason}", "ssh_key") from None
        except SSHHostKeyMismatch as exc:
            raise ClusterRefused(
                f"host key mismatch: expected {exc.expected}, the host presented {exc.got}", "host_key"
            ) from None
        except SSHHostKeyUnknown as exc:
            raise ClusterRefused(
                f"the host key {exc.got} is not known: pin it in host_key ('{exc.host_key}') after checking "
                "it, add it to the gateway's known_hosts, or enable trust_on_first_use",
                "host_key",
            ) from None
        except SSHTimeout as exc:
            raise ClusterTimeout(f"the host did not answer in time: {exc.reason}", "host") from None
        except SSHUnreachable as exc:
            raise ClusterRefused(f"the host cannot be reached over SSH: {exc.reason}", "host") from None
        except SSHError as exc:
            raise ClusterRefused(f"SSH failed: {exc.reason}", "host") from None
        finally:
            connection.close()

    # -- lookup and removal -------------------------------------------------------------------

    def get(self, name: str) -> dict[str, Any]:
        row = self.store.infrastructures.get(name)
        if row is None:
            raise NotFound(f"no infrastructure named {name!r}", "infrastructure")
        return row

    def list(self) -> list[dict[str, Any]]:
        return self.store.infrastructures.list()

    def delete(self, name: str, principal: Principal) -> None:
        self._require_admin(principal)
        self.get(name)
        jobs, transfers = self._active_work(name)
        if jobs or transfers:
            raise Conflict(
                f"infrastructure {name!r} has {jobs} active job(s) and {transfers} active transfer(s): "
                "cancel them or wait until they end",
                "infrastructure_name",
            )
        self.store.infrastructures.delete(name)
        self.pool.drop(name)
        log.info("unregistered infrastructure %s", name)

    @staticmethod
    def _require_admin(principal: Principal) -> None:
        if not principal.is_admin:
            raise Forbidden("managing infrastructures requires the admin role")

    # -- SSH access ---------------------------------------------------------------------------

    def _target(self, *, host, port, username, key_path, key_data, passphrase, host_key) -> SSHTarget:
        known_hosts = self.config.resolved_known_hosts
        return SSHTarget(
            host=host,
            port=port,
            username=username,
            key_path=key_path,
            key_data=key_data,
            passphrase=passphrase,
            host_key=host_key,
            known_hosts=str(known_hosts) if known_hosts.is_file() else None,
            trust_on_first_use=self.config.trust_on_first_use and not host_key,
            connect_timeout=self.config.ssh_connect_timeout,
        )

    def target_of(self, row: dict[str, Any]) -> SSHTarget:
        """The SSH target of a stored infrastructure, secrets decrypted in memory only."""
        return self._target(
            host=row["host"],
            port=row["port"],
            username=row["username"],
            key_path=row["key_path"],
            key_data=self.secrets.decrypt(row["key_data_enc"]),
            passphrase=self.secrets.decrypt(row["passphrase_enc"]),
            host_key=row["host_key"],
        )

    def connection(self, row: dict[str, Any]) -> SSHConnection:
        """The pooled connection of an infrastructure (opened lazily, reused by every caller)."""
        return metrics.metered(self.pool.get(row["name"], self.target_of(row)), row["name"])

    @staticmethod
    def wire_command(row: dict[str, Any], command: str) -> str:
        """The command line :meth:`run` sends over SSH for ``command`` (a dry run shows it): the
        infrastructure's ``command_setup_lines`` first, when it has any."""
        return with_command_setup(command, (row["settings"] or {}).get("command_setup_lines"))

    def run(self, row: dict[str, Any], command: str, *, action: str, stdin: bytes | None = None,
            timeout: float | None = None) -> CommandResult:
        """Runs a command on the infrastructure; SSH faults become domain errors naming ``action``."""
        command = self.wire_command(row, command)
        try:
            return self.connection(row).run(command, stdin=stdin, timeout=timeout or self.config.ssh_command_timeout)
        except SSHError as exc:
            raise ssh_failure(exc, action) from None

    def cluster_files(self, row: dict[str, Any]) -> ClusterFiles:
        """The infrastructure's shell and files (:class:`hpc.transport.ClusterFiles`), kept with its connection."""
        name = row["name"]
        return self.pool.files(name, self.target_of(row), lambda conn: metrics.metered(conn, name),
                               lambda: metrics.ssh_connection_opened(name))

    @contextmanager
    def files(self, row: dict[str, Any], action: str) -> Iterator[ClusterFiles]:
        """The infrastructure's files; transport faults inside the block become domain errors naming ``action``."""
        try:
            yield self.cluster_files(row)
        except TransportError as exc:
            raise ssh_failure(exc, action) from None

    # -- telemetry ----------------------------------------------------------------------------

    def telemetry(self, name: str) -> tuple[dict[str, Any], list[Any]]:
        """The infrastructure and its partitions as the scheduler reports them now."""
        row = self.get(name)
        scheduler = get_scheduler(row["scheduler"])
        result = self.run(row, scheduler.telemetry_command(), action="reading telemetry")
        try:
            return row, scheduler.parse_telemetry(result.exit_code, result.stdout, result.stderr)
        except (SchedulerParseError, SchedulerCommandError) as exc:
            raise ClusterUnavailable(f"the {row['scheduler']} scheduler did not answer usefully: {exc}") from None
