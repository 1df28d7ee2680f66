"""The pure decisions of jobs that stage their own data (hpc.services.job_staging)."""

from __future__ import annotations

import pytest

from hpc.services.job_staging import final_outcome, inputs_outcome, output_runs


def link(position: int, state: str = "created", transfer_state: str | None = "completed", reason: str = "",
         link_reason: str | None = None, done: int = 0, total: int | None = None) -> dict:
    transfer = None if transfer_state is None else {
        "id": f"t{position}", "state": transfer_state, "reason": reason, "bytes_done": done, "bytes_total": total}
    return {"position": position, "state": state, "reason": link_reason, "transfer": transfer}


@pytest.mark.parametrize("when, end, exit_code, submitted, started, runs", [
    ("success", "completed", 0, True, True, True),
    ("success", "failed", 3, True, True, False),
    ("success", "timeout", None, True, True, False),
    ("always", "failed", 3, True, True, True),
    ("always", "timeout", None, True, True, True),
    ("always", "cancelled", None, True, True, True),  # cancelled after it started
    ("always", "cancelled", None, True, False, False),  # cancelled while queued: nothing ran
    ("always", "failed", None, False, False, False),  # never submitted (a failed input, a refusal)
    ("success", "completed", 0, False, False, False),
])
def test_which_outputs_run(when, end, exit_code, submitted, started, runs):
    assert output_runs(when, end, exit_code, submitted, started) is runs


def test_inputs_wait_until_all_completed_and_name_the_first_failure():
    assert inputs_outcome([link(0), link(1)]).verdict == "ready"
    waiting = inputs_outcome([link(0), link(1, transfer_state="transferring", done=5, total=10),
                              link(2, state="pending", transfer_state=None)])
    assert (waiting.verdict, waiting.reason) == (
        "wait", "staging inputs: inputs.1 (transferring, 5/10 bytes), inputs.2 (not started)")
    failed = inputs_outcome([link(0, transfer_state="transferring"),
                             link(1, transfer_state="failed", reason="HTTP 404")])
    assert (failed.verdict, failed.reason) == (
        "failed", "inputs.1 (transfer t1) failed: HTTP 404; the job was not submitted")
    cancelled = inputs_outcome([link(0, transfer_state="cancelled", reason="cancelled by its owner")])
    assert cancelled.reason == "inputs.0 (transfer t0) was cancelled: cancelled by its owner; the job was not submitted"
    refused = inputs_outcome([link(0, state="failed", transfer_state=None, link_reason="dst: outside")])
    assert refused.reason == "inputs.0 could not be staged: dst: outside; the job was not submitted"


def test_the_final_outcome_waits_for_every_output_and_a_failed_one_fails_a_completed_job():
    assert final_outcome("completed", None, [link(0), link(1, transfer_state="verifying")]) is None
    assert final_outcome("completed", None, [link(0, state="pending", transfer_state=None)]) is None
    assert final_outcome("completed", None, [link(0)]) == ("completed", None)
    assert final_outcome("completed", None, []) == ("completed", None)
    assert final_outcome("completed", None, [link(0), link(1, transfer_state="failed", reason="no such file")]) == (
        "failed", "the job completed but its outputs did not: outputs.1 (transfer t1) failed: no such file")
    assert final_outcome("failed", "exited with code 3", [link(0, transfer_state="cancelled")]) == (
        "failed", "exited with code 3; outputs.0 (transfer t0) was cancelled")
    assert final_outcome("timeout", None, [link(0, state="failed", transfer_state=None, link_reason="gone")]) == (
        "timeout", "outputs.0 could not be made: gone")


def test_a_cancel_while_outputs_stage_names_what_was_not_uploaded():
    from hpc.services.job_staging import cancelled_reason

    assert cancelled_reason("completed", 0, [link(0), link(1, transfer_state="cancelled")]) == (
        "cancelled while its outputs were staged (the job itself ended completed, exit code 0); "
        "not uploaded: outputs.1")
    assert cancelled_reason("timeout", None, [link(0)]) == (
        "cancelled while its outputs were staged (the job itself ended timeout)")
