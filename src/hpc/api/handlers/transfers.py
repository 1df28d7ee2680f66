"""/data, /s3_data, /s3_result, /transfer and /batch operations."""

from hpc.api import views, views_transfers
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.handlers.events import check_callback, with_callback
from hpc.api.models import (
    DataBatchRequest,
    FileTransferRequest,
    S3DataBatchRequest,
    S3FileTransferRequest,
    S3ResultBatchRequest,
    S3ResultTransferRequest,
)


def list_transfers(infrastructure=None, kind=None, state=None, since=None, limit=100, offset=0):
    rows, total = gateway().transfers.list(caller(), infrastructure=infrastructure, kind=kind, state=state,
                                           since=views.parse_time(since, "since"), limit=limit, offset=offset)
    return views.reply(views_transfers.transfer_list(rows, total, limit, offset), 200)


def create_data_transfer(body):
    request = views.parse(FileTransferRequest, body)
    callback_url = check_callback(request.callback_url)
    row = gateway().transfers.create_http(request, caller())
    shown = views_transfers.file_transfer_status(row)
    return views.reply(with_callback(shown, callback_url, "transfer", row["id"]), 201)


def get_data_transfer(transfer_id):
    return views.reply(views_transfers.file_transfer_status(gateway().transfers.get(transfer_id, "http", caller())))


def cancel_data_transfer(transfer_id):
    row = gateway().transfers.cancel(transfer_id, "http", caller())
    return views.reply(views_transfers.file_transfer_status(row), 202)


def create_s3_data_transfer(body):
    request = views.parse(S3FileTransferRequest, body)
    callback_url = check_callback(request.callback_url)
    row = gateway().transfers.create_s3_data(request, caller())
    shown = views_transfers.s3_file_transfer_status(row)
    return views.reply(with_callback(shown, callback_url, "transfer", row["id"]), 201)


def get_s3_data_transfer(transfer_id):
    row = gateway().transfers.get(transfer_id, "s3_data", caller())
    return views.reply(views_transfers.s3_file_transfer_status(row))


def cancel_s3_data_transfer(transfer_id):
    row = gateway().transfers.cancel(transfer_id, "s3_data", caller())
    return views.reply(views_transfers.s3_file_transfer_status(row), 202)


def create_s3_result_transfer(body):
    request = views.parse(S3ResultTransferRequest, body)
    callback_url = check_callback(request.callback_url)
    row = gateway().transfers.create_s3_result(request, caller())
    shown = views_transfers.s3_result_transfer_status(row)
    return views.reply(with_callback(shown, callback_url, "transfer", row["id"]), 201)


def get_s3_result_transfer(transfer_id):
    row = gateway().transfers.get(transfer_id, "s3_result", caller())
    return views.reply(views_transfers.s3_result_transfer_status(row))


def cancel_s3_result_transfer(transfer_id):
    row = gateway().transfers.cancel(transfer_id, "s3_result", caller())
    return views.reply(views_transfers.s3_result_transfer_status(row), 202)


# -- batches -------------------------------------------------------------------------------------


def create_s3_data_batch(body):
    row = gateway().transfers.batches.create_s3_data(views.parse(S3DataBatchRequest, body), caller())
    return views.reply(views_transfers.batch_status(row), 201)


def create_s3_result_batch(body):
    row = gateway().transfers.batches.create_s3_result(views.parse(S3ResultBatchRequest, body), caller())
    return views.reply(views_transfers.batch_status(row), 201)


def create_data_batch(body):
    row = gateway().transfers.batches.create_http(views.parse(DataBatchRequest, body), caller())
    return views.reply(views_transfers.batch_status(row), 201)


def get_batch(batch_id):
    return views.reply(views_transfers.batch_status(gateway().transfers.batches.get(batch_id, caller())))


def cancel_batch(batch_id):
    return views.reply(views_transfers.batch_status(gateway().transfers.batches.cancel(batch_id, caller())), 202)


def list_batches(infrastructure=None, kind=None, state=None, parent=None, limit=100, offset=0):
    rows, total = gateway().transfers.batches.list(caller(), infrastructure=infrastructure, kind=kind, state=state,
                                                   parent=parent, limit=limit, offset=offset)
    return views.reply(views_transfers.batch_list(rows, total, limit, offset))


def list_batch_files(batch_id, state=None, limit=100, offset=0):
    _, items, total = gateway().transfers.batches.files(batch_id, caller(), state, limit, offset)
    return views.reply(views_transfers.batch_files(items, total, limit, offset))
