"""/data, /s3_data, /s3_result and /transfer operations."""

from hpc.api import views, views_transfers
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.handlers.events import check_callback, with_callback
from hpc.api.models import FileTransferRequest, S3FileTransferRequest, S3ResultTransferRequest


def list_transfers(infrastructure=None, kind=None, state=None, since=None, limit=100, offset=0):
    rows, total = gateway().transfers.list(caller(), infrastructure=infrastructure, kind=kind, state=state,
                                           since=since, limit=limit, offset=offset)
    return views.reply(views_transfers.transfer_list(rows, total, limit, offset), 200)


def create_data_transfer(body):
    request = FileTransferRequest.model_validate(body)
    callback_url = check_callback(request.callback_url)
    row = gateway().transfers.create_http(request, caller())
    return views.reply(with_callback(views_transfers.file_transfer_status(row), callback_url, "transfer", row["id"]), 201)


def get_data_transfer(transfer_id):
    return views.reply(views_transfers.file_transfer_status(gateway().transfers.get(transfer_id, "http", caller())))


def cancel_data_transfer(transfer_id):
    row = gateway().transfers.cancel(transfer_id, "http", caller())
    return views.reply(views_transfers.file_transfer_status(row), 202)


def create_s3_data_transfer(body):
    request = S3FileTransferRequest.model_validate(body)
    callback_url = check_callback(request.callback_url)
    row = gateway().transfers.create_s3_data(request, caller())
    return views.reply(with_callback(views_transfers.s3_file_transfer_status(row), callback_url, "transfer", row["id"]), 201)


def get_s3_data_transfer(transfer_id):
    row = gateway().transfers.get(transfer_id, "s3_data", caller())
    return views.reply(views_transfers.s3_file_transfer_status(row))


def cancel_s3_data_transfer(transfer_id):
    row = gateway().transfers.cancel(transfer_id, "s3_data", caller())
    return views.reply(views_transfers.s3_file_transfer_status(row), 202)


def create_s3_result_transfer(body):
    request = S3ResultTransferRequest.model_validate(body)
    callback_url = check_callback(request.callback_url)
    row = gateway().transfers.create_s3_result(request, caller())
    return views.reply(with_callback(views_transfers.s3_result_transfer_status(row), callback_url, "transfer", row["id"]), 201)


def get_s3_result_transfer(transfer_id):
    row = gateway().transfers.get(transfer_id, "s3_result", caller())
    return views.reply(views_transfers.s3_result_transfer_status(row))


def cancel_s3_result_transfer(transfer_id):
    row = gateway().transfers.cancel(transfer_id, "s3_result", caller())
    return views.reply(views_transfers.s3_result_transfer_status(row), 202)
