"""How a running transfer tells the service where it is: one callback, called with what changed.

Keywords the pipeline passes (each call carries one or more):

- ``done`` (bytes delivered and acknowledged) and ``total`` (bytes in all, None while unknown);
- ``phase``: ``transferring`` or ``verifying``;
- ``checkpoint``: what a later run needs to resume (a JSON-able dict), each time it moves forward;
- ``retried``: 1 each time a step is tried again after a fault.

The callback runs on the pipeline's threads: it must be quick and must not raise.
"""

from __future__ import annotations

from typing import Any, Protocol


class ProgressCallback(Protocol):
    def __call__(self, **changes: Any) -> None: ...


def ignore(**changes: Any) -> None:
    """A callback that drops everything (for callers that do not follow progress)."""
