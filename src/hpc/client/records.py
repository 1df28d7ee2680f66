"""The records the gateway answers with, as typed dictionaries (``openapi/openapi.yaml`` has every field).

They are plain ``dict`` objects at run time (what ``response.json()`` gives), so they print, compare and
serialise as JSON without conversion; the types only tell an editor and a type checker what is there.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from hpc.states import JOB_ENDED_STATES

JobStatusCode = Literal["queued", "running", "completed"]
JobState = Literal["held", "submitting", "queued", "running", "completed", "failed", "cancelled", "timeout",
                   "unknown"]
DependencyCondition = Literal["ok", "notok", "any"]
TransferKind = Literal["http", "s3_data", "s3_result"]
TransferStatusCode = Literal["transferring", "completed", "failure"]
TransferState = Literal["queued", "transferring", "verifying", "completed", "failed", "cancelled"]

#: Job states after which nothing changes any more (``unknown`` included: hpc.states has the definition).
JOB_FINAL_STATES = JOB_ENDED_STATES
#: Transfer states after which nothing changes any more.
TRANSFER_FINAL_STATES = frozenset({"completed", "failed", "cancelled"})


class Health(TypedDict, total=False):
    status: str
    version: str
    auth: bool
    database: str


class InfrastructureSummary(TypedDict, total=False):
    name: str
    host: str
    hostname: str
    scheduler: Literal["slurm", "pbs", "sge"]
    port: int
    username: str
    host_key_fingerprint: str
    settings: dict
    created_at: str


class Partition(TypedDict):
    name: str
    total_nodes: int
    avail_nodes: int
    total_cpus: int
    avail_cpus: int
    running_jobs: int
    queued_jobs: int


class InfrastructureTelemetry(TypedDict, total=False):
    name: str
    host: str
    hostname: str
    scheduler: str
    partitions: list[Partition]
    collected_at: str


class JobArray(TypedDict, total=False):
    """An array job's tasks: ``spec`` as submitted, ``size`` tasks, ``counts`` per state."""

    spec: str
    size: int
    counts: dict[str, int]


class JobDependency(TypedDict, total=False):
    """One ``after`` entry: enforced by the scheduler (``native``) or by the gateway holding the job."""

    job: str
    condition: DependencyCondition
    mode: Literal["native", "gateway"]
    state: Literal["pending", "satisfied", "unsatisfiable"]
    native: str | None


class JobTask(TypedDict, total=False):
    index: int
    state: JobState
    native_state: str | None
    reason: str | None
    exit_code: int | None
    scheduler_id: str | None
    started_at: str | None
    ended_at: str | None


class JobStatus(TypedDict, total=False):
    id: str
    scheduler_id: str
    infrastructure: str
    status: JobStatusCode
    state: JobState
    native_state: str | None
    reason: str | None
    exit_code: int | None
    name: str
    kind: Literal["serrano", "script", "command", "template"]
    template: str | None
    template_version: int | None
    services: list[str]
    watch_period: float
    cancel_requested: bool
    created_at: str
    submitted_at: str | None
    started_at: str | None
    ended_at: str | None
    updated_at: str
    array: JobArray
    after: list[JobDependency]


class JobDryRun(TypedDict, total=False):
    """What ``POST /job`` would send (``POST /job/dry_run``); ``reservation`` makes the job use ``job_id``."""

    job_id: str
    reservation: str
    reservation_expires_at: str
    infrastructure: str
    scheduler: str
    kind: str
    name: str
    template: str | None
    template_version: int | None
    home: str
    job_dir: str
    workdir: str | None
    script: str
    script_path: str
    payload: str
    payload_path: str
    submit_command: str
    script_on_stdin: bool
    resources: dict
    cluster_contacted: bool


class Template(TypedDict, total=False):
    """One version of a job template (listings carry only the summary fields)."""

    name: str
    version: int
    description: str
    body: str
    parameters: dict
    placeholders: list[str]
    resources: dict
    latest_version: int
    builtin: bool
    deprecated: bool
    deprecated_at: str | None
    owner: str
    created_at: str


class JobOutput(TypedDict, total=False):
    stream: Literal["stdout", "stderr"]
    offset: int
    next_offset: int
    size: int
    data: str
    eof: bool
    job_state: JobState


class TransferStatus(TypedDict, total=False):
    """Any transfer: ``kind`` is set in listings; the per-kind GETs leave it out."""

    id: str
    kind: TransferKind
    infrastructure: str
    status: TransferStatusCode
    state: TransferState
    reason: str
    src: str
    dst: str
    endpoint: str
    bucket: str
    object: str
    region: str
    bytes_done: int
    bytes_total: int | None
    percent: float | None
    rate: float | None
    eta: float | None
    sha256: str | None
    attempts: int
    created_at: str
    started_at: str | None
    ended_at: str | None
    updated_at: str


class Page(TypedDict):
    items: list
    total: int
    limit: int
    offset: int


EventType = Literal["job.state", "job.output", "transfer.state", "transfer.progress"]


class EventResource(TypedDict):
    kind: Literal["job", "transfer"]
    id: str


class Event(TypedDict, total=False):
    """One event of ``GET /events`` or a webhook delivery (which adds ``subscription``)."""

    id: int
    type: EventType
    time: str
    resource: EventResource
    data: dict[str, Any]
    subscription: str


class Subscription(TypedDict, total=False):
    """A webhook subscription; ``secret`` only in the answer that created it."""

    id: str
    url: str
    types: list[EventType] | None
    resource_ids: list[str] | None
    source: Literal["api", "callback"]
    owner: str
    created_at: str
    deliveries: dict[str, int]
    last_error: str | None
    last_error_at: str | None
    last_delivered_at: str | None
    dead_letters: list[dict[str, Any]]
    secret: str
