"""An infrastructure's command_setup_lines, run by a local bash before a command as the gateway runs it."""

from __future__ import annotations

import subprocess

from hpc.services.infrastructures import SETUP_FAILED, with_command_setup


def run(command: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], input=stdin, capture_output=True, text=True, check=False)


def test_no_setup_leaves_the_command_alone():
    assert with_command_setup("qstat -xml", None) == "qstat -xml"
    assert with_command_setup("qstat -xml", []) == "qstat -xml"


def test_setup_sets_the_environment_silently_and_leaves_stdin_to_the_command(tmp_path):
    profile = tmp_path / "settings.sh"
    profile.write_text("echo noise; echo more noise >&2; read -r stolen; X_BIN=/opt/x/bin; export X_BIN\n")
    proc = run(with_command_setup('printf "%s|" "$X_BIN"; cat', [f". {profile}"]), stdin="the script\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "/opt/x/bin|the script\n", "")


def test_a_failing_last_line_stops_the_command(tmp_path):
    marker = tmp_path / "ran"
    proc = run(with_command_setup(f"touch {marker}", ["true", "false"]))
    assert (proc.returncode, proc.stderr.strip(), marker.exists()) == (127, SETUP_FAILED, False)
