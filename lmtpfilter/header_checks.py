"""The bad-header check, as amavisd-new 2.13 does it (a pure function over the header bytes).

amavis's ``check_header_validity`` (Amavis/Unpackers/Validity.pm) looks at each header field
of the top-level header section, in order, and reports at most one problem per field, the
first that applies of: invalid syntax, a non-ASCII field name, a folded line made up entirely
of whitespace, a line over 998 characters, NUL or CR, 8-bit data. Then it reports a missing
Date or From and any field of RFC 5322 §3.6 / RFC 2045 that occurs more than once. The texts
here are amavis's, word for word, because admins grep logs and sieve on X-Amavis-Alert for
them; :data:`AMAVIS_MINOR_CATEGORY` gives amavis's "BAD-HEADER-<n>" number for each kind.

Where the input differs from amavis's (it sees LF line endings after its SMTP server; we see
the message as received in LMTP, normally CRLF), a CR before LF is a line ending, and a bare
LF in a CRLF message is reported as a control character: parsers disagree on whether it ends
a line, which is how a header can be hidden from one of them. Like amavis, other C0 controls
are not findings: RFC 5322 §4.1 still allows them (obs-NO-WS-CTL), and raw ISO-2022-JP
headers use ESC. Like amavis, the field checks stop after 100 bad fields.

Beyond the field checks, the top-level MIME header is checked for what would hide the parts
from a MIME parser (a multipart without a boundary, an unparsable Content-Type, a multipart
with a transfer encoding), in MIME-tools' words as amavis would show them ("MIME error: ...").
Errors in nested parts are the content walker's business (lmtpfilter/mime_walk.py).

The cost matters: a clean message takes a few whole-block scans (C speed) and one regex pass
for the field names; the per-field amavis logic runs only when a scan says something is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .message import Message


@dataclass(frozen=True, slots=True)
class BadHeader:
    """One finding. `kind` is a stable identifier (see AMAVIS_MINOR_CATEGORY); `detail` is
    printable ASCII, what amavis puts after "BAD HEADER SECTION, " in X-Amavis-Alert."""

    kind: str
    detail: str


# amavis's minor contents category of CC_BADH ("BAD-HEADER-<n>" in its log), by kind.
AMAVIS_MINOR_CATEGORY: dict[str, int] = {
    "mime": 1,
    "8bit": 2,
    "utf8": 2,
    "control-char": 3,
    "whitespace-line": 4,
    "long-line": 5,
    "syntax": 6,
    "missing": 7,
    "duplicate": 8,
}

# amavis's $allowed_header_tests{utf8} is 0 by default: valid UTF-8 in a header of a mail
# that came without SMTPUTF8 is found (kind "utf8") but, by default, not a bad header there.
AMAVIS_OFF_BY_DEFAULT = frozenset({"utf8"})

# RFC 5322 §3.6, RFC 2045 and RFC 2183 fields, in amavis's order (it reports in this order).
_ONCE_ONLY = ("Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Subject", "Message-ID",
              "References", "In-Reply-To", "MIME-Version", "Content-Type",
              "Content-Transfer-Encoding", "Content-ID", "Content-Description",
              "Content-Disposition", "Auto-Submitted")
_REQUIRED = frozenset({b"date", b"from"})
_ONCE_ONLY_KEYS = tuple((name, name.lower().encode()) for name in _ONCE_ONLY)

# A field starts with a name of printable characters except ":" (8-bit allowed here, reported
# below), then optional whitespace (obsolete syntax, RFC 5322 §4.5), then ":". Searched in
# "\n" + header section: one name per line that is not a continuation line, b"" for a line
# that is not a field at all. (Starting with a literal "\n" lets the regex engine skip to
# line starts; "^" in MULTILINE mode would be tried at every byte.)
_NAME_RE = rb"([!-9;-~\x80-\xff]+)[ \t]*:"
_FIELD_NAMES = re.compile(rb"\n(?![ \t])(?:" + _NAME_RE + rb")?")
_FIELD_NAME = re.compile(_NAME_RE)
_ONCE_ONLY_SET = frozenset(key for _, key in _ONCE_ONLY_KEYS)
_BARE_LF = re.compile(rb"(?<!\r)\n")
# amavis stops after 100 bad fields ("some sanity limit"); so does the time spent here.
_MAX_BAD_FIELDS = 100
_FIELD_START = re.compile(rb"\n(?![ \t])")  # a field's last line ending
# In "\n" + header section, a line start where a per-field test may find something: a name
# starting with "--", a line of whitespace only, one over 998 characters, or (with CRLF line
# endings) a bare LF. Cheap: the engine skips from LF to LF.
_LINE_PROBLEM_LF = re.compile(
    rb"\n(?:--|[ \t]+\r?(?:\n|\Z)|[^\n]{998}(?:[^\r\n]|\r(?!\n)))")
_LINE_PROBLEM_CRLF = re.compile(
    rb"\n(?:--|[ \t]+\r?(?:\n|\Z)|[^\n]{998}(?:[^\r\n]|\r(?!\n))|(?<=[^\r]\n))")
# Per field, once CRLF is turned into LF as amavis has it.
_AMAVIS_WHITESPACE_LINE = re.compile(rb"^([ \t]+)(?=\n|\Z)", re.M)
_AMAVIS_LONG_LINE = re.compile(rb"^([^\n]{999,})(?=\n|\Z)", re.M)
_AMAVIS_CONTROL = re.compile(rb"[\x00\r]")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_C1_CONTROL = re.compile(rb"\xc2[\x80-\x9f]")
_UTF8_CHAR = re.compile(rb"[\xc0-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}"
                        rb"|[\xf0-\xf4][\x80-\xbf]{3}")
# amavis shows anything outside printable ASCII (and a backslash that would read as such an
# escape) as \x{HH}, so the detail can go into a header and a log line as it is.
_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]|\\(?=x\{)")

_CONTENT_TYPE = re.compile(rb"\ncontent-type[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)")
_CTE = re.compile(rb"\ncontent-transfer-encoding[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)")
_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)")  # one level; nested comments are rare
_TOKEN = rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"  # RFC 2045 §5.1 token
_MEDIA_TYPE = re.compile(rb"[ \t\r\n]*(" + _TOKEN + rb")[ \t\r\n]*/[ \t\r\n]*(" + _TOKEN
                         + rb")[ \t\r\n]*(?:;|\Z)")
_BOUNDARY = re.compile(rb";[ \t\r\n]*boundary\*?(?:\*0\*?)?[ \t\r\n]*=[ \t\r\n]*"
                       rb"(\"(?:[^\"\\]|\\.)+\"|[^\"; \t\r\n]+)", re.I)


def check_headers(message: Message, smtputf8: bool) -> tuple[BadHeader, ...]:
    """The problems of the top-level header section, the first of each kind, in amavis's
    order (per field in header order, then missing, then duplicated fields). Never raises."""
    head = _header_section(message.header_block)
    crlf = message.line_ending == b"\r\n"
    lowered = b"\n" + head.lower()
    names = _FIELD_NAMES.findall(lowered)
    if not head or head.endswith(b"\n"):
        names.pop()  # the empty match after the last line ending
    found: list[BadHeader] = []
    tests = _possible_problems(head, lowered, names, crlf)
    if tests:
        found.extend(_field_checks(head, smtputf8, crlf, tests))
    found.extend(_count_checks(names))
    if b"content-type" in names:
        found.extend(_mime_checks(head, lowered))
    return _first_of_each_kind(found)


def _header_section(block: bytes) -> bytes:
    """The header fields without the empty line that ends them."""
    if block.endswith(b"\n\r\n"):
        return block[:-2]
    if block.endswith(b"\n\n"):
        return block[:-1]
    return b"" if block in (b"\r\n", b"\n") else block


def _possible_problems(head: bytes, lowered: bytes, names: list[bytes], crlf: bool
                       ) -> frozenset[str]:
    """The per-field tests that can find something in this header section, found with
    whole-block operations (C speed): for a clean message, none, and next to no cost.
    A test in the set may still find nothing; one left out cannot find anything."""
    tests: set[str] = set()
    if b"" in names or head.startswith((b" ", b"\t")):
        tests.add("syntax")
    if not head.isascii():
        tests.add("8bit")  # and a field name with 8-bit characters: "syntax"
    if (_LINE_PROBLEM_CRLF if crlf else _LINE_PROBLEM_LF).search(lowered) is not None:
        tests.update(("syntax", "whitespace-line", "long-line", "control-char"))
    crs = head.count(b"\r")
    if b"\x00" in head or (crs != head.count(b"\n") if crlf
                           else crs > 0 and crs != head.count(b"\r\n")):
        tests.add("control-char")
    return frozenset(tests)


def _fields(head: bytes) -> Iterator[bytes]:
    """The fields as amavis splits them, each with its final LF: at LF, a line starting with
    SP or HT continues the field above. A continuation line at the very top is a field of its
    own (without a name)."""
    start = 0
    for line_end in _FIELD_START.finditer(head):
        yield head[start: line_end.end()]
        start = line_end.end()
    if start < len(head):
        yield head[start:]


@dataclass(frozen=True, slots=True)
class _Hit:
    """A field's problem, before its text is built (only the first of a kind gets one)."""

    kind: str
    what: str
    field: bytes
    name: bytes = b""
    start: int = -1  # the offending characters, or -1: show the start of `field`
    end: int = -1

    def finding(self) -> BadHeader:
        if self.start < 0:
            return _finding(self.kind, self.what, _excerpt(self.field))
        return _located(self.kind, self.what, self.field, self.name, self.start, self.end)


def _field_checks(head: bytes, smtputf8: bool, crlf: bool, tests: frozenset[str]
                  ) -> list[BadHeader]:
    found: list[BadHeader] = []
    seen: set[str] = set()
    hits = 0
    for raw in _fields(head):
        hit = _check_field(raw, smtputf8, crlf, tests)
        if hit is None:
            continue
        if hit.kind not in seen:
            seen.add(hit.kind)
            found.append(hit.finding())
        hits += 1
        if hits >= _MAX_BAD_FIELDS:
            break
    return found


def _check_field(raw: bytes, smtputf8: bool, crlf: bool, tests: frozenset[str]
                 ) -> _Hit | None:
    """amavis's chain of tests for one field: the first that applies (of those that can)."""
    field = raw.replace(b"\r\n", b"\n")
    m = _FIELD_NAME.match(field)
    if m is None or m[1].startswith(b"--"):
        return _Hit("syntax", "Invalid header field syntax", field.rstrip(b"\n"))
    name = m[1]
    if not name.isascii():
        at = _NON_ASCII.search(name)
        return _Hit("syntax", "Invalid header field name, contains non-ASCII char", field,
                    name, at.start() if at else 0, at.end() if at else 0)
    if "whitespace-line" in tests and (w := _AMAVIS_WHITESPACE_LINE.search(field)):
        return _Hit("whitespace-line",
                    "Improper folded header field made up entirely of whitespace",
                    field, name, w.start(), w.end())
    if "long-line" in tests and (long := _AMAVIS_LONG_LINE.search(field)):
        return _Hit("long-line", "Header line longer than 998 characters", long[1])
    if "control-char" in tests:
        if (c := _AMAVIS_CONTROL.search(field)) is not None:
            return _Hit("control-char", "Improper use of control character",
                        field, name, c.start(), c.end())
        if crlf and (lf := _BARE_LF.search(raw)) is not None:
            # Found in `raw`; each side is then normalised like `field`.
            lf_at = lf.start() - raw.count(b"\r\n", 0, lf.start())
            return _Hit("control-char", "Improper use of control character",
                        field[:lf_at] + b"\n" + raw[lf.end():].replace(b"\r\n", b"\n"),
                        name, lf_at, lf_at + 1)
    if "8bit" in tests and (e := _NON_ASCII.search(field)) is not None:
        return _eight_bit(field, name, e.start(), smtputf8)
    return None


def _eight_bit(field: bytes, name: bytes, first: int, smtputf8: bool) -> _Hit | None:
    try:
        field.decode("utf-8")
    except UnicodeDecodeError:
        return _Hit("8bit", "Non-encoded non-ASCII data (and not UTF-8)",
                    field, name, first, first + 1)
    if (c1 := _C1_CONTROL.search(field)) is not None:  # RFC 5198 forbids U+0080..U+009F
        return _Hit("8bit", "UTF-8 string contains C1 Controls",
                    field, name, c1.start(), c1.end())
    if smtputf8:  # RFC 6532: UTF-8 in field bodies (not names) is allowed
        return None
    char = _UTF8_CHAR.search(field, first)
    end = char.end() if char is not None else first + 1
    return _Hit("utf8", "Non-encoded UTF-8 string in non-EAI mail", field, name, first, end)


def _located(kind: str, what: str, field: bytes, name: bytes, start: int, end: int
             ) -> BadHeader:
    """amavis's excerpt around the offending characters: the field name, at most ~45
    characters before them, them (hex too when short), at most ~20 after."""
    pre, mid, post = field[:start], field[start:end], field[end:]
    if post.endswith(b"\n"):
        post = post[:-1]
    if len(mid) > 20:
        mid = _truncate_utf8(mid, 15) + b"[...]"
    if len(post) > 20:
        post = _truncate_utf8(post, 15) + b"[...]"
    if len(pre) - len(name) - 2 > 50 - len(post):
        pre = name + b": ..." + pre[len(pre) - (45 - len(post)):]
    if len(pre) > 60:  # a long field name (amavis shows it whole): keep the detail short
        pre = b"..." + pre[-57:]
    if mid and len(mid) <= 4:
        what += " (char " + " ".join(f"{b:02X}" for b in mid) + " hex)"
    return _finding(kind, what, pre + mid + post)


def _finding(kind: str, what: str, shown: bytes) -> BadHeader:
    return BadHeader(kind, f"{what}: {_printable(shown)}")


def _excerpt(text: bytes) -> bytes:
    """amavis shows a long line as its first 50 characters and "[...]"."""
    return text[:50] + b"[...]" if len(text) > 55 else text


def _truncate_utf8(octets: bytes, length: int) -> bytes:
    """Cut to `length` octets without leaving part of a UTF-8 character at the end."""
    cut = octets[:length]
    lead = len(cut) - 1
    while lead >= 0 and lead >= len(cut) - 4 and 0x80 <= cut[lead] <= 0xBF:
        lead -= 1
    if lead >= 0 and cut[lead] >= 0xC0:
        needed = 2 if cut[lead] < 0xE0 else 3 if cut[lead] < 0xF0 else 4
        if len(cut) - lead < needed:
            cut = cut[:lead]
    return cut


def _printable(octets: bytes) -> str:
    return _UNPRINTABLE.sub(lambda m: b"\\x{%02X}" % m[0][0], octets).decode("ascii")


def _count_checks(names: list[bytes]) -> list[BadHeader]:
    once = [name for name in names if name in _ONCE_ONLY_SET]
    if len(once) == len(set(once)) and b"date" in once and b"from" in once:
        return []
    found: list[BadHeader] = []
    for name, key in _ONCE_ONLY_KEYS:
        n = names.count(key)
        if n == 0 and key in _REQUIRED:
            found.append(BadHeader("missing", f'Missing required header field: "{name}"'))
        elif n == 2:
            found.append(BadHeader("duplicate", f'Duplicate header field: "{name}"'))
        elif n > 2:
            found.append(BadHeader(
                "duplicate", f'Header field occurs more than once: "{name}" occurs {n} times'))
    return found


def _mime_checks(head: bytes, lowered: bytes) -> list[BadHeader]:
    """The top-level Content-Type, as MIME-tools (amavis's MIME parser) would trip on it."""
    m = _CONTENT_TYPE.search(lowered)
    if m is None:  # "content-type" was a field name; it is there
        return []
    value = _COMMENT.sub(b" ", m[1]) if b"(" in m[1] else m[1]
    media = _MEDIA_TYPE.match(value)
    if media is None:
        # `lowered` is "\n" + head: one byte further on
        shown = _excerpt(head[m.start(1) - 1: m.end(1) - 1].strip().replace(b"\r\n", b"\n"))
        return [_finding("mime", "MIME error: error: unparsable Content-Type", shown)]
    kind, subtype = media[1], media[2]
    if kind not in (b"multipart", b"message"):
        return []
    found: list[BadHeader] = []
    if kind == b"multipart" and _BOUNDARY.search(value, media.end() - 1) is None:
        found.append(BadHeader(
            "mime", "MIME error: error: multipart boundary is missing, or contains CR or LF"))
    cte = _CTE.search(lowered) if b"\ncontent-transfer-encoding" in lowered else None
    if cte is not None:
        encoding = _COMMENT.sub(b" ", cte[1]).strip(b" \t\r\n")
        # RFC 2045 §6.4: a composite type is never encoded; a parser that respects that
        # does not see the parts that a decoding one (some mail clients) shows.
        if encoding not in (b"", b"7bit", b"8bit", b"binary"):
            found.append(BadHeader("mime", "MIME error: error: illegal encoding "
                                   f"[{_printable(encoding[:50])}] for MIME type "
                                   f"{_printable(_excerpt(kind + b'/' + subtype))}"))
    return found


def _first_of_each_kind(found: list[BadHeader]) -> tuple[BadHeader, ...]:
    seen: set[str] = set()
    kept: list[BadHeader] = []
    for finding in found:
        if finding.kind not in seen:
            seen.add(finding.kind)
            kept.append(finding)
    return tuple(kept)
