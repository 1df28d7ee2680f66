"""Cancellation: stopping a running transfer from outside, and the threads of one try stopping together."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from collections.abc import Callable, Iterator

from hpc.staging.errors import Cancelled


class Halted(Cancelled):
    """A step stopped because another step of the same try failed (never a transfer's outcome)."""

    def __init__(self) -> None:
        super().__init__("halted")


def quietly(close: Callable[[], None]) -> None:
    """Calls ``close``, ignoring its errors (closing what may be broken already)."""
    try:
        close()
    except Exception:  # noqa: BLE001 - closing something already broken
        pass


class Control:
    """Stops a running transfer: records the reason and closes whatever is blocking.

    The service calls :meth:`stop` (a cancel, the gateway shutting down, a lost lease); the pipeline's
    threads call :meth:`check` between steps and register what blocks with :meth:`closing`.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._closers: dict[int, Callable[[], None]] = {}
        self._next = 0
        self.error: Cancelled | None = None

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def stop(self, error: Cancelled) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            self._event.set()
            closers = list(self._closers.values())
        for close in closers:
            quietly(close)

    def check(self) -> None:
        """Raises the stop reason if the transfer was stopped."""
        if self._event.is_set():
            raise self.error

    def sleep(self, seconds: float) -> None:
        """Sleeps, or raises the stop reason as soon as the transfer is stopped."""
        if self._event.wait(seconds):
            raise self.error

    @contextmanager
    def closing(self, close: Callable[[], None]) -> Iterator[None]:
        """Calls ``close`` if the transfer is stopped while the block runs (to wake a blocked read)."""
        with self._lock:
            key = self._next
            self._next += 1
            self._closers[key] = close
            stopped = self._event.is_set()
        try:
            if stopped:
                quietly(close)
                raise self.error
            yield
        finally:
            with self._lock:
                self._closers.pop(key, None)


class Group:
    """Threads of one try: the first error stops the others (their closers are called)."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []
        self.failed = threading.Event()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)
            closers = list(self._closers)
        self.failed.set()
        for close in closers:
            quietly(close)

    def add_closer(self, close: Callable[[], None]) -> None:
        with self._lock:
            self._closers.append(close)
        if self.failed.is_set():
            quietly(close)

    def first_cause(self, control: Control) -> BaseException:
        """The error that ended the try; the others are its consequences."""
        if control.stopped:
            return control.error
        for exc in self.errors:
            if not isinstance(exc, Halted):
                return exc
        return self.errors[0]

    def run(self, targets: list[Callable[[], None]], name: str) -> None:
        """Runs each target in a thread of its own, records their errors, and waits for all."""
        def guarded(target: Callable[[], None]) -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through first_cause
                self.fail(exc)

        threads = [threading.Thread(target=guarded, args=(t,), name=f"{name}-{i}", daemon=True)
                   for i, t in enumerate(targets)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
