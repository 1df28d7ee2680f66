"""Prometheus metrics of one gateway process, and the hooks the services call to feed them.

Several gateway processes (replicas) share one store, so the metrics come in two kinds:

- **per process** (``hpc_http_*``, ``hpc_ssh_*``, ``hpc_job_*``, ``hpc_transfer_*``, ``hpc_staging_*``,
  ``hpc_webhook_*``, ``hpc_auth_*``, ``process_*``): what *this* process did since it started. Each replica
  is scraped on its own address (never through the load balancer), Prometheus labels each series with
  the scrape target's ``instance``, and ``sum without (instance)`` adds the replicas up;
- **store-derived** (``hpc_store_*``): counts read from the shared store when the scrape happens, so every
  replica reports the same values; aggregate them with ``max without (instance)``, never ``sum``.

prometheus-client's multiprocess mode was not used: it is meant for worker processes forked on one host
that share a directory of memory-mapped files, whereas replicas are separate processes, possibly on
separate hosts, each with its own endpoint; and what replicas share (jobs and transfers by state) is
in the store already, so reading it there at scrape time is exact without summing anything.

Label values are bounded: operation ids of the contract (or ``unmatched``), HTTP methods and statuses,
registered infrastructure names (admin-controlled, at most 128 characters of ``[A-Za-z0-9._-]``), and
fixed enumerations (job and transfer states and kinds, failure kinds). Never a job or transfer id, a
URL, a path, a token or any value a request supplies.

Hooks for other layers (each a plain function, cheap, never raising):

- jobs: :func:`job_submission`, :func:`job_poll`, :func:`job_command`, :func:`job_ended`;
- transfers: :func:`transfer_moved`, :func:`transfer_ended`;
- SSH: :func:`metered` wraps an ``SSHConnection`` (commands, durations, connections opened, failures by
  kind);
- webhooks (events layer): :func:`webhook_delivery` per delivery attempt, and :func:`register_collector`
  for gauges read at scrape time (for example deliveries waiting in the store);
- authentication: :func:`auth_failed`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.process_collector import ProcessCollector

from hpc import __version__
from hpc.services.health import worker_counts

log = logging.getLogger(__name__)

# The ``*_created`` series (a timestamp per counter child) would double the scrape for nothing Prometheus
# needs: counter resets are detected without them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=REGISTRY)

# The classic text format every Prometheus reads (all names here are plain [a-z_] names).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_REMOTE = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# -- requests ------------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "hpc_http_requests", "HTTP requests answered, by operation (the contract's operationId), method and status.",
    ["operation", "method", "status"], registry=REGISTRY)
HTTP_DURATION = Histogram(
    "hpc_http_request_duration_seconds", "Time from a request's arrival to the end of its answer.",
    ["operation", "method"], buckets=_FAST, registry=REGISTRY)
AUTH_FAILURES = Counter(
    "hpc_auth_failures", "Requests refused with 401 for a bad credential, by reason.", ["reason"],
    registry=REGISTRY)

# -- jobs ----------------------------------------------------------------------------------------------

JOB_SUBMISSIONS = Counter(
    "hpc_job_submissions", "Job submission attempts, by outcome (submitted, retry, failed, cancelled).",
    ["infrastructure", "outcome"], registry=REGISTRY)
JOB_SUBMISSION_DURATION = Histogram(
    "hpc_job_submission_duration_seconds", "Time of one submission attempt (files written, submit command).",
    ["infrastructure"], buckets=_REMOTE, registry=REGISTRY)
JOB_POLLS = Counter(
    "hpc_job_polls", "Tracking rounds that sent a status command, by outcome (ok, failed).",
    ["infrastructure", "outcome"], registry=REGISTRY)
JOB_POLL_DURATION = Histogram(
    "hpc_job_poll_duration_seconds", "Time of one tracking round (status command, exit codes, updates).",
    ["infrastructure"], buckets=_REMOTE, registry=REGISTRY)
JOB_COMMANDS = Counter(
    "hpc_job_scheduler_commands", "Scheduler commands sent by the job tracker, by kind "
    "(status, submit, cancel, exit_codes).", ["infrastructure", "kind"], registry=REGISTRY)
JOBS_ENDED = Counter(
    "hpc_jobs_ended", "Jobs this process moved to a final state, by that state.", ["infrastructure", "state"],
    registry=REGISTRY)

# -- transfers -----------------------------------------------------------------------------------------

TRANSFER_BYTES = Counter(
    "hpc_transfer_bytes", "Bytes moved by the transfers this process ran.", ["infrastructure", "kind"],
    registry=REGISTRY)
TRANSFERS_ENDED = Counter(
    "hpc_transfers_ended", "Transfers this process ended, by final state.", ["infrastructure", "kind", "state"],
    registry=REGISTRY)

# -- SSH -----------------------------------------------------------------------------------------------

SSH_CONNECTIONS = Counter(
    "hpc_ssh_connections_opened", "SSH connections opened (transports; ssh processes of the data engine).",
    ["infrastructure"], registry=REGISTRY)
SSH_COMMANDS = Counter(
    "hpc_ssh_commands", "Remote commands run over SSH.", ["infrastructure"], registry=REGISTRY)
SSH_COMMAND_DURATION = Histogram(
    "hpc_ssh_command_duration_seconds", "Time of one remote command, waiting for a channel included.",
    ["infrastructure"], buckets=_REMOTE, registry=REGISTRY)
SSH_FAILURES = Counter(
    "hpc_ssh_failures", "SSH failures, by kind (unreachable, timeout, auth_failed, host_key_mismatch, "
    "host_key_unknown, key_error, channel_error, other).", ["infrastructure", "kind"], registry=REGISTRY)

# -- webhooks ------------------------------------------------------------------------------------------

WEBHOOK_OUTCOMES = ("delivered", "timeout", "connection", "http_4xx", "http_5xx", "refused_address", "other")
WEBHOOK_DELIVERIES = Counter(
    "hpc_webhook_deliveries", "Webhook delivery attempts, by outcome (delivered, or the kind of failure).",
    ["outcome"], registry=REGISTRY)
WEBHOOK_DURATION = Histogram(
    "hpc_webhook_delivery_duration_seconds", "Time of one webhook delivery attempt.", buckets=_FAST,
    registry=REGISTRY)


def _safe(hook: Callable) -> Callable:
    """A metrics hook never breaks the work it observes."""

    def guarded(*args, **kwargs):
        try:
            hook(*args, **kwargs)
        except Exception:  # pragma: no cover - a bug here must not fail a job or a transfer
            log.exception("metrics hook %s failed", hook.__name__)

    guarded.__name__ = hook.__name__
    guarded.__doc__ = hook.__doc__
    return guarded


@_safe
def job_submission(infrastructure: str, outcome: str, seconds: float) -> None:
    """One submission attempt ended: ``outcome`` is the job's state after it; ``submitting`` (to be tried
    again) counts as ``retry``, ``failed`` and ``cancelled`` as themselves, any later state as ``submitted``
    (the tracker may have moved the job on already)."""
    outcome = "retry" if outcome == "submitting" else outcome if outcome in ("failed", "cancelled") else "submitted"
    JOB_SUBMISSIONS.labels(infrastructure, outcome).inc()
    JOB_SUBMISSION_DURATION.labels(infrastructure).observe(seconds)


@_safe
def job_poll(infrastructure: str, failed: bool, seconds: float) -> None:
    JOB_POLLS.labels(infrastructure, "failed" if failed else "ok").inc()
    JOB_POLL_DURATION.labels(infrastructure).observe(seconds)


@_safe
def job_command(infrastructure: str, kind: str) -> None:
    JOB_COMMANDS.labels(infrastructure, kind).inc()


@_safe
def job_ended(infrastructure: str, state: str) -> None:
    JOBS_ENDED.labels(infrastructure, state).inc()


@_safe
def transfer_moved(infrastructure: str, kind: str, nbytes: int) -> None:
    if nbytes > 0:
        TRANSFER_BYTES.labels(infrastructure, kind).inc(nbytes)


@_safe
def transfer_ended(infrastructure: str, kind: str, state: str) -> None:
    TRANSFERS_ENDED.labels(infrastructure, kind, state).inc()


@_safe
def webhook_delivery(outcome: str, seconds: float | None = None) -> None:
    """One webhook delivery attempt: ``delivered``, or a failure kind of :data:`WEBHOOK_OUTCOMES` (anything
    else is counted as ``other``). Never pass a URL, a subscription id or a status text."""
    WEBHOOK_DELIVERIES.labels(outcome if outcome in WEBHOOK_OUTCOMES else "other").inc()
    if seconds is not None:
        WEBHOOK_DURATION.observe(seconds)


@_safe
def auth_failed(kind: str) -> None:
    AUTH_FAILURES.labels(kind).inc()


# -- SSH: a metered connection --------------------------------------------------------------------------

_SSH_KINDS = {
    "SSHUnreachable": "unreachable",
    "SSHTimeout": "timeout",
    "SSHAuthFailed": "auth_failed",
    "SSHHostKeyMismatch": "host_key_mismatch",
    "SSHHostKeyUnknown": "host_key_unknown",
    "SSHKeyError": "key_error",
    "SSHChannelError": "channel_error",
}


def ssh_failure_kind(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        if cls.__name__ in _SSH_KINDS:
            return _SSH_KINDS[cls.__name__]
    return "other"


@_safe
def ssh_connection_opened(infrastructure: str) -> None:
    """An SSH connection opened outside a metered connection (an ``ssh`` process of the OpenSSH data
    engine)."""
    SSH_CONNECTIONS.labels(infrastructure).inc()


class MeteredConnection:
    """An ``hpc.ssh.SSHConnection`` seen through the metrics: every command (count, duration, failure),
    SFTP session opened on it (failure), and connection the wrapped object opened (read from its public
    ``connections_opened`` counter after each call). Everything else is passed through unchanged."""

    def __init__(self, connection, infrastructure: str):
        self._connection = connection
        self._infrastructure = infrastructure
        self._seen = connection.connections_opened
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __repr__(self) -> str:
        return repr(self._connection)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self._connection.close()

    def _opened(self) -> None:
        with self._lock:
            now = self._connection.connections_opened
            new, self._seen = now - self._seen, now
        if new > 0:
            SSH_CONNECTIONS.labels(self._infrastructure).inc(new)

    def _failed(self, exc: BaseException) -> None:
        SSH_FAILURES.labels(self._infrastructure, ssh_failure_kind(exc)).inc()

    def connect(self) -> None:
        try:
            self._connection.connect()
        except Exception as exc:
            self._failed(exc)
            raise
        finally:
            self._opened()

    def run(self, command: str, **kwargs: Any):
        started = time.monotonic()
        try:
            return self._connection.run(command, **kwargs)
        except Exception as exc:
            self._failed(exc)
            raise
        finally:
            SSH_COMMANDS.labels(self._infrastructure).inc()
            SSH_COMMAND_DURATION.labels(self._infrastructure).observe(time.monotonic() - started)
            self._opened()

    def open_sftp(self):
        try:
            return self._connection.open_sftp()
        except Exception as exc:
            self._failed(exc)
            raise
        finally:
            self._opened()

    def open_stream(self, *args: Any, **kwargs: Any):
        try:
            return self._connection.open_stream(*args, **kwargs)
        except Exception as exc:
            self._failed(exc)
            raise
        finally:
            self._opened()

    def open_dedicated(self) -> MeteredConnection:
        try:
            other = self._connection.open_dedicated()
        except Exception as exc:
            self._failed(exc)
            raise
        # The dedicated connection connected before it was returned: count it here, then follow it.
        SSH_CONNECTIONS.labels(self._infrastructure).inc(other.connections_opened)
        return MeteredConnection(other, self._infrastructure)


_metered: weakref.WeakKeyDictionary[Any, MeteredConnection] = weakref.WeakKeyDictionary()
_metered_lock = threading.Lock()


def metered(connection, infrastructure: str) -> MeteredConnection:
    """The metered view of a (pooled) connection; one per connection, so no opening is counted twice."""
    with _metered_lock:
        view = _metered.get(connection)
        if view is None:
            view = _metered[connection] = MeteredConnection(connection, infrastructure)
        return view


# -- read at scrape time ---------------------------------------------------------------------------------

_extra: list[Callable[[], Iterable[Metric]]] = []


def register_collector(collect: Callable[[], Iterable[Metric]]) -> None:
    """Adds metric families computed at each scrape (e.g. webhook deliveries waiting in the store: a
    ``prometheus_client.core.GaugeMetricFamily`` named ``hpc_store_...`` when read from the store). The
    callable runs in the scraping thread; an exception drops its families from that scrape only."""
    _extra.append(collect)


class _ScrapeTime:
    """The metrics read when a scrape happens: the store's census, this process's staging spool and
    workers, and what the registered collectors add."""

    def __init__(self) -> None:
        self.gateway = None

    def collect(self) -> Iterable[Metric]:
        gateway = self.gateway
        if gateway is not None:
            yield from self._gateway(gateway)
        for collect in list(_extra):
            try:
                yield from list(collect())
            except Exception:
                log.exception("a registered metrics collector failed")

    @staticmethod
    def _gateway(gateway) -> Iterable[Metric]:
        info = GaugeMetricFamily("hpc_gateway_info", "This gateway process: version and replica name (1).",
                                 labels=["version", "instance_id"])
        info.add_metric([__version__, gateway.config.resolved_instance_id], 1)
        yield info
        quota = getattr(gateway.transfers, "quota", None)
        if quota is not None:
            yield GaugeMetricFamily("hpc_staging_spool_bytes", "Bytes the staging spools of this process "
                                    "hold or have reserved.", value=quota.used)
            yield GaugeMetricFamily("hpc_staging_spool_quota_bytes", "The staging quota of this process "
                                    "(staging_quota).", value=quota.limit)
        workers = GaugeMetricFamily("hpc_background_workers_alive", "Background threads of this process "
                                    "alive, by worker (job_scheduler, transfer).", labels=["worker"])
        expected = GaugeMetricFamily("hpc_background_workers_expected", "Background threads this process "
                                     "started, by worker (0 with background: false).", labels=["worker"])
        for name, (alive, started) in worker_counts(gateway).items():
            workers.add_metric([name], alive)
            expected.add_metric([name], started)
        yield workers
        yield expected
        started = time.monotonic()
        up = GaugeMetricFamily("hpc_store_up", "1 when the store answered this scrape's census, else 0.")
        try:
            jobs, transfers = gateway.store.census.count()
        except Exception as exc:
            log.warning("metrics: the store's census failed: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("hpc_store_census_seconds", "Time the store took to count jobs and transfers "
                                "for this scrape.", value=time.monotonic() - started)
        by_state = GaugeMetricFamily("hpc_store_jobs", "Jobs in the shared store, by infrastructure and state "
                                     "(the same on every replica: aggregate with max).",
                                     labels=["infrastructure", "state"])
        for infrastructure, state, count in jobs:
            by_state.add_metric([infrastructure, state], count)
        yield by_state
        transfer_states = GaugeMetricFamily("hpc_store_transfers", "Transfers in the shared store, by "
                                            "infrastructure, kind and state (aggregate with max).",
                                            labels=["infrastructure", "kind", "state"])
        rate = GaugeMetricFamily("hpc_store_transfer_rate_bytes_per_second", "Current rate of the running "
                                 "transfers (sum of their last measured rates; aggregate with max).",
                                 labels=["infrastructure", "kind"])
        rates: dict[tuple[str, str], float] = {}
        for infrastructure, kind, state, count, rate_sum in transfers:
            transfer_states.add_metric([infrastructure, kind, state], count)
            if state in ("transferring", "verifying") or rate_sum:
                key = (infrastructure, kind)
                rates[key] = rates.get(key, 0.0) + float(rate_sum or 0.0)
        for (infrastructure, kind), value in sorted(rates.items()):
            rate.add_metric([infrastructure, kind], value)
        yield transfer_states
        yield rate


_SCRAPE_TIME = _ScrapeTime()
REGISTRY.register(_SCRAPE_TIME)


def bind(gateway) -> None:
    """Makes the scrape-time metrics read this gateway (its store, spool and workers)."""
    _SCRAPE_TIME.gateway = gateway


def exposition() -> bytes:
    """Every metric of this process in the Prometheus text format."""
    return generate_latest(REGISTRY)


def serve(host: str, port: int):
    """Serves the metrics alone, without a token, on ``host:port`` (a daemon thread); returns the server."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    log.info("metrics served on http://%s:%d/metrics", host, port)
    return server
