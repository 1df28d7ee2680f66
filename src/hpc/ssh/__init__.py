"""SSH access to infrastructures: quoting, connections, host keys, errors.

Depends on nothing else in ``hpc``: api -> services -> {schedulers, staging, ssh, store}.
"""

from hpc.ssh.client import (
    PREFERRED_CIPHERS,
    SFTP_REQUEST_SIZE,
    CommandResult,
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
from hpc.ssh.hostkeys import fingerprint, host_key_name, parse_host_key
from hpc.ssh.keys import load_private_key
from hpc.ssh.quoting import join, quote

__all__ = [
    "PREFERRED_CIPHERS",
    "SFTP_REQUEST_SIZE",
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
