"""The one shell-quoting helper of the gateway (no dependency: schedulers and staging import it).

Every value that reaches a remote shell goes through :func:`quote` exactly
once; its result is never wrapped in quotes again.
"""

from __future__ import annotations

import shlex


def quote(value: object) -> str:
    """Quote one value for a POSIX shell.

    Args:
        value: Anything; it is converted with ``str()`` first.

    Returns:
        ``shlex.quote(str(value))``: a single shell word that expands to the value.

    Raises:
        ValueError: The value contains a NUL byte, which no shell word can carry
            (bash silently drops it, so the remote side would see another value).
    """
    text = str(value)
    if "\x00" in text:
        raise ValueError("a shell argument cannot contain a NUL byte")
    return shlex.quote(text)


def join(*args: object) -> str:
    """Build a command line from argv, quoting every argument.

    Args:
        *args: The program and its arguments.

    Returns:
        The arguments quoted with :func:`quote` and joined by single spaces.
    """
    return " ".join(quote(a) for a in args)
