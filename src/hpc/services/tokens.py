"""Bearer tokens made through the API, and the one check every request's credential goes through.

**Tokens made through the API** (``POST /token``, admins only) read ``hpc_<id>_<secret>``: the id (32 hex
digits of a UUID) finds the row in one read, and the row holds only ``hash_token`` of the whole token,
so neither the database nor a backup holds a usable token. The token is shown once, in the 201. A token
has a name (the principal its work belongs to, as for configured tokens), a role and an optional expiry;
``DELETE /token/{id}`` revokes it.

**The check** (:class:`Authenticator`, an ``hpc.security.Authenticate``) takes, in order: configured
tokens (fixed for the life of the process, remembered per distinct token), API-made tokens, and, when
OpenID Connect is configured, JWTs (``hpc.services.oidc``).

**Revocation on every replica at once.** Verified API-made tokens and JWTs are remembered per process
(a token checked against the store on every poll would add a read to each request), together with
their expiry, which is checked on every use with the clock. A revocation bumps the ``api_tokens``
generation in the store in the same transaction; every process re-reads that generation when its last
read is older than ``token_cache_seconds`` (0.5 s by default; one indexed read, at most twice a second
per process whatever the load) and forgets every remembered token when it changed. So a revoked token is
refused everywhere within ``token_cache_seconds`` plus one store read, and an expired one at once.
If the store cannot be read, API-made tokens are refused with 503 (it cannot be known whether they were
revoked); configured tokens keep working.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from hpc.config import Config
from hpc.errors import Forbidden, InvalidInput, NotFound, Unavailable
from hpc.security import AuthenticationFailed, Principal, configured_tokens, hash_token, new_token, token_matches
from hpc.services import metrics
from hpc.services.audit import AuditLog
from hpc.services.oidc import OidcVerifier, looks_like_jwt
from hpc.store import Store
from hpc.store.admin import TOKENS_GENERATION
from hpc.store.tables import utcnow

log = logging.getLogger(__name__)

PREFIX = "hpc_"
REMEMBERED = 4096  # verified tokens remembered per process (least recently used dropped first)


class StoreUnavailable(Unavailable):
    """The store cannot be read, so a credential that depends on it cannot be checked (503)."""


def api_token(token_id: str) -> str:
    """A fresh secret token for the row ``token_id``."""
    return f"{PREFIX}{uuid.UUID(token_id).hex}_{new_token()}"


def token_id_of(token: str) -> str | None:
    """The row id an API-made token names, or None when it is not shaped like one."""
    if not token.startswith(PREFIX):
        return None
    hex_id, sep, secret = token[len(PREFIX):].partition("_")
    if not sep or not secret or len(hex_id) != 32:
        return None
    try:
        return str(uuid.UUID(hex=hex_id))
    except ValueError:
        return None


def token_document(row: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A token as the API shows it: never its hash (the secret itself is never stored)."""
    now = now or utcnow()
    state = "revoked" if row["revoked_at"] else "expired" if row["expires_at"] and row["expires_at"] <= now \
        else "active"
    return {"id": row["id"], "name": row["name"], "role": row["role"], "state": state,
            "created_at": row["created_at"], "created_by": row["created_by"], "expires_at": row["expires_at"],
            "revoked_at": row["revoked_at"], "revoked_by": row["revoked_by"]}


class TokenService:
    """Creates, lists and revokes API-made tokens, and checks one against the store."""

    def __init__(self, store: Store, audit: AuditLog):
        self.store = store
        self.audit = audit
        # Called after a revocation: this process's Authenticator forgets at once (the others follow the
        # store's generation).
        self.revoked: list = []

    def create(self, name: str, role: str, expires_at: datetime | None, principal: Principal
               ) -> tuple[dict[str, Any], str]:
        """A new token: its row and its secret (shown once, stored only as a salted hash)."""
        self._require_admin(principal)
        now = utcnow()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("expires_at must lie in the future", "expires_at")
        token_id = str(uuid.uuid4())
        secret = api_token(token_id)
        values = {"id": token_id, "name": name, "role": role, "hash": hash_token(secret), "created_at": now,
                  "created_by": principal.name, "expires_at": expires_at}
        details = {"name": name, "role": role, "expires_at": expires_at.isoformat() if expires_at else None}
        row = self.store.tokens.insert_with(
            values, lambda conn: self.audit.record(principal, "token.create", token_id, details, conn=conn))
        log.info("token %s (%s, %s) created by %s", token_id, name, role, principal.name)
        return row, secret

    def list(self, principal: Principal, *, limit: int = 100, offset: int = 0,
             include_revoked: bool = True) -> tuple[list[dict[str, Any]], int]:
        self._require_admin(principal)
        return self.store.tokens.page(limit=limit, offset=offset, include_revoked=include_revoked)

    def get(self, token_id: str, principal: Principal) -> dict[str, Any]:
        self._require_admin(principal)
        row = self.store.tokens.get(str(token_id))
        if row is None:
            raise NotFound(f"no token {token_id} (configured tokens are managed in the configuration)", "token_id")
        return row

    def revoke(self, token_id: str, principal: Principal) -> dict[str, Any]:
        """Revokes a token (idempotent); every replica refuses it within ``token_cache_seconds``."""
        row = self.get(token_id, principal)
        details = {"name": row["name"], "role": row["role"]}
        if self.store.tokens.revoke(row["id"], principal.name,
                                    lambda conn: self.audit.record(principal, "token.revoke", row["id"], details,
                                                                   conn=conn)):
            log.info("token %s (%s) revoked by %s", row["id"], row["name"], principal.name)
            for listener in self.revoked:
                listener()
        return self.store.tokens.get(row["id"])

    def check(self, token: str) -> tuple[Principal, float | None]:
        """The principal of an API-made token and its expiry (epoch seconds, or None), from the store.

        Raises:
            AuthenticationFailed: Unknown, revoked or expired.
        """
        token_id = token_id_of(token)
        row = self.store.tokens.get(token_id) if token_id else None
        if row is None or not token_matches(token, row["hash"]):
            raise AuthenticationFailed("the token is not valid", "unknown")
        if row["revoked_at"] is not None:
            raise AuthenticationFailed("the token has been revoked", "revoked")
        expires = row["expires_at"].timestamp() if row["expires_at"] else None
        if expires is not None and expires <= time.time():
            raise AuthenticationFailed("the token has expired", "expired")
        return Principal(row["name"], row["role"], f"token:{row['id']}"), expires

    @staticmethod
    def _require_admin(principal: Principal) -> None:
        if not principal.is_admin:
            raise Forbidden("managing tokens requires the admin role")


class Authenticator:
    """Checks a bearer credential (see the module's docstring); callable as ``hpc.security.Authenticate``."""

    def __init__(self, config: Config, tokens: TokenService, oidc: OidcVerifier | None = None,
                 clock=time.monotonic):
        self._configured = configured_tokens(config.tokens)
        self._tokens = tokens
        self._oidc = oidc
        self._period = config.token_cache_seconds
        self._clock = clock
        tokens.revoked.append(self.forget)
        self._lock = threading.Lock()
        self._remembered: OrderedDict[str, tuple[Principal, float | None]] = OrderedDict()
        self._generation: int | None = None
        self._generation_read_at = float("-inf")

    def __call__(self, token: str) -> Principal:
        try:
            return self._configured(token)
        except AuthenticationFailed:
            pass
        if token.startswith(PREFIX):
            self._follow_revocations()
            check = self._tokens.check
        elif self._oidc is not None and looks_like_jwt(token):
            check = self._oidc.verify
        else:
            raise AuthenticationFailed("the token is not valid", "unknown")
        with self._lock:
            found = self._remembered.get(token)
            if found is not None:
                self._remembered.move_to_end(token)
            generation = self._generation
        if found is not None and (found[1] is None or found[1] > time.time()):
            return found[0]
        try:
            principal, expires = check(token)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"the store cannot be read to check the token ({type(exc).__name__})") from None
        with self._lock:
            # Not remembered if a revocation was seen while the store was read: the verdict may predate it.
            if self._generation == generation:
                self._remembered[token] = (principal, expires)
                if len(self._remembered) > REMEMBERED:
                    self._remembered.popitem(last=False)
        return principal

    def _follow_revocations(self) -> None:
        """Forgets every remembered token when the store's tokens generation moved (read at most once per
        ``token_cache_seconds``)."""
        now = self._clock()
        if now - self._generation_read_at < self._period:
            return
        try:
            generation = self._tokens.store.generations.get(TOKENS_GENERATION)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"the store cannot be read to check the token ({type(exc).__name__})") from None
        with self._lock:
            if generation != self._generation:
                self._remembered.clear()
                self._generation = generation
            self._generation_read_at = now

    def forget(self) -> None:
        """Drops every remembered token (this process revoked one: no need to wait for the generation)."""
        with self._lock:
            self._remembered.clear()
            self._generation = None  # a verdict read before this is not remembered
            self._generation_read_at = float("-inf")


def record_failure(exc: AuthenticationFailed) -> None:
    """Counts a refused credential for ``hpc_auth_failures_total`` (called where the 401 is answered)."""
    metrics.auth_failed(exc.kind)
