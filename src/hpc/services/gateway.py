"""The gateway: every service wired to one store, one secret box and one SSH pool."""

from __future__ import annotations

import logging
import threading

from hpc.config import Config
from hpc.security import SecretBox
from hpc.services.audit import AuditLog
from hpc.services.events import EventService
from hpc.services.files import FileService
from hpc.services.health import StoreProbe
from hpc.services.infrastructures import InfrastructureService
from hpc.services.job_staging import JobStaging
from hpc.services.jobs import JobService
from hpc.services.jobs import TERMINAL as TERMINAL_JOB_STATES
from hpc.services.oidc import OidcVerifier
from hpc.services.templates import TemplateService
from hpc.services.tokens import Authenticator, TokenService
from hpc.services.transfers import TERMINAL as TERMINAL_TRANSFER_STATES
from hpc.services.transfers import TransferService
from hpc.services.webhooks import WebhookService
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
        self.templates = TemplateService(self.store)
        self.jobs = JobService(config, self.store, self.infrastructures, self.templates)
        self.transfers = TransferService(config, self.store, self.secrets, self.infrastructures)
        self.jobs.staging = JobStaging(self.store, self.secrets, self.transfers, wake=self.jobs.wake)
        self.events = EventService(self.store)
        self.webhooks = WebhookService(config, self.store, self.secrets)
        self.event_hub = None  # the SSE fan-out, set by hpc.api.sse when the stream layer is mounted
        self.audit = AuditLog(self.store)
        self.files = FileService(config, self.store, self.infrastructures, self.audit)
        self.tokens = TokenService(self.store, self.audit)
        # The one check of every request's bearer credential (configured, API-made, OpenID Connect).
        self.authenticate = Authenticator(config, self.tokens, OidcVerifier.from_config(config))
        self.store_probe = StoreProbe(self.store, config.ready_timeout)  # /health/ready
        self._stop = threading.Event()

    def active_work(self, infrastructure: str) -> tuple[int, int]:
        """Counts of unfinished jobs and transfers on an infrastructure."""
        return (
            self.store.jobs.count_active(infrastructure, TERMINAL_JOB_STATES),
            self.store.transfers.count_active(infrastructure, TERMINAL_TRANSFER_STATES),
        )

    def events_stats(self) -> dict:
        """This process's SSE streams and webhook deliveries (for /stats)."""
        return {"sse": self.event_hub.stats() if self.event_hub else {}, "webhooks": self.webhooks.stats()}

    def start(self) -> None:
        """Starts the background workers (job pollers, transfer workers) if configured."""
        if not self.config.background:
            log.info("background work disabled: this process only serves the API")
            return
        self.jobs.start(self._stop)
        self.transfers.start(self._stop)
        self.webhooks.start(self._stop)

    def stop(self) -> None:
        self._stop.set()
        self.jobs.join(timeout=10)
        self.transfers.join(timeout=10)
        self.webhooks.join(timeout=10)
        self.pool.close_all()
        self.store.close()
