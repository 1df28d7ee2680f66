"""The pure parts of the files operations: Range parsing, path confinement and the role policy's question,
the commands and parsers of ``hpc.ssh.cluster_files``, and the guard's per-operation body limit."""

from __future__ import annotations

import asyncio
import json
import shlex

import pytest

from hpc.api.app import load_spec
from hpc.api.guard import RequestGuard
from hpc.api.ranges import RangeNotSatisfiable, content_range, parse_range
from hpc.errors import InvalidInput
from hpc.services import file_paths
from hpc.ssh.cluster_files import (
    hash_command,
    parse_hash,
    parse_realpaths,
    realpaths_command,
    remove_tree_command,
)

HOME = "/home/u"
ROOTS = ["/home/u", "/scratch/u"]
JOB = "0b6c2a4e-3f0e-4c1e-9d4a-2b7f1c9e8a11"

# -- Range ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, expected", [
    (None, None),
    ("", None),
    ("bytes=0-99", (0, 100)),
    ("bytes=0-0", (0, 1)),
    ("bytes=100-", (100, 1000)),
    ("bytes=-100", (900, 1000)),
    ("bytes=-5000", (0, 1000)),  # a suffix longer than the file: the whole file
    ("bytes=990-5000", (990, 1000)),  # an end past the file is cut to it
    ("BYTES = 1-2", (1, 3)),
    ("items=0-5", None),  # another unit: ignored
    ("bytes=0-1,5-6", None),  # several ranges: the whole file
])
def test_ranges_that_are_served(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header, size", [
    ("bytes=1000-", 1000),  # starts at the end
    ("bytes=5000-6000", 1000),
    ("bytes=5-2", 1000),  # ends before it starts
    ("bytes=-0", 1000),
    ("bytes=-", 1000),
    ("bytes=a-b", 1000),
    ("bytes=0-", 0),  # nothing to give of an empty file
    ("bytes=-1", 0),
    ("bytes=1-2-3", 1000),
])
def test_ranges_that_are_refused_name_the_size(header, size):
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, size)
    assert caught.value.size == size


def test_content_range_is_inclusive():
    assert content_range(0, 100, 1000) == "bytes 0-99/1000"
    assert content_range(999, 1000, 1000) == "bytes 999-999/1000"


# -- confinement ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, expected", [
    ("data/x", "/home/u/data/x"),
    ("~/data/x", "/home/u/data/x"),
    ("~", "/home/u"),
    ("/scratch/u/a/../b", "/scratch/u/b"),
    ("data/./x//y/", "/home/u/data/x/y"),
    ("a/../../u/b", "/home/u/b"),  # leaves and comes back: what counts is where it ends
])
def test_paths_inside_the_roots(given, expected):
    assert file_paths.lexical(given, HOME, ROOTS, "path") == expected


@pytest.mark.parametrize("given", [
    "../v/x", "/etc/passwd", "/home/u2/x", "/home/u/../v", "/scratch", "/scratch/u2", "~other/x",
    "data/\nx", "a\x00b", "", "  ", "data/" + "n" * 256, "data/" + "a/" * 2100,
])
def test_paths_outside_the_roots_or_malformed_are_refused_naming_the_field(given):
    with pytest.raises(InvalidInput) as caught:
        file_paths.lexical(given, HOME, ROOTS, "src")
    assert caught.value.field == "src"


def test_a_root_itself_is_refused_where_an_entry_is_needed():
    assert file_paths.lexical("/scratch/u", HOME, ROOTS, "path", allow_root=True) == "/scratch/u"
    for root in ("~", "/scratch/u", "/scratch/u/x/.."):
        with pytest.raises(InvalidInput):
            file_paths.lexical(root, HOME, ROOTS, "path", allow_root=False)


def test_the_clusters_realpath_is_checked_against_the_resolved_roots():
    real_roots = ["/gpfs/home/u", "/scratch/u"]  # the home is a link to /gpfs/home/u
    assert file_paths.confined("/gpfs/home/u/a", real_roots, "path") == "/gpfs/home/u/a"
    assert file_paths.confined("/gpfs/home/u", real_roots, "path") == "/gpfs/home/u"
    with pytest.raises(InvalidInput) as caught:
        file_paths.confined("/etc/shadow", real_roots, "dst")  # a link inside a root leading out
    assert caught.value.field == "dst"
    with pytest.raises(InvalidInput):
        file_paths.confined("/gpfs/home/u", real_roots, "path", allow_root=False)
    with pytest.raises(InvalidInput):
        file_paths.confined("/gpfs/home/uu/a", real_roots, "path")  # a prefix is not a parent


def test_own_job_directories_and_transfer_files():
    root = "/home/u/.hpc-gateway/jobs"
    mine = {JOB}
    own = mine.__contains__
    assert file_paths.job_of(f"{root}/{JOB}/out/x", root) == JOB
    assert file_paths.job_of(f"{root}/{JOB}", root) == JOB
    assert file_paths.job_of(f"{root}/not-a-job/x", root) is None
    assert file_paths.job_of(root, root) is None
    assert file_paths.owns([f"{root}/{JOB}/out"], root, own, []) is True
    assert file_paths.owns([f"{root}/{JOB[:-1]}0/out"], root, own, []) is False  # someone else's job
    assert file_paths.owns(["/home/u/in.dat"], root, own, ["/home/u/in.dat"]) is True
    assert file_paths.owns(["/home/u/in.dat.old"], root, own, ["/home/u/in.dat"]) is False
    assert file_paths.owns(["/home/u/x", f"{root}/{JOB}/x"], root, own, []) is True  # the resolved spelling


# -- commands and parsers ------------------------------------------------------------------------------


def test_commands_quote_every_path_exactly_once():
    hostile = "a b'c\"$(rm -rf ~)`id`;x"
    assert shlex.split(realpaths_command(["/r", f"/r/{hostile}"])) == ["realpath", "-m", "-z", "--", "/r",
                                                                       f"/r/{hostile}"]
    assert shlex.split(remove_tree_command(f"/r/{hostile}")) == ["rm", "-rf", "--", f"/r/{hostile}"]
    assert hash_command(f"/r/{hostile}").count(shlex.quote(f"/r/{hostile}")) == 3


def test_realpaths_are_split_on_nul_so_a_newline_in_a_name_cannot_shift_them():
    assert parse_realpaths(0, "/a\x00/b\nc\x00", "", 2) == ["/a", "/b\nc"]
    with pytest.raises(ValueError):
        parse_realpaths(0, "/a\x00", "", 2)
    with pytest.raises(ValueError):
        parse_realpaths(1, "", "realpath: invalid option -- 'z'", 1)
    with pytest.raises(ValueError):
        parse_realpaths(0, "relative\x00", "", 1)


def test_hash_answers():
    digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert parse_hash(0, f"4\n{digest}  -\n", "") == (4, digest)
    assert parse_hash(0, f"4\n{digest} *stdin\n", "") == (4, digest)  # openssl dgst -r
    for stdout, code in ((f"{digest}  -\n", 0), ("4\nnot a digest\n", 0), ("", 1)):
        with pytest.raises(ValueError):
            parse_hash(code, stdout, "")


# -- the guard's limit for uploads ---------------------------------------------------------------------

UPLOAD = "/infrastructure/tb/files/upload"


def guard_status(path: str, chunks, headers, limit: int = 100) -> tuple[int, bytes, int]:
    seen = []

    async def inner(scope, receive, send):
        seen.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = RequestGuard(inner, load_spec(False), max_body_size=1000, auth_enabled=False,
                         body_limits={("POST", "/infrastructure/{infrastructure_name}/files/upload"):
                                      (limit, "files_upload_max")})
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    reads = []

    async def receive():
        reads.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers), "query_string": b""}
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), len(reads)


def test_an_upload_over_its_own_limit_is_413_before_a_byte_is_read():
    status, body, reads = guard_status(UPLOAD, [b"x"], [(b"content-length", b"101"),
                                                        (b"content-type", b"application/octet-stream")])
    assert (status, reads) == (413, 0)
    assert "files_upload_max" in json.loads(body)["detail"]
    status, _, reads = guard_status(UPLOAD, [b"x" * 40] * 10, [(b"transfer-encoding", b"chunked"),
                                                              (b"content-type", b"application/octet-stream")])
    assert (status, reads) == (413, 3)
    # Other operations keep the general limit.
    status, _, _ = guard_status("/job", [b"{}"], [(b"content-length", b"500")])
    assert status == 299


def test_an_upload_is_bytes_not_utf8():
    status, _, _ = guard_status(UPLOAD, [b"\xff\xfe" * 10], [(b"content-type", b"application/octet-stream"),
                                                             (b"content-length", b"20")])
    assert status == 299
    status, body, _ = guard_status("/job", [b'{"a": "\xff"}'], [(b"content-type", b"application/json"),
                                                                 (b"content-length", b"11")])
    assert status == 400


def test_sftp_errors_become_errors_of_the_ssh_layer():
    import errno

    import paramiko

    from hpc.ssh.cluster_files import RemoteFileError, _failure
    from hpc.ssh.errors import SSHChannelError, SSHTimeout

    # What paramiko raises for the SFTP statuses (SFTPClient._convert_status) and for a dead session.
    assert _failure(OSError(errno.ENOENT, "No such file"), "reading", "/x").status == "not_found"
    assert _failure(OSError(errno.EACCES, "Permission denied"), "reading", "/x").status == "denied"
    failure = _failure(OSError("Failure"), "moving", "/x")
    assert (type(failure), failure.status, failure.reason) == (RemoteFileError, "failure", "moving /x: Failure")
    assert isinstance(_failure(TimeoutError("timed out"), "reading", "/x"), SSHTimeout)
    assert isinstance(_failure(paramiko.SSHException("Server connection dropped"), "reading", "/x"), SSHChannelError)
    assert isinstance(_failure(EOFError(), "reading", "/x"), SSHChannelError)
    assert isinstance(_failure(OSError("Socket is closed"), "reading", "/x"), SSHChannelError)
