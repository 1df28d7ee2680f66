"""GET /health and GET /stats."""

from hpc import __version__
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.views import reply
from hpc.errors import Forbidden


def get_health():
    gw = gateway()
    gw.store.ping()
    return reply({"status": "ok", "version": __version__, "auth": gw.config.auth_enabled, "database": gw.store.dialect})


def get_stats():
    gw = gateway()
    if not caller().is_admin:
        raise Forbidden("the counters are for admins")
    return reply({"instance": gw.config.resolved_instance_id, "ssh": gw.pool.stats(), "jobs": gw.jobs.stats(),
                  "events": gw.events_stats()})
