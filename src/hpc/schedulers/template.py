"""Job templates: a batch-script body with named placeholders, rendered with every value quoted once.

Pure: the body is text, the values are JSON values; nothing here runs a shell or reads a file.

**Syntax.** A placeholder reads ``{{name}}`` (blanks allowed inside the braces: ``{{ name }}``); ``name`` is
an identifier, ``[A-Za-z_][A-Za-z0-9_]*``. It cannot be mistaken for a shell expansion: ``${VAR}`` has a
dollar and one brace, and bash gives ``{{`` no meaning of its own. Every ``{{`` in a body opens a
placeholder, so a typo (``{{ name }``, ``{{na-me}}``) is refused instead of reaching the cluster as text; a
literal ``{{`` in shell code is written ``{''{`` (the same two braces to bash).

**Where a placeholder may stand, and what it becomes** (checked by :func:`scan` when the template is
registered, from the shell's own lexical rules):

- *word context*: outside any quoting, where a shell word or part of one stands: an argument, an
  assignment's value (``N={{n}}``), part of a word (``--input={{path}}``), a redirection target, also
  inside ``$(...)``, ``<(...)`` and ``(...)``. The value becomes ONE single-quoted shell word
  (:func:`shell_word`, the one helper, over :func:`hpc.shell.quote`), so whatever it holds (blanks,
  quotes, ``$(...)``, backticks, newlines, a line reading ``EOF``) reaches the program as that exact
  string. An array becomes one such word per item, separated by one space, and must stand as a whole
  word (not glued to other text, not as a redirection target).
- *comment context*: after a ``#`` that starts a comment. Nothing there is run; the value is written as
  plain text with every control character (newline included) replaced by a space, so it cannot end the
  comment. An array's items are joined by spaces.
- *evaluated words*: where bash evaluates even a quoted word as arithmetic or code (an operand of
  ``[[ ]]`` with an arithmetic test, an array subscript, ``let``, ``eval``, ``declare -i``), each
  placeholder records why (``Placeholder.evaluated``); the template service admits only integer, number
  or boolean parameters there.
- anywhere else the template is refused: inside ``'...'``, ``"..."``, backticks, ``$'...'``, ``${...}``,
  ``$((...))``, ``((...))``, ``$[...]``, a here-document (its body or its delimiter), right after a
  backslash or a ``$``. A quoted word would not be one word there (inside ``"..."`` the shell would run a
  ``$(...)`` the value holds). When the body uses a construct whose quoting this scanner cannot follow
  with certainty (a single quote inside ``${...}`` inside double quotes, ``case`` inside ``$(...)``, an
  unterminated quote), every placeholder after it is refused, naming the line.

**Values.** A string as it is; an integer in decimal; a number as Python's shortest round-trip form
(``2.5``, ``1e-05``); ``true``/``false``; an array of those. ``null``, objects, nested arrays, non-finite
numbers and NUL characters are refused, naming the parameter.

**Lines left out.** A line holding nothing but one array placeholder whose value is empty is left out
of the output with its newline (an optional command line, such as SERRANO's CSV packing run).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping, Sequence

from hpc.shell import quote

PLACEHOLDER = re.compile(r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*\}\}")
WORD, COMMENT = "word", "comment"

# Shell metacharacters that end a word (bash(1), DEFINITIONS).
_WORD_END = frozenset(" \t\n;&|()<>")
# Around an array placeholder: what may stand before its first item and after its last one.
_ARRAY_BEFORE = frozenset(" \t\n;&|(")
_ARRAY_AFTER = frozenset(" \t\n;&|)<>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Context names, as the refusal messages show them.
_NAMES = {
    "sq": "inside single quotes",
    "dq": "inside double quotes",
    "bt": "inside backticks",
    "ansic": "inside $'...'",
    "param": "inside ${...}",
    "arith": "inside an arithmetic expression",
    "bracket": "inside $[...]",
}


class TemplateSyntaxError(ValueError):
    """The body cannot be a template: a malformed ``{{``, or a placeholder where a quoted word is not one."""

    def __init__(self, message: str, line: int):
        super().__init__(f"line {line}: {message}")
        self.line = line


class TemplateValueError(ValueError):
    """A value cannot be rendered (wrong type, NUL); ``name`` is the parameter."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class Placeholder:
    """One ``{{name}}`` in a body: where it is, its context, and what surrounds it."""

    name: str
    start: int
    end: int
    line: int
    context: str  # WORD or COMMENT
    whole_word: bool  # stands apart from other text (may take an array)
    alone: bool  # the only thing on its line (an empty array leaves the line out)
    evaluated: str | None = None  # why bash runs this word as code or arithmetic, if it does


@dataclass
class _Frame:
    kind: str  # top, cmd, sq, dq, bt, ansic, param, arith, bracket, comment
    depth: int = 0  # open parentheses (top, cmd, arith) or braces (param)
    closer: str = ""  # for arith: "))" ; for cmd: ")"
    test: tuple[int, int] | None = None  # an open [[ ... ]]: (its offset, placeholders found before it)


# Where bash evaluates an expanded word as arithmetic (which runs a $(...) inside an array subscript of
# the value: `[[ 1 -eq 'a[$(id)]' ]]` runs id) or as code, so a quoted string is not data there.
_SUBSCRIPT = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*)?\[[^\]]*")
_ARITHMETIC_TEST = re.compile(r"\s-(?:eq|ne|lt|le|gt|ge)\s")
_COMMAND_START = re.compile(r"[\n;&|(`{]")
_KEYWORDS = frozenset({"then", "do", "else", "elif", "if", "while", "until", "!", "time", "{", "(", "command"})
_DECLARE = frozenset({"declare", "typeset", "local", "export", "readonly"})
_COMMAND_HEAD = 256  # characters of a command looked at for its name and options
_BLANKS = 256  # blanks around a placeholder still "alone on its line"


def _newlines(body: str) -> list[int]:
    return [m.start() for m in re.finditer("\n", body)]


def _last_before(offsets: list[int], pos: int) -> int:
    """The greatest of the sorted ``offsets`` below ``pos``, or -1."""
    index = bisect.bisect_left(offsets, pos)
    return offsets[index - 1] if index else -1


def _line(newlines: list[int], pos: int) -> int:
    """The 1-based line of offset ``pos``, from the sorted offsets of the body's newlines."""
    return bisect.bisect_left(newlines, pos) + 1


def placeholder_names(body: str) -> list[str]:
    """The parameter names a body uses, in order of first use (no context check: see :func:`scan`)."""
    return list(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(body)))


def scan(body: str) -> list[Placeholder]:
    """The placeholders of ``body`` in order, each with its context.

    Raises:
        TemplateSyntaxError: A ``{{`` that is not a placeholder, or a placeholder outside a word or
            comment context (see the module's documentation).
    """
    starts: dict[int, re.Match] = {}
    for index in (m.start() for m in re.finditer(r"\{\{", body)):
        match = PLACEHOLDER.match(body, index)
        if match is None:
            raise TemplateSyntaxError("'{{' must open a placeholder {{name}} (write {''{ for two braces)",
                                      _line(_newlines(body), index))
        starts[index] = match
    found: list[Placeholder] = []
    if not starts:
        return found
    lexer = _Lexer(body, starts)
    lexer.run()
    return lexer.found


class _Lexer:
    """A conservative reading of bash's quoting, enough to tell each placeholder's context."""

    def __init__(self, body: str, starts: dict[int, re.Match]):
        self.body = body
        self.starts = starts
        self.offsets = sorted(starts)
        self.newlines = _newlines(body)
        self.word_breaks = [m.start() for m in re.finditer(r"[ \t\n;&|()<>]", body)]
        self.command_breaks = [m.start() for m in _COMMAND_START.finditer(body)]
        self.stack: list[_Frame] = [_Frame("top")]
        self.heredocs: list[tuple[str, bool]] = []
        self.unsure: tuple[str, int] | None = None
        self.found: list[Placeholder] = []

    # -- helpers ------------------------------------------------------------------------------------

    def fail(self, message: str, pos: int) -> None:
        raise TemplateSyntaxError(message, _line(self.newlines, pos))

    def doubt(self, why: str, pos: int) -> None:
        if self.unsure is None:
            self.unsure = (why, _line(self.newlines, pos))

    def guard(self, start: int, end: int, what: str) -> None:
        """Refuses a placeholder that starts inside ``body[start:end]`` (consumed as one token)."""
        first = bisect.bisect_left(self.offsets, start)
        if first < len(self.offsets) and self.offsets[first] < end:
            self.fail(f"a placeholder cannot stand {what}", self.offsets[first])

    def word_start(self, i: int) -> bool:
        return i == 0 or self.body[i - 1] in _WORD_END

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        i = 0
        while i < len(self.body):
            if i in self.starts:
                i = self.placeholder(i)
                continue
            frame = self.stack[-1]
            handler = getattr(self, f"in_{frame.kind}")
            i = handler(frame, i)

    def placeholder(self, i: int) -> int:
        match = self.starts[i]
        frame = self.stack[-1]
        name = match.group(1)
        if self.unsure is not None:
            why, line = self.unsure
            self.fail(f"placeholder {{{{{name}}}}} follows {why} (line {line}), whose quoting cannot be "
                      "followed with certainty; move the placeholder before it or simplify the construct", i)
        if frame.kind == "comment":
            context = COMMENT
        elif frame.kind in ("top", "cmd"):
            context = WORD
        else:
            self.fail(f"placeholder {{{{{name}}}}} stands {_NAMES[frame.kind]}, where a quoted word is not "
                      "one word; put it outside quotes and expansions", i)
        if context == WORD and i > 0 and self.body[i - 1] == "$":
            self.fail(f"placeholder {{{{{name}}}}} cannot follow '$'", i)
        end = match.end()
        before = self.body[i - 1] if i > 0 else "\n"
        after = self.body[end] if end < len(self.body) else "\n"
        line_start = _last_before(self.newlines, i) + 1
        following = bisect.bisect_left(self.newlines, end)
        line_end = self.newlines[following] if following < len(self.newlines) else len(self.body)
        # Alone on its line: only blanks around it (a long run of text is not looked through).
        alone = (i - line_start <= _BLANKS and line_end - end <= _BLANKS
                 and not self.body[line_start:i].strip(" \t") and not self.body[end:line_end].strip(" \t"))
        self.found.append(Placeholder(
            name=name, start=i, end=end, line=_line(self.newlines, i), context=context,
            whole_word=context == COMMENT or (before in _ARRAY_BEFORE and after in _ARRAY_AFTER), alone=alone,
            evaluated=self.evaluated_by(i) if context == WORD else None,
        ))
        return end

    def evaluated_by(self, i: int) -> str | None:
        """Why bash would evaluate the word at ``i`` as arithmetic or code (see :data:`_SUBSCRIPT`)."""
        body = self.body
        word_start = _last_before(self.word_breaks, i) + 1
        if _SUBSCRIPT.fullmatch(body, word_start, i):
            return "an array subscript, evaluated as arithmetic"
        command_start = _last_before(self.command_breaks, word_start) + 1
        words = body[command_start:min(word_start, command_start + _COMMAND_HEAD)].split()
        while words and words[0] in _KEYWORDS:
            words.pop(0)
        if not words:
            return None
        if words[0] == "let":
            return "an argument of let, evaluated as arithmetic"
        if words[0] == "eval":
            return "an argument of eval, run as code"
        if words[0] in _DECLARE and any(w.startswith("-") and "i" in w for w in words[1:]):
            return f"a value of {words[0]} -i, evaluated as arithmetic"
        return None

    def open_common(self, i: int) -> int | None:
        """Openers valid in unquoted and double-quoted text: ``$(``, ``$((``, ``${``, ``$[``, backticks."""
        body = self.body
        ch = body[i]
        if ch == "`":
            self.stack.append(_Frame("bt"))
            return i + 1
        if ch != "$":
            return None
        if i + 1 in self.starts:
            self.fail("a placeholder cannot follow '$'", i + 1)
        if body.startswith("$((", i):
            self.stack.append(_Frame("arith", closer="))"))
            return i + 3
        if body.startswith("$(", i):
            self.stack.append(_Frame("cmd"))
            return i + 2
        if body.startswith("${", i):
            self.stack.append(_Frame("param"))
            return i + 2
        if body.startswith("$[", i):
            self.stack.append(_Frame("bracket"))
            return i + 2
        return None

    def escape(self, i: int) -> int:
        """A backslash: it and the character after it are one token."""
        if i + 1 in self.starts:
            self.fail("a placeholder cannot follow a backslash", i + 1)
        return i + 2

    # -- contexts ------------------------------------------------------------------------------------

    def in_top(self, frame: _Frame, i: int) -> int:
        return self.unquoted(frame, i)

    def in_cmd(self, frame: _Frame, i: int) -> int:
        body = self.body
        if self.word_start(i) and re.match(r"case[ \t\n]", body[i:i + 5]):
            self.doubt("'case' inside $(...)", i)
        return self.unquoted(frame, i)

    def unquoted(self, frame: _Frame, i: int) -> int:
        body = self.body
        ch = body[i]
        if ch == "[" and body.startswith("[[", i) and self.word_start(i) and body[i + 2:i + 3] in (" ", "\t"):
            frame.test = (i, len(self.found))
            return i + 2
        if ch == "]" and frame.test and body.startswith("]]", i) and self.word_start(i):
            start, first = frame.test
            frame.test = None
            if _ARITHMETIC_TEST.search(body, start, i):
                for n in range(first, len(self.found)):
                    self.found[n] = dataclasses.replace(self.found[n], evaluated="an operand of [[ ]] with an "
                                                        "arithmetic test (-eq, -lt, ...), evaluated as arithmetic")
            return i + 2
        if ch == "\\":
            return self.escape(i)
        if ch == "\n":
            return self.newline(i)
        if ch == "#" and self.word_start(i):
            self.stack.append(_Frame("comment"))
            return i + 1
        if ch == "'":
            self.stack.append(_Frame("sq"))
            return i + 1
        if ch == '"':
            self.stack.append(_Frame("dq"))
            return i + 1
        if body.startswith("$'", i):
            self.stack.append(_Frame("ansic"))
            return i + 2
        if body.startswith('$"', i):
            self.stack.append(_Frame("dq"))
            return i + 2
        opened = self.open_common(i)
        if opened is not None:
            return opened
        if ch in "<>" and body.startswith("(", i + 1):
            self.stack.append(_Frame("cmd"))  # process substitution
            return i + 2
        if body.startswith("<<", i) and not body.startswith("<<<", i):
            return self.heredoc(i)
        if body.startswith("<<<", i):
            return i + 3
        if ch == "(" and body.startswith("((", i) and self.word_start(i):
            self.stack.append(_Frame("arith", closer="))"))
            return i + 2
        if ch == "(":
            frame.depth += 1
        elif ch == ")":
            if frame.depth:
                frame.depth -= 1
            elif frame.kind == "cmd":
                self.stack.pop()
        return i + 1

    def newline(self, i: int) -> int:
        i += 1
        for delimiter, strip_tabs in self.heredocs:
            while i <= len(self.body):
                end = self.body.find("\n", i)
                end = len(self.body) if end < 0 else end
                line = self.body[i:end]
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    i = end + 1
                    break
                self.guard(i, end, "inside a here-document")
                i = end + 1
        self.heredocs.clear()
        return i

    def heredoc(self, i: int) -> int:
        body = self.body
        j = i + 2
        strip_tabs = body.startswith("-", j)
        j += strip_tabs
        while j < len(body) and body[j] in " \t":
            j += 1
        start, delimiter = j, ""
        while j < len(body) and body[j] not in _WORD_END:
            ch = body[j]
            if ch in "'\"":
                close = body.find(ch, j + 1)
                if close < 0:
                    self.doubt("an unterminated quote in a here-document delimiter", j)
                    close = len(body) - 1
                delimiter += body[j + 1:close]
                j = close + 1
            elif ch == "\\" and j + 1 < len(body):
                delimiter += body[j + 1]
                j += 2
            else:
                delimiter += ch
                j += 1
        self.guard(start, j, "in a here-document delimiter")
        if not delimiter:
            self.doubt("'<<' without a delimiter", i)
        self.heredocs.append((delimiter, strip_tabs))
        return j

    def in_comment(self, frame: _Frame, i: int) -> int:
        if self.body[i] == "\n":
            self.stack.pop()
            return i  # the newline ends the command line too (here-documents start after it)
        return i + 1

    def in_sq(self, frame: _Frame, i: int) -> int:
        if self.body[i] == "'":
            self.stack.pop()
        return i + 1

    def in_ansic(self, frame: _Frame, i: int) -> int:
        ch = self.body[i]
        if ch == "\\":
            return self.escape(i)
        if ch == "'":
            self.stack.pop()
        return i + 1

    def in_bt(self, frame: _Frame, i: int) -> int:
        ch = self.body[i]
        if ch == "\\":
            return self.escape(i)
        if ch == "`":
            self.stack.pop()
        return i + 1

    def in_dq(self, frame: _Frame, i: int) -> int:
        ch = self.body[i]
        if ch == "\\":
            return self.escape(i)
        if ch == '"':
            self.stack.pop()
            return i + 1
        opened = self.open_common(i)
        return opened if opened is not None else i + 1

    def in_param(self, frame: _Frame, i: int) -> int:
        ch = self.body[i]
        if ch == "\\":
            return self.escape(i)
        if ch == "}":
            if frame.depth:
                frame.depth -= 1
            else:
                self.stack.pop()
            return i + 1
        if ch == "{":
            frame.depth += 1
            return i + 1
        if ch == "'":
            if any(f.kind == "dq" for f in self.stack):
                self.doubt("a single quote inside ${...} inside double quotes", i)
            self.stack.append(_Frame("sq"))
            return i + 1
        if ch == '"':
            self.stack.append(_Frame("dq"))
            return i + 1
        opened = self.open_common(i)
        return opened if opened is not None else i + 1

    def in_arith(self, frame: _Frame, i: int) -> int:
        body = self.body
        ch = body[i]
        if ch == "(":
            frame.depth += 1
            return i + 1
        if ch == ")":
            if frame.depth:
                frame.depth -= 1
                return i + 1
            self.stack.pop()
            if body.startswith("))", i):
                return i + 2
            self.doubt("an arithmetic expression closed by a single ')'", i)
            return i + 1
        if ch == "\\":
            return self.escape(i)
        if ch in "'\"":
            self.stack.append(_Frame("sq" if ch == "'" else "dq"))
            return i + 1
        opened = self.open_common(i)
        return opened if opened is not None else i + 1

    def in_bracket(self, frame: _Frame, i: int) -> int:
        if self.body[i] == "]":
            self.stack.pop()
            return i + 1
        opened = self.open_common(i)
        return opened if opened is not None else i + 1


# -- values --------------------------------------------------------------------------------------------


def scalar_text(name: str, value: Any) -> str:
    """A scalar JSON value as the text a program receives (see the module's documentation)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TemplateValueError(name, "must be a finite number")
        return repr(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise TemplateValueError(name, "NUL characters cannot be passed to a shell")
        return value
    kind = "null" if value is None else "an object" if isinstance(value, Mapping) else "a nested array"
    raise TemplateValueError(name, f"cannot be placed in a script: it is {kind}")


def _items(name: str, value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [scalar_text(name, item) for item in value]
    return [scalar_text(name, value)]


def shell_word(name: str, value: Any) -> str:
    """The ONE place a template value becomes shell text in word context: each item quoted once."""
    return " ".join(quote(text) for text in _items(name, value))


def comment_text(name: str, value: Any) -> str:
    """A value in comment context: plain text that cannot end the comment."""
    return _CONTROL.sub(" ", " ".join(_items(name, value)))


def render(body: str, values: Mapping[str, Any], placeholders: Sequence[Placeholder] | None = None) -> str:
    """``body`` with every placeholder replaced by its value (see the module's documentation).

    Args:
        body: The template body.
        values: A value for every placeholder's name.
        placeholders: :func:`scan` of ``body``, when the caller has it already.

    Raises:
        TemplateSyntaxError: As :func:`scan`.
        TemplateValueError: A value is missing, of a type no script can hold, or an array where a
            whole word is not possible.
    """
    placeholders = scan(body) if placeholders is None else placeholders
    out: list[str] = []
    cursor = 0
    for ph in placeholders:
        if ph.name not in values:
            raise TemplateValueError(ph.name, "has no value and no default, and the template needs one")
        value = values[ph.name]
        is_array = isinstance(value, (list, tuple))
        if is_array and not ph.whole_word:
            raise TemplateValueError(ph.name, f"is an array, but line {ph.line} uses it inside a word")
        if is_array and not value and ph.alone:
            line_start = body.rfind("\n", 0, ph.start) + 1
            line_end = body.find("\n", ph.end)
            out.append(body[cursor:line_start])
            cursor = len(body) if line_end < 0 else line_end + 1
            continue
        out.append(body[cursor:ph.start])
        out.append(shell_word(ph.name, value) if ph.context == WORD else comment_text(ph.name, value))
        cursor = ph.end
    out.append(body[cursor:])
    return "".join(out)
