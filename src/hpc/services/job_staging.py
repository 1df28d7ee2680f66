"""Jobs that stage their own data: ``inputs`` staged before the job is submitted, ``outputs`` after it ends.

Life of such a job (``phase`` on the job; ``state`` as for any job)::

    staging_in (state held)  -> submitted (held while dependencies wait, then submitting, queued, ...)
                             -> staging_out (state staging_out: the job's own outcome kept in end_state)
                             -> done (state: the job's outcome; failed when a success output failed)

Each input and output is a transfer made through :class:`~hpc.services.transfers.TransferService`'s public
``create_*`` methods, under an id chosen when the job is accepted (``job_transfers``): making it again
after a crash finds it made (``DuplicateKey``), so no transfer is ever made twice. The request, with its
S3 keys or signed URL, is kept Fernet-encrypted on the link until the transfer is made (the transfer then
keeps its own encrypted copy until it ends) and dropped when the job ends.

Every decision is taken from the store, every tick, by whichever replica looks (like the dependency
check in :mod:`hpc.services.jobs`), and every write is conditional on the state it decides from: two
replicas looking at once make each transfer once and move the job once. Inputs are made as soon as the
job is accepted; once all completed the job goes to the scheduler; a failed or cancelled input ends it
``failed`` (nothing submitted), the reason naming ``inputs.N``. When the job ends, the outputs whose
``when`` matches are made (``success``: the job completed, exit code 0; ``always``: it was submitted and
did not end cancelled before it started); the job keeps state ``staging_out`` (legacy ``status``
``running``) until they ended. A failed output turns a ``completed`` job ``failed`` (its exit code stays
0): the flow's result is not where the caller asked for it, and an orchestrator that only reads
``status``/``state`` must not take the flow for a success. Any other outcome is kept; the reason names
the output either way.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from collections.abc import Sequence

from hpc.errors import Conflict, DomainError, InvalidInput, NotFound
from hpc.security import Principal, SecretBox
from hpc.services import metrics
from hpc.states import JOB_ENDED_STATES
from hpc.store import DuplicateKey, Store
from hpc.store.tables import utcnow

log = logging.getLogger(__name__)

STAGING_IN, SUBMITTED, STAGING_OUT, DONE = "staging_in", "submitted", "staging_out", "done"
STAGING_OUT_STATE = "staging_out"  # the job's state while its outputs stage (legacy status: running)
TRANSFER_ENDED = frozenset({"completed", "failed", "cancelled"})
MAX_ITEMS = 32  # inputs and outputs each (the contract's maxItems)
GIVE_UP = timedelta(minutes=10)  # a transfer that cannot be made (cluster unreachable) this long fails
_FIELDS = {"src": "url", "endpoint": "s3.endpoint", "bucket": "s3.bucket", "object": "s3.object",
           "region": "s3.region", "dst": "dst"}
_OUT_FIELDS = {"src": "src", "endpoint": "s3.endpoint", "bucket": "s3.bucket", "object": "s3.object",
               "region": "s3.region"}


# -- pure decisions ------------------------------------------------------------------------------------


def output_runs(when: str, end_state: str, exit_code: int | None, submitted: bool, started: bool) -> bool:
    """Whether an output with ``when`` runs after the job ended ``end_state``."""
    if not submitted:
        return False  # never reached the scheduler: nothing was written
    if when == "always":
        return not (end_state == "cancelled" and not started)
    return end_state == "completed" and (exit_code or 0) == 0


@dataclass(frozen=True)
class InputsOutcome:
    """What the inputs allow: ``wait``, ``ready`` (all completed) or ``failed`` (``reason`` names it)."""

    verdict: str
    reason: str | None = None


def inputs_outcome(links: Sequence[dict[str, Any]]) -> InputsOutcome:
    """Decides from a job's input links (each with its ``transfer`` row or None)."""
    waiting = []
    for link in links:
        transfer = link.get("transfer")
        if link["state"] == "failed":
            return InputsOutcome("failed", f"inputs.{link['position']} could not be staged: {link['reason']}"
                                 "; the job was not submitted")
        if transfer is None:
            waiting.append(f"inputs.{link['position']} (not started)")
            continue
        if transfer["state"] in ("failed", "cancelled"):
            how = "was cancelled" if transfer["state"] == "cancelled" else "failed"
            why = f": {transfer['reason']}" if transfer["reason"] else ""
            return InputsOutcome("failed", f"inputs.{link['position']} (transfer {transfer['id']}) {how}{why}"
                                 "; the job was not submitted")
        if transfer["state"] != "completed":
            total = f"/{transfer['bytes_total']}" if transfer["bytes_total"] is not None else ""
            waiting.append(f"inputs.{link['position']} ({transfer['state']}, {transfer['bytes_done']}{total} bytes)")
    if waiting:
        return InputsOutcome("wait", "staging inputs: " + ", ".join(waiting))
    return InputsOutcome("ready")


def final_outcome(end_state: str, reason: str | None,
                  outputs: Sequence[dict[str, Any]]) -> tuple[str, str | None] | None:
    """The job's final ``(state, reason)`` once every output that runs has ended; None while one has not.
    ``outputs``: the links of the outputs that run, each with its ``transfer`` row (None: not made)."""
    failed = []
    for link in outputs:
        transfer = link.get("transfer")
        if link["state"] == "failed":
            failed.append(f"outputs.{link['position']} could not be made: {link['reason']}")
            continue
        if transfer is None or transfer["state"] not in TRANSFER_ENDED:
            return None
        if transfer["state"] != "completed":
            how = "was cancelled" if transfer["state"] == "cancelled" else "failed"
            why = f": {transfer['reason']}" if transfer["reason"] else ""
            failed.append(f"outputs.{link['position']} (transfer {transfer['id']}) {how}{why}")
    if not failed:
        return end_state, reason
    note = "; ".join(failed)
    if end_state == "completed":
        return "failed", f"the job completed but its outputs did not: {note}"
    return end_state, f"{reason}; {note}" if reason else note


def cancelled_reason(end_state: str, exit_code: int | None, outputs: Sequence[dict[str, Any]]) -> str:
    """Why a job cancelled while its outputs staged ended ``cancelled``: its own end, and which outputs
    did not complete."""
    code = f", exit code {exit_code}" if exit_code is not None else ""
    missed = [f"outputs.{link['position']}" for link in outputs
              if link["state"] == "failed" or (link.get("transfer") or {}).get("state") != "completed"]
    tail = f"; not uploaded: {', '.join(missed)}" if missed else ""
    return f"cancelled while its outputs were staged (the job itself ended {end_state}{code}){tail}"


# -- the service ---------------------------------------------------------------------------------------


class JobStaging:
    """Validates a job's inputs/outputs, links their transfers, and moves the job through its phases."""

    def __init__(self, store: Store, secrets: SecretBox, transfers: Any, wake: Any = None):
        self.store = store
        self.wake = wake  # called when a job may be submitted now
        self.secrets = secrets
        self.transfers = transfers  # hpc.services.transfers.TransferService: its public create_*/cancel

    # -- requests -----------------------------------------------------------------------------

    def check(self, request: Any, infrastructure: str, principal: Principal, job_id: str | None
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Validates ``inputs``/``outputs`` exactly as the transfer endpoints would (address policy,
        paths confined to the allowed roots): the link rows to store for ``job_id`` (None: a dry run) and
        what the job's spec keeps of them (no secrets). InvalidInput names ``inputs.N.field``."""
        inputs = list(getattr(request, "inputs", None) or [])
        outputs = list(getattr(request, "outputs", None) or [])
        if len(inputs) > MAX_ITEMS or len(outputs) > MAX_ITEMS:
            raise InvalidInput(f"at most {MAX_ITEMS} inputs and {MAX_ITEMS} outputs",
                               "inputs" if len(inputs) > MAX_ITEMS else "outputs")
        rows, seen = [], {}
        now = utcnow()
        for position, item in enumerate(inputs):
            field = f"inputs.{position}"
            kind, body = self._input_request(item, infrastructure, field)
            checked = self._validate(kind, body, principal, field, _FIELDS)
            if checked["path"] in seen:
                raise InvalidInput(f"{field}.dst: {checked['path']} is also the destination of {seen[checked['path']]}",
                                   f"{field}.dst")
            seen[checked["path"]] = field
            rows.append(self._link(job_id, "input", position, kind, None, item.dst, body, now))
        for position, item in enumerate(outputs):
            field = f"outputs.{position}"
            when = getattr(item.when, "value", item.when) or "success"
            body = {"infrastructure": infrastructure, "src": item.src, **self._s3(item.s3)}
            self._validate("s3_result", body, principal, field, _OUT_FIELDS)
            rows.append(self._link(job_id, "output", position, "s3_result", when, item.src, body, now))
        spec = {}
        if inputs:
            spec["inputs"] = [{"kind": r["kind"], "dst": r["path"]} for r in rows if r["role"] == "input"]
        if outputs:
            spec["outputs"] = [{"src": r["path"], "when": r["when"]} for r in rows if r["role"] == "output"]
        return (rows if job_id else []), spec

    @staticmethod
    def _s3(s3: Any) -> dict[str, Any]:
        return {"endpoint": s3.endpoint, "bucket": s3.bucket, "object": s3.object,
                "region": s3.region if s3.region is not None else "local",
                "access_key": s3.access_key, "secret_key": s3.secret_key}

    def _input_request(self, item: Any, infrastructure: str, field: str) -> tuple[str, dict[str, Any]]:
        if (item.url is None) == (item.s3 is None):
            raise InvalidInput("give exactly one of url or s3", f"{field}.url")
        if item.url is not None:
            return "http", {"infrastructure": infrastructure, "src": item.url, "dst": item.dst}
        return "s3_data", {"infrastructure": infrastructure, "dst": item.dst, **self._s3(item.s3)}

    def _validate(self, kind: str, body: dict[str, Any], principal: Principal, field: str,
                  names: dict[str, str]) -> dict[str, Any]:
        try:
            return self._create(kind, body, principal, check_only=True)
        except InvalidInput as exc:
            sub = names.get(exc.field or "", exc.field or "")
            where = f"{field}.{sub}" if sub else field
            detail = exc.detail
            if exc.field and detail.startswith(f"{exc.field}: "):
                detail = detail[len(exc.field) + 2:]
            raise InvalidInput(f"{where}: {detail}", where) from None

    def _link(self, job_id, role, position, kind, when, path, body, now) -> dict[str, Any]:
        return {"job_id": job_id, "role": role, "position": position, "transfer_id": str(uuid.uuid4()),
                "kind": kind, "when": when, "path": path, "request_enc": self.secrets.encrypt(json.dumps(body)),
                "state": "pending", "reason": None, "updated_at": now}

    def _create(self, kind: str, body: dict[str, Any], principal: Principal, **options: Any) -> dict[str, Any]:
        request = SimpleNamespace(**body)
        create = {"http": self.transfers.create_http, "s3_data": self.transfers.create_s3_data,
                  "s3_result": self.transfers.create_s3_result}[kind]
        return create(request, principal, **options)

    # -- the flow -----------------------------------------------------------------------------

    def start_inputs(self, job_id: str) -> None:
        """Makes the inputs of a job just accepted (the tick makes what this leaves undone)."""
        job = self.store.jobs.get(job_id)
        if job is not None:
            self._stage_in(job, self.store.job_transfers.for_jobs([job_id])[job_id])

    def tick(self) -> None:
        """One look at every job staging data, and at the loose ends of jobs that ended."""
        rows = self.store.jobs.staging((STAGING_IN, STAGING_OUT), JOB_ENDED_STATES)
        links = self.store.job_transfers.for_jobs([r["id"] for r in rows])
        for job in rows:
            try:
                if job["phase"] == STAGING_IN:
                    self._stage_in(job, links[job["id"]])
                elif job["state"] == STAGING_OUT_STATE:
                    self._stage_out(job, links[job["id"]])
            except Exception:  # one job's fault must not stop the others
                log.exception("job %s: staging step failed", job["id"])
        self._tidy()

    def _principal(self, job: dict[str, Any]) -> Principal:
        return Principal(name=job["owner"], role="user", credential=job.get("credential") or "config")

    def _make(self, job: dict[str, Any], link: dict[str, Any]) -> None:
        """Makes the transfer of a pending link under its chosen id; records a failure that no retry can
        cure on the link (``state`` failed)."""
        role, position = link["role"], link["position"]
        c = self.store.job_transfers.table.c
        body = json.loads(self.secrets.decrypt(link["request_enc"])) if link["request_enc"] else None
        if body is None:
            self.store.job_transfers.update(job["id"], role, position, [c.state == "pending"], state="failed",
                                            reason="its request is gone")
            return
        try:
            self._create(link["kind"], body, self._principal(job), parent=f"job:{job['id']}",
                         transfer_id=link["transfer_id"])
        except DuplicateKey:
            pass  # made by an earlier attempt (or another replica)
        except (InvalidInput, NotFound) as exc:
            log.warning("job %s: %ss.%d cannot be made: %s", job["id"], role, position, exc.detail)
            self.store.job_transfers.update(job["id"], role, position, [c.state == "pending"], state="failed",
                                            reason=exc.detail, request_enc=None)
            return
        except DomainError as exc:  # the cluster is unreachable: tried again on the next tick, for a while
            if link["reason"] is None:
                self.store.job_transfers.update(job["id"], role, position, [c.state == "pending"], reason=exc.detail)
            elif utcnow() - link["updated_at"] > GIVE_UP:
                self.store.job_transfers.update(job["id"], role, position, [c.state == "pending"], state="failed",
                                                reason=f"not made within {GIVE_UP}: {exc.detail}", request_enc=None)
            return
        self.store.job_transfers.update(job["id"], role, position, [c.state == "pending"], state="created",
                                        reason=None, request_enc=None)
        log.info("job %s: %ss.%d is transfer %s", job["id"], role, position, link["transfer_id"])

    def _stage_in(self, job: dict[str, Any], links: list[dict[str, Any]]) -> None:
        inputs = [link for link in links if link["role"] == "input"]
        if job["cancel_requested"] or job["state"] in JOB_ENDED_STATES:
            return
        made = False
        for link in inputs:
            if link["state"] == "pending":
                self._make(job, link)
                made = True
        if made:
            inputs = [link for link in self.store.job_transfers.for_jobs([job["id"]])[job["id"]]
                      if link["role"] == "input"]
        outcome = inputs_outcome(inputs)
        c = self.store.jobs.table.c
        here = [c.state == "held", c.phase == STAGING_IN]
        if outcome.verdict == "failed":
            if self.store.jobs.update(job["id"], here, state="failed", phase=DONE, reason=outcome.reason,
                                      ended_at=utcnow(), lease_owner=None, lease_until=None):
                log.info("job %s ended: failed: %s", job["id"], outcome.reason)
                metrics.job_ended(job["infrastructure"], "failed")
            self.cancel_transfers(job)
        elif outcome.verdict == "ready":
            after = bool((job["spec"] or {}).get("after"))
            values = {"phase": SUBMITTED, "reason": None if not after else "waiting for its dependencies to be checked"}
            if not after:
                values.update(state="submitting", next_poll_at=None)
            if self.store.jobs.update(job["id"], here, **values):
                log.info("job %s: inputs staged; %s", job["id"], "to be submitted" if not after else "held")
                if self.wake is not None:
                    self.wake()
        elif outcome.reason != job["reason"]:
            self.store.jobs.update(job["id"], here + [c.reason.is_distinct_from(outcome.reason)],
                                   reason=outcome.reason)

    def outputs_run(self, job: dict[str, Any], state: str, exit_code: int | None) -> bool:
        """Whether any output of ``job`` runs after it ends ``state``."""
        outputs = (job["spec"] or {}).get("outputs") or []
        submitted = bool(job.get("scheduler_id"))
        started = job.get("started_at") is not None or state != "cancelled"
        return any(output_runs(o["when"], state, exit_code, submitted, started) for o in outputs)

    def _stage_out(self, job: dict[str, Any], links: list[dict[str, Any]]) -> None:
        outputs = [link for link in links if link["role"] == "output"]
        end_state = job["end_state"] or "unknown"
        submitted = bool(job["scheduler_id"])
        started = job["started_at"] is not None or end_state != "cancelled"
        c = self.store.job_transfers.table.c
        running = []
        for link in outputs:
            runs = output_runs(link["when"], end_state, job["exit_code"], submitted, started)
            if not runs:
                if link["state"] == "pending":
                    self.store.job_transfers.update(job["id"], "output", link["position"], [c.state == "pending"],
                                                    state="skipped", request_enc=None,
                                                    reason=f"when {link['when']}: the job ended {end_state}")
                continue
            if link["state"] == "pending" and not job["cancel_requested"]:
                self._make(job, link)
            running.append(link)
        if job["cancel_requested"]:
            for link in running:
                if link["state"] == "pending":
                    self.store.job_transfers.update(job["id"], "output", link["position"], [c.state == "pending"],
                                                    state="skipped", request_enc=None,
                                                    reason="the job was cancelled before this output started")
            self.cancel_transfers(job)
        links = self.store.job_transfers.for_jobs([job["id"]])[job["id"]]
        fresh = {(link["role"], link["position"]): link for link in links}
        running = [fresh[("output", link["position"])] for link in running]
        running = [link for link in running if link["state"] != "skipped"]
        decided = final_outcome(end_state, job["reason"], running)
        if decided is None:
            return
        state, reason = decided
        if job["cancel_requested"]:
            state, reason = "cancelled", cancelled_reason(end_state, job["exit_code"], running)
        jc = self.store.jobs.table.c
        if self.store.jobs.update(job["id"], [jc.state == STAGING_OUT_STATE], state=state, phase=DONE, reason=reason,
                                  ended_at=utcnow()):
            log.info("job %s ended: %s after its outputs: %s", job["id"], state, reason or "")
            metrics.job_ended(job["infrastructure"], state)

    def cancel_transfers(self, job: dict[str, Any]) -> None:
        """Cancels the job's transfers that have not ended (a cancel of a job cancels its staging)."""
        principal = self._principal(job)
        for link in self.store.job_transfers.for_jobs([job["id"]])[job["id"]]:
            transfer = link["transfer"]
            if link["state"] == "created" and transfer is not None and transfer["state"] not in TRANSFER_ENDED:
                try:
                    self.transfers.cancel(link["transfer_id"], None, principal)
                    log.info("job %s: cancelled its %ss.%d (transfer %s)", job["id"], link["role"], link["position"],
                             link["transfer_id"])
                except (Conflict, NotFound):
                    pass  # ended meanwhile

    def _tidy(self) -> None:
        """Ended jobs: their transfers not made are dropped (with their secrets), those running cancelled."""
        c = self.store.job_transfers.table.c
        for link in self.store.job_transfers.loose_ends(JOB_ENDED_STATES, TRANSFER_ENDED):
            if link["state"] == "pending":
                self.store.job_transfers.update(link["job_id"], link["role"], link["position"], [c.state == "pending"],
                                                state="skipped", request_enc=None,
                                                reason="the job ended before this transfer was needed")
            else:
                try:
                    self.transfers.cancel(link["transfer_id"], None, self._principal(link))
                except (Conflict, NotFound):
                    pass
