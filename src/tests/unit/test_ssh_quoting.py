"""The one quoting helper survives hostile values when a real bash expands them."""

import subprocess

import pytest

from hpc.shell import join, quote

HOSTILE = [
    "",
    "plain",
    "two words",
    "  leading and trailing  ",
    "it's",
    'say "hi"',
    "'\"'\"'",
    "$(touch pwned)",
    "`touch pwned`",
    "${HOME}",
    "$HOME",
    "a\nb",
    "line one\nEOF\nline three",
    "EOF",
    ";rm -rf ~",
    "a && b || c | d & e",
    "*",
    "~",
    "-n",
    "--",
    "back\\slash",
    "tab\there",
    "\r\n",
    "!event",
    "#comment",
    "x > /tmp/y",
    "héllo wörld ✓ 日本",
    "\x1b[31mred\x1b[0m",
]


def _bash_printf(word: str, cwd) -> str:
    result = subprocess.run(["bash", "-c", "printf %s " + word], capture_output=True, cwd=cwd, check=True)
    return result.stdout.decode("utf-8")


@pytest.mark.parametrize("value", HOSTILE)
def test_quote_round_trips_through_bash(value, tmp_path):
    assert _bash_printf(quote(value), tmp_path) == value
    # Nothing the value might have run left a trace.
    assert list(tmp_path.iterdir()) == []


def test_quote_converts_non_strings():
    assert quote(42) == "42"
    assert quote(1.5) == "1.5"


def test_quote_refuses_nul():
    with pytest.raises(ValueError, match="NUL"):
        quote("a\x00b")


def test_join_builds_argv(tmp_path):
    line = join("printf", "%s|", *HOSTILE)
    result = subprocess.run(["bash", "-c", line], capture_output=True, cwd=tmp_path, check=True)
    assert result.stdout.decode("utf-8") == "".join(v + "|" for v in HOSTILE)
    assert list(tmp_path.iterdir()) == []


def test_join_of_nothing_is_empty():
    assert join() == ""
