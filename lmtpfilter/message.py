"""A received message as bytes: its header fields located, its body left untouched.

The filter must pass messages on unaltered except for the headers it adds or removes, so
nothing here decodes or re-serialises a message: the header block is split into raw fields
(folding, order, 8-bit bytes and all) and a delivered copy is built as *new header block +
the original body bytes*. The body is shared by every copy as a memoryview, never copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.header import decode_header, make_header


@dataclass(frozen=True, slots=True)
class HeaderField:
    name: bytes  # as written, without the colon
    raw: bytes  # the whole field: "Name: value" with its folding and its line ending

    @property
    def key(self) -> str:
        """Lower-case name for comparisons."""
        return self.name.strip().decode("ascii", "replace").lower()


def _split_header_block(data: bytes) -> int:
    """Offset where the body starts (after the empty line), or len(data) if there is none."""
    if data.startswith((b"\r\n", b"\n")):  # no header at all
        return 0
    positions = [p for p in (data.find(b"\n\r\n"), data.find(b"\n\n")) if p >= 0]
    if not positions:
        return len(data)
    p = min(positions)
    return p + (3 if data.startswith(b"\n\r\n", p) else 2)


def _fields(block: bytes) -> list[HeaderField]:
    """Split a header block into fields; continuation lines stay with their field.

    A line that is neither a field nor a continuation (malformed input) is kept as a
    field of its own with an empty name, so that it is passed on exactly as received.
    """
    fields: list[HeaderField] = []
    lines = block.splitlines(keepends=True)
    current: list[bytes] = []
    name = b""
    for line in lines:
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
            continue
        if current:
            fields.append(HeaderField(name, b"".join(current)))
        colon = line.find(b":")
        name = line[:colon] if colon > 0 and b" " not in line[:colon].strip() else b""
        current = [line]
    if current:
        fields.append(HeaderField(name, b"".join(current)))
    return fields


@dataclass
class Message:
    """The message as received in DATA (dot-unstuffed), and where its body starts."""

    data: bytes
    body_offset: int = 0
    _fields: list[HeaderField] | None = field(default=None, repr=False)
    _wire_ready: bool | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, data: bytes) -> Message:
        return cls(data, _split_header_block(data))

    @property
    def header_block(self) -> bytes:
        return self.data[: self.body_offset]

    @property
    def body(self) -> memoryview:
        return memoryview(self.data)[self.body_offset:]

    @property
    def body_wire_ready(self) -> bool:
        """The body needs no dot-stuffing or CRLF normalisation (checked once, no copy)."""
        if self._wire_ready is None:
            from .lmtp_protocol import needs_encoding

            self._wire_ready = not needs_encoding(self.data, self.body_offset)
        return self._wire_ready

    @property
    def fields(self) -> list[HeaderField]:
        if self._fields is None:
            self._fields = _fields(self.header_block)
        return self._fields

    def get(self, name: str) -> HeaderField | None:
        key = name.lower()
        return next((f for f in self.fields if f.key == key), None)

    def header_text(self, name: str) -> str:
        """A field's value as text for records and notifications: unfolded, RFC 2047
        decoded, 8-bit bytes read as UTF-8 (or replaced); "" when absent."""
        f = self.get(name)
        if f is None:
            return ""
        raw = f.raw[f.raw.index(b":") + 1:]
        text = raw.decode("utf-8", "replace").replace("\r", "").replace("\n", "").strip()
        if "=?" in text:
            with contextlib.suppress(ValueError, LookupError, UnicodeError):
                text = str(make_header(decode_header(text)))
        return text

    @property
    def line_ending(self) -> bytes:
        """The message's own line ending, so that added headers match it."""
        first = self.data.find(b"\n")
        return b"\r\n" if first > 0 and self.data[first - 1: first] == b"\r" else b"\n"

    def copy_with(self, add_on_top: Iterable[bytes], remove: frozenset[str] = frozenset(),
                  subject_tag: bytes = b"") -> list[bytes | memoryview]:
        """A delivered copy: added fields (raw, without line ending), then the original
        fields minus the removed names (with the Subject tagged if asked), then the body;
        as chunks that each start at a line start. The body is never copied.
        """
        eol = self.line_ending
        added = list(add_on_top)
        if subject_tag and self.get("subject") is None:
            added.append(b"Subject: " + subject_tag.rstrip(b" "))
        top = b"".join(h + eol for h in added)
        if remove or subject_tag:
            kept = b"".join(
                _tag_subject(f.raw, subject_tag) if subject_tag and f.key == "subject" else f.raw
                for f in self.fields if f.key not in remove)
            header = top + kept
        else:
            header = top + self.header_block
        if self.body_offset == len(self.data) and self.data and not self.data.endswith(b"\n"):
            header += eol  # a header block that ended without a line ending
        return [header, self.body]


def _tag_subject(raw: bytes, tag: bytes) -> bytes:
    """Put `tag` in front of a Subject field's value, keeping the rest byte for byte.

    An RFC 2047 encoded-word after it stays valid: it is separated by the tag's space.
    """
    colon = raw.index(b":")
    value = raw[colon + 1:].lstrip(b" \t")
    if value.startswith(tag.rstrip(b" ")):  # already tagged (a message filtered twice)
        return raw
    return raw[: colon + 1] + b" " + tag + value


def fold(name: str, value: str, width: int = 78) -> bytes:
    """A header field "Name: value" folded at spaces to lines of at most `width` characters
    (RFC 5322 §2.2.3), without the final line ending."""
    words = value.split(" ")
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if not word:
            continue
        if len(line) + 1 + len(word) > width and line.strip() and line != f"{name}:":
            lines.append(line)
            line = "\t" + word
        else:
            line += " " + word
    lines.append(line)
    return "\r\n".join(lines).encode("utf-8")
