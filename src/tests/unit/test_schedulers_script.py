"""The rendered batch script, run by a local bash (no scheduler): job files, exit codes, TERM, quoting.

The directives are comments to bash, so the body can be exercised here; the same scripts were run under
sbatch, the qsub wrapper and Grid Engine's qsub by ``fixtures/schedulers/capture.py`` (see the
``script_*`` fixtures).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hpc.schedulers import JobSpec, Resources, get_scheduler

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schedulers"
HOSTILE_DIR = "job dir 'q' \"dq\" $(touch pwned) `touch pwned2` ;x %j"
HOSTILE_VALUE = 'it\'s "q" $(touch pwned) `touch pwned2` ;rm -rf ~\nEOF\n%x %j'


@pytest.fixture(params=["slurm", "pbs", "sge"])
def sched(request):
    return get_scheduler(request.param)


def make_job(tmp_path: Path, payload: str, job_dir_name: str = "job", **kwargs) -> JobSpec:
    job_dir = tmp_path / job_dir_name
    job_dir.mkdir()
    (job_dir / "payload.sh").write_text(payload)
    return JobSpec(name="t", job_dir=str(job_dir), payload=str(job_dir / "payload.sh"), **kwargs)


def run_script(script: str, cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    path = cwd / "job.sh"
    path.write_text(script)
    return subprocess.run(["bash", str(path)], cwd=cwd, capture_output=True, timeout=timeout, check=False)


def job_file(spec: JobSpec, name: str) -> str:
    return Path(spec.job_dir, name).read_text()


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_code_file_and_script_exit(sched, tmp_path, code):
    spec = make_job(tmp_path, f"echo out; exit {code}\n")
    proc = run_script(sched.render_script(spec), tmp_path)
    assert proc.returncode == code
    assert job_file(spec, "exit_code") == f"{code}\n"
    assert int(job_file(spec, "started")) <= int(job_file(spec, "ended"))
    assert proc.stdout == b"out\n"
    assert sorted(p.name for p in Path(spec.job_dir).iterdir()) == ["ended", "exit_code", "payload.sh", "started"]


def test_payload_killed_by_signal_gives_128_plus_n(sched, tmp_path):
    spec = make_job(tmp_path, "kill -KILL $$\n")
    proc = run_script(sched.render_script(spec), tmp_path)
    assert (proc.returncode, job_file(spec, "exit_code")) == (137, "137\n")


def test_workdir_env_and_setup_lines(sched, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    spec = make_job(
        tmp_path,
        'printf "%s|%s|%s" "$PWD" "$V" "$SETUP"\n',
        workdir=str(work),
        env={"V": HOSTILE_VALUE},
        setup_lines=["export SETUP=from-site-config"],
    )
    proc = run_script(sched.render_script(spec), tmp_path)
    assert proc.stdout.decode() == f"{work}|{HOSTILE_VALUE}|from-site-config"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("pwned")) == []


def test_missing_workdir_records_failure(sched, tmp_path):
    spec = make_job(tmp_path, "exit 0\n", workdir=str(tmp_path / "nope"))
    proc = run_script(sched.render_script(spec), tmp_path)
    assert (proc.returncode, job_file(spec, "exit_code")) == (1, "1\n")


def test_hostile_job_dir_for_slurm(tmp_path):
    sched = get_scheduler("slurm")
    spec = make_job(tmp_path, 'printf "%s" "$V"\n', job_dir_name=HOSTILE_DIR, env={"V": HOSTILE_VALUE})
    script = sched.render_script(spec)
    proc = run_script(script, tmp_path)
    assert (proc.returncode, proc.stdout.decode()) == (0, HOSTILE_VALUE)
    assert job_file(spec, "exit_code") == "0\n"
    assert sorted(p.name for p in tmp_path.rglob("pwned*")) == []
    output = [line for line in script.splitlines() if line.startswith("#SBATCH --output=")][0]
    assert shlex.split(output) == ["#SBATCH", f"--output={spec.job_dir.replace('%', '%%')}/stdout"]
    command, _ = sched.submit_command(spec, spec.job_dir + "/job.sh")
    assert shlex.split(command)[:2] == ["cd", spec.job_dir]


@pytest.mark.parametrize("sched_name", ["pbs", "sge"])
def test_hostile_job_dir_refused_for_qsub(tmp_path, sched_name):
    spec = make_job(tmp_path, "exit 0\n", job_dir_name=HOSTILE_DIR)
    with pytest.raises(ValueError):
        get_scheduler(sched_name).render_script(spec)


def test_term_records_143_and_stops_the_payload(sched, tmp_path):
    spec = make_job(tmp_path, 'touch "$0.running"\nexec sleep 30\n')
    path = tmp_path / "job.sh"
    path.write_text(sched.render_script(spec))
    proc = subprocess.Popen(["bash", str(path)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not Path(spec.payload + ".running").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 143
    finally:
        proc.kill()
    assert job_file(spec, "exit_code") == "143\n"
    assert list(Path(spec.job_dir).glob("*.tmp")) == []


@pytest.mark.parametrize(
    ("role", "content"),
    [("ok", "0\n"), ("fail3", "3\n"), ("timeout", "143\n"), ("cancel", "143\n"), ("hostile", "0\n")],
)
@pytest.mark.parametrize("sched_name", ["slurm", "pbs", "sge"])
def test_exit_code_files_written_under_the_real_schedulers(sched_name, role, content):
    fx = json.loads((FIXTURES / sched_name / f"script_exit_code_{role}.json").read_text())
    if sched_name == "sge" and role in ("timeout", "cancel"):
        # Grid Engine ends a job at h_rt or on qdel with SIGKILL (queue terminate_method NONE, the
        # default): the trap never runs, the accounting record has the outcome (see test_schedulers.py).
        assert (fx["exit_code"], fx["stdout"]) == (1, "")
        assert "No such file" in fx["stderr"]
    else:
        assert (fx["exit_code"], fx["stdout"]) == (0, content)


@pytest.mark.parametrize("sched_name", ["slurm", "pbs", "sge"])
def test_cancelled_while_queued_leaves_no_exit_code(sched_name):
    fx = json.loads((FIXTURES / sched_name / "script_exit_code_cancelq.json").read_text())
    assert fx["exit_code"] == 1
    assert "No such file" in fx["stderr"]


@pytest.mark.parametrize("sched_name", ["slurm", "pbs", "sge"])
def test_hostile_env_value_survived_the_real_scheduler(sched_name):
    fx = json.loads((FIXTURES / sched_name / "script_stdout_hostile.json").read_text())
    assert fx["stdout"] == 'it\'s "q" $(touch /tmp/hpc-pwned) `id` ;rm -rf ~\nEOF\n%x %j'


def test_pbs_resource_line_is_single_and_combined():
    spec = JobSpec(
        name="x",
        job_dir="/j",
        payload="/j/p.sh",
        resources=Resources(
            nodes=2, tasks=4, cpus_per_task=3, memory_mb=1000, walltime_s=90061, partition="q1", account="a1"
        ),
    )
    lines = [line for line in get_scheduler("pbs").render_script(spec).splitlines() if line.startswith("#PBS")]
    assert lines == [
        "#PBS -S /bin/bash",
        "#PBS -N x",
        "#PBS -l nodes=2:ppn=6,walltime=25:01:01,mem=2000mb",
        "#PBS -q q1",
        "#PBS -A a1",
        "#PBS -o /j/stdout",
        "#PBS -e /j/stderr",
    ]


def test_slurm_directives():
    spec = JobSpec(
        name="x",
        job_dir="/j",
        payload="/j/p.sh",
        stdout="/o/%j.out",
        resources=Resources(
            nodes=2, tasks=4, cpus_per_task=3, memory_mb=1000, walltime_s=90061, partition="q 1", account="a1"
        ),
    )
    lines = [line for line in get_scheduler("slurm").render_script(spec).splitlines() if line.startswith("#SBATCH")]
    assert lines == [
        "#SBATCH --job-name=x",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks=4",
        "#SBATCH --cpus-per-task=3",
        "#SBATCH --mem=1000M",
        "#SBATCH --time=1-01:01:01",
        "#SBATCH --partition='q 1'",
        "#SBATCH --account=a1",
        "#SBATCH --output=/o/%%j.out",
        "#SBATCH --error=/j/stderr",
    ]


@pytest.mark.parametrize("bad", ["a\nb", "a\\b", "-p", "x\ry", ""])
def test_directive_values_that_cannot_be_carried_are_refused(bad):
    with pytest.raises(ValueError):
        Resources(partition=bad)


@pytest.mark.parametrize("bad", ["q 1", "it's", "$(x)", "a;b", "a#b"])
def test_pbs_refuses_non_plain_queue(bad):
    spec = JobSpec(name="x", job_dir="/j", payload="/j/p.sh", resources=Resources(partition=bad))
    with pytest.raises(ValueError):
        get_scheduler("pbs").render_script(spec)


@pytest.mark.parametrize("bad", ["/j/a b", "/j/a%j", "/j/a:b", "/j/$(x)"])
def test_pbs_refuses_paths_the_wrapper_would_reinterpret(bad):
    spec = JobSpec(name="x", job_dir="/j", payload="/j/p.sh", stdout=bad)
    with pytest.raises(ValueError):
        get_scheduler("pbs").submit_command(spec, "/j/job.sh")


@pytest.mark.parametrize("field", ["job_dir", "payload", "workdir", "stdout", "stderr"])
def test_paths_must_be_absolute(field):
    kwargs = dict(name="x", job_dir="/j", payload="/j/p.sh")
    kwargs[field] = "relative/path"
    with pytest.raises(ValueError):
        JobSpec(**kwargs)


def test_nul_is_refused(sched):
    spec = JobSpec(name="x", job_dir="/j", payload="/j/p.sh", env={"A": "a\x00b"})
    with pytest.raises(ValueError):
        sched.render_script(spec)


def test_sge_directives():
    spec = JobSpec(
        name="x",
        job_dir="/j",
        payload="/j/p.sh",
        resources=Resources(
            nodes=1, tasks=4, cpus_per_task=3, memory_mb=1000, walltime_s=90061, partition="q1", account="a1"
        ),
    )
    lines = [line for line in get_scheduler("sge").render_script(spec).splitlines() if line.startswith("#$")]
    assert lines == [
        "#$ -S /bin/bash",
        "#$ -N x",
        "#$ -wd /j",
        "#$ -o /j/stdout",
        "#$ -e /j/stderr",
        "#$ -w e",
        "#$ -pe smp 12",
        "#$ -l h_rt=25:01:01",
        "#$ -l h_vmem=84M",
        "#$ -q q1",
        "#$ -A a1",
    ]


def test_sge_single_slot_asks_for_no_parallel_environment():
    spec = JobSpec(name="x", job_dir="/j", payload="/j/p.sh", resources=Resources(tasks=1, memory_mb=100))
    lines = get_scheduler("sge").render_script(spec).splitlines()
    assert [line for line in lines if line.startswith("#$ -pe")] == []
    assert "#$ -l h_vmem=100M" in lines


def test_sge_refuses_several_nodes():
    spec = JobSpec(name="x", job_dir="/j", payload="/j/p.sh", resources=Resources(nodes=2))
    with pytest.raises(ValueError):
        get_scheduler("sge").render_script(spec)


@pytest.mark.parametrize("bad", ["q 1", "it's", "$(x)", "a;b", "a#b", "a,b"])
def test_sge_refuses_non_plain_queue(bad):
    spec = JobSpec(name="x", job_dir="/j", payload="/j/p.sh", resources=Resources(partition=bad))
    with pytest.raises(ValueError):
        get_scheduler("sge").render_script(spec)


@pytest.mark.parametrize("bad", ["/j/a b", "/j/$HOME", "/j/a:b", "/j/$(x)"])
def test_sge_refuses_paths_qsub_would_reinterpret(bad):
    # qsub expands $HOME, $JOB_ID ... in -o/-e/-wd and reads "host:path".
    spec = JobSpec(name="x", job_dir="/j", payload="/j/p.sh", stdout=bad)
    with pytest.raises(ValueError):
        get_scheduler("sge").submit_command(spec, "/j/job.sh")
