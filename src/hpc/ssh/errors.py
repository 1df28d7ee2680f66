"""Errors raised by the SSH layer.

Every error carries a short human-readable ``reason``; none of them ever
carries key material or a passphrase.
"""

from __future__ import annotations

from hpc.transport import TransportError


class SSHError(TransportError):
    """Base of every SSH-layer error (a :class:`~hpc.transport.TransportError`).

    Attributes:
        reason: What went wrong, in words fit for an API error body.
        retryable: Whether trying again later may succeed (False for refused keys and host keys).
    """

    def __init__(self, reason: str):
        super().__init__(reason)


class SSHUnreachable(SSHError):
    """The server could not be reached: refused, no route, DNS, handshake failed."""


class SSHTimeout(SSHError):
    """Connecting, opening a channel or running a command took too long."""


class SSHAuthFailed(SSHError):
    """The server refused the private key."""

    retryable = False


class SSHHostKeyMismatch(SSHError):
    """The server presented a host key other than the known one.

    Attributes:
        expected: SHA256 fingerprint(s) of the known key(s), comma separated.
        got: SHA256 fingerprint of the key the server presented.
        host_key: The presented key as "type base64".
    """

    retryable = False

    def __init__(self, reason: str, *, expected: str = "", got: str = "", host_key: str = ""):
        super().__init__(reason)
        self.expected = expected
        self.got = got
        self.host_key = host_key


class SSHHostKeyUnknown(SSHError):
    """No key is known for the server and trust on first use is off.

    Attributes:
        got: SHA256 fingerprint of the key the server presented.
        host_key: The presented key as "type base64", for an operator to pin.
    """

    retryable = False

    def __init__(self, reason: str, *, got: str = "", host_key: str = ""):
        super().__init__(reason)
        self.got = got
        self.host_key = host_key


class SSHKeyError(SSHError):
    """The client private key cannot be used: missing, unreadable, not a key, passphrase."""

    retryable = False


class SSHChannelError(SSHError):
    """A channel could not be opened, or the session dropped mid-command."""
