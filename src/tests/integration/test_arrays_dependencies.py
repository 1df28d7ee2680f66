"""Job arrays and dependencies on the live testbed: Slurm, its Torque wrappers and Grid Engine."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.integration.test_jobs_api import ssh, submit, wait_job
from tests.integration.test_jobs_tracking import scheduler_jobs_named

pytestmark = [pytest.mark.integration]

SCHEDULERS = ["tb-slurm", "tb-pbs", "tb-sge"]
DONE = {"completed", "failed", "cancelled", "timeout", "unknown"}


def when(text: str | None) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def stats(gateway, infra: str) -> dict:
    return gateway.get("/stats", token="admin").json()["jobs"].get(infra, {})


def create(gateway, infrastructure: str, token: str = "user", **fields) -> dict:
    """POST /job, whatever state the job starts in (held when it has dependencies)."""
    response = gateway.post("/job", {"infrastructure": infrastructure, "watch_period": 1, **fields}, token=token)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "queued"
    return response.json()


def tasks(gateway, job_id: str, **params) -> dict:
    response = gateway.get(f"/job/{job_id}/tasks", token="user", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def job_file(testbed, job_id: str, name: str) -> str:
    """A file of the job's directory on the cluster (the default job_root), read with OpenSSH."""
    result = ssh(testbed, f"cat .hpc-gateway/jobs/{job_id}/{name}")
    assert result.returncode == 0, result.stderr
    return result.stdout


def events(gateway, job_id: str, kind: str) -> list[str]:
    response = gateway.get("/events", token="user", params={"resource_id": job_id, "type": kind,
                                                            "last_event_id": "0", "follow": "false"})
    assert response.status_code == 200, response.text
    return [line for line in response.text.splitlines() if line.startswith("event: ")]


# -- arrays ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("infra", SCHEDULERS)
def test_twenty_task_array_reports_each_task(registered, infra):
    script = 'echo "task $HPC_ARRAY_TASK_ID of $HPC_ARRAY_TASK_COUNT"\n[ "$HPC_ARRAY_TASK_ID" = 13 ] && { echo boom >&2; exit 5; }\nexit 0\n'
    before, started = stats(registered, infra), time.monotonic()
    job = submit(registered, infra, name="twenty", script=script, array="0-19%4")
    assert job["array"] == {"spec": "0-19%4", "size": 20, "counts": {"queued": 20}}
    ended = wait_job(registered, job["id"], timeout=300)
    elapsed, after = time.monotonic() - started, stats(registered, infra)
    # watch_period 1 s: about one status command per second for all twenty tasks, and at most one more
    # command per poll for their files.
    polls = after.get("status", 0) - before.get("status", 0)
    assert 1 <= polls <= elapsed + 5
    assert after.get("exit_codes", 0) - before.get("exit_codes", 0) <= polls
    assert (ended["state"], ended["exit_code"]) == ("failed", 5)
    assert ended["array"]["counts"] == {"completed": 19, "failed": 1}
    assert ended["reason"].startswith("1 of 20 tasks did not complete (1 failed); first: task 13 failed")
    listed = tasks(registered, job["id"])
    assert listed["total"] == 20
    assert [(t["index"], t["state"], t["exit_code"]) for t in listed["items"]] == [
        (i, "failed" if i == 13 else "completed", 5 if i == 13 else 0) for i in range(20)]
    assert all(when(t["started_at"]) <= when(t["ended_at"]) for t in listed["items"])
    assert when(ended["started_at"]) == min(when(t["started_at"]) for t in listed["items"])
    assert when(ended["ended_at"]) == max(when(t["ended_at"]) for t in listed["items"])
    page = tasks(registered, job["id"], limit=5, offset=10)
    assert ([t["index"] for t in page["items"]], page["total"]) == ([10, 11, 12, 13, 14], 20)
    assert [t["index"] for t in tasks(registered, job["id"], state="failed")["items"]] == [13]
    out = registered.get(f"/job/{job['id']}/output", token="user", params={"task": 13}).json()
    err = registered.get(f"/job/{job['id']}/output", token="user", params={"task": 13, "stream": "stderr"}).json()
    assert (out["data"], err["data"], out["job_state"]) == ("task 13 of 20\n", "boom\n", "failed")
    assert registered.get(f"/job/{job['id']}/output", token="user", params={"task": 7}).json()["data"] == "task 7 of 20\n"
    missing = registered.get(f"/job/{job['id']}/output", token="user", params={"task": 20})
    assert (missing.status_code, missing.json()["field"]) == (400, "task")
    assert len(events(registered, job["id"], "job.tasks")) >= 2  # counts changed at least twice


def task_intervals(testbed, job_id: str, count: int) -> list[tuple[int, int]]:
    """(started, ended) epoch seconds of each task, as the tasks wrote them into their files."""
    result = ssh(testbed, f"cd .hpc-gateway/jobs/{job_id}/tasks && for i in $(seq 0 {count - 1}); do "
                          'read -r s _ < "$i.started"; read -r e < "$i.ended"; echo "$s $e"; done')
    assert result.returncode == 0, result.stderr
    return [tuple(int(x) for x in line.split()) for line in result.stdout.splitlines()]


def most_at_once(intervals: list[tuple[int, int]]) -> int:
    """The largest number of tasks running in the same second ([started, ended) in whole seconds: a task
    that ended in second t and one that started in t did not overlap, the second waited for the first)."""
    return max(sum(1 for s, e in intervals if s <= t < max(e, s + 1)) for t in range(min(s for s, _ in intervals),
                                                                                    max(e for _, e in intervals) + 1))


def test_array_concurrency_cap_is_honoured(registered, testbed):
    # 2 CPUs for Slurm and its wrappers, 2 slots for Grid Engine: without the cap two tasks would run at once.
    jobs = {infra: submit(registered, infra, name="capped", script="sleep 2\n", array="0-3%1") for infra in SCHEDULERS}
    for infra, job in jobs.items():
        ended = wait_job(registered, job["id"], timeout=240)
        assert (ended["state"], ended["array"]["counts"]) == ("completed", {"completed": 4})
        intervals = task_intervals(testbed, job["id"], 4)
        assert len(intervals) == 4
        assert most_at_once(intervals) == 1, (infra, intervals)
        listed = tasks(registered, job["id"])["items"]
        assert [(int(when(t["started_at"]).timestamp()), int(when(t["ended_at"]).timestamp())) for t in listed] \
            == intervals  # the record shows the times the tasks wrote


def test_cancel_cancels_every_task(registered, testbed):
    jobs = {infra: submit(registered, infra, name="cancelarr", script="sleep 60\n", array="0-5%1")
            for infra in ("tb-slurm", "tb-sge")}
    for job in jobs.values():
        wait_job(registered, job["id"], until=lambda j: j["array"]["counts"].get("running"), timeout=120)
        assert registered.delete(f"/job/{job['id']}", token="user").status_code == 202
    for infra, job in jobs.items():
        ended = wait_job(registered, job["id"], timeout=120)
        assert (ended["state"], ended["array"]["counts"]) == ("cancelled", {"cancelled": 6}), ended
        first, *rest = tasks(registered, job["id"])["items"]
        assert first["started_at"] is not None
        assert all(t["started_at"] is None for t in rest)  # never ran: the cap kept them waiting
    left = ssh(testbed, "squeue -h -n cancelarr -t PENDING,RUNNING | wc -l")
    assert left.stdout.strip() == "0"


# -- dependencies ------------------------------------------------------------------------------------------


NATIVE_FILE = {"tb-slurm": ("job.sh", "#SBATCH --dependency={}"), "tb-pbs": ("submit.cmd", "-W depend={}"),
               "tb-sge": ("job.sh", "#$ -hold_jid {}")}


@pytest.mark.parametrize("infra", SCHEDULERS)
def test_ok_and_notok_chains_on_one_infrastructure(registered, testbed, infra):
    good = submit(registered, infra, name="good", script="sleep 3\nexit 0\n")
    bad = submit(registered, infra, name="bad", script="sleep 3\nexit 2\n")
    after = {
        "after_good_ok": (good, "ok"), "after_good_notok": (good, "notok"),
        "after_bad_notok": (bad, "notok"), "after_bad_ok": (bad, "ok"), "after_good_any": (good, "any"),
    }
    dependants = {name: create(registered, infra, name=name, script=f"echo {name}\n",
                               after=[{"job": pred["id"], "condition": cond}])
                  for name, (pred, cond) in after.items()}
    assert {d["state"] for d in dependants.values()} == {"held"}
    ended = {name: wait_job(registered, d["id"], timeout=180) for name, d in dependants.items()}
    good_end, bad_end = (wait_job(registered, j["id"]) for j in (good, bad))
    assert {name: e["state"] for name, e in ended.items()} == {
        "after_good_ok": "completed", "after_good_notok": "cancelled", "after_bad_notok": "completed",
        "after_bad_ok": "cancelled", "after_good_any": "completed"}
    assert ended["after_good_notok"]["reason"] == (
        f"dependency on job {good['id']} (after notok) can never be satisfied: that job ended completed")
    assert ended["after_bad_ok"]["reason"] == (
        f"dependency on job {bad['id']} (after ok) can never be satisfied: that job ended failed")
    native = {"tb-slurm": {"ok", "notok", "any"}, "tb-pbs": {"ok", "notok", "any"}, "tb-sge": {"any"}}[infra]
    for name, (pred, cond) in after.items():
        dep = ended[name]["after"][0]
        assert (dep["job"], dep["condition"]) == (pred["id"], cond)
        assert dep["state"] == ("unsatisfiable" if ended[name]["state"] == "cancelled" else "satisfied")
        assert dep["mode"] == ("native" if cond in native else "gateway")
    for name in ("after_good_ok", "after_bad_notok", "after_good_any"):
        pred, cond = after[name]
        job, pred_end = ended[name], (good_end if pred is good else bad_end)
        if cond in native:
            # Handed to the scheduler while its predecessor still ran: the cluster started it.
            pred_id = pred_end["scheduler_id"]
            word = {"ok": "afterok", "notok": "afternotok", "any": "afterany"}[cond]
            option = pred_id if infra == "tb-sge" else f"{word}:{pred_id}"
            filename, line = NATIVE_FILE[infra]
            assert line.format(option) in job_file(testbed, job["id"], filename)
            assert job["after"][0]["native"] == {"tb-slurm": f"--dependency={option}", "tb-pbs": f"-W depend={option}",
                                                 "tb-sge": f"-hold_jid {option}"}[infra]
            assert when(job["submitted_at"]) < when(pred_end["ended_at"])
        else:
            assert job["after"][0]["native"] is None
            assert when(job["submitted_at"]) >= when(pred_end["ended_at"])  # held by the gateway until then
        assert when(job["started_at"]) >= when(pred_end["ended_at"])
    # A dependant cancelled on the scheduler (native) or never submitted (held) leaves nothing pending.
    for name in ("after_good_notok", "after_bad_ok"):
        if after[name][1] not in native:
            assert ended[name]["scheduler_id"] == ""


def test_dependency_across_infrastructures_is_held_by_the_gateway(registered, testbed):
    first = submit(registered, "tb-slurm", name="first", script="sleep 4\nexit 0\n")
    second = create(registered, "tb-pbs", name="second", script="echo second\n",
                    after=[{"job": first["id"], "condition": "ok"}])
    never = create(registered, "tb-sge", name="never", script="echo never\n",
                   after=[{"job": first["id"], "condition": "notok"}])
    held = wait_job(registered, second["id"], until=lambda j: "it is running" in (j["reason"] or ""), timeout=120)
    assert (held["state"], held["status"], held["scheduler_id"]) == ("held", "queued", "")
    assert held["reason"] == f"waiting for job {first['id']} to end (after ok; it is running)"
    assert held["after"] == [{"job": first["id"], "condition": "ok", "mode": "gateway", "state": "pending",
                              "native": None}]
    first_end = wait_job(registered, first["id"])
    second_end = wait_job(registered, second["id"], timeout=120)
    assert second_end["state"] == "completed"
    assert when(second_end["submitted_at"]) >= when(first_end["ended_at"])
    assert "depend" not in job_file(testbed, second["id"], "submit.cmd")
    never_end = wait_job(registered, never["id"], timeout=60)
    assert (never_end["state"], never_end["scheduler_id"]) == ("cancelled", "")
    assert never_end["reason"] == (f"dependency on job {first['id']} (after notok) can never be satisfied: "
                                   "that job ended completed")
    assert len(events(registered, second["id"], "job.held")) == 1
    assert len(events(registered, second["id"], "job.released")) == 1


def test_array_as_predecessor_means_all_its_tasks(registered):
    array = submit(registered, "tb-slurm", name="pred-array", script='[ "$HPC_ARRAY_TASK_ID" = 1 ] && exit 3; exit 0\n',
                   array="0-2")
    on_ok = create(registered, "tb-slurm", name="on-ok", script="true\n", after=[{"job": array["id"]}])
    on_notok = create(registered, "tb-pbs", name="on-notok", script="true\n",
                      after=[{"job": array["id"], "condition": "notok"}])
    assert wait_job(registered, array["id"])["state"] == "failed"
    assert wait_job(registered, on_ok["id"], timeout=120)["state"] == "cancelled"
    assert wait_job(registered, on_notok["id"], timeout=120)["state"] == "completed"


@pytest.mark.slow
def test_held_job_is_released_exactly_once_after_a_crash(registered, testbed):
    tag = f"heldcrash{int(time.time())}"
    first = submit(registered, "tb-sge", name=f"{tag}-first", script="sleep 8\n")
    second = create(registered, "tb-slurm", name=f"{tag}-second", script="echo once\n",
                    after=[{"job": first["id"], "condition": "any"}])
    wait_job(registered, second["id"], until=lambda j: "it is running" in (j["reason"] or ""), timeout=120)
    registered.kill()
    time.sleep(2)
    registered.start()
    ended = wait_job(registered, second["id"], timeout=180)
    assert (ended["state"], ended["exit_code"]) == ("completed", 0)
    assert registered.get(f"/job/{second['id']}/output", token="user").json()["data"] == "once\n"
    assert scheduler_jobs_named(testbed, f"{tag}-second") == 1
    assert len(events(registered, second["id"], "job.released")) == 1


def test_cancel_of_a_held_job_ends_it_at_once(registered):
    first = submit(registered, "tb-slurm", name="long", script="sleep 30\n")
    second = create(registered, "tb-pbs", name="waiting", script="true\n", after=[{"job": first["id"]}])
    response = registered.delete(f"/job/{second['id']}", token="user")
    assert (response.status_code, response.json()["state"]) == (202, "cancelled")
    assert response.json()["reason"] == "cancelled while held, before it was submitted"
    assert registered.delete(f"/job/{first['id']}", token="user").status_code == 202


# -- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "words"),
    [("1,3,5", "START-END"), ("0-9:0", "step"), ("9-1", "start <= end"), ("0-10000", "max_array_tasks"),
     ("0-4000001", "end <="), ("0-9%0", "cap"), ("x" * 32, "START-END"), ("0-9\n", "START-END")],
)
def test_bad_arrays_are_400_naming_array(registered, array, words):
    response = registered.post("/job", {"infrastructure": "tb-slurm", "script": "true", "array": array}, token="user")
    assert (response.status_code, response.json()["field"]) == (400, "array")
    assert words in response.json()["detail"]


def test_bad_dependencies(registered):
    mine = submit(registered, "tb-slurm", script="true\n")
    theirs = submit(registered, "tb-slurm", script="true\n", token="user2")
    cases = [
        ([{"job": "00000000-0000-0000-0000-000000000000"}], 404, "after.0.job"),
        ([{"job": mine["id"]}, {"job": theirs["id"]}], 404, "after.1.job"),  # another user's job is not disclosed
        ([{"job": "not-a-uuid"}], 400, "after.0.job"),
        ([{"job": mine["id"], "condition": "afterok"}], 400, "after.0.condition"),
        ([{"condition": "ok"}], 400, "after.0.job"),
        ([{"job": mine["id"]}] * 65, 400, "after"),
    ]
    for after, status, field in cases:
        response = registered.post("/job", {"infrastructure": "tb-slurm", "script": "true", "after": after},
                                   token="user")
        assert (response.status_code, response.json().get("field")) == (status, field), response.text
    # An admin may depend on anyone's job.
    assert registered.post("/job", {"infrastructure": "tb-slurm", "script": "true",
                                    "after": [{"job": theirs["id"], "condition": "any"}]},
                           token="admin").status_code == 201
    plain = registered.get(f"/job/{mine['id']}/tasks", token="user")
    assert (plain.status_code, plain.json()["field"]) == (409, "job_id")
    task = registered.get(f"/job/{mine['id']}/output", token="user", params={"task": 0})
    assert (task.status_code, task.json()["field"]) == (400, "task")
    assert registered.get(f"/job/{theirs['id']}/tasks", token="user").status_code == 404
