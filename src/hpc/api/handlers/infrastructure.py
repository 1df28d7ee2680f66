"""/infrastructure operations."""

from hpc.api import views
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.models import Infrastructure, InfrastructurePatch


def create_infrastructure(body):
    row = gateway().infrastructures.register(views.parse(Infrastructure, body), caller())
    gateway().audit.record(caller(), "infrastructure.register", row["name"], {
        "host": row["host"], "port": row["port"], "username": row["username"], "scheduler": row["scheduler"]})
    return views.reply(views.infrastructure_summary(row), 201)


def list_infrastructures():
    return views.reply([views.infrastructure_summary(row) for row in gateway().infrastructures.list()], 200)


def get_infrastructure(infrastructure_name):
    return views.reply(views.infrastructure_summary(gateway().infrastructures.get(infrastructure_name)), 200)


def update_infrastructure(infrastructure_name, body):
    patch = views.parse(InfrastructurePatch, body)
    row = gateway().infrastructures.update(infrastructure_name, patch, caller())
    # The names of the fields given, never their values (a key or a passphrase may be among them).
    gateway().audit.record(caller(), "infrastructure.update", infrastructure_name,
                           {"fields": sorted(patch.model_fields_set)})
    return views.reply(views.infrastructure_summary(row), 200)


def delete_infrastructure(infrastructure_name):
    gateway().infrastructures.delete(infrastructure_name, caller())
    gateway().audit.record(caller(), "infrastructure.delete", infrastructure_name)
    return None, 204


def get_infrastructure_telemetry(infrastructure_name):
    row, partitions = gateway().infrastructures.telemetry(infrastructure_name)
    return views.reply(views.telemetry(row, partitions), 200)
