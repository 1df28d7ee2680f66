"""/job operations."""

from hpc.api import views
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.handlers.events import check_callback, with_callback
from hpc.api.models import JobRequest


def create_job(body):
    request = views.parse(JobRequest, body)
    callback_url = check_callback(request.callback_url)
    row = gateway().jobs.create(request, caller())
    return views.reply(with_callback(views.job_status(row), callback_url, "job", row["id"]), 201)


def dry_run_job(body):
    return views.reply(views.dry_run(gateway().jobs.dry_run(views.parse(JobRequest, body), caller())), 200)


def get_job(job_id):
    return views.reply(views.job_status(gateway().jobs.get(job_id, caller())))


def list_jobs(infrastructure=None, state=None, since=None, limit=100, offset=0):
    rows, total = gateway().jobs.list(caller(), infrastructure=infrastructure, state=state,
                                      since=views.parse_time(since, "since"), limit=limit, offset=offset)
    return views.reply(views.page([views.job_status(row) for row in rows], total, limit, offset))


def cancel_job(job_id):
    return views.reply(views.job_status(gateway().jobs.cancel(job_id, caller())), 202)


def get_job_output(job_id, stream="stdout", offset=0, length=65536, task=None):
    return views.reply(gateway().jobs.output(job_id, caller(), stream, offset, length, task))


def list_job_tasks(job_id, state=None, limit=100, offset=0):
    rows, total = gateway().jobs.tasks(job_id, caller(), state=state, limit=limit, offset=offset)
    return views.reply(views.page([views.job_task(row) for row in rows], total, limit, offset))
