"""A typed Python client for the hpc-gateway REST API (one method per operation of ``openapi/openapi.yaml``).

    from hpc.client import Client

    client = Client()                       # $HPC_URL and $HPC_TOKEN, or Client(url, token)
    job = client.submit_job("tb-slurm", script="echo hello", resources={"walltime": "00:05:00"})
    job = client.wait_for_job(job["id"], timeout=600)
    print(job["state"], job["exit_code"], client.job_output(job["id"])["data"])

Records come back as the JSON dictionaries the gateway sent (typed in :mod:`hpc.client.records`).
Errors are exceptions from :mod:`hpc.client.errors` carrying the gateway's problem+json document.

Waiting follows the contract every client of the original API relies on: a job is done when its old
``status`` field reads ``completed`` (whatever the outcome), a transfer when its ``status`` no longer reads
``transferring``; the precise outcome is in ``state`` (with ``exit_code`` and ``reason`` for jobs).
"""

from __future__ import annotations

import os
import time
from typing import Any
from collections.abc import Callable, Iterator, Mapping, Sequence

import requests

from hpc import __version__
from hpc.client import errors
from hpc.client.events import ChangeNotifier, iter_events
from hpc.client.records import (
    JOB_FINAL_STATES,
    Health,
    InfrastructureSummary,
    InfrastructureTelemetry,
    JobDryRun,
    JobOutput,
    JobStatus,
    JobTask,
    Event,
    FileChecksum,
    FileContent,
    FileEntry,
    FileList,
    Page,
    Subscription,
    Template,
    Token,
    TransferKind,
    TransferStatus,
)

DEFAULT_URL = "http://127.0.0.1:8080"

#: Path prefix of each transfer kind's operations.
TRANSFER_PATHS: dict[str, str] = {"http": "/data", "s3_data": "/s3_data", "s3_result": "/s3_result"}

# Statuses a wait loop rides out (a gateway restarting behind a proxy, a cluster's hiccup) until its
# deadline, instead of giving up on the first one.
_TRANSIENT_STATUSES = frozenset({502, 503, 504})
_MAX_TRANSIENT_FAILURES = 60
# While waiting on the event stream, a record is still read this often (seconds) in case a change was
# recorded while the stream was reconnecting.
_EVENT_WAIT_POLL = 30.0


def _clean(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that were given (None means "not given": the gateway applies its default)."""
    return {key: value for key, value in fields.items() if value is not None}


def dependency(item: str | Mapping[str, str]) -> dict[str, str]:
    """One ``after`` entry from ``"ID"``, ``"ID:COND"`` or a mapping (``{"job": ID, "condition": COND}``)."""
    if isinstance(item, Mapping):
        return _clean({"job": item.get("job"), "condition": item.get("condition")})
    job, _, condition = str(item).partition(":")
    return _clean({"job": job, "condition": condition or None})


def job_done(job: Mapping[str, Any]) -> bool:
    """Whether a job has ended, by the old contract: ``status == "completed"`` (any outcome)."""
    return job.get("status") == "completed"


def job_succeeded(job: Mapping[str, Any]) -> bool:
    """Whether an ended job succeeded: ``state == "completed"`` (exit code 0)."""
    return job.get("state", job.get("status")) == "completed"


def transfer_done(transfer: Mapping[str, Any]) -> bool:
    """Whether a transfer has ended, by the old contract: ``status != "transferring"``."""
    return transfer.get("status") != "transferring"


def transfer_succeeded(transfer: Mapping[str, Any]) -> bool:
    """Whether an ended transfer delivered its bytes (and their checksum matched)."""
    return transfer.get("state", transfer.get("status")) == "completed"


class Client:
    """One gateway, one token, one pooled HTTP session.

    Args:
        url: The gateway's base URL; default ``$HPC_URL``, else ``http://127.0.0.1:8080``.
        token: The bearer token; default ``$HPC_TOKEN`` (none sent when empty: a gateway with
            authentication off).
        timeout: Seconds one HTTP request may take.
        session: A ``requests.Session`` to use (for custom TLS settings, proxies or retries).
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 60.0,
                 session: requests.Session | None = None):
        self.url = (url or os.environ.get("HPC_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("HPC_TOKEN", "")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", f"hpc-gateway-client/{__version__}")
        self._transfer_kinds: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    # -- transport ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None) -> Any:
        """Sends one request; returns the decoded JSON answer (None for 204).

        Raises:
            ApiError: The gateway answered with an error status (a subclass by status).
            GatewayUnreachable: No answer at all.
        """
        url = f"{self.url}{path}"
        headers = {"Accept": "application/json, application/problem+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.session.request(method, url, params=_clean(params or {}), json=json,
                                            headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise errors.GatewayUnreachable(self.url, exc) from None
        self._raise_for(response, method, url)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _raw(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, data: Any = None,
             headers: Mapping[str, str] | None = None, stream: bool = False) -> requests.Response:
        """Sends one request with a raw body and/or a raw (optionally streamed) answer."""
        url = f"{self.url}{path}"
        sent = {"Accept": "*/*", **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.session.request(method, url, params=_clean(params or {}), data=data, headers=sent,
                                            timeout=self.timeout, stream=stream)
        except requests.RequestException as exc:
            raise errors.GatewayUnreachable(self.url, exc) from None
        try:
            self._raise_for(response, method, url)
        except errors.ApiError:
            response.close()
            raise
        return response

    @staticmethod
    def _raise_for(response: requests.Response, method: str, url: str) -> None:
        if response.status_code >= 400:
            try:
                problem = response.json()
                if not isinstance(problem, dict):
                    problem = {"detail": str(problem)}
            except ValueError:
                problem = {"title": response.reason or "", "detail": response.text[:500].strip()}
            raise errors.api_error(response.status_code, problem, method, url)

    def _get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    # -- health ------------------------------------------------------------------------------------

    def health(self) -> Health:
        """GET /health: liveness (no token needed)."""
        return self._get("/health")

    def stats(self) -> dict[str, Any]:
        """GET /stats: SSH and job-tracker counters of the answering process (admin)."""
        return self._get("/stats")

    def services(self) -> list[str]:
        """GET /services: the SERRANO service names a job may request."""
        return [entry["name"] for entry in self._get("/services")]

    # -- infrastructures ---------------------------------------------------------------------------

    def list_infrastructures(self) -> list[InfrastructureSummary]:
        """GET /infrastructure: every registered infrastructure."""
        return self._get("/infrastructure")

    def get_infrastructure(self, name: str) -> InfrastructureSummary:
        """GET /infrastructure/{name}."""
        return self._get(f"/infrastructure/{_segment(name)}")

    def create_infrastructure(self, name: str, host: str, username: str, hostname: str, scheduler: str,
                              ssh_key: Mapping[str, Any], *, port: int | None = None,
                              host_key: str | None = None, settings: Mapping[str, Any] | None = None,
                              **extra: Any) -> InfrastructureSummary:
        """POST /infrastructure: registers a cluster (admin). The gateway logs in before it answers.

        Args:
            name: The name jobs and transfers refer to.
            host: Address used for SSH; ``port`` defaults to 22.
            username: The login user on the cluster.
            hostname: The cluster's own name.
            scheduler: ``slurm``, ``pbs`` or ``sge``.
            ssh_key: ``{"type": "ssh-ed25519", "path": "key file in the gateway's key dir",
                "password": "passphrase"}``, or ``{"type": ..., "private_key": "-----BEGIN ..."}``.
            host_key: The host's public key (``ssh-ed25519 AAAA...``) to pin; otherwise the gateway's
                known_hosts decides.
            settings: Site settings (``job_root``, ``allowed_roots``, ``setup_lines``, ``command_setup_lines``,
                ``mpi_launcher``, ``serrano_resources``, ``min_watch_period``).
            extra: Further fields, passed as they are (for fields newer than this client).
        """
        body = _clean({"name": name, "host": host, "username": username, "hostname": hostname,
                       "scheduler": scheduler, "ssh_key": dict(ssh_key), "port": port, "host_key": host_key,
                       "settings": dict(settings) if settings is not None else None, **extra})
        return self.request("POST", "/infrastructure", json=body)

    def update_infrastructure(self, name: str, *, host: str | None = None, port: int | None = None,
                              username: str | None = None, hostname: str | None = None,
                              ssh_key: Mapping[str, Any] | None = None, host_key: str | None = None,
                              settings: Mapping[str, Any] | None = None, reset_settings: Sequence[str] | None = None,
                              **extra: Any) -> InfrastructureSummary:
        """PATCH /infrastructure/{name}: changes the given fields only (admin).

        A new connection (``host``, ``port``, ``username``, ``ssh_key``, ``host_key``) is tried before the
        gateway answers; if it does not work the gateway refuses (422) and keeps the old one.
        ``settings`` are merged key by key; ``reset_settings`` names settings to drop back to their
        defaults; ``host_key=""`` unpins the host key; ``ssh_key={"password": ...}`` alone changes the
        passphrase of the current key.
        """
        body = _clean({"host": host, "port": port, "username": username, "hostname": hostname,
                       "ssh_key": dict(ssh_key) if ssh_key is not None else None, "host_key": host_key,
                       "settings": dict(settings) if settings is not None else None,
                       "reset_settings": list(reset_settings) if reset_settings is not None else None, **extra})
        return self.request("PATCH", f"/infrastructure/{_segment(name)}", json=body)

    def delete_infrastructure(self, name: str) -> None:
        """DELETE /infrastructure/{name} (admin); 409 while it has active jobs or transfers."""
        self.request("DELETE", f"/infrastructure/{_segment(name)}")

    def telemetry(self, name: str) -> InfrastructureTelemetry:
        """GET /infrastructure/{name}/telemetry: partitions, nodes, CPUs, job counts, read now."""
        return self._get(f"/infrastructure/{_segment(name)}/telemetry")

    # -- jobs --------------------------------------------------------------------------------------

    def submit_job(self, infrastructure: str, *, services: Sequence[str] | None = None,
                   params: Mapping[str, Any] | None = None, script: str | None = None,
                   command: Sequence[str] | None = None, template: str | None = None,
                   parameters: Mapping[str, Any] | None = None, template_version: int | None = None,
                   resources: Mapping[str, Any] | None = None, name: str | None = None,
                   workdir: str | None = None, env: Mapping[str, str] | None = None,
                   watch_period: float | None = None, reservation: str | None = None,
                   array: str | None = None, after: Sequence[str | Mapping[str, str]] | None = None,
                   inputs: Sequence[Mapping[str, Any]] | None = None,
                   outputs: Sequence[Mapping[str, Any]] | None = None,
                   **extra: Any) -> JobStatus:
        """POST /job: answers at once (state ``submitting``); the scheduler gets the job in the background.

        Give exactly one of ``services`` (SERRANO services, with ``params`` holding at least
        ``read_input_data``), ``script`` (a bash script), ``command`` (argv, each element one word) or
        ``template`` (a registered job template, with its ``parameters``; ``template_version`` default
        the newest). ``resources``: ``nodes``, ``tasks``, ``cpus_per_task``, ``memory_mb``, ``walltime``
        (``[D-]HH:MM:SS``), ``partition``, ``account``. ``reservation`` (from :meth:`dry_run_job`): the
        job takes the id the dry run reserved, so it runs the script the dry run showed.

        ``array``: run it as tasks, ``"0-99%10"`` (``START-END[:STEP][%CAP]``); each task sees its index
        in ``HPC_ARRAY_TASK_ID``. ``after``: jobs to wait for, each ``"ID"`` (condition ``ok``),
        ``"ID:notok"``, ``"ID:any"`` or ``{"job": ID, "condition": ...}``; the job is ``held`` meanwhile.

        ``inputs``: data the gateway stages onto the cluster before it submits the job
        (:func:`http_input`, :func:`s3_input`); ``outputs``: files it uploads to S3 after the job ended
        (:func:`s3_output`, ``when`` ``success`` or ``always``). The job's ``phase`` goes ``staging_in``,
        ``submitted``, ``staging_out``, ``done``; its ``status`` stays ``queued`` while inputs stage,
        ``running`` while outputs stage, and is ``completed`` only once everything ended. ``inputs`` and
        ``outputs`` of the record list each transfer's id and state.
        """
        return self.request("POST", "/job", json=_job_body(**locals()))

    def dry_run_job(self, infrastructure: str, *, services: Sequence[str] | None = None,
                    params: Mapping[str, Any] | None = None, script: str | None = None,
                    command: Sequence[str] | None = None, template: str | None = None,
                    parameters: Mapping[str, Any] | None = None, template_version: int | None = None,
                    resources: Mapping[str, Any] | None = None, name: str | None = None,
                    workdir: str | None = None, env: Mapping[str, str] | None = None,
                    watch_period: float | None = None, reservation: str | None = None,
                    array: str | None = None, after: Sequence[str | Mapping[str, str]] | None = None,
                    inputs: Sequence[Mapping[str, Any]] | None = None,
                    outputs: Sequence[Mapping[str, Any]] | None = None,
                    **extra: Any) -> JobDryRun:
        """POST /job/dry_run: what :meth:`submit_job` with the same arguments would send, without
        submitting (the batch script, the payload, the submit command, the resolved resources). Pass its
        ``reservation`` to :meth:`submit_job` to submit exactly that."""
        return self.request("POST", "/job/dry_run", json=_job_body(**locals()))

    def get_job(self, job_id: str) -> JobStatus:
        """GET /job/{id}."""
        return self._get(f"/job/{_segment(job_id)}")

    def list_jobs(self, *, infrastructure: str | None = None, state: str | None = None,
                  since: str | None = None, limit: int | None = None, offset: int | None = None) -> Page:
        """GET /job: a page of jobs, newest first (``since`` is ISO 8601 with a time zone)."""
        return self._get("/job", infrastructure=infrastructure, state=state, since=since, limit=limit,
                         offset=offset)

    def cancel_job(self, job_id: str) -> JobStatus:
        """DELETE /job/{id}: asks the scheduler to cancel; 409 once the job has ended."""
        return self.request("DELETE", f"/job/{_segment(job_id)}")

    def job_output(self, job_id: str, stream: str = "stdout", offset: int = 0,
                   length: int | None = None, task: int | None = None) -> JobOutput:
        """GET /job/{id}/output: bytes ``offset``..``offset+length`` of the job's stdout or stderr (of
        one array task with ``task``)."""
        return self._get(f"/job/{_segment(job_id)}/output", stream=stream, offset=offset, length=length, task=task)

    def list_job_tasks(self, job_id: str, *, state: str | None = None, limit: int | None = None,
                       offset: int | None = None) -> Page:
        """GET /job/{id}/tasks: a page of an array job's tasks (index, state, exit code, times)."""
        return self._get(f"/job/{_segment(job_id)}/tasks", state=state, limit=limit, offset=offset)

    def job_tasks(self, job_id: str, *, state: str | None = None, page_size: int = 1000) -> Iterator[JobTask]:
        """Every task of an array job, lowest index first, read a page at a time."""
        offset = 0
        while True:
            page = self.list_job_tasks(job_id, state=state, limit=page_size, offset=offset)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def follow_job_output(self, job_id: str, stream: str = "stdout", offset: int = 0, poll: float = 1.0,
                          timeout: float | None = None, task: int | None = None) -> Iterator[str]:
        """Yields the job's output (one array task's with ``task``) as it grows, until the job (the task)
        has ended and everything was read.

        Raises:
            WaitTimeout: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        ended_before = False
        while True:
            chunk = self.job_output(job_id, stream, offset, length=1024 * 1024,
                                    **({"task": task} if task is not None else {}))
            if chunk.get("data"):
                yield chunk["data"]
            offset = chunk.get("next_offset", offset + len(chunk.get("data", "").encode()))
            if not chunk.get("eof"):
                continue  # more is there already
            if ended_before:
                return
            # One more read after the job was seen ended: the last lines may land a moment late.
            ended_before = chunk.get("job_state") in JOB_FINAL_STATES
            if not ended_before:
                _sleep(poll, deadline, f"output of job {job_id}", timeout, lambda: self.get_job(job_id))

    def wait_for_job(self, job_id: str | Mapping[str, Any], *, timeout: float | None = None,
                     poll: float = 1.0, on_update: Callable[[JobStatus], None] | None = None,
                     until: Callable[[JobStatus], bool] = job_done, use_events: bool = True) -> JobStatus:
        """Waits until a job's ``status`` reads ``completed``; returns the last record.

        The record is read again whenever the event stream (``GET /events``) reports a change of the
        job; against a gateway without the stream (or with ``use_events=False``) every ``poll`` seconds.

        Check ``state`` (``completed``, ``failed``, ``cancelled``, ``timeout``), ``exit_code`` and
        ``reason`` for the outcome; :func:`job_succeeded` does.

        Args:
            job_id: The id, or a record with an ``id``.
            timeout: Seconds to wait at most (None: no limit).
            poll: Seconds between polls.
            on_update: Called with every record read (for a progress display).
            until: What to wait for instead of the end, e.g. ``lambda j: j["state"] == "running"``.
            use_events: Wait on the event stream when the gateway has one.

        Raises:
            WaitTimeout: The job had not ended in time (``.last`` is the last record).
        """
        job_id = _id_of(job_id)
        return self._wait(lambda: self.get_job(job_id), until, f"job {job_id}", timeout, poll, on_update,
                          job_id if use_events else None)

    # -- job templates -----------------------------------------------------------------------------

    def create_template(self, name: str, body: str, *, parameters: Mapping[str, Any] | None = None,
                        description: str | None = None, resources: Mapping[str, Any] | None = None,
                        **extra: Any) -> Template:
        """POST /template: registers version 1 of a job template (admin).

        Args:
            name: The name jobs give as ``template``.
            body: The batch script's body (bash) with ``{{name}}`` placeholders.
            parameters: The JSON Schema of the parameters (``type: object``, each placeholder a property).
            description: A line for people.
            resources: Default resources of its jobs.
        """
        return self.request("POST", "/template", json=_template_body(name=name, **_without(locals(), "name")))

    def add_template_version(self, name: str, body: str, *, parameters: Mapping[str, Any] | None = None,
                             description: str | None = None, resources: Mapping[str, Any] | None = None,
                             **extra: Any) -> Template:
        """POST /template/{name}/versions: updates a template as a new version (admin)."""
        return self.request("POST", f"/template/{_segment(name)}/versions",
                            json=_template_body(**_without(locals(), "name")))

    def list_templates(self, *, limit: int | None = None, offset: int | None = None) -> Page:
        """GET /template: every template's newest version (summaries), the built-in ``serrano`` first."""
        return self._get("/template", limit=limit, offset=offset)

    def get_template(self, name: str, version: int | None = None) -> Template:
        """GET /template/{name}, or /template/{name}/versions/{version}."""
        if version is None:
            return self._get(f"/template/{_segment(name)}")
        return self._get(f"/template/{_segment(name)}/versions/{int(version)}")

    def template_versions(self, name: str, *, limit: int | None = None, offset: int | None = None) -> Page:
        """GET /template/{name}/versions: its versions, newest first."""
        return self._get(f"/template/{_segment(name)}/versions", limit=limit, offset=offset)

    def deprecate_template(self, name: str) -> None:
        """DELETE /template/{name}: refuses new jobs from it (admin); its versions stay readable."""
        self.request("DELETE", f"/template/{_segment(name)}")

    # -- the cluster's files -----------------------------------------------------------------------
    # Paths are relative to the cluster user's home unless absolute, and must lie in the allowed roots.

    def list_files(self, infrastructure: str, path: str = "~", *, limit: int | None = None,
                   offset: int | None = None) -> FileList:
        """GET /infrastructure/{name}/files: a page of a directory's entries, by name."""
        return self.request("GET", f"/infrastructure/{_segment(infrastructure)}/files",
                            params={"path": path, "limit": limit, "offset": offset})

    def stat_file(self, infrastructure: str, path: str) -> FileEntry:
        """GET /infrastructure/{name}/files/stat: the entry itself and where it leads (``realpath``)."""
        return self.request("GET", f"/infrastructure/{_segment(infrastructure)}/files/stat", params={"path": path})

    def read_file(self, infrastructure: str, path: str, *, offset: int | None = None, length: int | None = None,
                  tail: int | None = None, encoding: str | None = None) -> FileContent:
        """GET /infrastructure/{name}/files/content: at most 4 MiB, from ``offset`` or the last ``tail`` bytes."""
        return self.request("GET", f"/infrastructure/{_segment(infrastructure)}/files/content",
                            params={"path": path, "offset": offset, "length": length, "tail": tail,
                                    "encoding": encoding})

    def iter_download(self, infrastructure: str, path: str, *, start: int | None = None, end: int | None = None,
                      chunk_size: int = 1024 * 1024) -> tuple[int, Iterator[bytes]]:
        """GET /infrastructure/{name}/files/download, streamed: ``(bytes coming, chunks)``; bytes
        ``[start, end)`` when either is given (a Range request)."""
        headers = {}
        if start is not None or end is not None:
            headers["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
        response = self._raw("GET", f"/infrastructure/{_segment(infrastructure)}/files/download",
                             params={"path": path}, headers=headers, stream=True)
        length = int(response.headers.get("Content-Length", "0"))

        def chunks() -> Iterator[bytes]:
            with response:
                yield from response.iter_content(chunk_size)

        return length, chunks()

    def download_file(self, infrastructure: str, path: str, destination: str | os.PathLike, *,
                      progress: Callable[[int, int], None] | None = None) -> int:
        """Downloads a file to ``destination`` (written beside it, then renamed); returns its size.
        ``progress(done, total)`` is called as chunks arrive.

        Raises:
            ApiError: As the gateway answered.
            OSError: The stream ended early (nothing is left at ``destination``).
        """
        total, chunks = self.iter_download(infrastructure, path)
        temporary = f"{os.fspath(destination)}.part"
        done = 0
        with open(temporary, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if done != total:
            os.unlink(temporary)
            raise OSError(f"the download of {path} stopped after {done} of {total} bytes")
        os.replace(temporary, destination)
        return done

    def upload_file(self, infrastructure: str, path: str, data: bytes | Any, *, overwrite: bool = False) -> FileEntry:
        """POST /infrastructure/{name}/files/upload: a small file (``files_upload_max``, 4 MiB by default);
        ``data``: bytes, or a file-like object with a length (read in blocks as it is sent)."""
        response = self._raw("POST", f"/infrastructure/{_segment(infrastructure)}/files/upload",
                             params={"path": path, "overwrite": "true" if overwrite else None}, data=data,
                             headers={"Content-Type": "application/octet-stream"})
        return response.json()

    def make_directory(self, infrastructure: str, path: str) -> FileEntry:
        """POST /infrastructure/{name}/files/directory: ``mkdir -p``."""
        return self.request("POST", f"/infrastructure/{_segment(infrastructure)}/files/directory", json={"path": path})

    def remove_file(self, infrastructure: str, path: str, *, recursive: bool = False) -> None:
        """DELETE /infrastructure/{name}/files: a file, or a directory tree with ``recursive``."""
        self.request("DELETE", f"/infrastructure/{_segment(infrastructure)}/files",
                     params={"path": path, "recursive": "true" if recursive else None})

    def move_file(self, infrastructure: str, src: str, dst: str) -> FileEntry:
        """POST /infrastructure/{name}/files/move: never replaces an existing ``dst``."""
        return self.request("POST", f"/infrastructure/{_segment(infrastructure)}/files/move",
                            json={"src": src, "dst": dst})

    def checksum_file(self, infrastructure: str, path: str) -> FileChecksum:
        """GET /infrastructure/{name}/files/sha256: computed on the cluster."""
        return self.request("GET", f"/infrastructure/{_segment(infrastructure)}/files/sha256", params={"path": path})

    # -- transfers ---------------------------------------------------------------------------------

    def create_http_transfer(self, src: str, dst: str, infrastructure: str, *,
                             callback_url: str | None = None) -> TransferStatus:
        """POST /data: copies an http(s) URL to ``dst`` on the cluster (relative to the home directory).

        ``callback_url`` (on every create method, and ``submit_job``): a webhook URL that gets every
        event of the new resource; the answer's ``callback`` holds its signing secret, shown once."""
        record = self.request("POST", "/data", json=_clean({"src": src, "dst": dst, "infrastructure": infrastructure,
                                                            "callback_url": callback_url}))
        return self._remember(record, "http")

    def create_s3_data_transfer(self, *, endpoint: str, bucket: str, object: str, dst: str,
                                infrastructure: str, access_key: str, secret_key: str,
                                region: str = "local", callback_url: str | None = None) -> TransferStatus:
        """POST /s3_data: copies an S3 object to ``dst`` on the cluster."""
        body = {"endpoint": endpoint, "bucket": bucket, "object": object, "region": region,
                "access_key": access_key, "secret_key": secret_key, "dst": dst, "infrastructure": infrastructure,
                "callback_url": callback_url}
        body = _clean(body)
        return self._remember(self.request("POST", "/s3_data", json=body), "s3_data")

    def create_s3_result_transfer(self, *, endpoint: str, bucket: str, object: str, src: str,
                                  infrastructure: str, access_key: str, secret_key: str,
                                  region: str = "local", callback_url: str | None = None) -> TransferStatus:
        """POST /s3_result: copies ``src`` on the cluster to an S3 object."""
        body = {"endpoint": endpoint, "bucket": bucket, "object": object, "region": region,
                "access_key": access_key, "secret_key": secret_key, "src": src, "infrastructure": infrastructure,
                "callback_url": callback_url}
        body = _clean(body)
        return self._remember(self.request("POST", "/s3_result", json=body), "s3_result")

    def get_transfer(self, transfer_id: str, kind: TransferKind | None = None) -> TransferStatus:
        """GET /data/{id}, /s3_data/{id} or /s3_result/{id}; the record gets a ``kind`` field.

        Without ``kind`` the client finds it (a transfer it created, else by asking each path).
        """
        return self._transfer_call("GET", transfer_id, kind)

    def cancel_transfer(self, transfer_id: str, kind: TransferKind | None = None) -> TransferStatus:
        """DELETE on the transfer's path: stops it; 409 once it has ended."""
        return self._transfer_call("DELETE", transfer_id, kind)

    def list_transfers(self, *, infrastructure: str | None = None, kind: str | None = None,
                       state: str | None = None, since: str | None = None, limit: int | None = None,
                       offset: int | None = None) -> Page:
        """GET /transfer: a page of transfers of every kind, newest first."""
        page = self._get("/transfer", infrastructure=infrastructure, kind=kind, state=state, since=since,
                         limit=limit, offset=offset)
        for item in page.get("items", []):
            if item.get("id") and item.get("kind"):
                self._transfer_kinds[item["id"]] = item["kind"]
        return page

    def wait_for_transfer(self, transfer_id: str | Mapping[str, Any], kind: TransferKind | None = None, *,
                          timeout: float | None = None, poll: float = 1.0,
                          on_update: Callable[[TransferStatus], None] | None = None,
                          use_events: bool = True) -> TransferStatus:
        """Waits until a transfer's ``status`` is no longer ``transferring``; returns the last record.

        Reads the record when the event stream reports a change (progress comes about once a second),
        else every ``poll`` seconds, as :meth:`wait_for_job` does.

        ``state`` tells the outcome (``completed``, ``failed``, ``cancelled``) and ``reason`` why;
        ``bytes_done``, ``bytes_total``, ``rate`` and ``eta`` show progress in every record passed to
        ``on_update``.

        Raises:
            WaitTimeout: The transfer had not ended in time (``.last`` is the last record).
        """
        if isinstance(transfer_id, Mapping):
            kind = kind or transfer_id.get("kind")
        transfer_id = _id_of(transfer_id)
        return self._wait(lambda: self.get_transfer(transfer_id, kind), transfer_done, f"transfer {transfer_id}",
                          timeout, poll, on_update, transfer_id if use_events else None)

    # -- internals ---------------------------------------------------------------------------------

    def _remember(self, record: dict[str, Any], kind: str) -> dict[str, Any]:
        record.setdefault("kind", kind)
        self._transfer_kinds[record["id"]] = kind
        return record

    def _transfer_call(self, method: str, transfer_id: str, kind: str | None) -> TransferStatus:
        kind = kind or self._transfer_kinds.get(transfer_id)
        kinds = [kind] if kind else list(TRANSFER_PATHS)
        not_found: errors.NotFound | None = None
        for candidate in kinds:
            if candidate not in TRANSFER_PATHS:
                raise ValueError(f"kind must be one of {sorted(TRANSFER_PATHS)}, not {candidate!r}")
            try:
                record = self.request(method, f"{TRANSFER_PATHS[candidate]}/{_segment(transfer_id)}")
            except errors.NotFound as exc:
                not_found = exc
                continue
            return self._remember(record, candidate)
        assert not_found is not None
        raise not_found

    def _wait(self, read: Callable[[], dict], done: Callable[[dict], bool], what: str, timeout: float | None,
              poll: float, on_update: Callable[[dict], None] | None, watch_id: str | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        last: dict[str, Any] = {}
        failures = 0
        # Connected before the first read: a change between that read and the stream cannot be missed.
        notifier = ChangeNotifier(self, [watch_id]) if watch_id else None
        try:
            while True:
                try:
                    record = read()
                except (errors.GatewayUnreachable, errors.ServerError) as exc:
                    # Ridden out for a while once the record was seen: a gateway restart or a proxy's 502
                    # must not abort a wait of hours. An error on the first read is the caller's to see.
                    transient = isinstance(exc, errors.GatewayUnreachable) or exc.status in _TRANSIENT_STATUSES
                    failures += 1
                    if not last or not transient or failures > _MAX_TRANSIENT_FAILURES:
                        raise
                else:
                    failures = 0
                    last = record
                    if on_update is not None:
                        on_update(record)
                    if done(record):
                        return record
                if notifier is not None and notifier.available and failures == 0:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise errors.WaitTimeout(what, timeout or 0, last)
                    notifier.wait(_EVENT_WAIT_POLL if left is None else min(_EVENT_WAIT_POLL, left))
                else:
                    _sleep(poll, deadline, what, timeout, lambda: last)  # noqa: B023 (called in this iteration)
        finally:
            if notifier is not None:
                notifier.close()

    # -- events and webhooks -----------------------------------------------------------------------

    def events(self, *, kind: str | None = None, resource_id: str | Sequence[str] | None = None,
               type: str | Sequence[str] | None = None, last_event_id: int | None = None,
               follow: bool = True, reconnect: bool = True) -> Iterator[Event]:
        """GET /events: the caller's events (an admin's: all) as documents, oldest first.

        With ``follow`` the iterator waits for new events for ever (break out of the loop to stop);
        without, it ends after the stored ones. A dropped connection is resumed from the last event id
        seen (``reconnect``), so nothing is missed and nothing repeats. ``last_event_id`` starts after
        that event (default: with the next new event, or with the oldest stored one when not following).

        Each document: ``id``, ``type`` (``job.state``, ``job.output``, ``transfer.state``,
        ``transfer.progress``), ``time``, ``resource`` (``kind``, ``id``) and ``data``.
        """
        return iter_events(self, kind=kind, resource_id=resource_id, type=type, last_event_id=last_event_id,
                           follow=follow, reconnect=reconnect)

    def create_subscription(self, url: str, *, types: Sequence[str] | None = None,
                            resource_ids: Sequence[str] | None = None) -> Subscription:
        """POST /subscription: ``url`` gets matching events, signed; the answer's ``secret`` is shown once
        (check deliveries with :func:`hpc.client.webhooks.verify_delivery` or ``WebhookReceiver``)."""
        body = _clean({"url": url, "types": list(types) if types is not None else None,
                       "resource_ids": list(resource_ids) if resource_ids is not None else None})
        return self.request("POST", "/subscription", json=body)

    def list_subscriptions(self, *, limit: int | None = None, offset: int | None = None) -> Page:
        """GET /subscription: the caller's webhook subscriptions (an admin's: all), newest first."""
        return self._get("/subscription", limit=limit, offset=offset)

    def get_subscription(self, subscription_id: str) -> Subscription:
        """GET /subscription/{id}: with delivery counts, the last error and the latest dead letters."""
        return self._get(f"/subscription/{_segment(subscription_id)}")

    def delete_subscription(self, subscription_id: str) -> None:
        """DELETE /subscription/{id}: no more deliveries; undelivered ones are dropped."""
        self.request("DELETE", f"/subscription/{_segment(subscription_id)}")

    # -- tokens and the audit log (admins) -------------------------------------------------------------

    def create_token(self, name: str, role: str = "user", *, expires_at: str | None = None) -> Token:
        """POST /token: a bearer token for principal ``name`` with ``role``; the answer's ``token`` is the
        secret, shown once (the gateway keeps only a salted hash). ``expires_at``: ISO 8601 with a time zone."""
        return self.request("POST", "/token", json=_clean({"name": name, "role": role, "expires_at": expires_at}))

    def list_tokens(self, *, include_revoked: bool | None = None, limit: int | None = None,
                    offset: int | None = None) -> Page:
        """GET /token: the tokens made through the API (never their secrets), newest first."""
        flag = None if include_revoked is None else str(bool(include_revoked)).lower()
        return self._get("/token", include_revoked=flag, limit=limit, offset=offset)

    def get_token(self, token_id: str) -> Token:
        """GET /token/{id}."""
        return self._get(f"/token/{_segment(token_id)}")

    def revoke_token(self, token_id: str) -> Token:
        """DELETE /token/{id}: refused by every replica within a second; open event streams end too."""
        return self.request("DELETE", f"/token/{_segment(token_id)}")

    def audit(self, *, action: str | None = None, principal: str | None = None, since: str | None = None,
              limit: int | None = None, offset: int | None = None) -> Page:
        """GET /audit: administrative actions (``AuditEntry`` items), newest first; ``since`` is ISO 8601."""
        return self._get("/audit", action=action, principal=principal, since=since, limit=limit, offset=offset)


def _sleep(poll: float, deadline: float | None, what: str, timeout: float | None,
           last: Callable[[], dict]) -> None:
    """Sleeps ``poll`` seconds, or raises WaitTimeout when the deadline has passed."""
    if deadline is None:
        time.sleep(poll)
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise errors.WaitTimeout(what, timeout or 0, last())
    time.sleep(min(poll, left))


def _without(fields: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """A method's arguments (``locals()``) minus ``self``, ``names`` and ``extra``, with ``extra`` merged in."""
    kept = {key: value for key, value in fields.items() if key not in ("self", "extra", *names)}
    return {**kept, **fields.get("extra", {})}


def http_input(url: str, dst: str) -> dict[str, Any]:
    """One of a job's ``inputs``: an http(s) URL downloaded to ``dst`` on the cluster."""
    return {"url": url, "dst": dst}


def _s3(endpoint: str, bucket: str, object: str, access_key: str, secret_key: str,
        region: str | None) -> dict[str, Any]:
    return _clean({"endpoint": endpoint, "bucket": bucket, "object": object, "access_key": access_key,
                   "secret_key": secret_key, "region": region})


def s3_input(*, endpoint: str, bucket: str, object: str, access_key: str, secret_key: str, dst: str,
             region: str | None = None) -> dict[str, Any]:
    """One of a job's ``inputs``: an S3 object copied to ``dst`` on the cluster."""
    return {"s3": _s3(endpoint, bucket, object, access_key, secret_key, region), "dst": dst}


def s3_output(*, src: str, endpoint: str, bucket: str, object: str, access_key: str, secret_key: str,
              when: str = "success", region: str | None = None) -> dict[str, Any]:
    """One of a job's ``outputs``: ``src`` on the cluster uploaded to an S3 object after the job ended
    (``when="success"``: only if it completed; ``"always"``: whatever its end)."""
    return {"src": src, "s3": _s3(endpoint, bucket, object, access_key, secret_key, region), "when": when}


def _job_body(**fields: Any) -> dict[str, Any]:
    """The body of POST /job and /job/dry_run from :meth:`Client.submit_job`'s arguments."""
    fields = _without(fields)
    for key in ("services", "command"):
        if fields.get(key) is not None:
            fields[key] = list(fields[key])
    for key in ("params", "parameters", "resources", "env"):
        if fields.get(key) is not None:
            fields[key] = dict(fields[key])
    if fields.get("after") is not None:
        fields["after"] = [dependency(item) for item in fields["after"]]
    for key in ("inputs", "outputs"):
        if fields.get(key) is not None:
            fields[key] = [dict(item) for item in fields[key]]
    return _clean(fields)


def _template_body(**fields: Any) -> dict[str, Any]:
    for key in ("parameters", "resources"):
        if fields.get(key) is not None:
            fields[key] = dict(fields[key])
    return _clean(fields)


def _id_of(value: str | Mapping[str, Any]) -> str:
    return str(value["id"]) if isinstance(value, Mapping) else str(value)


def _segment(value: str) -> str:
    """One path segment, percent-encoded (a name with ``/`` must not address another path)."""
    return requests.utils.quote(str(value), safe="")
