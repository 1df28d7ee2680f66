"""docs/api.md covers the contract: a section with a curl example for every operation of the spec."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
METHODS = ("get", "post", "put", "patch", "delete")


def operations() -> set[tuple[str, str]]:
    spec = yaml.safe_load((REPO / "openapi" / "openapi.yaml").read_text())
    return {(method.upper(), path) for path, item in spec["paths"].items() for method in item if method in METHODS}


def sections() -> dict[tuple[str, str], str]:
    text = (REPO / "docs" / "api.md").read_text()
    found = {}
    for match in re.finditer(r"^### (GET|POST|PUT|PATCH|DELETE) (\S+)\n(.*?)(?=^##|\Z)", text, re.S | re.M):
        found[(match.group(1), match.group(2))] = match.group(3)
    return found


def curl_commands(section: str) -> list[list[str]]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for command in re.split(r"\n(?=curl )", block.strip()):
            commands.append(shlex.split(command))
    return commands


def test_every_operation_has_a_section_with_its_curl():
    documented = sections()
    assert set(documented) == operations()
    for (method, path), section in documented.items():
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/?\"]+", re.escape(path)) + r"(\?|$)"
        matching = []
        for tokens in curl_commands(section):
            url = next(t for t in tokens if t.startswith("$HPC_URL"))[len("$HPC_URL"):]
            sent = tokens[tokens.index("-X") + 1] if "-X" in tokens else ("POST" if "-d" in tokens else "GET")
            if sent == method and re.match(pattern, url):
                matching.append(tokens)
        assert (method, path, len(matching) >= 1) == (method, path, True)


def test_request_bodies_in_the_examples_are_json():
    for section in sections().values():
        for tokens in curl_commands(section):
            if "-d" in tokens:
                body = json.loads(tokens[tokens.index("-d") + 1])
                assert isinstance(body, dict)
