"""Dependencies between jobs (``after``): who enforces each, and what the gateway does next. Pure.

A dependency is enforced by the scheduler (``native``) when the predecessor runs on the same
infrastructure and the scheduler has the condition (Slurm and PBS: ok, notok, any; Grid Engine: any);
otherwise by the gateway (``gateway``), which holds the dependant before submitting it. A job with any
dependency starts ``held``; :func:`decide` says, from the current states of its predecessors, whether it
stays held (and why), can go to the scheduler (every gateway dependency satisfied, every native
predecessor known to the scheduler by its id), or can never run (a predecessor ended in a way that can
never satisfy its condition: the dependant is cancelled, its reason naming that predecessor).

Kinds other than ``job`` (a transfer the job's inputs wait for) can be added as more rows of the same
table with their own check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from hpc.schedulers.arrays import condition_outcome

HELD = "held"
# Predecessor states in which it has no scheduler id yet.
NOT_SUBMITTED = frozenset({HELD, "submitting"})


def choose_mode(condition: str, same_infrastructure: bool, native_conditions: frozenset[str]) -> str:
    """``native`` when the scheduler can enforce it itself, else ``gateway``."""
    return "native" if same_infrastructure and condition in native_conditions else "gateway"


def unsatisfiable_reason(dep: Mapping[str, Any]) -> str:
    """The reason a dependant is cancelled for this dependency (names the predecessor)."""
    state = dep.get("target_state")
    if state is None:
        return f"dependency on job {dep['target_id']} (after {dep['condition']}) can never be satisfied: that job no longer exists"
    return (f"dependency on job {dep['target_id']} (after {dep['condition']}) can never be satisfied: "
            f"that job ended {state}")


def _waiting_for(dep: Mapping[str, Any]) -> str:
    state = dep.get("target_state")
    if dep["mode"] == "native":
        return f"job {dep['target_id']} to be submitted (after {dep['condition']}, enforced by the scheduler; it is {state})"
    return f"job {dep['target_id']} to end (after {dep['condition']}; it is {state})"


@dataclass
class Decision:
    """What to do with one job given its undecided dependencies."""

    satisfied: list[int] = field(default_factory=list)  # positions now satisfied
    unsatisfiable: Mapping[str, Any] | None = None  # the first dependency that can never hold
    release: bool = False  # a held job may go to the scheduler
    reason: str | None = None  # why a held job stays held


def decide(job_state: str, deps: Sequence[Mapping[str, Any]]) -> Decision:
    """Decide from a job's pending dependencies (rows of ``JobDependencyRepository.pending``)."""
    decision = Decision()
    waiting = []
    for dep in deps:
        if dep.get("state") == "satisfied":
            continue  # decided already
        state = dep.get("target_state")
        outcome = condition_outcome(dep["condition"], state) if state is not None else False
        if dep.get("state") == "unsatisfiable":
            outcome = False
        if outcome is True:
            decision.satisfied.append(dep["position"])
        elif outcome is False:
            decision.unsatisfiable = dep
            return decision
        else:
            waiting.append(dep)
    if job_state != HELD:
        return decision
    blocking = [d for d in waiting if d["mode"] != "native" or d.get("target_state") in NOT_SUBMITTED
                or not d.get("target_scheduler_id")]
    if blocking:
        decision.reason = "waiting for " + "; ".join(_waiting_for(d) for d in blocking)
    else:
        decision.release = True
    return decision
