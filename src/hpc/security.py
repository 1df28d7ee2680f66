"""Secrets at rest (Fernet) and API tokens (salted hashes).

API tokens are random 256-bit strings made by :func:`new_token`, not passwords a person picks, so one
salted SHA-256 is as strong as a slow KDF here and keeps token checks cheap on the request path.
Only the hash is configured; the token itself is shown once, to whoever made it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography.fernet import Fernet, InvalidToken

from hpc.config import TokenEntry

_HASH_SCHEME = "sha256"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a configured token's name and role."""

    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS_ADMIN = Principal("anonymous", "admin")


def new_token() -> str:
    """A fresh random API token (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str, salt: str | None = None) -> str:
    """The configurable form of a token: ``sha256$<salt>$<hex digest of salt + token>``."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.sha256(f"{salt}{token}".encode()).hexdigest()
    return f"{_HASH_SCHEME}${salt}${digest}"


def verify_token(token: str, entries: Iterable[TokenEntry]) -> Principal | None:
    """The principal whose configured hash matches ``token``, or None. Constant-time per entry."""
    found = None
    for entry in entries:
        try:
            scheme, salt, digest = entry.hash.split("$", 2)
        except ValueError:
            continue
        if scheme != _HASH_SCHEME:
            continue
        candidate = hashlib.sha256(f"{salt}{token}".encode()).hexdigest()
        if hmac.compare_digest(candidate, digest) and found is None:
            found = Principal(entry.name, entry.role)
    return found


class SecretBox:
    """Encrypts secrets (passphrases, inline keys, S3 keys) for the store with Fernet."""

    def __init__(self, key: bytes):
        self._fernet = Fernet(key)

    @classmethod
    def from_config(cls, key_text: str, key_file: Path) -> "SecretBox":
        """Uses ``key_text`` if given, else the key file, creating it (mode 0600) when missing."""
        if key_text:
            return cls(key_text.encode())
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key())
        return cls(key_file.read_bytes().strip())

    def encrypt(self, plain: str | None) -> str | None:
        if plain is None:
            return None
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str | None) -> str | None:
        if token is None:
            return None
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("a stored secret cannot be decrypted with the configured key") from None


def fingerprint(key_type_and_b64: str) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a public key given as ``type base64``."""
    blob = base64.b64decode(key_type_and_b64.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
