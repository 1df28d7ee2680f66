"""The gateway: every service wired to one store, one secret box and one SSH pool."""

from __future__ import annotations

import logging
import threading

from hpc.config import Config
from hpc.security import SecretBox
from hpc.services.infrastructures import InfrastructureService
from hpc.services.jobs import TERMINAL as TERMINAL_JOB_STATES
from hpc.services.jobs import JobService
from hpc.services.transfers import TERMINAL as TERMINAL_TRANSFER_STATES
from hpc.services.transfers import TransferService
from hpc.ssh import SSHPool
from hpc.store import Store, open_store

log = logging.getLogger(__name__)


class Gateway:
    """Owns the long-lived parts of one gateway process and starts its background work."""

    def __init__(self, config: Config, store: Store | None = None):
        self.config = config
        self.store = store or open_store(config.resolved_database_url)
        self.secrets = SecretBox.from_config(config.encryption_key, config.resolved_encryption_key_file)
        self.pool = SSHPool(config.ssh_data_engine, config.transfer_io_timeout, config.ssh_command_timeout)
        self.infrastructures = InfrastructureService(config, self.store, self.secrets, self.pool, self.active_work)
        self.jobs = JobService(config, self.store, self.infrastructures)
        self.transfers = TransferService(config, self.store, self.secrets, self.infrastructures)
        self._stop = threading.Event()

    def active_work(self, infrastructure: str) -> tuple[int, int]:
        """Counts of unfinished jobs and transfers on an infrastructure."""
        return (
            self.store.jobs.count_active(infrastructure, TERMINAL_JOB_STATES),
            self.store.transfers.count_active(infrastructure, TERMINAL_TRANSFER_STATES),
        )

    def start(self) -> None:
        """Starts the background workers (job pollers, transfer workers) if configured."""
        if not self.config.background:
            log.info("background work disabled: this process only serves the API")
            return
        self.jobs.start(self._stop)
        self.transfers.start(self._stop)

    def stop(self) -> None:
        self._stop.set()
        self.jobs.join(timeout=10)
        self.transfers.join(timeout=10)
        self.pool.close_all()
        self.store.close()
