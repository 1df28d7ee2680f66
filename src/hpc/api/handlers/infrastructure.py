"""/infrastructure operations."""

from hpc.api import views
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.models import Infrastructure, InfrastructurePatch


def create_infrastructure(body):
    row = gateway().infrastructures.register(views.parse(Infrastructure, body), caller())
    return views.reply(views.infrastructure_summary(row), 201)


def list_infrastructures():
    return views.reply([views.infrastructure_summary(row) for row in gateway().infrastructures.list()], 200)


def get_infrastructure(infrastructure_name):
    return views.reply(views.infrastructure_summary(gateway().infrastructures.get(infrastructure_name)), 200)


def update_infrastructure(infrastructure_name, body):
    row = gateway().infrastructures.update(infrastructure_name, views.parse(InfrastructurePatch, body), caller())
    return views.reply(views.infrastructure_summary(row), 200)


def delete_infrastructure(infrastructure_name):
    gateway().infrastructures.delete(infrastructure_name, caller())
    return None, 204


def get_infrastructure_telemetry(infrastructure_name):
    row, partitions = gateway().infrastructures.telemetry(infrastructure_name)
    return views.reply(views.telemetry(row, partitions), 200)
