"""Tokens of the Perl subset that amavis config files are written in (`perl_config.py` reads
them). Nothing here runs Perl: a file is text, cut into tokens, and anything the subset does
not cover becomes a `bad` token or a :class:`PerlSyntaxError`, which the reader reports as
one line naming the file and line.

Perl's grammar depends on context ("/" divides after a value and starts a pattern
elsewhere); the lexer keeps track of whether a term or an operator is expected, which is all
the context that amavis configs need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class PerlSyntaxError(Exception):
    """A file that cannot be read on from here: an unterminated string, a bad character."""

    def __init__(self, why: str, line: int) -> None:
        super().__init__(why)
        self.why = why
        self.line = line


@dataclass(frozen=True)
class Token:
    kind: str  # num, str, var, ident, op, bad
    text: str  # the number, string body, variable or identifier name, operator
    line: int
    sigil: str = ""  # var: $ @ % &; str: ', ", `, q, qq, qw, qr, m
    flags: str = ""  # qr// and m// modifiers

    def __str__(self) -> str:
        return f"{self.sigil}{self.text}" if self.kind == "var" else self.text


_IDENT = re.compile(r"[A-Za-z_]\w*(?:::\w+)*", re.ASCII)
_NUMBER = re.compile(
    r"0[xX][0-9a-fA-F_]+|0[bB][01_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?", re.ASCII)
_DIGITS = "0123456789"
_SPACE = re.compile(r"[ \t\r\f\v]+")
# Longest first, so that "=>" is not read as "=" then ">".
_OPERATORS = sorted([
    "<=>", "**", "||=", "//=", "&&=", "...", "=>", "==", "!=", "<=", ">=", "=~", "!~", "->",
    "..", ".=", "+=", "-=", "*=", "/=", "||", "&&", "//", "::", "=", ",", ";", "(", ")", "[",
    "]", "{", "}", "\\", ".", "+", "-", "*", "/", "%", "!", "?", ":", "<", ">", "|", "&", "^",
    "~",
], key=len, reverse=True)
_OPERATORS_BY_FIRST: dict[str, list[str]] = {}
for _op in _OPERATORS:
    _OPERATORS_BY_FIRST.setdefault(_op[0], []).append(_op)
_PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}
_QUOTE_OPS = ("qq", "qw", "qr", "q", "m", "s", "tr", "y")
# Longest numeric literal read: Python refuses to convert ints of over 4300 digits.
_MAX_NUMBER = 64


def tokenize(text: str) -> list[Token]:
    """The tokens of `text`, up to `__END__`; raises PerlSyntaxError where reading must stop."""
    return _Lexer(text).run()


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.tokens: list[Token] = []
        self.heredocs: list[tuple[str, int]] = []  # terminators waiting for the next line

    @property
    def term_expected(self) -> bool:
        if not self.tokens:
            return True
        last = self.tokens[-1]
        if last.kind in ("num", "str", "var"):
            return False
        return not (last.kind == "op" and last.text in (")", "]", "}"))

    def add(self, kind: str, text: str, sigil: str = "", flags: str = "",
            line: int | None = None) -> None:
        self.tokens.append(Token(kind, text, self.line if line is None else line, sigil, flags))

    def run(self) -> list[Token]:
        text = self.text
        if re.match(r"=[A-Za-z]", text):
            self.skip_pod()
        while self.pos < len(text):
            c = text[self.pos]
            if c == "\n":
                self.pos += 1
                self.line += 1
                self.skip_heredoc_bodies()
                if text.startswith("=", self.pos) and re.match(r"=[A-Za-z]", text[self.pos:]):
                    self.skip_pod()
                continue
            m = _SPACE.match(text, self.pos)
            if m:
                self.pos = m.end()
                continue
            if c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
                continue
            self.token(c)
        return self.tokens

    def token(self, c: str) -> None:
        text, start = self.text, self.pos
        if c.isascii() and (c.isalpha() or c == "_"):
            m = _IDENT.match(text, start)
            assert m is not None
            word = m.group()
            if word in ("__END__", "__DATA__"):
                self.pos = len(text)
                return
            self.pos = m.end()
            rest = text[self.pos:self.pos + 40].lstrip(" \t")
            # q => 1 and $h{q} are words; q(...), qw[...], qr'...' quote
            if word in _QUOTE_OPS and rest[:1] and not rest[:1].isalnum() and \
                    rest[:1] not in "_=},;)\n":
                self.quote_op(word)
                return
            self.add("ident", word)
        elif c in _DIGITS or (c == "." and text[start + 1:start + 2] in _DIGITS
                              and text[start + 1:start + 2] and self.term_expected):
            m = _NUMBER.match(text, start)
            assert m is not None
            number = m.group()  # "1..7" gives "1": the pattern needs a digit after "."
            if len(number) > _MAX_NUMBER:
                raise PerlSyntaxError("number literal too long", self.line)
            self.pos = start + len(number)
            self.add("num", number)
        elif c in "$@%&" and self.variable(c):
            return
        elif c in "'\"`":
            line = self.line
            self.pos += 1
            body = self.delimited(c, c, line)
            self.add("str", body, sigil=c, line=line)
        elif c == "/" and self.term_expected:
            self.pos += 1
            line = self.line
            body = self.delimited("/", "/", line)
            self.add("str", body, sigil="m", flags=self.modifiers(), line=line)
        elif c == "<" and text.startswith("<<", start) and self.term_expected and \
                re.match(r"<<~?(?:[A-Za-z_]|\"|')", text[start:]):
            self.heredoc()
        else:
            for op in _OPERATORS_BY_FIRST.get(c, ()):
                if text.startswith(op, start):
                    self.pos += len(op)
                    self.add("op", op)
                    return
            self.pos += 1
            shown = repr(c) if c.isprintable() else f"U+{ord(c):04X}"
            self.add("bad", f"unexpected character {shown}")

    def variable(self, sigil: str) -> bool:
        """$name, ${name}, @name, %name, &name; False if `sigil` is an operator here."""
        text, start = self.text, self.pos + 1
        if sigil in "%&" and not self.term_expected:
            return False
        if text.startswith("{", start):
            m = re.compile(r"\{\s*([A-Za-z_]\w*(?:::\w+)*)\s*\}").match(text, start)
            if not m:
                return False  # ${ expr }: a dereference, reported by the reader
            self.pos = m.end()
            self.add("var", m.group(1), sigil=sigil)
            return True
        m = _IDENT.match(text, start)
        if m:
            self.pos = m.end()
            self.add("var", m.group(), sigil=sigil)
            return True
        if sigil == "$" and start < len(text) and (text[start] in "0_!@/\\,.;&$" or
                                                  text[start:start + 1] == "#"):
            self.pos = start + 1
            self.add("bad", f"special variable ${text[start]}")
            return True
        return False

    def delimited(self, open_: str, close: str, line: int) -> str:
        """The body up to the matching `close` (nested when it is a bracket pair); the
        backslash escapes the delimiters. Escapes are kept: the reader interprets them."""
        text, depth, i = self.text, 1, self.pos
        out_start = i
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text):
                if text[i + 1] == "\n":
                    self.line += 1
                i += 2
                continue
            if c == "\n":
                self.line += 1
            elif c == close and open_ != close:
                depth -= 1
                if depth == 0:
                    self.pos = i + 1
                    return text[out_start:i]
            elif c == open_ and open_ != close:
                depth += 1
            elif c == close:
                self.pos = i + 1
                return text[out_start:i]
            i += 1
        raise PerlSyntaxError(f"string starting with {open_} is never closed", line)

    def modifiers(self) -> str:
        m = re.compile(r"[a-z]*").match(self.text, self.pos)
        assert m is not None
        self.pos = m.end()
        return m.group()

    def quote_op(self, word: str) -> None:
        line = self.line
        while self.text[self.pos] in " \t":
            self.pos += 1
        open_ = self.text[self.pos]
        self.pos += 1
        close = _PAIRS.get(open_, open_)
        body = self.delimited(open_, close, line)
        if word in ("s", "tr", "y"):
            if close != open_:  # s{...}{...}: a second delimited part
                while self.pos < len(self.text) and self.text[self.pos] in " \t\n":
                    self.pos += 1
                if self.pos < len(self.text):
                    second = self.text[self.pos]
                    self.pos += 1
                    self.delimited(second, _PAIRS.get(second, second), line)
            else:
                self.delimited(open_, close, line)
            self.modifiers()
            self.add("bad", f"{word}/// (substitution) is not supported", line=line)
            return
        flags = self.modifiers() if word in ("qr", "m") else ""
        self.add("str", body, sigil=word, flags=flags, line=line)

    def heredoc(self) -> None:
        m = re.compile(r"<<(~?)(?:\"([^\"\n]*)\"|'([^'\n]*)'|([A-Za-z_]\w*))").match(
            self.text, self.pos)
        if not m:
            self.pos += 2
            self.add("op", "<<")
            return
        self.pos = m.end()
        terminator = m.group(2) or m.group(3) or m.group(4) or ""
        self.heredocs.append((terminator, self.line))
        self.add("bad", f"here-document <<{terminator} is not supported")

    def skip_heredoc_bodies(self) -> None:
        """After the line that started here-documents: skip their bodies, terminators
        included, so that the reader can go on after them."""
        pending, self.heredocs = self.heredocs, []
        for terminator, line in pending:
            while True:
                if self.pos >= len(self.text):
                    raise PerlSyntaxError(
                        f"here-document <<{terminator} is never terminated", line)
                end = self.text.find("\n", self.pos)
                end = len(self.text) if end < 0 else end
                body_line = self.text[self.pos:end]
                self.pos = min(end + 1, len(self.text))
                self.line += 1
                if body_line.strip() == terminator:
                    break

    def skip_pod(self) -> None:
        """POD documentation: from a line starting with =word to the line =cut."""
        m = re.compile(r"^=cut\b.*$", re.MULTILINE).search(self.text, self.pos)
        end = len(self.text) if m is None else m.end()
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end
