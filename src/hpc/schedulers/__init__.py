"""Scheduler adapters: pure builders of commands and batch scripts, and parsers of their output."""

from hpc.schedulers.arrays import ArraySpec, ArraySpecError, NativeDependency, parse_array
from hpc.schedulers.base import (
    CANCEL_REQUESTED,
    ENDED_STATES,
    ORDER,
    JobSpec,
    JobState,
    NativeStatus,
    Partition,
    Resources,
    Scheduler,
    SchedulerCommandError,
    SchedulerParseError,
    advance,
    final_state_from_exit_code,
    is_terminal,
)
from hpc.schedulers.pbs import PbsScheduler
from hpc.schedulers.sge import SgeScheduler
from hpc.schedulers.slurm import SlurmScheduler

# The registry: the HPCSchedulerType enum of openapi/openapi.yaml names these.
ADAPTERS: dict[str, type[Scheduler]] = {"slurm": SlurmScheduler, "pbs": PbsScheduler, "sge": SgeScheduler}


def get_scheduler(name: str, settings: dict | None = None) -> Scheduler:
    """Return the adapter called ``name``: ``"slurm"``, ``"pbs"`` or ``"sge"``, configured by the
    infrastructure's ``settings`` where it has options (PBS: ``pbs_flavour``)."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(ADAPTERS)}")
    if name == "pbs":
        return PbsScheduler((settings or {}).get("pbs_flavour") or "torque")
    return ADAPTERS[name]()


__all__ = [
    "ADAPTERS",
    "ArraySpec",
    "ArraySpecError",
    "NativeDependency",
    "parse_array",
    "CANCEL_REQUESTED",
    "ENDED_STATES",
    "ORDER",
    "JobSpec",
    "JobState",
    "NativeStatus",
    "Partition",
    "Resources",
    "Scheduler",
    "SchedulerCommandError",
    "SchedulerParseError",
    "advance",
    "final_state_from_exit_code",
    "get_scheduler",
    "is_terminal",
]
