"""The values of the Perl subset that amavis config files are read into (`perl_config.py`):
undef, strings, numbers, array and hash references, references to variables, regular
expressions, `new_RE` and `read_hash` tables, and :class:`Opaque` for valid Perl that is not
computed here; the variables' environment; string interpolation and the few functions whose
result amavis configs need.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .perl_lexer import Token


@dataclass(frozen=True)
class Problem:
    """One line for the user: `NAME (FILE:LINE): why`."""

    name: str
    file: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.name} ({self.file}:{self.line}): {self.why}"


@dataclass(frozen=True)
class Ref:
    """\\$x, \\@x, \\%x: amavis resolves these when it looks up, so we resolve them last."""

    name: str  # with its sigil: "%bypass_spam_checks"


@dataclass(frozen=True)
class Regex:
    pattern: str
    flags: str = ""


@dataclass(frozen=True)
class RegexMap:
    """new_RE(...): regular expressions, each with the value a match returns (default 1)."""

    entries: tuple[tuple[Value, Value], ...]


@dataclass(frozen=True)
class FileMap:
    """read_hash(FILE) or read_array(FILE), read when (and if) the value is used."""

    function: str
    path: str


@dataclass(frozen=True)
class Opaque:
    """A value that is valid Perl but not computed here, and why."""

    why: str


# A Perl value: undef is None, an array reference a tuple, a hash reference a dict. A list (a
# list in parentheses, an array variable in list context) is a Python list while it is built.
Value = (None | str | int | float | tuple["Value", ...] | dict[str, "Value"] | list["Value"]
         | Ref | Regex | RegexMap | FileMap | Opaque)

# Destinies, as amavis's Conf.pm defines them.
CONSTANTS: dict[str, Value] = {
    "D_TEMPFAIL": -4, "D_REJECT": -3, "D_BOUNCE": -2, "D_DISCARD": 0, "D_PASS": 1}


class EvalError(Exception):
    """A statement outside the subset; reported as a Problem, the statement is skipped."""

    def __init__(self, why: str, line: int) -> None:
        super().__init__(why)
        self.why = why
        self.line = line


@dataclass
class Binding:
    value: Value
    file: str
    line: int


@dataclass
class Environment:
    """Variables by name with sigil, where each was last set, and what happened to it."""

    values: dict[str, Binding] = field(default_factory=dict)
    # Variables assigned in the files read, with the place of the last assignment.
    assigned: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Scalars given with --set: the Debian backtick idioms do not override them.
    preset: set[str] = field(default_factory=set)

    def get(self, name: str) -> Value:
        binding = self.values.get(name)
        return None if binding is None else binding.value

    def set(self, name: str, value: Value, file: str, line: int) -> None:
        self.values[name] = Binding(value, file, line)
        self.assigned[name] = (file, line)


@dataclass(frozen=True)
class Commands:
    """What the two commands amavis's Debian config runs in backticks stand for."""

    mailname: Callable[[], Value]  # head -n 1 /etc/mailname
    fqdn: Callable[[], Value]  # hostname --fqdn


def to_number(value: Value, line: int) -> int | float:
    if isinstance(value, bool | int | float):
        return value
    if value is None:
        return 0
    if isinstance(value, str):
        m = re.match(r"\s*([+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+))", value)
        if not m:
            return 0
        number = float(m.group(1))
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    raise EvalError("not a number", line)


def to_string(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value)
    return repr(value)


def truthy(value: Value) -> bool:
    return value not in (None, "", "0", 0, 0.0)


def parse_number(tok: Token) -> int | float:
    text = tok.text.replace("_", "")
    try:
        if text[:2] in ("0x", "0X"):
            return int(text, 16)
        if text[:2] in ("0b", "0B"):
            return int(text, 2)
        if re.fullmatch(r"0[0-7]+", text):
            return int(text, 8)
        if re.fullmatch(r"\d+", text):
            return int(text)
        return float(text)
    except ValueError:
        raise EvalError(f"not a number: {tok.text!r}", tok.line) from None


def call_function(name: str, args: list[Value], line: int) -> Value:
    """The functions amavis configs use for lookup tables; any other call is Opaque."""
    if name in ("new_RE", "Amavis::Lookup::RE::new"):
        entries: list[tuple[Value, Value]] = []
        for arg in args:
            if isinstance(arg, tuple) and arg:
                entries.append((arg[0], arg[1] if len(arg) > 1 else 1))
            else:
                entries.append((arg, 1))
        return RegexMap(tuple(entries))
    if name in ("read_hash", "read_array"):
        paths = [a for a in args if isinstance(a, str)]
        if not paths:
            return Opaque(f"{name}() without a file name")
        return FileMap(name, paths[-1])
    if name in ("lc", "uc") and len(args) == 1 and isinstance(args[0], str):
        return args[0].lower() if name == "lc" else args[0].upper()
    if name == "join" and args and all(isinstance(a, str | int | float) for a in args):
        return to_string(args[0]).join(to_string(a) for a in args[1:])
    return Opaque(f"the result of {name}(), which is not evaluated")


def single_quoted(body: str) -> str:
    return re.sub(r"\\([\\'])", r"\1", body)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "a": "\a", "e": "\x1b", "0": "\0"}


class Interpolation:
    """A double-quoted string: escapes, and $scalar / ${scalar} / @array interpolated."""

    def __init__(self, env: Environment, tok: Token) -> None:
        self.env, self.text, self.line = env, tok.text, tok.line

    def run(self) -> Value:
        out: list[str] = []
        text, i = self.text, 0
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text):
                out.append(self.escape(text, i))
                i = self.escape_end
                continue
            if c in "$@":
                m = re.compile(r"[$@](?:\{(\w+)\}|(\w+(?:::\w+)*))").match(text, i)
                if m:
                    name = m.group(1) or m.group(2)
                    part = self.variable(c, name)
                    if isinstance(part, Opaque):
                        return part
                    out.append(part)
                    i = m.end()
                    if i < len(text) and text[i] in "[{" and m.group(2):
                        raise EvalError(f'element of {c}{name} in a "..." string is not '
                                        "supported", self.line)
                    continue
            out.append(c)
            i += 1
        return "".join(out)

    escape_end = 0

    def escape(self, text: str, i: int) -> str:
        c = text[i + 1]
        self.escape_end = i + 2
        m = re.compile(r"x\{([0-9a-fA-F]{1,6})\}|x([0-9a-fA-F]{1,2})|([0-7]{3})").match(
            text, i + 1)
        if m:
            self.escape_end = m.end()
            code = int(m.group(1) or m.group(2), 16) if not m.group(3) else int(m.group(3), 8)
            return chr(min(code, 0x10FFFF))
        return _ESCAPES.get(c, c)

    def variable(self, sigil: str, name: str) -> str | Opaque:
        if sigil == "@":
            value = self.env.values.get("@" + name)
            if value is None:
                raise EvalError(f'"...@{name}" interpolates the array @{name}: write \\@ '
                                "for a literal @", self.line)
            items = value.value if isinstance(value.value, list) else []
            return " ".join(to_string(v) for v in items)
        binding = self.env.values.get("$" + name)
        if binding is None:
            return Opaque(f"${name} is not set")
        if isinstance(binding.value, Opaque):
            return binding.value
        if binding.value is not None and not isinstance(binding.value, str | int | float):
            return Opaque(f"${name} is not a plain value")
        return to_string(binding.value)
