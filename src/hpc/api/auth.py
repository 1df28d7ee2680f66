"""Bearer-token check (the spec's ``bearerAuth`` scheme) and role helpers for handlers.

Every credential goes through the gateway's one check (``hpc.services.tokens.Authenticator``: configured
tokens, API-made tokens, OpenID Connect JWTs). A refused one is a 401 whose ``WWW-Authenticate`` header
says why (RFC 6750: ``Bearer error="invalid_token", error_description="the token has expired"``).
"""

from __future__ import annotations

from typing import Any

from connexion.context import context
from connexion.exceptions import OAuthProblem

from hpc.api.context import gateway
from hpc.security import ANONYMOUS_ADMIN, AuthenticationFailed, Principal
from hpc.services.tokens import record_failure


class InvalidToken(OAuthProblem):
    """A 401 for a credential that was sent but refused; ``detail`` is the reason."""


def challenge(reason: str | None = None) -> str:
    """The ``WWW-Authenticate`` value of a 401: with the error and its description when a token was refused
    (the reason is one of the gateway's own fixed phrases: no quote or control character to escape)."""
    if reason is None:
        return "Bearer"
    return f'Bearer error="invalid_token", error_description="{reason}"'


def token_info(token: str) -> dict[str, Any]:
    """Connexion's ``x-bearerInfoFunc``: the token's principal; a refused token is a 401 with its reason."""
    try:
        principal = gateway().authenticate(token)
    except AuthenticationFailed as exc:
        record_failure(exc)
        raise InvalidToken(detail=exc.reason) from None
    return {"sub": principal.name, "role": principal.role, "credential": principal.credential}


def principal_of(token_info: dict[str, Any] | None) -> Principal:
    """The caller of a handler; with authentication off every caller is an anonymous admin."""
    if not token_info:
        return ANONYMOUS_ADMIN
    return Principal(token_info["sub"], token_info["role"], token_info.get("credential", "config"))


def caller() -> Principal:
    """The principal of the request being handled."""
    return principal_of(context.get("token_info"))
