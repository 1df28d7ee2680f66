"""Server host keys: parsing, fingerprints and the expected keys of a target."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os

import paramiko

from hpc.ssh.errors import SSHError

log = logging.getLogger(__name__)

# Host-key algorithms to offer first when a key of this type is known, so the
# server presents the key we can check (as OpenSSH orders HostKeyAlgorithms).
_ALGORITHMS_FOR_TYPE = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
}


def host_key_name(host: str, port: int) -> str:
    """Name of a host in known_hosts: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH SHA256 fingerprint of a public key, e.g. ``SHA256:abc...``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def key_line(key: paramiko.PKey) -> str:
    """A public key as ``"type base64"``, the form a target pins."""
    return f"{key.get_name()} {key.get_base64()}"


def parse_host_key(text: str) -> paramiko.PKey:
    """Parse a pinned host key.

    Args:
        text: ``"type base64"``, as in a ``.pub`` file; a whole known_hosts line
            (hosts first) and a trailing comment are accepted too.

    Returns:
        The public key.

    Raises:
        ValueError: The text is not a public key of a supported type.
    """
    parts = text.split()
    if len(parts) < 2:
        raise ValueError('expected "type base64"')
    try:
        return _parse_key(parts[0], parts[1])
    except ValueError:
        if len(parts) < 3:
            raise
        # A pasted known_hosts line: "host[,host...] type base64".
        try:
            return _parse_key(parts[1], parts[2])
        except ValueError:
            pass
        raise


def _parse_key(key_type: str, b64: str) -> paramiko.PKey:
    try:
        blob = base64.b64decode(b64, validate=True)
        key = paramiko.PKey.from_type_string(key_type, blob)
    except (binascii.Error, paramiko.SSHException, ValueError) as e:
        raise ValueError(f"not a valid {key_type} public key: {e}") from None
    if key.get_name() != key_type:
        raise ValueError(f"key type {key_type} does not match its data ({key.get_name()})")
    return key


def expected_host_keys(
    host: str, port: int, host_key: str | None, known_hosts: str | None
) -> tuple[paramiko.HostKeys, str]:
    """Collect the keys a server of a target may present.

    Args:
        host: Server host name or address.
        port: Server port.
        host_key: A pinned key; it takes precedence over ``known_hosts``.
        known_hosts: Path of an OpenSSH known_hosts file.

    Returns:
        The keys, filed under :func:`host_key_name`, and a short description of
        where they came from (for error messages).

    Raises:
        SSHError: The pinned key is malformed or the known_hosts file cannot be read.
    """
    name = host_key_name(host, port)
    keys = paramiko.HostKeys()
    if host_key:
        try:
            pinned = parse_host_key(host_key)
        except ValueError as e:
            raise SSHError(f"pinned host key is not valid: {e}") from None
        keys.add(name, pinned.get_name(), pinned)
        return keys, "pinned host key"
    if known_hosts:
        path = os.path.expanduser(known_hosts)
        try:
            loaded = paramiko.HostKeys(path)
        except FileNotFoundError:
            # Like OpenSSH: a missing file knows no host; the error names it.
            log.warning("known_hosts file %s not found", path)
            return keys, f"known_hosts {known_hosts} (file not found)"
        except (OSError, paramiko.SSHException, ValueError) as e:
            raise SSHError(f"known_hosts {known_hosts} unreadable: {e}") from None
        # OpenSSH files port-22 hosts without brackets; accept "[host]:22" too.
        for candidate in {name, f"[{host}]:{port}"}:
            entry = loaded.lookup(candidate)
            if entry:
                for key_type, key in entry.items():
                    keys.add(name, key_type, key)
        return keys, f"known_hosts {known_hosts}"
    return keys, "no known_hosts or pinned key"


def preferred_key_types(known: list[paramiko.PKey], available: tuple[str, ...]) -> tuple[str, ...]:
    """Order host-key algorithms so the known key types come first."""
    first: list[str] = []
    for key in known:
        for alg in _ALGORITHMS_FOR_TYPE.get(key.get_name(), (key.get_name(),)):
            if alg in available and alg not in first:
                first.append(alg)
    return tuple(first) + tuple(a for a in available if a not in first)
