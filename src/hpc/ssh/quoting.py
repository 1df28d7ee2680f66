"""The shell-quoting helper, re-exported for callers of the SSH layer (it lives in :mod:`hpc.shell`)."""

from hpc.shell import join, quote

__all__ = ["join", "quote"]
