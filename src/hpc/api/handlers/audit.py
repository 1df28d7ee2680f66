"""GET /audit (admins): the audit log of admin actions."""

from hpc.api import views, views_admin
from hpc.api.auth import caller
from hpc.api.context import gateway


def list_audit(action=None, principal=None, since=None, limit=100, offset=0):
    rows, total = gateway().audit.list(caller(), action=action, actor=principal,
                                       since=views.parse_time(since, "since"), limit=limit, offset=offset)
    return views.reply(views.page([views_admin.audit_entry(row) for row in rows], total, limit, offset))
