"""Registering clusters, reaching them over SSH, and reading their scheduler's view (telemetry)."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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
)
from hpc.store import DuplicateKey, Store
from hpc.transport import TransportError
from hpc.store.tables import utcnow

log = logging.getLogger(__name__)

# The program each scheduler must offer on the login node, checked at registration.
_SCHEDULER_PROBE = {"slurm": "sbatch", "pbs": "qsub"}


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
        key = request.ssh_key
        if bool(key.path) == bool(key.private_key):
            raise InvalidInput("give exactly one of ssh_key.path and ssh_key.private_key", "ssh_key.path")
        key_path = self._checked_key_path(key.path) if key.path else None
        host_key = request.host_key.strip() if request.host_key else None
        if host_key:
            try:
                fingerprint(host_key)
            except (IndexError, ValueError):
                raise InvalidInput("host_key must read like a known_hosts key: 'ssh-ed25519 AAAA...'",
                                   "host_key") from None
        target = self._target(
            host=request.host,
            port=request.port or 22,
            username=request.username,
            key_path=key_path,
            key_data=key.private_key,
            passphrase=key.password,
            host_key=host_key,
        )
        seen_key = self._check_reachable(target, request.scheduler.value)
        if host_key is None and target.trust_on_first_use:
            log.warning("infrastructure %s: trusting host key %s on first use", request.name, fingerprint(seen_key))
        # The key just verified (pinned, from known_hosts, or trusted on first use) is pinned on the
        # infrastructure, so its identity cannot change behind the gateway's back later.
        host_key = seen_key
        now = utcnow()
        settings = request.settings.model_dump(mode="json", exclude_none=True) if request.settings else {}
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

    def _check_reachable(self, target: SSHTarget, scheduler: str) -> str:
        """Connects, checks the scheduler's submit command exists; returns the host key seen."""
        connection = SSHConnection(target)
        try:
            connection.connect()
            program = _SCHEDULER_PROBE[scheduler]
            result = connection.run(f"command -v {program}", timeout=self.config.ssh_command_timeout)
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
        return self.pool.get(row["name"], self.target_of(row))

    def run(self, row: dict[str, Any], command: str, *, action: str, stdin: bytes | None = None,
            timeout: float | None = None) -> CommandResult:
        """Runs a command on the infrastructure; SSH faults become domain errors naming ``action``."""
        try:
            return self.connection(row).run(command, stdin=stdin, timeout=timeout or self.config.ssh_command_timeout)
        except SSHError as exc:
            raise ssh_failure(exc, action) from None

    def cluster_files(self, row: dict[str, Any]) -> ClusterFiles:
        """The infrastructure's shell and files (:class:`hpc.transport.ClusterFiles`), kept with its connection."""
        return self.pool.files(row["name"], self.target_of(row))

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
