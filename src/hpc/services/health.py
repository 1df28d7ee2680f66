"""Readiness of a gateway process: its store answers, and its background workers are alive.

``/health/live`` needs nothing from here (the process answering is the whole check); ``/health/ready``
asks :func:`readiness`. The store is pinged in a thread of its own with a deadline, so a store that hangs
(a network partition) makes the probe answer "not ready" in bounded time instead of hanging it; while
one ping hangs no second one is started.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """The verdict: ``ready`` when every check passed; ``checks`` says, per part, ``ok`` or what is wrong."""

    ready: bool
    checks: dict[str, str] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        return [f"{name}: {state}" for name, state in self.checks.items() if state != "ok"]


def worker_counts(gateway) -> dict[str, tuple[int, int]]:
    """Per background worker kind: (threads alive, threads expected). Expected is 0 when the process
    runs no background work (``background: false``) or before it started."""
    return {"job_scheduler": gateway.jobs.workers(), "transfer": gateway.transfers.workers()}


def judge(store_state: str, workers: dict[str, tuple[int, int]]) -> Readiness:
    """The verdict from the store's state (``ok`` or what is wrong) and the worker counts (pure)."""
    checks = {"store": store_state}
    for name, (alive, expected) in workers.items():
        if expected == 0:
            checks[name] = "ok"
        elif alive < expected:
            checks[name] = f"{expected - alive} of {expected} thread(s) not running"
        else:
            checks[name] = "ok"
    return Readiness(all(state == "ok" for state in checks.values()), checks)


class StoreProbe:
    """Pings the store with a deadline, one ping at a time."""

    def __init__(self, store, timeout: float):
        self.store = store
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending: threading.Thread | None = None

    def check(self) -> str:
        with self._lock:
            if self._pending is not None and self._pending.is_alive():
                return f"unreachable: an earlier check has waited more than {self.timeout:g}s for it"
            outcome: dict[str, str] = {}

            def ping() -> None:
                try:
                    self.store.ping()
                    outcome["state"] = "ok"
                except Exception as exc:  # the class only: a driver's message may name hosts or users
                    log.warning("readiness: the store does not answer: %s", exc)
                    outcome["state"] = f"unreachable: {type(exc).__name__}"

            thread = threading.Thread(target=ping, name="ready-store-ping", daemon=True)
            self._pending = thread
            thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            return f"unreachable: no answer within {self.timeout:g}s"
        return outcome.get("state", "unreachable")


def readiness(gateway, probe: StoreProbe) -> Readiness:
    return judge(probe.check(), worker_counts(gateway))
