"""Leases left behind by gateway processes of this host that are no longer running.

Work is claimed from the store with leases named after the replica (``<host>:<pid>`` by default, or
``<host>:<pid>/<worker>``). When a replica dies, its leases would block that work until they run out;
a process of the same host can tell the holder is gone and take the work back at once. A pid reused by
an unrelated process only delays that to the lease's end.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable


def alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_local_owners(owners: Iterable[str]) -> list[str]:
    """The replicas (``<host>:<pid>``) among lease holders that ran on this host and are gone."""
    host = os.uname().nodename
    dead = set()
    for owner in owners:
        match = re.fullmatch(rf"{re.escape(host)}:(\d+)(?:/\d+)?", owner or "")
        if match and not alive(int(match.group(1))):
            dead.add(f"{host}:{match.group(1)}")
    return sorted(dead)
