"""OpenID Connect: bearer JWTs from one configured issuer, verified against its published keys (JWKS).

PyJWT (with ``cryptography``, already a dependency) does the JOSE work: parsing, signature verification
and the registered claims (``exp``, ``nbf``, ``iat``, ``iss``, ``aud``). Around it, this module decides
what PyJWT leaves to its caller:

- the algorithm comes from an allow-list of asymmetric algorithms (``oidc_algorithms``; ``none`` and HS*
  are refused when the configuration is loaded), and the token's ``alg`` must also fit the key it names:
  its type (RSA for RS*/PS*, EC for ES*, OKP for EdDSA) and the key's own ``alg`` when it has one, so a
  public key is never used as an HMAC secret or with another algorithm family;
- the key is picked by ``kid`` from the JWKS (a token without ``kid`` is accepted only when the set has a
  single signing key); keys of type ``oct`` (shared secrets) are never loaded;
- ``exp``, ``iss`` and ``aud`` are required, checked with ``oidc_leeway`` seconds of clock skew;
- the caller is named by ``oidc_principal_claim`` (default ``sub``): jobs belong to ``oidc:<value>``; the
  role comes from ``oidc_role_claim`` (a string or a list; a dotted path reaches nested claims such as
  Keycloak's ``realm_access.roles``) through ``oidc_role_map``; ``admin`` wins when both map.

Every refusal is an :class:`~hpc.security.AuthenticationFailed` with fixed words (nothing of the token
is echoed: the reason goes into a response header).

The JWKS is read from a file (re-read when it changes) or fetched from an http(s) URL (every
``oidc_jwks_refresh`` seconds, and again when a token names an unknown ``kid``, at most every
:data:`UNKNOWN_KID_REFETCH` seconds so that made-up key ids cannot make the gateway hammer the issuer).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK

from hpc.config import Config
from hpc.errors import Unavailable
from hpc.security import AuthenticationFailed, Principal

log = logging.getLogger(__name__)

UNKNOWN_KID_REFETCH = 30.0  # seconds between fetches caused by unknown key ids
RETRY_AFTER_FAILURE = 10.0  # seconds before a JWKS that could not be read is tried again
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1024 * 1024
MAX_NAME = 120  # characters of the principal claim ("oidc:" + it must fit an owner column of 128)
_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class KeysUnavailable(Unavailable):
    """The issuer's keys cannot be read (an operator's problem, not the caller's: a 503)."""


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    principal_claim: str = "sub"
    role_claim: str = "roles"
    role_map: tuple[tuple[str, str], ...] = (("admin", "admin"), ("user", "user"))
    leeway: float = 30.0

    @classmethod
    def from_config(cls, config: Config) -> "OidcSettings":
        return cls(config.oidc_issuer, config.oidc_audience, tuple(config.oidc_algorithms),
                   config.oidc_principal_claim, config.oidc_role_claim, tuple(config.oidc_role_map),
                   config.oidc_leeway)


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def signing_keys(document: Any) -> list[dict[str, Any]]:
    """The usable signing keys of a JWKS document (``oct`` keys and encryption keys left out)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS is a JSON object with a 'keys' array")
    keys = []
    for key in document["keys"]:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if key.get("use") not in (None, "sig"):
            continue
        keys.append(key)
    return keys


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def role_of(claims: dict[str, Any], settings: OidcSettings) -> str | None:
    """The role the token's role claim maps to (admin before user), or None."""
    value = _claim(claims, settings.role_claim)
    values = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
        if isinstance(value, list) else []
    roles = {role for claim_value, role in settings.role_map if claim_value in values}
    return "admin" if "admin" in roles else "user" if "user" in roles else None


def verify_jwt(token: str, keys: list[dict[str, Any]], settings: OidcSettings) -> tuple[Principal, float]:
    """The principal a JWT stands for and the time (epoch seconds) it expires; pure but for the clock.

    Args:
        keys: The issuer's signing keys (:func:`signing_keys`).

    Raises:
        AuthenticationFailed: With the reason and a short ``kind`` for the metrics.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthenticationFailed("the token is not a well-formed JWT", "malformed") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in settings.algorithms:
        raise AuthenticationFailed("the token's algorithm is not allowed", "algorithm")
    kid = header.get("kid")
    if kid is None:
        candidates = keys if len(keys) == 1 else []
    else:
        candidates = [key for key in keys if key.get("kid") == kid]
    if not candidates:
        raise AuthenticationFailed("the token's key id is unknown", "unknown_kid")
    jwk = candidates[0]
    if _FAMILY.get(alg[:2]) != jwk.get("kty") or jwk.get("alg", alg) != alg:
        raise AuthenticationFailed("the token's algorithm does not fit its key", "algorithm")
    try:
        key = PyJWK(jwk, algorithm=alg).key
    except jwt.PyJWTError:
        raise AuthenticationFailed("the token's algorithm does not fit its key", "algorithm") from None
    options = {"require": ["exp", "iss", "aud"]}
    try:
        claims = jwt.decode(token, key, algorithms=[alg], audience=settings.audience, issuer=settings.issuer,
                            leeway=settings.leeway, options=options)
    except jwt.ExpiredSignatureError:
        raise AuthenticationFailed("the token has expired", "expired") from None
    except jwt.ImmatureSignatureError:
        raise AuthenticationFailed("the token is not valid yet", "not_yet_valid") from None
    except jwt.InvalidAudienceError:
        raise AuthenticationFailed("the token is not meant for this audience", "audience") from None
    except jwt.InvalidIssuerError:
        raise AuthenticationFailed("the token is from another issuer", "issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthenticationFailed(f"the token has no {exc.claim} claim", "claims") from None
    except jwt.InvalidSignatureError:
        raise AuthenticationFailed("the token's signature does not verify", "signature") from None
    except jwt.PyJWTError:
        raise AuthenticationFailed("the token is not a valid JWT", "malformed") from None
    expires = claims.get("exp")
    if not isinstance(expires, (int, float)):
        raise AuthenticationFailed("the token's exp claim is not a number", "claims")
    name = claims.get(settings.principal_claim)
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise AuthenticationFailed(f"the token's {settings.principal_claim} claim is missing or longer than "
                                   f"{MAX_NAME} characters", "claims")
    role = role_of(claims, settings)
    if role is None:
        raise AuthenticationFailed(f"the token's {settings.role_claim} claim grants no role on this gateway",
                                   "no_role")
    return Principal(f"oidc:{name}", role, "oidc"), float(expires)


class JwksSource:
    """The issuer's signing keys from a file or an http(s) URL, refreshed as the module says."""

    def __init__(self, location: str, refresh: float = 300.0, clock=time.monotonic):
        self.location = location
        self._clock = clock
        self._is_url = location.startswith(("http://", "https://"))
        # A file is checked for changes (a stat) at most once a second.
        self._period = refresh if self._is_url else 1.0
        self._lock = threading.Lock()
        self._keys: list[dict[str, Any]] | None = None
        self._next_load = float("-inf")
        self._unknown_fetch_at = float("-inf")
        self._file_stamp: tuple[float, int] | None = None

    def keys(self, kid: str | None = None) -> list[dict[str, Any]]:
        """The current keys; a ``kid`` not among them may cause one early re-read (rate-limited)."""
        with self._lock:
            now = self._clock()
            if now >= self._next_load:
                self._reload(now)
            elif kid is not None and not any(k.get("kid") == kid for k in self._keys or ()) \
                    and now - self._unknown_fetch_at >= UNKNOWN_KID_REFETCH:
                self._unknown_fetch_at = now
                self._reload(now)
            if self._keys is None:
                raise KeysUnavailable("the OpenID Connect signing keys (oidc_jwks) cannot be read; see the log")
            return self._keys

    def _reload(self, now: float) -> None:
        try:
            if self._is_url:
                document = self._fetch()
            else:
                stat = os.stat(self.location)
                stamp = (stat.st_mtime, stat.st_size)
                if stamp == self._file_stamp and self._keys is not None:
                    self._next_load = now + self._period
                    return
                with open(self.location, "rb") as handle:
                    data = handle.read(MAX_JWKS_BYTES + 1)
                if len(data) > MAX_JWKS_BYTES:
                    raise ValueError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
                document = json.loads(data)
                self._file_stamp = stamp
            self._keys = signing_keys(document)
            self._next_load = now + self._period
            log.info("OpenID Connect: %d signing key(s) loaded from %s", len(self._keys), self.location)
        except (OSError, ValueError) as exc:
            # Keys read before stay in use; the next try comes soon (or at the next period, if sooner).
            self._next_load = now + min(self._period, RETRY_AFTER_FAILURE)
            log.error("OpenID Connect: reading the JWKS %s failed: %s", self.location, exc)

    def _fetch(self) -> Any:
        request = urllib.request.Request(self.location, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:  # noqa: S310 (operator's URL)
            body = response.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)


class OidcVerifier:
    """Verifies bearer JWTs of the configured issuer (see the module's docstring)."""

    def __init__(self, settings: OidcSettings, source: JwksSource):
        self.settings = settings
        self.source = source

    @classmethod
    def from_config(cls, config: Config) -> "OidcVerifier | None":
        if not config.oidc_issuer:
            return None
        return cls(OidcSettings.from_config(config), JwksSource(config.oidc_jwks, config.oidc_jwks_refresh))

    def verify(self, token: str) -> tuple[Principal, float]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise AuthenticationFailed("the token is not a well-formed JWT", "malformed") from None
        return verify_jwt(token, self.source.keys(kid if isinstance(kid, str) else None), self.settings)
