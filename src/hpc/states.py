"""The one definition of "ended" for jobs, shared by the schedulers, the services and the client.

Dependency-free on purpose: the client (``hpc.client``) needs only ``requests`` and must not import the
scheduler adapters or the SSH layer to know when to stop waiting.
"""

#: Job states after which nothing changes any more. ``unknown`` is one of them: the job left the
#: scheduler's queue without an exit code, and nothing will tell more later.
JOB_ENDED_STATES = frozenset({"completed", "failed", "cancelled", "timeout", "unknown"})


def job_has_ended(state: str | None) -> bool:
    """Whether a job in ``state`` (a ``JobState`` or its string) has ended for good."""
    return str(getattr(state, "value", state)) in JOB_ENDED_STATES
