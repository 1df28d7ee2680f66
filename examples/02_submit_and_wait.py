"""Submits jobs on every cluster of the fixture and waits for them with a live state line each:
a script with typed resources, a command given as argv, one that fails on purpose, and one that is
cancelled while it runs. Prints each job's outcome (state, exit code) and output.

    python examples/02_submit_and_wait.py
"""

from __future__ import annotations

import common
from hpc.client import job_done, job_succeeded
from hpc.client.display import watch_jobs

SCRIPT = """\
echo "hello from $(hostname), job ${SLURM_JOB_ID:-$PBS_JOBID}"
echo "working in $(pwd)"
"""


def main() -> None:
    client = common.client()
    names = [entry["name"] for entry in common.infrastructures()]
    jobs = []
    for name in names:
        # watch_period: seconds between the gateway's status checks (the old API's field).
        jobs.append(client.submit_job(name, script=SCRIPT, name="example-script", watch_period=1,
                                      resources={"nodes": 1, "tasks": 1, "walltime": "00:05:00"}))
        jobs.append(client.submit_job(name, command=["printf", "%s|", "one word", "it's", "$(not run)"],
                                      name="example-argv", watch_period=1))
        jobs.append(client.submit_job(name, script="echo giving up >&2\nexit 3\n", name="example-fails",
                                      watch_period=1))
    common.heading(f"waiting for {len(jobs)} jobs on {', '.join(names)}")
    finished = watch_jobs(client, jobs, timeout=300)
    for job in finished:
        output = client.job_output(job["id"])["data"]
        errors = client.job_output(job["id"], stream="stderr")["data"]
        print(f"{job['name']} on {job['infrastructure']}: state {job['state']}, exit code {job['exit_code']}")
        print("  stdout: " + output.strip().replace("\n", "\n          "))
        if errors:
            print("  stderr: " + errors.strip())
        expected = job["name"] != "example-fails"
        common.check(job_succeeded(job) == expected, f"job {job['id']} ended {job['state']}")
        if job["name"] == "example-argv":
            common.check(output == "one word|it's|$(not run)|", "each argv element arrives as one word")
    failed = [job for job in finished if job["name"] == "example-fails"]
    common.check(all(job["exit_code"] == 3 for job in failed), "the failing job's exit code is reported")

    common.heading("cancelling a running job")
    job = client.submit_job(names[0], script="sleep 600\n", name="example-cancel", watch_period=1)
    running = client.wait_for_job(job["id"], timeout=120, until=lambda j: j["state"] == "running" or job_done(j))
    print(f"{running['name']}: {running['state']}, scheduler id {running['scheduler_id']}; cancelling")
    client.cancel_job(job["id"])
    cancelled = watch_jobs(client, [job], timeout=120)[0]
    print(f"{cancelled['name']}: state {cancelled['state']} (old status field: {cancelled['status']})")
    common.check(cancelled["state"] == "cancelled", "the job was cancelled")


if __name__ == "__main__":
    main()
