"""Paths on the cluster: resolution against the user's home and confinement to the allowed roots.

As in the SERRANO contract, a transfer path is relative to the cluster user's home directory unless it
is absolute (``~/`` is accepted as a spelling of the home). The resolved path must lie strictly inside
one of the infrastructure's allowed roots (default: the home), so ``../../etc/x`` is refused.

This is a lexical check, made when the request arrives. At run time the pipeline repeats it on the
cluster's ``realpath`` of the parent directory, so a symbolic link inside a root cannot lead outside.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

# Longest file name most cluster file systems accept.
_NAME_MAX = 255


def _absolute(path: str, home: str) -> str:
    if path == "~":
        path = home
    elif path.startswith("~/"):
        path = f"{home}/{path[2:]}"
    elif path.startswith("~"):
        raise ValueError("~user paths are not supported: give the path relative to the home or absolute")
    elif not path.startswith("/"):
        path = f"{home}/{path}"
    normalized = posixpath.normpath(path)
    # POSIX keeps a leading "//" as implementation-defined; nothing here needs it.
    return "/" + normalized.lstrip("/")


def resolve_roots(roots: Sequence[str] | None, home: str) -> list[str]:
    """The allowed roots as absolute normalized paths (default: the home)."""
    return [_absolute(root, home) for root in (roots or [home]) if root]


def inside(path: str, root: str) -> bool:
    """Whether ``path`` lies strictly inside ``root`` (both absolute and normalized)."""
    if root == "/":
        return path != "/"
    return path.startswith(root + "/")


def resolve_remote_path(path: str, home: str, roots: Sequence[str] | None = None) -> str:
    """The absolute path a transfer's ``dst``/``src`` names, checked against the allowed roots.

    Args:
        path: As given by the user.
        home: The cluster user's home directory (absolute).
        roots: The infrastructure's ``allowed_roots`` (relative to home unless absolute); default home.

    Returns:
        The absolute, normalized path.

    Raises:
        ValueError: The path is empty, has control characters, names a directory, or lies outside
            every allowed root (a message says which).
    """
    if not path or not path.strip():
        raise ValueError("the path is empty")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise ValueError("the path must not contain control characters (newlines, tabs, NUL)")
    if path.endswith("/") or posixpath.basename(path) in (".", "..", "~"):
        raise ValueError("the path must name a file, not a directory")
    resolved = _absolute(path, home)
    allowed = resolve_roots(roots, home)
    if not any(inside(resolved, root) for root in allowed):
        raise ValueError(
            f"{path!r} resolves to {resolved}, outside the allowed directories ({', '.join(allowed)})"
        )
    if len(posixpath.basename(resolved).encode()) > _NAME_MAX - 20:
        raise ValueError(f"the file name is longer than {_NAME_MAX - 20} bytes")
    return resolved


def temp_path(path: str, transfer_id: str) -> str:
    """The hidden temporary name a file is written under, beside its final ``path``."""
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}.{transfer_id[:8]}.part")
