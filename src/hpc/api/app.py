"""The Connexion application factory."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import connexion
import yaml
from connexion.exceptions import BadRequestProblem, ProblemException
from connexion.datastructures import MediaTypeDict
from connexion.options import SwaggerUIOptions

from hpc import errors
from hpc.api import context, problems, validation, views
from hpc.api.fastpath import StatusFastPath
from hpc.api.guard import RequestGuard
from hpc.api.sse import event_stream
from hpc.api.metrics import RequestMetrics
from hpc.config import Config, load_config
from hpc.errors import NotFound
from hpc.services import metrics
from hpc.services.gateway import Gateway
from hpc.services.tokens import record_failure

log = logging.getLogger(__name__)

SPEC_PATH = Path(__file__).resolve().parents[3] / "openapi" / "openapi.yaml"
_PACKAGED_SPEC = Path(__file__).resolve().parent / "openapi.yaml"


def load_spec(auth_enabled: bool) -> dict[str, Any]:
    """The contract, with security requirements removed when authentication is switched off."""
    path = SPEC_PATH if SPEC_PATH.is_file() else _PACKAGED_SPEC
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not auth_enabled:
        spec = copy.deepcopy(spec)
        spec["security"] = []
        for operations in spec["paths"].values():
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation.pop("security", None)
    return spec


def create_app(config: Config | None = None, gateway: Gateway | None = None) -> connexion.FlaskApp:
    """Builds the gateway and its HTTP app; background work starts with the app's first lifespan."""
    config = config or load_config()
    gateway = gateway or Gateway(config)
    context.set_gateway(gateway)
    metrics.bind(gateway)
    if not config.auth_enabled:
        log.warning("=" * 72)
        log.warning("AUTHENTICATION IS OFF: anyone who can reach %s:%s has full admin rights.",
                    config.listen_host, config.listen_port)
        log.warning("Switch it on (auth_enabled: true, HPC_AUTH_ENABLED=1) anywhere but a private test box.")
        log.warning("=" * 72)
    app = connexion.FlaskApp(__name__, swagger_ui_options=SwaggerUIOptions(swagger_ui=True))
    spec = load_spec(config.auth_enabled)
    app.add_api(spec, swagger_ui_options=SwaggerUIOptions(swagger_ui_path="/ui"),
                validate_responses=False, strict_validation=False, base_path="",
                validator_map={"parameter": validation.ParameterChecks,
                               "body": MediaTypeDict({"*/*json": validation.BodyValidator})})
    app.add_error_handler(errors.DomainError, problems.domain_error)
    app.add_error_handler(BadRequestProblem, problems.bad_request)
    app.add_error_handler(ProblemException, problems.connexion_problem)
    app.add_error_handler(Exception, problems.internal_error)
    app.gateway = gateway
    app.spec = spec
    return app


def served_app(app: connexion.FlaskApp):
    """The ASGI app to serve: request metrics, the request guard, the status fast path, then Connexion."""
    config = app.gateway.config
    guard = RequestGuard(with_fast_path(app), app.spec, max_body_size=config.max_body_size,
                         auth_enabled=config.auth_enabled, authenticate=app.gateway.authenticate,
                         on_refused=record_failure)
    return RequestMetrics(guard, app.spec)


def with_fast_path(app: connexion.FlaskApp):
    """The ASGI app to serve: Connexion behind the status-poll fast path (see ``hpc.api.fastpath``) and
    the event stream (``GET /events``, see ``hpc.api.sse``)."""
    gateway = app.gateway
    if not gateway.config.fast_path:
        return event_stream(app, gateway)

    def job(job_id, principal):
        try:
            return views.job_status(gateway.jobs.get(job_id, principal))
        except NotFound:
            return None

    renderers = {"job": job}
    renderers.update(getattr(gateway.transfers, "fast_renderers", lambda: {})())
    return event_stream(StatusFastPath(app, auth_enabled=gateway.config.auth_enabled,
                                       authenticate=gateway.authenticate, renderers=renderers), gateway)
