"""The retry policy: which faults are tried again, how often, and how long to wait in between.

A fault is tried again when it is a :class:`~hpc.staging.errors.StagingError` whose ``retryable`` is
true (the classification happens where the fault is seen: by SFTP status code, errno, HTTP status or
S3 error code, see the sources and sinks). The wait doubles from ``retry_delay`` up to
``retry_delay_max``; after ``retries`` consecutive failures the transfer fails with the last fault as
its reason. The count starts again whenever the step made progress, so a long transfer survives any
number of separate outages but never loops on one. Everything else (a refusal, a missing file, a
destination that is a directory, a cancel) ends the transfer at once.
"""

from __future__ import annotations

import logging
from typing import Any
from collections.abc import Callable

from hpc.staging.control import Control
from hpc.staging.errors import Cancelled, StagingError, StartOver
from hpc.staging.report import ProgressCallback
from hpc.staging.settings import Settings

log = logging.getLogger(__name__)


class Retrier:
    """Counts the consecutive failures of one step and waits before its next try."""

    def __init__(self, settings: Settings, control: Control, report: ProgressCallback, what: str):
        self._settings = settings
        self._control = control
        self._report = report
        self._what = what
        self.failures = 0

    def failed(self, exc: BaseException, progressed: bool = False) -> None:
        """Sleeps before the next try, or raises when ``exc`` is final or the retries are spent."""
        self._control.check()
        if not isinstance(exc, StagingError) or isinstance(exc, (StartOver, Cancelled)) or not exc.retryable:
            raise exc
        if progressed:
            self.failures = 0
        self.failures += 1
        if self.failures > self._settings.retries:
            raise StagingError(f"{exc.reason} (gave up after {self._settings.retries} retries)")
        delay = min(self._settings.retry_delay * 2 ** (self.failures - 1), self._settings.retry_delay_max)
        log.warning("%s: %s; retry %d/%d in %.1fs", self._what, exc.reason, self.failures, self._settings.retries,
                    delay)
        self._report(retried=1)
        self._control.sleep(delay)


def with_retries(settings: Settings, control: Control, report: ProgressCallback, what: str,
                 action: Callable[[], Any]) -> Any:
    """Runs ``action`` until it succeeds, retrying its retryable faults under the policy."""
    retrier = Retrier(settings, control, report, what)
    while True:
        try:
            control.check()
            return action()
        except StagingError as exc:
            retrier.failed(exc)
