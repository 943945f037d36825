"""The content inventory: every part of a message and every archive member, named and typed.

One walk over the message bytes already in memory (docs/design.md §1: the message is never
copied per part). Part boundaries are found by scanning `message.data` with offsets; a
part's small header block is the only thing copied, and only its Content-Type,
Content-Disposition and Content-Transfer-Encoding are parsed (by the stdlib's RFC 2231
parameter code). Of a part's body, only what is examined is decoded: the first SAMPLE bytes
for libmagic, and the whole part if it is an archive (archive_walk.py reads its members).

A message whose only body is text without a name takes a fast path: one Part, no libmagic.
Nothing here raises for hostile input: what cannot be read becomes a Problem.
"""

from __future__ import annotations

import binascii
import contextlib
import email.message
import re
import time
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import collapse_rfc2231_value

import pybase64

from .archive_walk import SAMPLE, ContentLimits, Part, Problem, Tally, detect, is_archive
from .archive_walk import walk_archive as _walk_archive
from .message import Message

__all__ = ["ContentLimits", "Inventory", "Part", "Problem", "inventory"]


@dataclass(frozen=True, slots=True)
class Inventory:
    parts: tuple[Part, ...]  # leaf parts and archive members, in walk order
    problems: tuple[Problem, ...]
    entities: int  # MIME entities (containers too) + archive members walked
    expanded: int  # bytes decompressed from archives
    seconds: float


def inventory(message: Message, limits: ContentLimits) -> Inventory:
    started = time.perf_counter()
    tally = Tally(limits)
    try:
        _walk_message(message, tally)
    except Exception as exc:  # a bug must not cost the message: it is a fact, and it bans
        tally.problem("incomplete", "message", f"inventory failed: {type(exc).__name__}")
    return Inventory(tuple(tally.parts), tuple(tally.problems), tally.entities,
                     tally.expanded, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------
# Header fields of one entity
# --------------------------------------------------------------------------------------------

_MIME_KEYS = (b"content-type", b"content-disposition", b"content-transfer-encoding")
_FIELD_START = re.compile(rb"(?im)^(content-(?:type|disposition|transfer-encoding))[ \t]*:")


@dataclass(frozen=True, slots=True)
class _Header:
    content_type: str = ""  # raw value, unfolded
    disposition: str = ""
    encoding: str = ""


def _header_from_fields(message: Message) -> _Header:
    values: dict[bytes, str] = {}
    for f in message.fields:
        key = f.name.strip().lower()
        if key in _MIME_KEYS and key not in values:
            values[key] = _unfold(f.raw[f.raw.index(b":") + 1:])
    return _Header(values.get(b"content-type", ""), values.get(b"content-disposition", ""),
                   values.get(b"content-transfer-encoding", ""))


def _header_from_block(block: bytes) -> _Header:
    values: dict[bytes, str] = {}
    for m in _FIELD_START.finditer(block):
        key = m.group(1).lower()
        if key in values:
            continue
        end = m.end()
        # the field runs to the first line that does not start with a space or a tab
        nxt = re.search(rb"\n(?![ \t])", block[end:])
        values[key] = _unfold(block[end: end + nxt.start() if nxt else len(block)])
    return _Header(values.get(b"content-type", ""), values.get(b"content-disposition", ""),
                   values.get(b"content-transfer-encoding", ""))


def _unfold(raw: bytes) -> str:
    # 8-bit bytes in a name are nearly always UTF-8; anything else only needs its extension
    return raw.decode("utf-8", "replace").replace("\r", "").replace("\n", "").strip()


@dataclass(frozen=True, slots=True)
class _Params:
    declared_type: str
    name: str
    boundary: str | None


def _params(header: _Header) -> _Params:
    """The declared type, file name (RFC 2231 with continuations and charset, and RFC 2047
    words that mailers put there anyway) and boundary, by the stdlib's parameter code."""
    parsed = email.message.Message()
    if header.content_type:
        parsed["Content-Type"] = header.content_type
    if header.disposition:
        parsed["Content-Disposition"] = header.disposition
    declared = parsed.get_content_type().lower() if header.content_type else ""
    name = parsed.get_filename() or ""
    if not name:
        raw = parsed.get_param("name")
        name = collapse_rfc2231_value(raw) if raw else ""
    if "=?" in name:
        with contextlib.suppress(ValueError, LookupError, UnicodeError, binascii.Error):
            name = str(make_header(decode_header(name)))
    boundary = parsed.get_boundary() if declared.startswith("multipart/") else None
    return _Params(declared, _printable(name), boundary)


def _printable(name: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in name).strip()


# --------------------------------------------------------------------------------------------
# The walk
# --------------------------------------------------------------------------------------------


def _walk_message(message: Message, tally: Tally) -> None:
    header = _header_from_fields(message)
    data = message.data
    if _fast_path(header):
        tally.entities = 1
        declared = header.content_type.split(";", 1)[0].strip().lower()
        tally.parts.append(Part("part 1", "", declared, "", 0))
        return
    _walk_entity(data, header, message.body_offset, len(data), "", 0, tally)


def _fast_path(header: _Header) -> bool:
    """A single text body without a name: nothing to look at (the body is not read)."""
    ctype = header.content_type.lower()
    if ctype and not ctype.lstrip().startswith("text/"):
        return False
    if "name" in ctype:
        return False
    return not header.disposition or "name" not in header.disposition.lower()


def _walk_entity(data: bytes, header: _Header, start: int, end: int, section: str,
                 depth: int, tally: Tally) -> None:
    """One MIME entity whose body is data[start:end]."""
    label = f"part {section or 1}"
    if not tally.charge_entity(label):
        return
    try:
        params = _params(header)
    except Exception as exc:  # the stdlib on hostile parameters: report, read as text
        tally.problem("mime-error", label, f"unparsable MIME header ({type(exc).__name__})")
        params = _Params("", "", None)
    path = params.name or label
    if params.declared_type.startswith("multipart/"):
        if params.boundary:
            _walk_multipart(data, params.boundary, start, end, section, depth, tally)
            return
        tally.problem("mime-error", label, f"{params.declared_type} without a boundary")
    elif params.declared_type == "message/rfc822" and not _encoded(header.encoding):
        if tally.deeper_than_allowed(depth + 1, label):
            return
        inner_header, inner_start = _split_header(data, start, end)
        # its parts are numbered as this part's, as IMAP numbers them
        _walk_entity(data, inner_header, inner_start, end, section, depth + 1, tally)
        return
    _leaf(data, header, params, start, end, path, depth, tally)


def _encoded(encoding: str) -> bool:
    return encoding.strip().lower() in ("base64", "quoted-printable")


def _split_header(data: bytes, start: int, end: int) -> tuple[_Header, int]:
    """The header of the entity at data[start:end] and where its body starts."""
    if data.startswith((b"\r\n", b"\n"), start):
        return _Header(), start + (2 if data[start] == 13 else 1)
    crlf = data.find(b"\n\r\n", start, end)
    # the LF-only form only before it: a search to the end of a large part costs
    hits = [p for p in (crlf, data.find(b"\n\n", start, end if crlf < 0 else crlf + 1))
            if p >= 0]
    if not hits:
        return _header_from_block(data[start:end]), end
    p = min(hits)
    body = p + (3 if data.startswith(b"\n\r\n", p) else 2)
    return _header_from_block(data[start:body]), body


def _walk_multipart(data: bytes, boundary: str, start: int, end: int, section: str,
                    depth: int, tally: Tally) -> None:
    label = f"part {section or 1}"
    if tally.deeper_than_allowed(depth + 1, label):
        return
    delimiter = b"--" + boundary.encode("utf-8", "replace")
    number = 0
    part_start = -1
    closed = False
    pos = start
    while True:
        pos = data.find(delimiter, pos, end)
        if pos < 0:
            break
        after = pos + len(delimiter)
        if pos > start and data[pos - 1] != 10:  # not at a line start: part of the content
            pos = after
            continue
        close = data.startswith(b"--", after, end)
        eol = data.find(b"\n", after, end)
        line_end = end if eol < 0 else eol + 1
        rest = data[after + (2 if close else 0): line_end]
        if rest.strip(b" \t\r\n"):  # "--boundaryX": a longer string, not our delimiter
            pos = after
            continue
        if part_start >= 0:  # the line ending before the delimiter belongs to it
            part_end = pos - (2 if data.startswith(b"\r\n", pos - 2) else 1)
            number += 1
            if not _child(data, part_start, max(part_start, part_end),
                          _subsection(section, number), depth + 1, tally):
                return
        if close:
            closed = True
            break
        part_start = line_end
        pos = line_end
    if part_start >= 0 and not closed:
        number += 1
        tally.problem("mime-error", label, "boundary never closed")
        _child(data, part_start, end, _subsection(section, number), depth + 1, tally)
    elif part_start < 0:
        tally.problem("mime-error", label, "no part found for the boundary")


def _subsection(section: str, number: int) -> str:
    """IMAP's part numbers (RFC 3501 §6.4.5): 1, 2, 2.1, ...; the message itself is ""."""
    return f"{section}.{number}" if section else str(number)


def _child(data: bytes, start: int, end: int, section: str, depth: int, tally: Tally) -> bool:
    header, body = _split_header(data, start, end)
    _walk_entity(data, header, body, end, section, depth, tally)
    return not tally.stopped


# --------------------------------------------------------------------------------------------
# Leaves: decode what is examined
# --------------------------------------------------------------------------------------------

_BASE64_SPACE = b" \t\r\n"
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_CHECK_CHUNK = 1 << 20
_NOT_BASE64_LETTER = bytes(sorted(set(range(256)) - set(_BASE64_ALPHABET)))


def _leaf(data: bytes, header: _Header, params: _Params, start: int, end: int, path: str,
          depth: int, tally: Tally) -> None:
    encoding = header.encoding.strip().lower()
    sample_end = min(end, start + SAMPLE * 4 // 3 + SAMPLE // 8 + 8)  # base64 lines included
    detected = detect(_decode(data, start, sample_end, encoding)[:SAMPLE])
    tally.parts.append(Part(path, params.name, params.declared_type, detected, depth))
    if not is_archive(detected, params.name) or tally.deeper_than_allowed(depth + 1, path):
        if encoding == "base64" and not _base64_ok(data, start, end):
            tally.problem("mime-error", path, "broken base64")
        return
    if encoding == "base64":
        # pybase64 (SIMD) decodes ten times faster than binascii and skips the line breaks
        # itself: an attachment is most of a message's content-check cost. A damaged base64
        # text is decoded leniently; the archive it should hold then tells (unreadable).
        decoded = _lenient_base64(data[start:end])
    else:
        decoded = _decode(data, start, end, encoding)
    _walk_archive(decoded, path, params.name, depth + 1, tally)


def _base64_ok(data: bytes, start: int, end: int) -> bool:
    """Base64 that decodes to what it says: the alphabet only, padding only at the end, a
    whole number of 4-character groups. Checked a chunk at a time (C speed, a bounded copy:
    a regex over the part costs ten times more)."""
    letters = 0
    padded = False
    for chunk_start in range(start, end, _CHECK_CHUNK):
        chunk = data[chunk_start: min(end, chunk_start + _CHECK_CHUNK)]
        text = chunk.translate(None, _BASE64_SPACE)
        if not text:
            continue
        if padded or text.translate(None, _BASE64_ALPHABET + b"="):
            return False  # data after the padding, or a character outside the alphabet
        body = text.rstrip(b"=")
        if b"=" in body:
            return False
        padded = len(body) < len(text)
        letters += len(text)
    return letters % 4 == 0


def _decode(data: bytes, start: int, end: int, encoding: str) -> bytes:
    """data[start:end] decoded from its transfer encoding, leniently: what can be decoded
    is still examined (a broken encoding is reported by _leaf)."""
    raw = data[start:end]
    if encoding == "base64":
        return _lenient_base64(raw)
    if encoding == "quoted-printable":
        with contextlib.suppress(binascii.Error, ValueError):
            return binascii.a2b_qp(raw)
        return b""
    return raw


def _lenient_base64(text: bytes) -> bytes:
    """What a base64 text says, damaged or not: everything outside the alphabet dropped (the
    padding too), then whole 4-character groups decoded."""
    with contextlib.suppress(binascii.Error, ValueError):
        return pybase64.b64decode(text, validate=False)  # the usual case, at SIMD speed
    letters = text.translate(None, _NOT_BASE64_LETTER)
    return pybase64.b64decode(letters[: len(letters) // 4 * 4], validate=False)
