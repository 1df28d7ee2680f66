"""Job templates, pure parts: the placeholder syntax and contexts, quoting run by a real bash, the checks
of a template at registration and of a job's parameters (hpc.schedulers.template, hpc.services.templates).
"""

from __future__ import annotations

import subprocess

import pytest

from hpc.errors import InvalidInput
from hpc.schedulers.template import (
    COMMENT,
    WORD,
    TemplateSyntaxError,
    TemplateValueError,
    render,
    scan,
)
from hpc.services.templates import check_template, render_parameters

HOSTILE = [
    "two  spaces", "it's", 'a "quoted" one', "$(touch {m})", "`touch {m}`", "x\nEOF\ntouch {m}\n", ";touch {m}",
    "'; touch {m}; '", "\\", "-n", "*", "~", "$HOME", "{{x}}", "a\tb", "EOF", "",
]


def bash(script: str, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "job.sh"
    path.write_text(script)
    return subprocess.run(["bash", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=20)


# -- syntax and contexts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body, contexts", [
    ("echo {{a}} {{ b }}\n", [WORD, WORD]),
    ("# note {{a}}\nx={{b}}\n", [COMMENT, WORD]),
    ("run --in={{a}}/data >{{b}} 2>&1\n", [WORD, WORD]),
    ('echo "$(printf %s {{a}})"\n', [WORD]),
    ("diff <(sort {{a}}) <(sort {{b}})\n", [WORD, WORD]),
    ("cat <<'EOF'\n{not a placeholder}\nEOF\necho {{a}}\n", [WORD]),
    ("cat <<-EOF\n\tx\n\tEOF\necho {{a}}\n", [WORD]),
    ("f() { echo {{a}}; }\n(cd /tmp && ls {{b}})\n", [WORD, WORD]),
    ("case {{a}} in x) echo {{b}};; esac\n", [WORD, WORD]),
    ("echo a#b {{a}} # c {{b}}\n", [WORD, COMMENT]),
    ("awk '{''{print}}' {{a}}\n", [WORD]),
    ("echo ${#x} $# {{a}}\n", [WORD]),
    ("grep <<<{{a}} x\n", [WORD]),
])
def test_placeholders_in_word_and_comment_contexts(body, contexts):
    assert [ph.context for ph in scan(body)] == contexts


@pytest.mark.parametrize("body, line, words", [
    ("echo '{{a}}'\n", 1, "single quotes"),
    ('echo\necho "x {{a}}"\n', 2, "double quotes"),
    ("echo `echo {{a}}`\n", 1, "backticks"),
    ("echo $'{{a}}'\n", 1, "$'...'"),
    ("echo ${x:-{{a}}}\n", 1, "${...}"),
    ("echo $(( {{a}} + 1 ))\n", 1, "arithmetic"),
    ("(( n = {{a}} ))\n", 1, "arithmetic"),
    ("cat <<EOF\nhello\n{{a}}\nEOF\n", 3, "here-document"),
    ("cat <<{{a}}\nx\n", 1, "delimiter"),
    ("echo \\{{a}}\n", 1, "backslash"),
    ("echo ${{a}}\n", 1, "'$'"),
    ("echo {{a}\n", 1, "must open a placeholder"),
    ("echo {{ a-b }}\n", 1, "must open a placeholder"),
    ("echo {{{a}}}\n", 1, "must open a placeholder"),
    ("x=$(case $y in a) echo;; esac)\necho {{a}}\n", 2, "'case' inside $(...)"),
    ('echo "${x:-\'}\'}"\necho {{a}}\n', 2, "single quote inside ${...}"),
    ("echo 'unterminated\necho {{a}}\n", 2, "single quotes"),
])
def test_placeholders_where_a_quoted_word_is_not_one_are_refused(body, line, words):
    with pytest.raises(TemplateSyntaxError) as caught:
        scan(body)
    assert caught.value.line == line
    assert words in str(caught.value)


# -- values as a real bash receives them -----------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_reach_the_program_as_they_are(tmp_path, value):
    marker = tmp_path / "pwned"
    value = value.replace("{m}", str(marker))
    body = ("#!/bin/bash\n# value: {{v}}\nprintf '[%s]\\n' {{v}}\nx={{v}}\nprintf '[%s]\\n' \"$x\"\n"
            "y=$(printf '%s' {{v}}); printf '[%s]\\n' \"$y\"\nprintf '[%s]\\n' --opt={{v}}\n")
    script = render(body, {"v": value})
    result = bash(script, tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"[{value}]\n[{value}]\n[{value.rstrip(chr(10))}]\n[--opt={value}]\n"
    assert not marker.exists()
    assert script.splitlines()[1] == "# value: " + value.translate({9: " ", 10: " "})


def test_an_array_is_one_word_per_item_and_an_empty_one_leaves_its_line_out(tmp_path):
    body = "#!/bin/bash\nprintf '[%s]\\n' {{files}}\n{{optional}}\nprintf 'n=%s\\n' {{n}} {{f}} {{yes}}\n"
    script = render(body, {"files": ["a b", "$(id)", "x\ny"], "optional": [], "n": 3, "f": 2.5, "yes": True})
    assert script == "#!/bin/bash\nprintf '[%s]\\n' 'a b' '$(id)' 'x\ny'\nprintf 'n=%s\\n' 3 2.5 true\n"
    assert bash(script, tmp_path).stdout == "[a b]\n[$(id)]\n[x\ny]\nn=3\nn=2.5\nn=true\n"
    assert bash(render(body, {"files": [], "optional": ["echo", "ran"], "n": 0, "f": 1e-05, "yes": False}),
                tmp_path).stdout == "[]\nran\nn=0\nn=1e-05\nn=false\n"


@pytest.mark.parametrize("value, words", [
    ("a\x00b", "NUL"), (None, "null"), ({"a": 1}, "object"), ([["a"]], "nested array"), (float("inf"), "finite"),
])
def test_values_no_script_can_hold_are_refused_naming_the_parameter(value, words):
    with pytest.raises(TemplateValueError) as caught:
        render("echo {{v}}\n", {"v": value})
    assert caught.value.name == "v"
    assert words in str(caught.value)


def test_an_array_glued_to_a_word_is_refused():
    with pytest.raises(TemplateValueError) as caught:
        render("echo --in={{v}}\n", {"v": ["a", "b"]})
    assert caught.value.name == "v"


# -- registration checks and parameters -------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "input": {"type": "string", "minLength": 1},
        "threads": {"type": "integer", "minimum": 1, "maximum": 64, "default": 2},
        "files": {"type": "array", "items": {"type": "string"}, "default": []},
    },
    "additionalProperties": False,
}
BODY = "#!/bin/bash\nexport OMP_NUM_THREADS={{threads}}\nsolver --input {{input}} {{files}}\n"


def refused(body, schema) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        check_template(body, schema)
    return caught.value


def test_a_good_template_lists_its_placeholders():
    assert check_template(BODY, SCHEMA) == ["threads", "input", "files"]
    with_defs = {"type": "object", "$defs": {"path": {"type": "string", "pattern": "^[^/]"}},
                 "properties": {"input": {"$ref": "#/$defs/path", "type": "string"}}}
    assert check_template("run {{input}}\n", with_defs) == ["input"]
    with pytest.raises(InvalidInput) as caught:
        render_parameters("run {{input}}\n", with_defs, {"input": "/etc/passwd"})
    assert caught.value.field == "parameters.input"


@pytest.mark.parametrize("schema, field", [
    ({"type": "object", "properties": {"input": {"type": "strnig"}}}, "parameters.properties.input.type"),
    ({"type": "object", "required": "input"}, "parameters.required"),
    ({"type": "array"}, "parameters.type"),
    ({"type": "object", "properties": {"input": {"$ref": "https://example.org/s.json"}}},
     "parameters.properties.input.$ref"),
    ({"type": "object", "$defs": {"x": {"$dynamicRef": "file:///etc/passwd"}}}, "parameters.$defs.x.$dynamicRef"),
    ({"type": "object", "description": "x" * 70000}, "parameters"),
    ({"type": "object", "properties": {"input": {"type": "string", "$ref": "#/$defs/missing"}}},
     "parameters.properties.input.$ref"),
    ({"type": "object", "$id": "http://127.0.0.1:8081/schema"}, "parameters.$id"),
    ({"type": "object", "properties": {"input": {"$anchor": "x", "type": "string"}}},
     "parameters.properties.input.$anchor"),
    ({"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"}, "parameters.$schema"),
])
def test_an_invalid_or_unbounded_schema_is_refused(schema, field):
    assert refused("echo hi\n", schema).field == field


def test_a_deep_schema_is_refused():
    deep: dict = {"type": "object"}
    for _ in range(20):
        deep = {"type": "object", "properties": {"x": deep}}
    assert refused("echo hi\n", deep).field == "parameters"


def test_placeholder_without_parameter_or_type_is_refused():
    missing = refused("echo {{input}} {{nope}}\n", SCHEMA)
    assert (missing.field, "{{nope}}" in missing.detail, "line 1" in missing.detail) == ("body", True, True)
    untyped = {"type": "object", "properties": {"input": {}}}
    assert refused("echo {{input}}\n", untyped).field == "parameters.properties.input.type"
    objects = {"type": "object", "properties": {"input": {"type": "object"}}}
    assert refused("echo {{input}}\n", objects).field == "parameters.properties.input.type"
    nested = {"type": "object", "properties": {"input": {"type": "array", "items": {"type": "array"}}}}
    assert refused("echo {{input}}\n", nested).field == "parameters.properties.input.items.type"


@pytest.mark.parametrize("body", [
    "[[ {{input}} -eq 1 ]] && echo one\n",
    "if [[ -n x && 3 -lt {{input}} ]]; then :; fi\n",
    "arr[{{input}}]=1\n",
    "arr=([{{input}}]=1)\n",
    "let n={{input}}+1\n",
    "if true; then declare -ri n={{input}}; fi\n",
    "eval {{input}}\n",
])
def test_a_string_where_bash_evaluates_arithmetic_or_code_is_refused(tmp_path, body):
    refusal = refused(body, SCHEMA)
    assert (refusal.field, "runs the word as code" in refusal.detail) == ("body", True)
    numeric = {"type": "object", "properties": {"input": {"type": "integer"}}}
    assert check_template(body, numeric) == ["input"]


def test_why_a_quoted_string_is_not_data_in_arithmetic(tmp_path):
    """The hazard the refusal above is about, shown with a real bash: quoting does not help there."""
    marker = tmp_path / "pwned"
    hostile = f"a[$(touch {marker})]"
    assert bash(render("[[ 1 -eq {{v}} ]]\n", {"v": hostile}), tmp_path).returncode != 0
    assert marker.exists()
    marker.unlink()
    assert bash(render("[ 1 -eq {{v}} ]; [[ {{v}} == x ]]\n", {"v": hostile}), tmp_path).returncode != 0
    assert not marker.exists()  # test's -eq and [[ == ]] take it as data


def test_array_inside_a_word_bad_default_and_bad_body_are_refused():
    assert refused("echo --f={{files}}\n", SCHEMA).field == "body"
    bad_default = {"type": "object", "properties": {"n": {"type": "integer", "default": "two"}}}
    assert refused("echo {{n}}\n", bad_default).field == "parameters.properties.n.default"
    assert refused("echo \"{{input}}\"\n", SCHEMA).field == "body"


def test_parameters_are_checked_defaults_filled_and_rendered():
    payload = render_parameters(BODY, SCHEMA, {"input": "in put.dat"})
    assert payload == "#!/bin/bash\nexport OMP_NUM_THREADS=2\nsolver --input 'in put.dat' \n"
    payload = render_parameters(BODY, SCHEMA, {"input": "x", "threads": 8, "files": ["a", "b c"]})
    assert payload.splitlines()[1:] == ["export OMP_NUM_THREADS=8", "solver --input x a 'b c'"]


@pytest.mark.parametrize("parameters, field", [
    ({}, "parameters.input"),
    ({"input": "x", "threads": "8"}, "parameters.threads"),
    ({"input": "x", "threads": 0}, "parameters.threads"),
    ({"input": 5}, "parameters.input"),
    ({"input": "x", "files": [1]}, "parameters.files.0"),
    ({"input": "x", "extra": "$(id)"}, "parameters.extra"),
    ({"input": "a\x00b"}, "parameters.input"),
])
def test_bad_parameters_are_refused_naming_the_parameter_without_the_value(parameters, field):
    with pytest.raises(InvalidInput) as caught:
        render_parameters(BODY, SCHEMA, parameters)
    assert caught.value.field == field
    assert "$(id)" not in caught.value.detail
    assert caught.value.detail.startswith(field + ":")


def test_a_value_without_default_that_the_schema_does_not_require_is_refused_when_used():
    schema = {"type": "object", "properties": {"opt": {"type": "string"}}}
    with pytest.raises(InvalidInput) as caught:
        render_parameters("echo {{opt}}\n", schema, {})
    assert caught.value.field == "parameters.opt"


def test_the_rendered_payload_is_bounded():
    schema = {"type": "object", "properties": {"v": {"type": "array", "items": {"type": "string"}}}}
    with pytest.raises(InvalidInput) as caught:
        render_parameters("echo {{v}}\n", schema, {"v": ["x" * 65536] * 20})
    assert caught.value.field == "parameters"
