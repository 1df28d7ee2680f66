"""/token operations (admins): tokens made through the API."""

from hpc.api import views, views_admin
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.models import TokenRequest


def create_token(body):
    request = views.parse(TokenRequest, body)
    row, secret = gateway().tokens.create(request.name, request.role.value, request.expires_at, caller())
    return views.reply(views_admin.token(row, secret), 201)


def list_tokens(include_revoked=True, limit=100, offset=0):
    rows, total = gateway().tokens.list(caller(), limit=limit, offset=offset, include_revoked=include_revoked)
    return views.reply(views.page([views_admin.token(row) for row in rows], total, limit, offset))


def get_token(token_id):
    return views.reply(views_admin.token(gateway().tokens.get(token_id, caller())))


def revoke_token(token_id):
    return views.reply(views_admin.token(gateway().tokens.revoke(token_id, caller())))
