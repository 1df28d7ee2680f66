"""Loading of client private keys (OpenSSH or PEM format; ed25519, RSA, ECDSA)."""

from __future__ import annotations

import io
import os

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hpc.ssh.errors import SSHKeyError

_OPENSSH_HEADER = b"-----BEGIN OPENSSH PRIVATE KEY-----"


def load_private_key(
    key_path: str | None = None,
    key_data: str | None = None,
    passphrase: str | None = None,
) -> paramiko.PKey:
    """Load a client private key from a file or from inline text.

    Args:
        key_path: Path of the private key file.
        key_data: The private key text itself (used when ``key_path`` is None).
        passphrase: Passphrase of an encrypted key; ignored for a plain key,
            as OpenSSH does.

    Returns:
        A paramiko key (``Ed25519Key``, ``RSAKey`` or ``ECDSAKey``).

    Raises:
        SSHKeyError: No key given, both given, file missing or unreadable, not a
            private key, unsupported type, passphrase missing or wrong.
    """
    return _to_paramiko(_load(key_path, key_data, passphrase))


def openssh_private_bytes(
    key_path: str | None = None,
    key_data: str | None = None,
    passphrase: str | None = None,
) -> bytes:
    """The private key, decrypted, in OpenSSH format: for a private ssh-agent, through a pipe only.

    The result is a secret: it must never be written to disk or logged.

    Raises:
        SSHKeyError: As :func:`load_private_key`.
    """
    return _load(key_path, key_data, passphrase).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def _load(key_path: str | None, key_data: str | None, passphrase: str | None):
    if key_path and key_data:
        raise SSHKeyError("give key_path or key_data, not both")
    if key_path:
        data = _read_key_file(key_path)
    elif key_data:
        data = key_data.encode("utf-8", errors="replace")
    else:
        raise SSHKeyError("no private key configured")

    if data.lstrip().startswith(_OPENSSH_HEADER):
        loader = serialization.load_ssh_private_key
    elif b"-----BEGIN " in data and b"PRIVATE KEY-----" in data:
        loader = serialization.load_pem_private_key
    else:
        raise SSHKeyError("not a private key")

    # Probing without a password is cheap for an encrypted key (it fails before
    # the KDF), and it is the only reliable way to tell "wrong passphrase" from
    # "not a key": both come back from cryptography as ValueError.
    try:
        private = loader(data, password=None)
    except TypeError:
        if not passphrase:
            raise SSHKeyError("key is encrypted: passphrase required") from None
        try:
            private = loader(data, password=passphrase.encode("utf-8"))
        except ValueError:
            raise SSHKeyError("wrong passphrase") from None
    except UnsupportedAlgorithm:
        raise SSHKeyError("unsupported private key type") from None
    except ValueError:
        raise SSHKeyError("not a private key") from None
    # `from None` everywhere: the chained cryptography exception could quote the data.
    if not isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise SSHKeyError(f"unsupported private key type: {type(private).__name__}")
    return private


def _read_key_file(key_path: str) -> bytes:
    path = os.path.expanduser(key_path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise SSHKeyError(f"key file not found: {key_path}") from None
    except IsADirectoryError:
        raise SSHKeyError(f"key file is a directory: {key_path}") from None
    except OSError as e:
        raise SSHKeyError(f"key file unreadable: {key_path}: {e.strerror}") from None


def _to_paramiko(private: object) -> paramiko.PKey:
    # Built from the already decrypted object, so the (slow, bcrypt) KDF of an
    # encrypted OpenSSH key runs once.
    if isinstance(private, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=private)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return paramiko.ECDSAKey(vals=(private, private.public_key()))
    if isinstance(private, ed25519.Ed25519PrivateKey):
        # paramiko's Ed25519Key only reads the OpenSSH container, so a PKCS#8
        # ed25519 key is re-wrapped, unencrypted, in memory only.
        text = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode("ascii")
        return paramiko.Ed25519Key.from_private_key(io.StringIO(text))
    raise SSHKeyError(f"unsupported private key type: {type(private).__name__}")
