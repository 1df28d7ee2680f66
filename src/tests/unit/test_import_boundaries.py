"""The dependency arrows of the package: who may import what (api -> services -> {schedulers, staging, ssh,
store}; schedulers and staging never import ssh or store; only ``hpc.ssh`` imports paramiko)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

HPC = Path(__file__).resolve().parents[2] / "hpc"


def imports(path: Path) -> list[str]:
    """Every module name a file imports (``import a.b`` and ``from a.b import c`` give ``a.b``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def offenders(package: str, forbidden: tuple[str, ...]) -> list[tuple[str, str]]:
    """(file, module) pairs where a file of ``package`` imports a forbidden module or one of its submodules."""
    return [
        (str(path.relative_to(HPC)), name)
        for path in sorted((HPC / package).rglob("*.py"))
        for name in imports(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize("package", ["schedulers", "staging"])
def test_pure_layers_import_no_ssh_store_services_or_api(package):
    assert offenders(package, ("hpc.ssh", "hpc.store", "hpc.services", "hpc.api", "paramiko")) == []


def test_only_the_ssh_layer_imports_paramiko():
    found = []
    for path in sorted(HPC.rglob("*.py")):
        if path.is_relative_to(HPC / "ssh"):
            continue
        found += [(str(path.relative_to(HPC)), n) for n in imports(path) if n.split(".")[0] == "paramiko"]
    assert found == []


def test_the_transport_interface_and_the_quoting_helper_have_no_dependency():
    for module in ("transport.py", "shell.py"):
        assert [n for n in imports(HPC / module) if n.split(".")[0] not in sys.stdlib_module_names] == []


@pytest.mark.parametrize("module", ["hpc.schedulers", "hpc.staging.to_cluster", "hpc.staging.to_s3",
                                    "hpc.staging.batch", "hpc.shell", "hpc.transport"])
def test_importing_a_pure_layer_loads_no_ssh_library(module):
    # The AST check above misses indirect imports (hpc.ssh's __init__ pulls in paramiko): this one runs them.
    code = f"import sys, {module}; print(sorted(m for m in ('paramiko', 'hpc.ssh', 'hpc.store') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": str(HPC.parent)}, check=True)
    assert result.stdout.strip() == "[]"
