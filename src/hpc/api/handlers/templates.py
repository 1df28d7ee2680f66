"""/template operations."""

from hpc.api import views
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.models import TemplateRequest, TemplateVersionRequest


def create_template(body):
    row = gateway().templates.register(views.parse(TemplateRequest, body), caller())
    gateway().audit.record(caller(), "template.register", row["name"], {"version": row["version"]})
    return views.reply(views.template(row), 201)


def list_templates(limit=100, offset=0):
    rows, total = gateway().templates.list(limit, offset)
    return views.reply(views.page([views.template_summary(row) for row in rows], total, limit, offset))


def get_template(template_name):
    return views.reply(views.template(gateway().templates.get(template_name)))


def deprecate_template(template_name):
    gateway().templates.deprecate(template_name, caller())
    gateway().audit.record(caller(), "template.deprecate", template_name)
    return None, 204


def list_template_versions(template_name, limit=100, offset=0):
    rows, total = gateway().templates.versions(template_name, limit, offset)
    return views.reply(views.page([views.template(row) for row in rows], total, limit, offset))


def create_template_version(template_name, body):
    row = gateway().templates.add_version(template_name, views.parse(TemplateVersionRequest, body), caller())
    gateway().audit.record(caller(), "template.version", row["name"], {"version": row["version"]})
    return views.reply(views.template(row), 201)


def get_template_version(template_name, version):
    return views.reply(views.template(gateway().templates.get(template_name, version)))
