"""GET /health, /health/live, /health/ready, /metrics and /stats."""

import flask

from hpc import __version__
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.problems import problem
from hpc.api.views import reply
from hpc.errors import Forbidden, NotFound
from hpc.services import health, metrics


def get_health():
    gw = gateway()
    gw.store.ping()
    return reply({"status": "ok", "version": __version__, "auth": gw.config.auth_enabled, "database": gw.store.dialect})


def get_liveness():
    return reply({"status": "ok"})


def get_readiness():
    gw = gateway()
    verdict = health.readiness(gw, gw.store_probe)
    if verdict.ready:
        return reply({"status": "ready", "checks": verdict.checks})
    return problem(503, "Service Unavailable", "not ready: " + "; ".join(verdict.problems),
                   extra={"checks": verdict.checks})


def get_metrics():
    gw = gateway()
    if gw.config.metrics_listen_port:
        raise NotFound(f"the metrics are served on port {gw.config.metrics_listen_port} (metrics_listen_port)")
    if not caller().is_admin:
        raise Forbidden("the metrics are for admins (or serve them on metrics_listen_port)")
    return flask.Response(metrics.exposition(), status=200, content_type=metrics.CONTENT_TYPE)


def get_stats():
    gw = gateway()
    if not caller().is_admin:
        raise Forbidden("the counters are for admins")
    return reply({"instance": gw.config.resolved_instance_id, "ssh": gw.pool.stats(), "jobs": gw.jobs.stats(),
                  "events": gw.events_stats()})
