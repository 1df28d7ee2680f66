"""GET /health."""

from hpc.api.views import reply
from hpc import __version__
from hpc.api.context import gateway


def get_health():
    gw = gateway()
    gw.store.ping()
    return reply({"status": "ok", "version": __version__, "auth": gw.config.auth_enabled, "database": gw.store.dialect})
