"""The seed's end-to-end flow: data into S3, onto the cluster, through the SERRANO kernels, results back.

1. make two CSV inputs (a noisy signal for the FFT filter; 2-D points in three groups for k-means and
   k-NN) and upload them to the fixture's S3 store;
2. stage both onto the cluster under ``serrano/data/Init_Data/examples/`` (``/s3_data``);
3. run the ``fft``, ``kmean`` and ``knn`` services one after the other (they share the application's
   workspace), each with a live state line;
4. after each, ship its result CSV back to S3 (``/s3_result``), download it and print its first lines.

    python examples/05_end_to_end_serrano.py      # HPC_INFRASTRUCTURE picks the cluster
"""

from __future__ import annotations

import math
import os
import random

import common
from hpc.client import job_succeeded, transfer_succeeded
from hpc.client.display import watch_jobs, watch_transfers

INIT = "serrano/data/Init_Data/examples"  # dst of the inputs, relative to the login user's home
OUTPUT = "serrano/data/Output_Data"  # where SERRANO writes results (the application's spellings)

# service -> (input file, extra parameters, result file under OUTPUT)
SERVICES = {
    "fft": ("signal.csv", {}, "CSVFormate/FFT_Filter_output.csv"),
    "kmean": ("points.csv", {"kmean": {"cluster_number": 3}}, "KMean/KMean_cluster.csv"),
    "knn": ("points.csv", {"knn": {"k_nearest_neighbor": 5, "cluster_number": 3}}, "KNN/KNN_timesseries_label.csv"),
}


def signal_csv(samples: int = 512, frequency_bin: int = 8) -> str:
    """A sine at ``frequency_bin`` cycles per window plus noise: the FFT's peak shows where it sits."""
    noise = random.Random(1)
    rows = [f"{math.sin(2 * math.pi * frequency_bin * n / samples) + noise.gauss(0, 0.3):.6f}"
            for n in range(samples)]
    return "signal\n" + "\n".join(rows) + "\n"


def points_csv(per_group: int = 100) -> str:
    """2-D points around three centres."""
    rng = random.Random(2)
    centres = [(0.0, 0.0), (6.0, 6.0), (0.0, 8.0)]
    rows = [f"{cx + rng.gauss(0, 1):.5f},{cy + rng.gauss(0, 1):.5f}" for cx, cy in centres for _ in range(per_group)]
    rng.shuffle(rows)
    return "x,y\n" + "\n".join(rows) + "\n"


def main() -> None:
    client = common.client()
    store = common.s3_store()
    s3 = common.s3_client(store)
    credentials = common.s3_credentials(store)
    infrastructure = common.infrastructure()
    bucket = store["bucket"]
    procs = int(os.environ.get("HPC_EXAMPLE_MPI_PROCS", "1"))

    common.heading(f"1. uploading the inputs to s3://{bucket}")
    inputs = {"signal.csv": signal_csv(), "points.csv": points_csv()}
    for name, text in inputs.items():
        s3.put_object(Bucket=bucket, Key=f"serrano/input/{name}", Body=text.encode())
        print(f"  s3://{bucket}/serrano/input/{name}: {len(text.splitlines()) - 1} rows")

    common.heading(f"2. staging them onto {infrastructure}:{INIT}")
    staged = watch_transfers(client, [
        client.create_s3_data_transfer(bucket=bucket, object=f"serrano/input/{name}", dst=f"{INIT}/{name}",
                                       infrastructure=infrastructure, **credentials)
        for name in inputs
    ], timeout=300)
    for record in staged:
        common.check(transfer_succeeded(record), f"staging {record['object']}: {record.get('reason')}")

    for step, (service, (input_name, extra, result)) in enumerate(SERVICES.items(), start=3):
        common.heading(f"{step}. service {service} on {infrastructure}")
        # read_input_data is relative to the workspace (serrano/data), as in the seed's API.
        params = {"read_input_data": f"/Init_Data/examples/{input_name}", "num_mpi_procs": procs, **extra}
        job = client.submit_job(infrastructure, services=[service], params=params, watch_period=1)
        job = watch_jobs(client, [job], timeout=600)[0]
        if not job_succeeded(job):
            print(client.job_output(job["id"], stream="stderr")["data"])
        common.check(job_succeeded(job), f"{service} ended {job['state']}: {job.get('reason')}")

        key = f"serrano/results/{service}.csv"
        shipped = watch_transfers(client, [
            client.create_s3_result_transfer(bucket=bucket, object=key, src=f"{OUTPUT}/{result}",
                                             infrastructure=infrastructure, **credentials)
        ], timeout=300)[0]
        common.check(transfer_succeeded(shipped), f"shipping {result}: {shipped.get('reason')}")
        lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
        print(f"  s3://{bucket}/{key}: {len(lines) - 1} rows; the first ones:")
        for line in lines[:5]:
            print(f"    {line}")
        if service == "fft":
            magnitudes = [float(line.split(",")[0]) for line in lines[1:]]
            peak = max(range(1, len(magnitudes) // 2), key=magnitudes.__getitem__)
            print(f"  the spectrum peaks at bin {peak} (the input's sine sits at bin 8)")
            common.check(peak == 8, "the FFT finds the sine")
        else:
            groups = {line.rsplit(",", 1)[1] for line in lines[1:]}
            print(f"  {len(groups)} groups: {', '.join(sorted(groups))}")
            common.check(len(groups) == 3, f"{service} finds the three groups")


if __name__ == "__main__":
    main()
