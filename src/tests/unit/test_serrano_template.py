"""The SERRANO template: services -> case and flags, the 27 positional arguments, quoting, launcher."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from hpc.api.models import JobRequestParams
from hpc.schedulers import serrano
from hpc.services.jobs import status_code, walltime_seconds
from hpc.errors import InvalidInput


def params(**overrides):
    params = JobRequestParams.model_validate({"read_input_data": "/Init_Data/in.csv", **overrides})
    return params.model_dump(mode="json")


@pytest.mark.parametrize(
    "services, case, flags",
    [
        (["fft"], 1, {"fft": 1}),
        (["kalman", "wavelet", "fft"], 1, {"kalman": 1, "wavelet": 1, "fft": 1}),
        (["min_max"], 1, {"min_max": 1}),
        (["kmean"], 2, {}),
        (["knn"], 3, {}),
        (["fft", "fft"], 1, {"fft": 1}),
    ],
)
def test_services_map_to_case_and_flags(services, case, flags):
    plan = serrano.plan(services, params())
    assert plan.case == case
    assert {k: v for k, v in plan.flags.items() if v} == flags


@pytest.mark.parametrize("services", [["fft", "kmean"], ["kmean", "knn"], ["wavelet", "knn"], []])
def test_mixed_or_empty_services_are_refused(services):
    with pytest.raises(serrano.ServiceSelectionError):
        serrano.plan(services, params())


def test_explicit_icase_and_filter_flags_are_kept():
    plan = serrano.plan(["fft"], params(icase=3, filter={"kalman": 1}))
    assert plan.case == 3
    assert (plan.flags["kalman"], plan.flags["fft"]) == (1, 1)


def test_payload_runs_four_cases_in_order_with_the_original_argument_list():
    text = serrano.render_payload(["fft"], params(), home="/home/u", launcher="mpirun -n {num_mpi_procs}")
    lines = text.splitlines()
    assert lines[3] == "cd /home/u/serrano"
    runs = [shlex.split(line) for line in lines[4:]]
    assert [run[:4] for run in runs] == [["mpirun", "-n", "4", "./build/SERRANO"]] * 4
    args = [run[4:] for run in runs]
    assert [a[0] for a in args] == ["-1", "0", "1", "0"]
    assert [a[24] for a in args] == ["0", "0", "0", "1"]  # CSV-packing flag on the last run only
    assert args[2] == [
        "1", "0", "0", "1", "0", "0", "10", "7", "2", "2", "0.00001000", "1", "1", "8", "16", "1",
        "/home/u/serrano/data", "/home/u/serrano/profile", "/Init_Data/in.csv",
        "/Input_Data/Double_Data_Type/signalFilter", "/Input_Data/Float_Data_Type/signalFilter",
        "/Init_Data/inference_data_position/", "1", "0", "0", "0", "/Output_Data/KMean/KMean_cluster.csv",
    ]


def test_no_csv_output_means_three_runs_and_no_launcher():
    text = serrano.render_payload(["kmean"], params(csv_output=0, kmean={"cluster_number": 5, "epsilon_criteria": 0.5}),
                                  home="/h", launcher="")
    runs = [shlex.split(line) for line in text.splitlines()[4:]]
    assert len(runs) == 3
    assert runs[2][0] == "./build/SERRANO"
    assert (runs[2][1], runs[2][10], runs[2][11]) == ("2", "5", "0.50000000")


def test_hostile_values_stay_data(tmp_path):
    marker = tmp_path / "pwned"
    hostile = f"/in $(touch {marker}) `touch {marker}`;touch {marker}\nEOF\n'\""
    text = serrano.render_payload(["fft"], params(read_input_data=hostile, root_dir=str(tmp_path)),
                                  home="/h", launcher="printf %s|")
    script = tmp_path / "payload.sh"
    script.write_text(text.replace("set -eo pipefail\n", ""))
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert hostile in result.stdout
    assert not marker.exists()


def test_home_is_expanded_by_the_gateway_not_the_shell():
    assert serrano.resolve_home("${HOME}/serrano", "/home/u") == "/home/u/serrano"
    assert serrano.resolve_home("$HOME", "/home/u") == "/home/u"
    assert serrano.resolve_home("~/x", "/home/u/") == "/home/u/x"
    assert serrano.resolve_home("/abs/${HOME}", "/home/u") == "/abs/${HOME}"
    assert serrano.resolve_home("$HOMEBREW/x", "/home/u") == "$HOMEBREW/x"


def test_walltime_and_status_mapping():
    assert walltime_seconds("00:00:10") == 10
    assert walltime_seconds("1-02:03:04") == 93784
    with pytest.raises(InvalidInput):
        walltime_seconds("00:00:00")
    assert [status_code(s) for s in ("submitting", "queued", "running", "completed", "failed", "cancelled",
                                     "timeout", "unknown")] == ["queued", "queued", "running"] + ["completed"] * 5
