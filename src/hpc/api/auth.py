"""Bearer-token check (the spec's ``bearerAuth`` scheme) and role helpers for handlers."""

from __future__ import annotations

from typing import Any

from connexion.context import context

from hpc.api.context import gateway
from hpc.security import ANONYMOUS_ADMIN, Principal, verify_token


def token_info(token: str) -> dict[str, Any] | None:
    """Connexion's ``x-bearerInfoFunc``: the token's principal, or None (answered with 401)."""
    principal = verify_token(token, gateway().config.tokens)
    if principal is None:
        return None
    return {"sub": principal.name, "role": principal.role}


def principal_of(token_info: dict[str, Any] | None) -> Principal:
    """The caller of a handler; with authentication off every caller is an anonymous admin."""
    if not token_info:
        return ANONYMOUS_ADMIN
    return Principal(token_info["sub"], token_info["role"])


def caller() -> Principal:
    """The principal of the request being handled."""
    return principal_of(context.get("token_info"))
