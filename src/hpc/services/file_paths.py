"""Paths of the files operations: pure checks, no SSH (``hpc.services.files`` runs them).

A path is resolved in two steps, both against the infrastructure's allowed roots:

1. :func:`lexical` when the request arrives: relative to the cluster user's home unless absolute (``~/``
   spells the home), normalized (``a/../b`` -> ``b``), refused if it leaves every root. Nothing has run
   on the cluster yet.
2. :func:`confined` on what the cluster's ``realpath`` answered for the path and for the roots themselves,
   so a symbolic link inside a root that leads out is refused too.

And :func:`owns`, the role policy's question: does a path lie in one of the caller's own job directories
or is it a file one of the caller's transfers wrote.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence

from hpc.errors import InvalidInput
from hpc.staging.paths import inside

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME_MAX = 255  # NAME_MAX and PATH_MAX of Linux file systems (less the NUL)
_PATH_MAX = 4095
_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def absolute(path: str, home: str) -> str:
    """``path`` as an absolute normalized path (relative ones from ``home``)."""
    if path == "~":
        path = home
    elif path.startswith("~/"):
        path = f"{home}/{path[2:]}"
    elif not path.startswith("/"):
        path = f"{home}/{path}"
    return "/" + posixpath.normpath(path).lstrip("/")


def within(path: str, roots: Iterable[str], allow_root: bool) -> bool:
    """Whether ``path`` lies inside one of ``roots`` (or is one, with ``allow_root``)."""
    return any(inside(path, root) or (allow_root and path == root) for root in roots)


def lexical(path: str, home: str, roots: Sequence[str], field: str, allow_root: bool = True) -> str:
    """The absolute path a request names, checked against the (absolute, normalized) roots.

    Raises:
        InvalidInput: Empty, a control character, ``~user``, or outside every root (``field`` named).
    """
    if not path or not path.strip():
        raise InvalidInput(f"{field} is empty", field)
    if _CONTROL.search(path):
        raise InvalidInput(f"{field} must not contain control characters (newlines, tabs, NUL)", field)
    if path.startswith("~") and path != "~" and not path.startswith("~/"):
        raise InvalidInput(f"{field}: ~user paths are not supported; give the path relative to the home or "
                           "absolute", field)
    resolved = absolute(path, home)
    if len(resolved.encode()) > _PATH_MAX or any(len(part.encode()) > _NAME_MAX for part in resolved.split("/")):
        raise InvalidInput(f"{field} is longer than the cluster accepts ({_NAME_MAX} bytes a name, {_PATH_MAX} "
                           "in all)", field)
    if not within(resolved, roots, allow_root):
        where = "is an allowed root itself" if resolved in roots else "lies outside the allowed directories"
        raise InvalidInput(f"{field} resolves to {resolved}, which {where} ({', '.join(roots)})", field)
    return resolved


def confined(real: str, real_roots: Sequence[str], field: str, allow_root: bool = True) -> str:
    """``real`` (the cluster's realpath of the path) if it is still inside a root's realpath.

    Raises:
        InvalidInput: A symbolic link led out of the roots (``field`` named).
    """
    if not within(real, real_roots, allow_root):
        raise InvalidInput(f"{field} leads to {real} once the cluster resolves its symbolic links, outside the "
                           f"allowed directories ({', '.join(real_roots)})", field)
    return real


def job_of(path: str, job_root: str) -> str | None:
    """The job id whose directory (``job_root/<id>``) holds ``path`` or is it, if any."""
    if not inside(path, job_root):
        return None
    first = path[len(job_root.rstrip("/")) + 1:].split("/", 1)[0]
    return first if _JOB_ID.match(first) else None


def owns(paths: Iterable[str], job_root: str, own_job: callable, own_files: Iterable[str]) -> bool:
    """Whether any spelling of a path (lexical, resolved) lies in a job directory of the caller
    (``own_job(job_id)``) or is a file the caller's transfers wrote (``own_files``)."""
    paths = list(paths)
    files = set(own_files)
    for path in paths:
        if path in files:
            return True
        job_id = job_of(path, job_root)
        if job_id is not None and own_job(job_id):
            return True
    return False
