"""Cluster path resolution and confinement to the allowed roots (pure)."""

from __future__ import annotations

import pytest

from hpc.staging.paths import inside, resolve_remote_path, resolve_roots, temp_path

HOME = "/home/alice"


@pytest.mark.parametrize(
    "path, resolved",
    [
        ("data/input.csv", "/home/alice/data/input.csv"),
        ("serrano/data/Init_Data/raw_data_input_fft/input.csv",
         "/home/alice/serrano/data/Init_Data/raw_data_input_fft/input.csv"),
        ("./a//b/./c.txt", "/home/alice/a/b/c.txt"),
        ("a/../b.txt", "/home/alice/b.txt"),
        ("~/x.bin", "/home/alice/x.bin"),
        ("/home/alice/abs.bin", "/home/alice/abs.bin"),
        ("//home//alice/abs.bin", "/home/alice/abs.bin"),
        ("name with spaces $(x) `y`.txt", "/home/alice/name with spaces $(x) `y`.txt"),
    ],
)
def test_paths_resolve_relative_to_home(path, resolved):
    assert resolve_remote_path(path, HOME) == resolved


@pytest.mark.parametrize("path", ["../bob/x", "a/../../x", "../../etc/passwd", "/etc/passwd", "/home/alicex/y",
                                  "/home/alice/../bob/z", "~/../../x"])
def test_escapes_from_the_allowed_roots_are_refused(path):
    with pytest.raises(ValueError) as refused:
        resolve_remote_path(path, HOME)
    assert "outside the allowed directories" in str(refused.value)


@pytest.mark.parametrize("path, message", [
    ("", "empty"),
    ("   ", "empty"),
    ("dir/", "name a file"),
    (".", "name a file"),
    ("..", "name a file"),
    ("~", "name a file"),
    ("a/b/..", "name a file"),
    ("x\ny", "control characters"),
    ("x\x00y", "control characters"),
    ("~bob/x", "~user"),
])
def test_paths_that_name_no_file_are_refused(path, message):
    with pytest.raises(ValueError) as refused:
        resolve_remote_path(path, HOME)
    assert message in str(refused.value)


def test_a_root_itself_is_no_file():
    with pytest.raises(ValueError) as refused:
        resolve_remote_path(HOME, HOME)
    assert "outside the allowed directories" in str(refused.value)


def test_allowed_roots_relative_and_absolute():
    roots = ["scratch", "/data/shared"]
    assert resolve_roots(roots, HOME) == ["/home/alice/scratch", "/data/shared"]
    assert resolve_remote_path("scratch/x", HOME, roots) == "/home/alice/scratch/x"
    assert resolve_remote_path("/data/shared/in/y", HOME, roots) == "/data/shared/in/y"
    with pytest.raises(ValueError):
        resolve_remote_path("elsewhere/x", HOME, roots)  # home is not a root any more
    with pytest.raises(ValueError):
        resolve_remote_path("/data/sharedX/y", HOME, roots)


def test_root_slash_allows_everything_but_itself():
    assert resolve_remote_path("/etc/x", HOME, ["/"]) == "/etc/x"
    assert inside("/a", "/")
    assert not inside("/", "/")
    assert not inside("/home/alice", "/home/alice")
    assert inside("/home/alice/x", "/home/alice")


def test_temp_path_is_hidden_beside_the_destination():
    assert temp_path("/home/alice/d/x.csv", "0123456789abcdef") == "/home/alice/d/.x.csv.01234567.part"
