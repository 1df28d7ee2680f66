"""Secrets at rest (Fernet), API tokens (salted hashes) and who is calling (principals).

API tokens are random 256-bit strings made by :func:`new_token`, not passwords a person picks, so one
salted SHA-256 is as strong as a slow KDF here and keeps token checks cheap on the request path.
Only the hash is configured (or stored, for tokens made through the API); the token itself is shown
once, to whoever made it.

Whatever checks a bearer credential (configured tokens here, API-made tokens and OpenID Connect JWTs in
``hpc.services.tokens``) is an :data:`Authenticate` callable: it returns the :class:`Principal` or raises
:class:`AuthenticationFailed` with a reason fit for the ``WWW-Authenticate`` header.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from cryptography.fernet import Fernet, InvalidToken

from hpc.config import TokenEntry

_HASH_SCHEME = "sha256"


@dataclass(frozen=True)
class Principal:
    """Who is calling.

    Attributes:
        name: The stable name resources belong to (their ``owner``): a token's name (configured or made
            through the API; a rotated token keeps its name), or ``oidc:`` + the JWT's subject claim.
        role: ``admin`` or ``user``.
        credential: Which credential proved it, recorded beside ``owner`` on what the caller makes (jobs,
            transfers, and any later resource, e.g. templates): ``token:<id>`` for an API-made token (the
            id ``DELETE /token/{id}`` revokes), ``config`` for a configured token, ``oidc`` for a JWT,
            ``none`` with authentication off.
    """

    name: str
    role: str
    credential: str = "config"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS_ADMIN = Principal("anonymous", "admin", "none")


class AuthenticationFailed(Exception):
    """A bearer credential was refused.

    Attributes:
        reason: Why, in fixed words without any part of the credential (it goes into the 401's
            ``WWW-Authenticate: Bearer error_description`` and its detail).
        kind: A short fixed code for the ``hpc_auth_failures_total`` metric (``unknown``, ``expired``...).
    """

    def __init__(self, reason: str, kind: str = "invalid"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


Authenticate = Callable[[str], Principal]


def new_token() -> str:
    """A fresh random API token (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str, salt: str | None = None) -> str:
    """The configurable form of a token: ``sha256$<salt>$<hex digest of salt + token>``."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.sha256(f"{salt}{token}".encode()).hexdigest()
    return f"{_HASH_SCHEME}${salt}${digest}"


def token_matches(token: str, hashed: str) -> bool:
    """Whether ``token`` is the one ``hashed`` (made by :func:`hash_token`) was made from; constant-time."""
    try:
        scheme, salt, digest = hashed.split("$", 2)
    except ValueError:
        return False
    if scheme != _HASH_SCHEME:
        return False
    candidate = hashlib.sha256(f"{salt}{token}".encode()).hexdigest()
    return hmac.compare_digest(candidate, digest)


def verify_token(token: str, entries: Iterable[TokenEntry]) -> Principal | None:
    """The principal whose configured hash matches ``token``, or None. Constant-time per entry."""
    found = None
    for entry in entries:
        if token_matches(token, entry.hash) and found is None:
            found = Principal(entry.name, entry.role, "config")
    return found


def configured_tokens(entries: Iterable[TokenEntry]) -> Authenticate:
    """An :data:`Authenticate` for the configured tokens alone. They are fixed for the life of the
    process, so each distinct token is checked once (up to 1024 remembered)."""
    entries = tuple(entries)

    @functools.lru_cache(maxsize=1024)
    def check(token: str) -> Principal | None:
        return verify_token(token, entries)

    def authenticate(token: str) -> Principal:
        principal = check(token)
        if principal is None:
            raise AuthenticationFailed("the token is not valid", "unknown")
        return principal

    return authenticate


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
