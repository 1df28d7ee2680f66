"""Terminal displays for waiting: a live state line per job and a progress bar per transfer (rich).

On a terminal the displays redraw in place: a job shows its state, the scheduler's own state word and
the time since it was created; a transfer shows a bar, bytes done of the total, the rate and the time
left, all as the gateway reports them (``bytes_done``, ``bytes_total``, ``rate``, ``eta``). Elsewhere (a
log file, CI) they print one plain line per change instead, at most every few seconds while bytes flow.

:func:`watch_jobs` and :func:`watch_transfers` poll several records at once and show them together.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, UTC
from typing import IO, Any
from collections.abc import Callable, Iterable, Mapping

from rich.console import Console
from rich.filesize import decimal as _size
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column
from rich.text import Text

from hpc.client.api import Client, job_done, job_succeeded, transfer_done, transfer_succeeded
from hpc.client.errors import WaitTimeout
from hpc.client.events import ChangeNotifier

_PLAIN_EVERY = 5.0  # seconds between plain progress lines while only the byte count changes


def human_size(size: float | None) -> str:
    return "?" if size is None else _size(int(size))


def human_rate(rate: float | None) -> str:
    return "" if rate is None else f"{_size(int(rate))}/s"


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _since(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    try:
        start = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - start).total_seconds())


def job_line(job: Mapping[str, Any]) -> str:
    """One line saying where a job is: ``job 1b2c… on tb-slurm: running (RUNNING), id 42``."""
    state = job.get("state") or job.get("status")
    text = f"job {str(job.get('id', ''))[:8]} on {job.get('infrastructure', '?')}: {state}"
    if job.get("native_state") and str(job["native_state"]).lower() != str(state):
        text += f" ({job['native_state']})"
    if job.get("scheduler_id"):
        text += f", scheduler id {job['scheduler_id']}"
    if job.get("array"):
        counts = job["array"].get("counts") or {}
        text += f", tasks {' '.join(f'{n} {s}' for s, n in sorted(counts.items()) if n)} of {job['array'].get('size')}"
    if job.get("phase") in ("staging_in", "staging_out"):
        text += f" [{job['phase']}]"
    if job.get("state") == "held" and job.get("reason"):
        text += f": {job['reason']}"
    if job_done(job):
        if job.get("exit_code") is not None:
            text += f", exit code {job['exit_code']}"
        if job.get("reason") and not job_succeeded(job):
            text += f": {job['reason']}"
    return text


def transfer_label(transfer: Mapping[str, Any]) -> str:
    """What a transfer moves, in a few words: ``s3_data hpc-examples/big.bin -> data/big.bin``."""
    kind = transfer.get("kind", "transfer")
    if transfer.get("bucket"):
        s3 = f"s3://{transfer['bucket']}/{transfer.get('object', '')}"
        source, target = (s3, transfer.get("dst")) if kind != "s3_result" else (transfer.get("src"), s3)
    else:
        source, target = transfer.get("src"), transfer.get("dst")
    return f"{kind} {source} -> {target}"


def transfer_line(transfer: Mapping[str, Any]) -> str:
    """One plain line of a transfer's progress or outcome."""
    state = transfer.get("state") or transfer.get("status")
    text = f"transfer {str(transfer.get('id', ''))[:8]} {state}: {human_size(transfer.get('bytes_done'))}"
    if transfer.get("bytes_total") is not None:
        text += f" of {human_size(transfer['bytes_total'])}"
    if transfer.get("percent") is not None:
        text += f" ({transfer['percent']:.0f} %)"
    if not transfer_done(transfer):
        if transfer.get("rate"):
            text += f", {human_rate(transfer['rate'])}"
        if transfer.get("eta") is not None:
            text += f", {human_seconds(transfer['eta'])} left"
    elif transfer.get("reason") and not transfer_succeeded(transfer):
        text += f": {transfer['reason']}"
    return text


class _MarkColumn(SpinnerColumn):
    """A spinner while the task runs; a check mark or a cross once it ended."""

    def render(self, task: Task) -> Text:
        # "ended" is the gateway's word, not rich's "finished" (all bytes counted): a transfer whose bytes
        # are all there is still verifying its checksum, and neither succeeded nor failed yet.
        if task.fields.get("ended", task.finished):
            ok = task.fields.get("ok", True)
            return Text("✔" if ok else "✘", style="green" if ok else "bold red")
        return super().render(task)


class _FieldColumn(ProgressColumn):
    """A value the gateway reported (not computed by rich from its own samples)."""

    def __init__(self, field: str, style: str, formatter: Callable[[Any], str]):
        super().__init__(table_column=Column(no_wrap=True))
        self.field, self.style, self.formatter = field, style, formatter

    def render(self, task: Task) -> Text:
        value = task.fields.get(self.field)
        return Text(self.formatter(value) if value is not None else "", style=self.style)


class _BytesColumn(ProgressColumn):
    """``12.3 MB/64.0 MB`` from the gateway's ``bytes_done`` and ``bytes_total``."""

    def __init__(self):
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        done = human_size(task.completed)
        total = human_size(task.total) if task.total is not None else "?"
        return Text(f"{done}/{total}", style="progress.download")


def _description(max_width: int | None = None) -> TextColumn:
    """The task's words, cut with an ellipsis rather than wrapped when the terminal is narrow."""
    return TextColumn("{task.description}",
                      table_column=Column(no_wrap=True, overflow="ellipsis", max_width=max_width))


class _Display:
    """Shared plumbing: a rich Progress on a terminal, plain lines elsewhere."""

    def __init__(self, stream: IO[str] | None = None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream, force_terminal=True if live else None)
        self.live = self.console.is_terminal if live is None else live
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self._plain: dict[str, tuple[str, str, float]] = {}

    def __enter__(self):
        if self.live:
            self.progress = Progress(*self.columns(), console=self.console, refresh_per_second=8)
            self.progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.progress is not None:
            self.progress.stop()

    def columns(self) -> tuple:
        raise NotImplementedError

    def _plain_line(self, key: str, line: str, state: str, force: bool) -> None:
        """Prints ``line`` when the state changed, at the end, or every few seconds while it changes."""
        before = self._plain.get(key)
        now = time.monotonic()
        if before is not None:
            last_line, last_state, last_time = before
            if line == last_line or (state == last_state and not force and now - last_time < _PLAIN_EVERY):
                return
        print(line, file=self.stream, flush=True)
        self._plain[key] = (line, state, now)


class JobDisplay(_Display):
    """Live state lines of jobs: ``with JobDisplay() as show: client.wait_for_job(id, on_update=show)``."""

    def columns(self) -> tuple:
        return (_MarkColumn(), _description(), TimeElapsedColumn())

    def __call__(self, job: Mapping[str, Any]) -> None:
        self.update(job)

    def update(self, job: Mapping[str, Any]) -> None:
        key = str(job.get("id"))
        done = job_done(job)
        if self.progress is None:
            self._plain_line(key, job_line(job), f"{job.get('state')}/{job.get('native_state')}", done)
            return
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(job_line(job), total=1)
        self.progress.update(self.tasks[key], description=job_line(job), completed=1 if done else 0,
                             ok=job_succeeded(job), ended=done)
        if done:
            self.progress.stop_task(self.tasks[key])


class TransferDisplay(_Display):
    """Progress bars of transfers: bytes done of the total, percent, rate and time left."""

    def columns(self) -> tuple:
        return (
            _MarkColumn(),
            _description(max_width=60),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            _BytesColumn(),
            _FieldColumn("rate", "progress.data.speed", human_rate),
            _FieldColumn("eta", "progress.remaining", lambda eta: f"eta {human_seconds(eta)}"),
            _FieldColumn("state", "dim", str),
        )

    def __call__(self, transfer: Mapping[str, Any]) -> None:
        self.update(transfer)

    def update(self, transfer: Mapping[str, Any]) -> None:
        key = str(transfer.get("id"))
        done = transfer_done(transfer)
        state = str(transfer.get("state") or transfer.get("status"))
        if self.progress is None:
            self._plain_line(key, transfer_line(transfer), state, done)
            return
        total = transfer.get("bytes_total")
        completed = transfer.get("bytes_done") or 0
        if done and transfer_succeeded(transfer) and total is None:
            total = completed
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(transfer_label(transfer), total=total)
        self.progress.update(
            self.tasks[key], total=total, completed=completed, ok=transfer_succeeded(transfer), ended=done,
            rate=None if done else transfer.get("rate"), eta=None if done else transfer.get("eta"),
            state="" if transfer_succeeded(transfer) else state + (
                f": {transfer['reason']}" if done and transfer.get("reason") else ""),
        )
        if done:
            self.progress.stop_task(self.tasks[key])


def _watch(records: Iterable[Mapping[str, Any]], read: Callable[[Mapping[str, Any]], dict],
           done: Callable[[Mapping[str, Any]], bool], display: _Display, timeout: float | None, poll: float,
           what: str, client: Client | None = None) -> list[dict]:
    current = {str(r["id"]): dict(r) for r in records}
    order = list(current)
    deadline = None if timeout is None else time.monotonic() + timeout
    # With the gateway's event stream, records are read when they changed, not every poll period.
    notifier = ChangeNotifier(client, [k for k in order if not done(current[k])]) if client is not None else None
    try:
        with display:
            for record in current.values():
                display.update(record)
            first = notifier is not None and notifier.available
            while True:
                pending = [key for key in order if not done(current[key])]
                if not pending:
                    return [current[key] for key in order]
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"{len(pending)} {what}(s)", timeout or 0, current[pending[0]])
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if first:
                    first = False  # one read right after the stream opened: nothing slips between
                elif notifier is not None and notifier.available:
                    notifier.wait(30.0 if left is None else min(30.0, left))
                else:
                    time.sleep(poll if left is None else min(poll, left))
                for key in pending:
                    current[key] = read(current[key])
                    display.update(current[key])
    finally:
        if notifier is not None:
            notifier.close()


def watch_jobs(client: Client, jobs: Iterable[Mapping[str, Any]], *, timeout: float | None = None,
               poll: float = 0.5, stream: IO[str] | None = None, live: bool | None = None) -> list[dict]:
    """Waits for every job, showing a live line for each; returns their final records in order."""
    return _watch(jobs, lambda job: client.get_job(job["id"]), job_done, JobDisplay(stream, live), timeout,
                  poll, "job", client)


def watch_transfers(client: Client, transfers: Iterable[Mapping[str, Any]], *, timeout: float | None = None,
                    poll: float = 0.5, stream: IO[str] | None = None, live: bool | None = None) -> list[dict]:
    """Waits for every transfer, showing a progress bar for each; returns their final records in order."""
    return _watch(transfers, lambda t: client.get_transfer(t["id"], t.get("kind")), transfer_done,
                  TransferDisplay(stream, live), timeout, poll, "transfer", client)
