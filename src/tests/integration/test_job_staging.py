"""Jobs that stage their own data (``inputs``/``outputs``) on the live testbed: moto S3, nginx, Slurm."""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import uuid

import pytest

from tests.integration.test_jobs_api import wait_job
from tests.staging_live import CLUSTER_HOME, make_cluster_dir, s3, www  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration]


def s3_object(testbed, bucket: str, key: str, **fields) -> dict:
    return {"endpoint": testbed["TESTBED_S3_ENDPOINT"], "bucket": bucket, "object": key,
            "access_key": testbed["TESTBED_S3_ACCESS_KEY"], "secret_key": testbed["TESTBED_S3_SECRET_KEY"], **fields}


def create(gateway, infrastructure: str = "tb-slurm", status: int = 201, path: str = "/job", **fields):
    response = gateway.post(path, {"infrastructure": infrastructure, "watch_period": 1, **fields}, token="user")
    assert response.status_code == status, response.text
    return response.json()


def events(gateway, job_id: str, types: str = "job.state,job.phase") -> list[dict]:
    response = gateway.get("/events", token="user", params={"resource_id": job_id, "type": types,
                                                            "last_event_id": "0", "follow": "false"})
    assert response.status_code == 200, response.text
    return [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]


def signal_csv(samples: int = 512, frequency_bin: int = 8) -> str:
    noise = random.Random(1)
    rows = [f"{math.sin(2 * math.pi * frequency_bin * n / samples) + noise.gauss(0, 0.3):.6f}" for n in range(samples)]
    return "signal\n" + "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def flow(tmp_path_factory, testbed):
    """One gateway for the module's tests, with the testbed registered as tb-slurm."""
    from tests.staging_live import start_gateway

    gateway = start_gateway(tmp_path_factory, testbed)
    yield gateway
    gateway.stop()


@pytest.fixture
def workdir():
    relative = f"hpcgw-test/flow-{uuid.uuid4().hex[:10]}"
    make_cluster_dir(CLUSTER_HOME / relative)
    yield relative
    import shutil
    shutil.rmtree(CLUSTER_HOME / relative, ignore_errors=True)


def test_serrano_fft_flow_in_one_request(flow, testbed, s3):  # noqa: F811
    bucket, client = s3["bucket"], s3["client"]
    client.put_object(Bucket=bucket, Key="flow/signal.csv", Body=signal_csv().encode())
    job = create(flow, services=["fft"], params={"read_input_data": "/Init_Data/flow/signal.csv",
                                                       "num_mpi_procs": 1},
                 inputs=[{"s3": s3_object(testbed, bucket, "flow/signal.csv"),
                          "dst": "serrano/data/Init_Data/flow/signal.csv"}],
                 outputs=[{"src": "serrano/data/Output_Data/CSVFormate/FFT_Filter_output.csv",
                           "s3": s3_object(testbed, bucket, "flow/fft.csv")}])
    assert (job["status"], job["state"], job["phase"], job["scheduler_id"]) == ("queued", "held", "staging_in", "")
    assert [(i["position"], i["kind"], i["path"]) for i in job["inputs"]] == [
        (0, "s3_data", "serrano/data/Init_Data/flow/signal.csv")]
    assert (job["outputs"][0]["state"], job["outputs"][0]["when"]) == ("pending", "success")
    assert testbed["TESTBED_S3_SECRET_KEY"] not in json.dumps(job)
    done = wait_job(flow, job["id"], timeout=240)
    assert (done["state"], done["phase"], done["exit_code"]) == ("completed", "done", 0), done
    assert done["inputs"][0]["state"] == "completed" and done["outputs"][0]["state"] == "completed"
    lines = client.get_object(Bucket=bucket, Key="flow/fft.csv")["Body"].read().decode().splitlines()
    magnitudes = [float(line.split(",")[0]) for line in lines[1:]]
    assert max(range(1, len(magnitudes) // 2), key=magnitudes.__getitem__) == 8  # the sine's bin
    # The legacy status through the flow: queued while inputs stage, running while outputs stage,
    # completed only at the end; the phases in order.
    seen = events(flow, job["id"])
    phases = [e["data"]["phase"] for e in seen if e["type"] == "job.phase"]
    assert phases == ["staging_in", "submitted", "staging_out", "done"]
    states = [(e["data"]["state"], e["data"]["status"]) for e in seen if e["type"] == "job.state"]
    assert states[0] == ("held", "queued")
    assert ("staging_out", "running") in states
    assert states[-1] == ("completed", "completed")
    assert [s for s in states if s[1] == "completed"] == [("completed", "completed")]
    # the linked transfers are ordinary transfers of the caller
    transfer = flow.get(f"/s3_result/{done['outputs'][0]['transfer_id']}", token="user").json()
    assert (transfer["status"], transfer["object"]) == ("completed", "flow/fft.csv")


def test_a_failing_input_prevents_submission(flow, testbed, www, workdir):  # noqa: F811
    job = create(flow, script="echo never\n",
                 inputs=[{"url": www["one"]["url"], "dst": f"{workdir}/a.bin"},
                         {"url": f"{testbed['TESTBED_HTTP_URL']}/hpcgw-test/no-such-file.bin",
                          "dst": f"{workdir}/b.bin"}])
    done = wait_job(flow, job["id"], timeout=120)
    assert (done["state"], done["scheduler_id"], done["phase"]) == ("failed", "", "done"), done
    assert done["reason"].startswith(f"inputs.1 (transfer {done['inputs'][1]['transfer_id']}) failed")
    assert "404" in done["reason"] and done["reason"].endswith("the job was not submitted")
    assert done["submitted_at"] is None
    assert done["inputs"][1]["state"] == "failed"


def test_secrets_of_inputs_and_outputs_are_never_shown_nor_logged(flow, testbed, www, s3, workdir):  # noqa: F811
    url = www["one"]["url"].replace("http://", "http://someone:pw-s3cr3t-pw@")
    job = create(flow, script="true\n", inputs=[{"url": url, "dst": f"{workdir}/one.bin"}],
                 outputs=[{"src": f"{workdir}/one.bin", "s3": s3_object(testbed, s3["bucket"], "secret/one.bin")}])
    done = wait_job(flow, job["id"], timeout=120)
    assert (done["state"], [o["state"] for o in done["outputs"]]) == ("completed", ["completed"]), done
    assert done["inputs"][0]["source"] == url.replace("pw-s3cr3t-pw", "***")
    shown = json.dumps([job, done, events(flow, job["id"], "job.state,job.phase")])
    for secret in ("pw-s3cr3t-pw", testbed["TESTBED_S3_SECRET_KEY"]):
        assert secret not in shown
        assert secret not in flow.log()


def test_always_outputs_run_after_a_failed_job_and_success_ones_do_not(flow, testbed, s3, workdir):  # noqa: F811
    bucket, client = s3["bucket"], s3["client"]
    key = f"always/{uuid.uuid4().hex[:8]}"
    job = create(flow, workdir=workdir, script="echo partial > result.txt\nexit 3\n",
                 outputs=[{"src": f"{workdir}/result.txt", "s3": s3_object(testbed, bucket, f"{key}/ok.txt")},
                          {"src": f"{workdir}/result.txt", "s3": s3_object(testbed, bucket, f"{key}/log.txt"),
                           "when": "always"}])
    assert (job["state"], job["phase"]) == ("submitting", "submitted")
    done = wait_job(flow, job["id"], timeout=120)
    assert (done["state"], done["exit_code"], done["phase"]) == ("failed", 3, "done"), done
    assert [o["state"] for o in done["outputs"]] == ["skipped", "completed"]
    assert client.get_object(Bucket=bucket, Key=f"{key}/log.txt")["Body"].read() == b"partial\n"
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{key}/").get("Contents", [])
    assert [o["Key"] for o in listed] == [f"{key}/log.txt"]


def test_a_failed_output_fails_a_completed_job(flow, testbed, s3, workdir):  # noqa: F811
    job = create(flow, workdir=workdir, script="echo fine > out.txt\n",
                 outputs=[{"src": f"{workdir}/missing.txt", "s3": s3_object(testbed, s3["bucket"], "never.txt")}])
    done = wait_job(flow, job["id"], timeout=120)
    assert (done["state"], done["exit_code"]) == ("failed", 0), done
    assert done["reason"].startswith("the job completed but its outputs did not: outputs.0 (transfer ")


def test_cancel_during_staging_in_and_out_cancels_the_transfers(tmp_path_factory, testbed, www, s3,  # noqa: F811
                                                                workdir):
    from tests.staging_live import start_gateway

    slow = start_gateway(tmp_path_factory, testbed, HPC_TRANSFER_MAX_RATE="1MB")
    try:
        job = create(slow, script="echo never\n", inputs=[{"url": www["ten"]["url"], "dst": f"{workdir}/big.bin"}])
        wait_job(slow, job["id"], until=lambda j: j["inputs"][0]["state"] == "transferring", timeout=30)
        response = slow.delete(f"/job/{job['id']}", token="user")
        assert response.status_code == 202, response.text
        done = wait_job(slow, job["id"], until=lambda j: j["inputs"][0]["state"] == "cancelled", timeout=30)
        assert (done["state"], done["status"], done["scheduler_id"]) == ("cancelled", "completed", "")
        assert done["reason"] == "cancelled while its inputs were staged, before it was submitted"

        # and while the outputs stage: they are cancelled, the job ends cancelled saying how it ran
        key = f"cancel/{uuid.uuid4().hex[:8]}.bin"
        job = create(slow, workdir=workdir, script="head -c 8388608 /dev/zero > out.bin\n",
                     outputs=[{"src": f"{workdir}/out.bin", "s3": s3_object(testbed, s3["bucket"], key)}])
        wait_job(slow, job["id"], until=lambda j: j["outputs"][0]["state"] == "transferring", timeout=120)
        assert slow.delete(f"/job/{job['id']}", token="user").status_code == 202
        done = wait_job(slow, job["id"], timeout=60)
        assert (done["state"], done["exit_code"], done["outputs"][0]["state"]) == ("cancelled", 0, "cancelled"), done
        assert done["reason"] == ("cancelled while its outputs were staged (the job itself ended completed, "
                                  "exit code 0); not uploaded: outputs.0")
        assert s3["client"].list_objects_v2(Bucket=s3["bucket"], Prefix=key).get("KeyCount", 0) == 0
    finally:
        slow.stop()


@pytest.mark.parametrize("fields, field", [
    ({"inputs": [{"url": "http://169.254.169.254/latest/meta-data", "dst": "x.bin"}]}, "inputs.0.url"),
    ({"inputs": [{"url": "ftp://example.org/x", "dst": "x.bin"}]}, "inputs.0.url"),
    ({"inputs": [{"url": "http://127.0.0.1:8081/x", "dst": "/etc/passwd"}]}, "inputs.0.dst"),
    ({"inputs": [{"dst": "x.bin"}]}, "inputs.0.url"),
    ({"inputs": [{"url": "http://127.0.0.1:8081/x", "dst": "a.bin"},
                 {"url": "http://127.0.0.1:8081/y", "dst": "a.bin"}]}, "inputs.1.dst"),
    ({"outputs": [{"src": "../../etc/shadow", "s3": {"endpoint": "http://127.0.0.1:9000", "bucket": "b",
                                                       "object": "o", "access_key": "a", "secret_key": "s"}}]},
     "outputs.0.src"),
    ({"outputs": [{"src": "r.txt", "s3": {"endpoint": "http://169.254.169.254", "bucket": "b", "object": "o",
                                           "access_key": "a", "secret_key": "s"}}]}, "outputs.0.s3.endpoint"),
    ({"outputs": [{"src": "r.txt", "when": "sometimes",
                   "s3": {"endpoint": "http://127.0.0.1:9000", "bucket": "b", "object": "o", "access_key": "a",
                          "secret_key": "s"}}]},
     "outputs.0.when"),
])
@pytest.mark.parametrize("path", ["/job", "/job/dry_run"])
def test_bad_inputs_and_outputs_are_400_naming_the_field(flow, fields, field, path):
    before = flow.get("/job", token="user").json()["total"], flow.get("/transfer", token="user").json()["total"]
    response = flow.post(path, {"infrastructure": "tb-slurm", "script": "true\n", **fields}, token="user")
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field, response.json()
    after = flow.get("/job", token="user").json()["total"], flow.get("/transfer", token="user").json()["total"]
    assert after == before  # nothing made


def test_kill_9_during_staging_in_and_staging_out_completes_the_flow_once(tmp_path_factory, testbed, www, s3,  # noqa: F811
                                                                           workdir):
    """The gateway is killed while the input downloads and again while the output uploads; each time a
    restart carries on from the store: one transfer per input/output, one submission, the right object."""
    from tests.staging_live import start_gateway

    # 1 MB/s: the 10 MiB input still has seconds to go after the restart (at 3 MB/s the resumed input
    # could finish while the gateway started, and the look after the restart found the job submitted).
    gateway = start_gateway(tmp_path_factory, testbed, HPC_TRANSFER_MAX_RATE="1MB", HPC_TRANSFER_LEASE_SECONDS="3",
                            HPC_TRANSFER_RETRY_DELAY="0.5")
    bucket, client = s3["bucket"], s3["client"]
    key = f"crash/{uuid.uuid4().hex[:8]}/out.bin"
    try:
        # 8 MiB of output: at 1 MB/s (HPC_TRANSFER_MAX_RATE) its upload is long enough to be interrupted.
        script = "head -c 8388608 /dev/urandom > out.bin\nsha256sum in.bin out.bin\n"
        job = create(gateway, workdir=workdir, script=script,
                     inputs=[{"s3": s3_object(testbed, bucket, "in/ten.bin"), "dst": f"{workdir}/in.bin"}],
                     outputs=[{"src": f"{workdir}/out.bin", "s3": s3_object(testbed, bucket, key)}])
        wait_job(gateway, job["id"], until=lambda j: j["inputs"][0]["bytes_done"] > 0, timeout=60)
        gateway.kill()
        gateway.start()
        during = gateway.get(f"/job/{job['id']}", token="user").json()
        assert (during["state"], during["phase"], during["status"]) == ("held", "staging_in", "queued"), during
        assert during["inputs"][0]["state"] != "completed"
        deadline = time.monotonic() + 180
        while gateway.get(f"/job/{job['id']}", token="user").json()["state"] != "staging_out":
            assert time.monotonic() < deadline, gateway.log()[-3000:]
            time.sleep(0.05)
        gateway.kill()
        gateway.start()
        done = wait_job(gateway, job["id"], timeout=180)
        assert (done["state"], done["phase"], done["exit_code"]) == ("completed", "done", 0), done
        sums = dict(reversed(line.split()) for line in
                    gateway.get(f"/job/{job['id']}/output", token="user").json()["data"].splitlines())
        assert sums["in.bin"] == www["ten"]["sha256"]  # the job ran on the whole input
        stored = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(stored).hexdigest() == sums["out.bin"]
        transfers = gateway.get("/transfer", token="user").json()
        assert sorted((t["kind"], t["id"]) for t in transfers["items"]) == sorted(
            [("s3_data", done["inputs"][0]["transfer_id"]), ("s3_result", done["outputs"][0]["transfer_id"])])
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        submitted = [e for e in events(gateway, job["id"], "job.state") if e["data"]["state"] == "queued"]
        assert len({e["data"]["scheduler_id"] for e in submitted}) == 1  # submitted once
        phases = [e["data"]["phase"] for e in events(gateway, job["id"], "job.phase")]
        assert phases == ["staging_in", "submitted", "staging_out", "done"]
    finally:
        gateway.stop()
