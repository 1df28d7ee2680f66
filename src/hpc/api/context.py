"""The gateway a running app serves. Set once by ``create_app``; read by handlers and the token check.

Connexion resolves handlers and the bearer check by import path, so they reach the gateway through
this module rather than through arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpc.services.gateway import Gateway

_gateway: Gateway | None = None


def set_gateway(gateway: Gateway | None) -> None:
    global _gateway
    _gateway = gateway


def gateway() -> Gateway:
    if _gateway is None:
        raise RuntimeError("no gateway: create the app with hpc.api.app.create_app first")
    return _gateway
