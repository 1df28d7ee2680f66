"""SSH access to infrastructures: connections, host keys, commands, and the cluster's files.

Everything on the wire to a cluster goes through this package; what leaves it are plain types
(:mod:`hpc.transport`). It depends on nothing else in ``hpc`` but those two dependency-free modules:
api -> services -> {schedulers, staging, ssh, store}.
"""

from hpc.ssh.client import (
    PREFERRED_CIPHERS,
    SSHConnection,
    SSHPool,
    SSHTarget,
    probe,
)
from hpc.ssh.errors import (
    SSHAuthFailed,
    SSHChannelError,
    SSHError,
    SSHHostKeyMismatch,
    SSHHostKeyUnknown,
    SSHKeyError,
    SSHTimeout,
    SSHUnreachable,
)
from hpc.ssh.files import ENGINES, ClusterFiles
from hpc.ssh.hostkeys import fingerprint, host_key_name, parse_host_key
from hpc.ssh.keys import load_private_key
from hpc.shell import join, quote
from hpc.transport import CommandResult

__all__ = [
    "ENGINES",
    "PREFERRED_CIPHERS",
    "ClusterFiles",
    "CommandResult",
    "SSHAuthFailed",
    "SSHChannelError",
    "SSHConnection",
    "SSHError",
    "SSHHostKeyMismatch",
    "SSHHostKeyUnknown",
    "SSHKeyError",
    "SSHPool",
    "SSHTarget",
    "SSHTimeout",
    "SSHUnreachable",
    "fingerprint",
    "host_key_name",
    "join",
    "load_private_key",
    "parse_host_key",
    "probe",
    "quote",
]
