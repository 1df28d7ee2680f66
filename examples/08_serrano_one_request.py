"""The seed's end-to-end SERRANO flow as ONE request, watched over the event stream.

Example 05 stitches the flow together itself: POST /s3_data, poll, POST /job, poll, POST /s3_result,
poll. Here one ``POST /job`` carries it all: the input (an S3 object staged onto the cluster before the
job is submitted) and the output (the result CSV uploaded to S3 once the job completed). The program
then reads the gateway's event stream (``GET /events``, server-sent events) for the job and its two
transfers, printing each event as it comes, until the job's phase is ``done`` (its legacy ``status``
``completed``): no poll loop anywhere.

    python examples/08_serrano_one_request.py      # HPC_INFRASTRUCTURE picks the cluster
"""

from __future__ import annotations

import math
import os
import random
import uuid

import common
from hpc.client import job_succeeded, s3_input, s3_output

RESULT = "serrano/data/Output_Data/CSVFormate/FFT_Filter_output.csv"  # where SERRANO's fft writes


def signal_csv(samples: int = 512, frequency_bin: int = 8) -> str:
    """A sine at ``frequency_bin`` cycles per window plus noise: the FFT's peak shows where it sits."""
    noise = random.Random(1)
    rows = [f"{math.sin(2 * math.pi * frequency_bin * n / samples) + noise.gauss(0, 0.3):.6f}"
            for n in range(samples)]
    return "signal\n" + "\n".join(rows) + "\n"


def describe(event: dict) -> str:
    """One line per event: what changed, on which resource."""
    data, kind = event["data"], event["resource"]["kind"]
    what = f"{event['id']:>6} {event['type']:<17} {kind} {event['resource']['id'][:8]}"
    if event["type"] == "job.phase":
        return f"{what}: phase {data['phase']}"
    if event["type"] == "job.state":
        extra = f", exit code {data['exit_code']}" if data.get("exit_code") is not None else ""
        return f"{what}: state {data['state']} (status {data['status']}{extra})"
    if event["type"].startswith("transfer."):
        total = f"/{data['bytes_total']}" if data.get("bytes_total") is not None else ""
        return f"{what}: {data['state']}, {data['bytes_done']}{total} bytes"
    return f"{what}: {data}"


def main() -> None:
    client = common.client()
    store = common.s3_store()
    s3 = common.s3_client(store)
    credentials = common.s3_credentials(store)
    infrastructure = common.infrastructure()
    bucket = store["bucket"]
    run = uuid.uuid4().hex[:8]
    source, target = f"serrano/one-request/{run}/signal.csv", f"serrano/one-request/{run}/fft.csv"

    common.heading(f"1. the input in s3://{bucket}/{source}")
    s3.put_object(Bucket=bucket, Key=source, Body=signal_csv().encode())

    common.heading(f"2. one request: stage it in, run fft on {infrastructure}, ship the result out")
    # read_input_data is relative to the workspace (serrano/data), as in the seed's API.
    job = client.submit_job(
        infrastructure, services=["fft"], watch_period=1,
        params={"read_input_data": f"/Init_Data/one-request/{run}/signal.csv",
                "num_mpi_procs": int(os.environ.get("HPC_EXAMPLE_MPI_PROCS", "1"))},
        inputs=[s3_input(object=source, bucket=bucket, dst=f"serrano/data/Init_Data/one-request/{run}/signal.csv",
                         **credentials)],
        outputs=[s3_output(src=RESULT, bucket=bucket, object=target, **credentials)],
    )
    transfers = [item["transfer_id"] for item in job["inputs"] + job["outputs"]]
    print(f"job {job['id']}: phase {job['phase']}, status {job['status']}; transfers {', '.join(transfers)}")

    common.heading("3. the event stream of the job and its transfers")
    # last_event_id=0: from the first event of these resources, so nothing that happened before the
    # stream was opened is missed.
    for event in client.events(resource_id=[job["id"], *transfers], last_event_id=0):
        print(describe(event), flush=True)
        if event["type"] == "job.phase" and event["data"]["phase"] == "done":
            break  # comes with the job's final state (status completed), in the same change

    job = client.get_job(job["id"])
    common.check(job_succeeded(job), f"the flow ended {job['state']}: {job.get('reason')}")
    print(f"job {job['id'][:8]}: state {job['state']}, phase {job['phase']}, exit code {job['exit_code']}")
    lines = s3.get_object(Bucket=bucket, Key=target)["Body"].read().decode().splitlines()
    print(f"  s3://{bucket}/{target}: {len(lines) - 1} rows")
    magnitudes = [float(line.split(",")[0]) for line in lines[1:]]
    peak = max(range(1, len(magnitudes) // 2), key=magnitudes.__getitem__)
    print(f"  the spectrum peaks at bin {peak} (the input's sine sits at bin 8)")
    common.check(peak == 8, "the FFT finds the sine")


if __name__ == "__main__":
    main()
