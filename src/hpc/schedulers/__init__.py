"""Scheduler adapters: pure builders of commands and batch scripts, and parsers of their output."""

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
    get_scheduler,
    is_terminal,
)

__all__ = [
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
