"""Readers of the text formats printed by PBS commands (Torque, PBS Pro/OpenPBS, the Slurm Torque
wrapper): ``qstat -f`` text and ``-F json``, ``pbsnodes -a``, ``qstat -Q`` and the ``qstat`` job list."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from hpc.schedulers.base import SchedulerParseError

log = logging.getLogger(__name__)


def parse_blocks(text: str, jobs: bool = True) -> dict[str, dict[str, str]]:
    """``qstat -f`` (``jobs``) or ``pbsnodes -a`` text to ``{id: {attribute: value}}``.

    Blocks start with an unindented line (``Job Id: 8``, TAB after the colon in the Torque wrapper, a
    space in PBS Pro; or a node name); attributes are indented ``key = value``; continuation lines (PBS
    Pro indents them with a TAB) are joined to the previous value.
    """
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    key = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            if jobs and not line.startswith("Job Id:"):
                current = None
                continue
            current = blocks.setdefault(line.split(":", 1)[1].strip() if jobs else line.strip(), {})
            key = None
        elif current is not None and " = " in line:
            key, value = line.strip().split(" = ", 1)
            current[key] = value
        elif current is not None and key is not None:
            current[key] += line.strip()
    return blocks


def parse_jobs(stdout: str) -> dict[str, dict]:
    """``qstat -f`` output, text or PBS Pro ``-F json`` (``{"Jobs": {id: {attribute: value}}}``)."""
    text = (stdout or "").strip()
    if text.startswith("{"):
        try:
            jobs = json.loads(text)["Jobs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SchedulerParseError(f"qstat -F json output unusable: {exc}") from None
        if not isinstance(jobs, dict):
            raise SchedulerParseError("qstat -F json output has no job table")
        return jobs
    jobs = parse_blocks(text)
    if text and not jobs:
        raise SchedulerParseError(f"qstat -f output not in the expected format: {text[:200]!r}")
    return jobs


def requested_id(printed: str, ids: Sequence[str]) -> str | None:
    """The requested id for a printed one: exact, else the only requested id with the same number
    (qsub may print ``8.server`` while qstat shows ``8.server.domain``)."""
    if printed in ids:
        return printed
    same = [i for i in ids if i.split(".")[0] == printed.split(".")[0]]
    return same[0] if len(same) == 1 else None


def _int(value: object, where: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        log.warning("pbsnodes: %s has unparsable cpu count %r", where, value)
        return 0


def node_cpus(node: str, attrs: dict[str, str]) -> tuple[int, int]:
    """``(cpus, cpus in use)`` of a node: PBS Pro ``resources_available/assigned.ncpus``, Torque ``np``
    and ``jobs = 0-1/12.srv,3/13.srv`` (one core or core range per entry)."""
    cpus = _int(attrs.get("resources_available.ncpus", attrs.get("np")), node)
    if "resources_assigned.ncpus" in attrs:
        return cpus, _int(attrs["resources_assigned.ncpus"], node)
    used = 0
    for entry in filter(None, (e.strip() for e in attrs.get("jobs", "").split(","))):
        low, _, high = entry.split("/")[0].partition("-")
        used += int(high) - int(low) + 1 if high.isdigit() and low.isdigit() else 1
    return cpus, used


def queue_names(lines: Sequence[str]) -> list[str]:
    """Queue names from ``qstat -Q`` (header ``Queue ...`` and a dashed rule are skipped)."""
    names = [line.split()[0] for line in lines if line.split()]
    return [n for n in names if n != "Queue" and not n.startswith("-")]


def job_list_states(lines: Sequence[str]) -> list[tuple[str, str]]:
    """``(state, queue)`` per job of the plain ``qstat`` list, read from the right: the Name column may
    hold spaces, the last two columns are ``S`` and ``Queue``."""
    return [(f[-2], f[-1]) for f in (line.split() for line in lines) if len(f) >= 3 and len(f[-2]) == 1]
