"""GET /services."""

from hpc.api.views import reply
from hpc.api.models import ServiceName


def list_services():
    return reply([{"name": service.value} for service in ServiceName])
