"""The SERRANO services as the built-in job template ``serrano`` (pure: builds the payload script's text).

The seed's ``POST /job`` with ``services`` and ``params`` runs the SERRANO executable four times:
case -1 (clear binary data), case 0 (make binary input), the case derived from the services, and, when
``csv_output`` is 1, case 0 again with the CSV-packing flag set. The positional arguments are those of
the original interface, in its order.

The payload is :data:`TEMPLATE_BODY` rendered by :func:`hpc.schedulers.template.render`, the mechanism of
every registered template: :func:`template_values` derives the placeholders' values from the request
(each run's whole command line as an array, so every word is quoted once by the template's one helper),
and an empty ``pack_csv_output`` leaves its line out when ``csv_output`` is 0. The output is
byte-identical to the payload this module wrote before templates existed
(``src/tests/fixtures/serrano/``, checked by ``test_serrano_wire.py``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from hpc.schedulers import template

SIGNAL_SERVICES = ("kalman", "fft", "min_max", "savitzky_golay", "black_scholes", "wavelet")
CLUSTERING_SERVICES = ("kmean", "knn")

# Service class -> kernel case of the original application.
CASE_SIGNAL, CASE_KMEAN, CASE_KNN = 1, 2, 3


class ServiceSelectionError(ValueError):
    """The services cannot run together (mixed classes) or none were given."""


@dataclass(frozen=True)
class SerranoPlan:
    """What the template derived from the request: the kernel case and the filter flags."""

    case: int
    flags: Mapping[str, int]


def plan(services: Sequence[str], params: Mapping[str, Any]) -> SerranoPlan:
    """Derives the kernel case and filter flags from the requested services.

    Signal services -> case 1 with each named service's filter flag set; ``kmean`` alone -> case 2;
    ``knn`` alone -> case 3. An explicit ``params.icase`` other than -1 wins over the derived case.

    Raises:
        ServiceSelectionError: No services, or classes mixed (signal with clustering, kmean with knn).
    """
    chosen = list(dict.fromkeys(services))
    if not chosen:
        raise ServiceSelectionError("at least one service is needed")
    signal = [s for s in chosen if s in SIGNAL_SERVICES]
    clustering = [s for s in chosen if s in CLUSTERING_SERVICES]
    if signal and clustering:
        raise ServiceSelectionError(
            f"signal services {signal} cannot run with clustering services {clustering} in one job"
        )
    if len(clustering) > 1:
        raise ServiceSelectionError("kmean and knn cannot run in one job")
    flags = {name: int((params.get("filter") or {}).get(name, 0) or 0) for name in SIGNAL_SERVICES}
    for name in signal:
        flags[name] = 1
    derived = CASE_SIGNAL if signal else (CASE_KMEAN if clustering == ["kmean"] else CASE_KNN)
    icase = params.get("icase", -1)
    return SerranoPlan(case=derived if icase in (-1, None) else int(icase), flags=flags)


def _number(value: Any) -> str:
    """Integral numbers without a trailing ``.0``, as the original printed them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def resolve_home(path: str, home: str) -> str:
    """Expands a leading ``${HOME}``, ``$HOME`` or ``~`` with the cluster user's home, here, not in a shell.

    User values are quoted before they reach the shell, so the shell must not be asked to expand them.
    """
    for prefix in ("${HOME}", "$HOME", "~"):
        if path == prefix or path.startswith(prefix + "/"):
            return home.rstrip("/") + path[len(prefix):]
    return path


def arguments(case: int, flags: Mapping[str, int], params: Mapping[str, Any], root_dir: str, pack: int) -> list[str]:
    """The 27 positional arguments of one SERRANO run, in the original's order."""
    kalman = params.get("kalman") or {}
    knn = params.get("knn") or {}
    kmean = params.get("kmean") or {}
    return [
        str(case),
        str(params["benchmark_state"]),
        str(flags["kalman"]),
        str(flags["fft"]),
        str(flags["black_scholes"]),
        str(flags["savitzky_golay"]),
        _number(kalman.get("r", 10)),
        str(knn.get("k_nearest_neighbor", 7)),
        str(knn.get("cluster_number", 2)),
        str(kmean.get("cluster_number", 2)),
        f"{float(kmean.get('epsilon_criteria', 0.00001)):.8f}",
        str(params["perforation_stride"]),
        str(params["precision_scenario"]),
        str(params["num_numa"]),
        str(params["num_core_numa"]),
        str(params["num_thread"]),
        root_dir + params["workspace"],
        root_dir + params["profiling_workspace"],
        params["read_input_data"],
        params["input_data_double"],
        params["input_data_float"],
        params["inference_knn_path"],
        str(params["ideko_kernel"]),
        str(params["inbestme_kernel"]),
        str(pack),
        str(flags["wavelet"]),
        params["clustering_label_path"],
    ]


def launcher_words(launcher: str, num_mpi_procs: int) -> list[str]:
    """The MPI launcher prefix (operator configuration) as words; empty runs the executable directly."""
    return shlex.split(launcher.replace("{num_mpi_procs}", str(int(num_mpi_procs)))) if launcher.strip() else []


NAME = "serrano"
DESCRIPTION = "The SERRANO services (POST /job with services and params); built in, read-only."

TEMPLATE_BODY = """#!/bin/bash
# SERRANO services: {{services}}
set -eo pipefail
cd {{root_dir}}
{{clear_binary_data}}
{{make_binary_input}}
{{run_kernel}}
{{pack_csv_output}}
"""

_COMMAND_LINE = {"type": "array", "items": {"type": "string"}, "description": "One run: launcher, executable, 27 arguments."}

# The placeholders' values as template_values derives them (a request names services and params instead).
PARAMETERS_SCHEMA = {
    "type": "object",
    "required": ["services", "root_dir", "clear_binary_data", "make_binary_input", "run_kernel", "pack_csv_output"],
    "properties": {
        "services": {"type": "array", "items": {"type": "string", "enum": list(SIGNAL_SERVICES + CLUSTERING_SERVICES)}},
        "root_dir": {"type": "string", "description": "params.root_dir, ${HOME} expanded by the gateway."},
        "clear_binary_data": {**_COMMAND_LINE, "description": "Case -1."},
        "make_binary_input": {**_COMMAND_LINE, "description": "Case 0."},
        "run_kernel": {**_COMMAND_LINE, "description": "The case derived from the services (or params.icase)."},
        "pack_csv_output": {**_COMMAND_LINE, "description": "Case 0 with CSV packing; empty (line left out) "
                                                            "when params.csv_output is 0."},
    },
}


def template_values(services: Sequence[str], params: Mapping[str, Any], *, home: str, launcher: str) -> dict[str, Any]:
    """The values of :data:`TEMPLATE_BODY`'s placeholders for one request.

    Args:
        services: Requested service names.
        params: ``JobRequestParams`` as a dict with the contract's defaults filled in.
        home: The cluster user's home directory (absolute), for ``${HOME}`` in ``root_dir``.
        launcher: The infrastructure's ``mpi_launcher`` setting.
    """
    selected = plan(services, params)
    root_dir = resolve_home(params["root_dir"], home)
    prefix = launcher_words(launcher, params["num_mpi_procs"])
    executable = params["exe"] if params["exe"].startswith("/") else f"./{params['exe']}"

    def run(case: int, pack: int) -> list[str]:
        return prefix + [executable] + arguments(case, selected.flags, params, root_dir, pack)

    return {
        "services": list(services),
        "root_dir": root_dir,
        "clear_binary_data": run(-1, 0),
        "make_binary_input": run(0, 0),
        "run_kernel": run(selected.case, 0),
        "pack_csv_output": run(0, 1) if int(params.get("csv_output", 1)) == 1 else [],
    }


def render_payload(services: Sequence[str], params: Mapping[str, Any], *, home: str, launcher: str) -> str:
    """The bash payload that runs the SERRANO invocations from ``root_dir`` (see :func:`template_values`)."""
    return template.render(TEMPLATE_BODY, template_values(services, params, home=home, launcher=launcher))
