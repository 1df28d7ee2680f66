"""Stages S3 objects onto a cluster and ships them back: uploads a small and a large object (64 MiB, or
``$HPC_EXAMPLE_LARGE_MB``) to the fixture's S3 store, copies both to the cluster (``/s3_data``), then
back to new objects (``/s3_result``), each step with progress bars, and checks that what came back is
what went out.

    python examples/04_s3_transfers.py
"""

from __future__ import annotations

import hashlib
import random

import common
from hpc.client import transfer_succeeded
from hpc.client.display import watch_transfers


def main() -> None:
    client = common.client()
    store = common.s3_store()
    s3 = common.s3_client(store)
    credentials = common.s3_credentials(store)
    infrastructure = common.infrastructure()
    bucket = store["bucket"]

    small = "".join(f"{n},{n * n}\n" for n in range(1000)).encode()
    large = random.Random(11).randbytes(common.large_size())
    objects = {"examples/small.csv": small, "examples/large.bin": large}
    common.heading(f"uploading {len(objects)} objects to s3://{bucket} at {store['endpoint']}")
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        print(f"  s3://{bucket}/{key}: {len(body)} bytes")

    common.heading(f"S3 -> {infrastructure}")
    inbound = [client.create_s3_data_transfer(bucket=bucket, object=key, dst=f"hpc-examples/s3/{key}",
                                              infrastructure=infrastructure, **credentials)
               for key in objects]
    for record in watch_transfers(client, inbound, timeout=600):
        common.check(transfer_succeeded(record), f"{record['object']}: {record['state']} {record.get('reason')}")
        print(f"  {record['object']} -> {record['dst']}: {record['bytes_done']} bytes")

    common.heading(f"{infrastructure} -> S3")
    outbound = [client.create_s3_result_transfer(bucket=bucket, object=f"returned/{key}",
                                                 src=f"hpc-examples/s3/{key}", infrastructure=infrastructure,
                                                 **credentials)
                for key in objects]
    for record in watch_transfers(client, outbound, timeout=600):
        common.check(transfer_succeeded(record), f"{record['src']}: {record['state']} {record.get('reason')}")
        print(f"  {record['src']} -> s3://{record['bucket']}/{record['object']}: {record['bytes_done']} bytes")

    common.heading("comparing")
    for key, body in objects.items():
        returned = s3.get_object(Bucket=bucket, Key=f"returned/{key}")["Body"].read()
        same = hashlib.sha256(returned).hexdigest() == hashlib.sha256(body).hexdigest()
        print(f"  {key}: {len(returned)} bytes back, {'identical' if same else 'DIFFERENT'}")
        common.check(same, f"{key} came back changed")


if __name__ == "__main__":
    main()
