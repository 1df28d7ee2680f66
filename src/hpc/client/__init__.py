"""Python client of the hpc-gateway API: ``Client(url, token)`` with one method per operation.

See :mod:`hpc.client.api` for a short example, :mod:`hpc.client.errors` for the exceptions and
:mod:`hpc.client.display` for the terminal progress displays the command line uses. Only ``requests`` is
needed to use the client itself; the displays need ``rich``.
"""

from hpc.client.api import (
    TRANSFER_PATHS,
    Client,
    http_input,
    job_done,
    job_succeeded,
    s3_input,
    s3_output,
    transfer_done,
    transfer_succeeded,
)
from hpc.client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    ClusterRefused,
    Conflict,
    Forbidden,
    GatewayUnreachable,
    NotFound,
    ServerError,
    Unauthorized,
    WaitTimeout,
)
from hpc.client.records import JOB_FINAL_STATES, TRANSFER_FINAL_STATES

__all__ = [
    "ApiError", "BadRequest", "Client", "ClientError", "ClusterRefused", "Conflict", "Forbidden",
    "GatewayUnreachable", "JOB_FINAL_STATES", "NotFound", "ServerError", "TRANSFER_FINAL_STATES",
    "TRANSFER_PATHS", "Unauthorized", "WaitTimeout", "http_input", "job_done", "job_succeeded", "s3_input",
    "s3_output", "transfer_done",
    "transfer_succeeded",
]
