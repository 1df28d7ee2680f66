"""A 100-task job array and a job that depends on it: scatter, then gather.

One POST runs a hundred tasks (``array: "0-99%10"``: indexes 0 to 99, at most ten at once); each task
reads its index from ``HPC_ARRAY_TASK_ID`` and writes its square into a shared directory. A second job,
submitted at once with ``after: [{job: <array>, condition: ok}]``, waits until every task completed
(the scheduler holds it: same cluster) and adds the squares up. The array is one record: the live line
shows its tasks per state; ``GET /job/{id}/tasks`` has each task's outcome, and ``?task=N`` its output.

    python examples/07_job_array.py
"""

from __future__ import annotations

import uuid

import common
from hpc.client import job_succeeded
from hpc.client.display import watch_jobs

TASKS = 100
SCATTER = """\
mkdir -p "$HOME/hpc-examples/{run}"
echo $((HPC_ARRAY_TASK_ID * HPC_ARRAY_TASK_ID)) > "$HOME/hpc-examples/{run}/square.$HPC_ARRAY_TASK_ID"
echo "task $HPC_ARRAY_TASK_ID of $HPC_ARRAY_TASK_COUNT on $(hostname)"
"""
GATHER = """\
cd "$HOME/hpc-examples/{run}" || exit 1
ls square.* | wc -l
cat square.* | awk '{{ total += $1 }} END {{ print total }}'
"""


def main() -> None:
    client = common.client()
    name = common.infrastructure()
    run = f"array-{uuid.uuid4().hex[:8]}"  # the tasks' shared directory, under the cluster user's home

    common.heading(f"a {TASKS}-task array on {name}, and a job after it")
    array = client.submit_job(name, script=SCATTER.format(run=run), name="example-scatter",
                              array=f"0-{TASKS - 1}%10", watch_period=1, resources={"walltime": "00:05:00"})
    gather = client.submit_job(name, script=GATHER.format(run=run), name="example-gather", watch_period=1,
                               after=[f"{array['id']}:ok"])
    print(f"array {array['id']}: {array['array']['size']} tasks, spec {array['array']['spec']}")
    print(f"gather {gather['id']}: {gather['state']} ({gather['reason']})")
    finished = watch_jobs(client, [array, gather], timeout=600)
    array, gather = finished
    counts = array["array"]["counts"]
    print(f"array: state {array['state']}, tasks {counts}")
    common.check(array["state"] == "completed" and counts == {"completed": TASKS}, "every task completed")

    failed = list(client.job_tasks(array["id"], state="failed"))
    common.check(failed == [], "no task failed")
    tasks = list(client.job_tasks(array["id"]))
    common.check([t["index"] for t in tasks] == list(range(TASKS)), "one record per index")
    first, last = tasks[0], tasks[-1]
    print(f"task 0 ran {first['started_at']} .. {first['ended_at']}; task {last['index']} ended {last['ended_at']}")
    print("task 42 said: " + client.job_output(array["id"], task=42)["data"].strip())

    dependency = gather["after"][0]
    print(f"gather: state {gather['state']}; its dependency was enforced by "
          f"{'the scheduler (' + dependency['native'] + ')' if dependency['mode'] == 'native' else 'the gateway'}")
    lines = client.job_output(gather["id"])["data"].split()
    print(f"gather read {lines[0]} files; the sum of the squares is {lines[1]}")
    common.check(job_succeeded(gather), "the gather job completed")
    common.check(lines == [str(TASKS), str(sum(i * i for i in range(TASKS)))], "the gather job saw every task")


if __name__ == "__main__":
    main()
