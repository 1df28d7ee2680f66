"""/infrastructure/{infrastructure_name}/files operations: the cluster's files (``hpc.services.files``)."""

import flask

from hpc.api import ranges
from hpc.api.auth import caller
from hpc.api.context import gateway
from hpc.api.models import DirectoryRequest, MoveRequest
from hpc.api.problems import PROBLEM_JSON
from hpc.api.views import parse, reply


def list_files(infrastructure_name, path, limit=100, offset=0):
    return reply(gateway().files.list(infrastructure_name, path, limit, offset, caller()))


def stat_file(infrastructure_name, path):
    return reply(gateway().files.stat(infrastructure_name, path, caller()))


def read_file(infrastructure_name, path, offset=None, length=65536, tail=None, encoding="utf-8"):
    return reply(gateway().files.read(infrastructure_name, path, caller(), offset=offset, length=length, tail=tail,
                                      encoding=encoding))


def download_file(infrastructure_name, path):
    header = flask.request.headers.get("Range")
    try:
        download = gateway().files.download(infrastructure_name, path, caller(),
                                            lambda size: ranges.parse_range(header, size))
    except ranges.RangeNotSatisfiable as exc:
        return flask.Response(
            flask.json.dumps({"type": "about:blank", "title": "Range Not Satisfiable", "status": 416,
                              "detail": exc.reason, "field": "Range"}),
            status=416, content_type=PROBLEM_JSON, headers={"Content-Range": f"bytes */{exc.size}"})
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(download.length)}
    if download.partial:
        headers["Content-Range"] = ranges.content_range(download.start, download.end, download.size)
    response = flask.Response(download, status=206 if download.partial else 200,
                              content_type="application/octet-stream", headers=headers, direct_passthrough=True)
    response.call_on_close(download.close)
    return response


def upload_file(infrastructure_name, path, body=None, overwrite=False):
    data = body if isinstance(body, bytes) else flask.request.get_data()
    return reply(gateway().files.upload(infrastructure_name, path, data, overwrite, caller()), 201)


def make_directory(infrastructure_name, body):
    request = parse(DirectoryRequest, body)
    return reply(gateway().files.mkdir(infrastructure_name, request.path, caller()), 201)


def remove_file(infrastructure_name, path, recursive=False):
    gateway().files.remove(infrastructure_name, path, recursive, caller())
    return flask.Response(status=204)


def move_file(infrastructure_name, body):
    request = parse(MoveRequest, body)
    return reply(gateway().files.move(infrastructure_name, request.src, request.dst, caller()))


def checksum_file(infrastructure_name, path):
    return reply(gateway().files.checksum(infrastructure_name, path, caller()))
