"""What the detail page shows of a quarantined message: its header block, a plain-text preview
and the list of its attachments (a pure function of the message bytes).

Quarantined mail is hostile by selection, so nothing here trusts it:

- the header block is shown raw (at most HEADER_LIMIT bytes, read as UTF-8 with
  replacement), never parsed into anything clickable;
- the preview is the first text/plain body part, decoded with its declared charset (an
  unknown, non-text or broken charset falls back to UTF-8 with replacement); failing that,
  the first text/html part turned into text by html.parser with every tag dropped: HTML is
  never rendered, so no remote image, script or form ever loads (at most PREVIEW_LIMIT
  characters);
- attachments are listed (name, declared type, decoded size), never served;
- control characters are replaced, and bidirectional controls in a file name are shown as
  their code point ("invoice[U+202E]fdp.exe"), so that a name cannot pose as another;
- the stdlib parser (compat32, which never raises for a defect) builds the tree; a message it
  cannot read at all (nesting deep enough to exhaust the recursion limit) is shown as its
  raw text, with a note. The walk itself is iterative and stops at MAX_PARTS entities.

The page escapes everything again (Jinja2 autoescape): this module only makes it readable.
"""

from __future__ import annotations

import binascii
import contextlib
import email
import email.message
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.policy import compat32
from html.parser import HTMLParser

HEADER_LIMIT = 64 * 1024  # bytes of the header block shown
PREVIEW_LIMIT = 100 * 1024  # characters of the preview
# Bytes of a body part decoded for the preview: enough for PREVIEW_LIMIT characters of any
# charset (at most 4 bytes each in UTF-8), and a bound on the work for a huge part.
_DECODE_LIMIT = PREVIEW_LIMIT * 4
_HTML_LIMIT = 2 * 1024 * 1024  # characters of HTML read for its text
MAX_PARTS = 2000  # MIME entities walked; the rest is summed up in a note
MAX_DEPTH = 100  # nesting levels walked (the parser's own limit is Python's recursion limit)

NOTE_UNREADABLE = ("The message's MIME structure could not be read (too deeply nested or "
                   "broken): its raw text is shown instead.")
NOTE_TOO_MANY = "The message has more parts than are listed here."
NOTE_TOO_DEEP = "Parts nested deeper than {depth} levels are not listed."
NOTE_NO_TEXT = "The message has no text part to preview."


@dataclass(frozen=True)
class Attachment:
    filename: str  # "" when the part has none
    content_type: str  # as declared, lower-case
    size: int  # bytes, decoded


@dataclass(frozen=True)
class Preview:
    headers: str
    headers_cut: bool  # the header block was longer than HEADER_LIMIT
    text: str
    text_cut: bool  # the text was longer than PREVIEW_LIMIT
    text_source: str  # "text/plain", "text/html", "raw" (unreadable structure) or ""
    attachments: tuple[Attachment, ...]
    notes: tuple[str, ...]  # what the page should say about what it could not show


def preview(data: bytes) -> Preview:
    headers, headers_cut = header_block(data)
    notes: list[str] = []
    try:
        message = email.message_from_bytes(data, policy=compat32)
        body, attachments = _walk(message, notes)
    except Exception:  # RecursionError above all: the raw text is still there
        raw, cut = _cut(printable(_body_bytes(data)[:_DECODE_LIMIT].decode("utf-8", "replace")))
        return Preview(headers, headers_cut, raw, cut, "raw", (), (NOTE_UNREADABLE,))
    text, cut, source = "", False, ""
    if body is not None:
        source = body.get_content_type()
        decoded = _text_of(body)
        if source == "text/html":
            decoded = html_to_text(decoded)
        text, cut = _cut(printable(decoded))
    else:
        notes.append(NOTE_NO_TEXT)
    return Preview(headers, headers_cut, text, cut, source, tuple(attachments), tuple(notes))


def header_block(data: bytes) -> tuple[str, bool]:
    """The raw header block (up to the first empty line), as text, and whether it was cut."""
    end = _header_end(data)
    head = data[:end]
    cut = len(head) > HEADER_LIMIT
    return printable(head[:HEADER_LIMIT].decode("utf-8", "replace")), cut


def _header_end(data: bytes) -> int:
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    return min(ends) if ends else len(data)


def _body_bytes(data: bytes) -> bytes:
    end = _header_end(data)
    return data[end:].lstrip(b"\r\n")


def _walk(message: email.message.Message, notes: list[str]
          ) -> tuple[email.message.Message | None, list[Attachment]]:
    """The body part to preview and the attachments, depth-first in the message's order."""
    plain: email.message.Message | None = None
    html: email.message.Message | None = None
    attachments: list[Attachment] = []
    stack: list[tuple[email.message.Message, int]] = [(message, 0)]
    walked = 0
    too_deep = False
    while stack:
        part, depth = stack.pop()
        walked += 1
        if walked > MAX_PARTS:
            notes.append(NOTE_TOO_MANY)
            break
        ctype = _content_type(part)
        if ctype == "message/rfc822" and depth > 0:  # an attached message: listed, not opened
            attachments.append(Attachment(_filename(part) or _subject(part), ctype,
                                          _size(part)))
            continue
        if part.is_multipart():
            children = part.get_payload()
            if depth >= MAX_DEPTH:
                too_deep = True
                continue
            if isinstance(children, list):
                stack.extend((c, depth + 1) for c in reversed(children)
                             if isinstance(c, email.message.Message))
            continue
        name = _filename(part)
        is_body = (ctype.startswith("text/") and not name
                   and _disposition(part) != "attachment")
        if is_body and ctype == "text/plain" and plain is None:
            plain = part
        elif is_body and ctype == "text/html" and html is None:
            html = part
        elif not is_body:
            attachments.append(Attachment(name, ctype, _size(part)))
    if too_deep:
        notes.append(NOTE_TOO_DEEP.format(depth=MAX_DEPTH))
    return (plain if plain is not None else html), attachments


def _content_type(part: email.message.Message) -> str:
    try:
        return printable(part.get_content_type()).lower()
    except Exception:  # a header the parser kept but cannot interpret
        return "application/octet-stream"


def _disposition(part: email.message.Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:
        return ""


def _mime_fields(part: email.message.Message) -> email.message.Message:
    """The part's Content-Type and -Disposition, unfolded, with 8-bit bytes read as UTF-8.
    (compat32 hands a field with 8-bit bytes back as an "unknown-8bit" Header, whose
    parameters come out as replacement characters; a name in UTF-8 is common.)"""
    fields = email.message.Message()
    for name, value in part.raw_items():
        if name.lower() in ("content-type", "content-disposition"):
            fields[name] = printable(str(value)).replace("\n", "")
    return fields


def _filename(part: email.message.Message) -> str:
    try:
        fields = _mime_fields(part)
        name = fields.get_filename() or fields.get_param("name") or ""
    except Exception:  # an RFC 2231 value in a charset that does not exist
        return ""
    if isinstance(name, tuple):  # an RFC 2231 triple get_param left undecoded
        name = str(name[2])
    name = str(name)
    if "=?" in name:  # RFC 2047 words in a parameter: wrong (RFC 2047 §5), and common
        with contextlib.suppress(Exception):  # a charset that does not exist, bad base64
            name = str(make_header(decode_header(name)))
    return file_name(name)


def _subject(part: email.message.Message) -> str:
    """The Subject of an attached message, to name it in the list."""
    try:
        inner = part.get_payload(0)
        subject = inner.get("Subject", "") if isinstance(inner, email.message.Message) else ""
    except Exception:
        return ""
    return printable(str(subject))[:200]


def _size(part: email.message.Message) -> int:
    try:
        if part.is_multipart():
            return len(part.as_bytes())
    except Exception:  # a broken attachment is still listed
        return 0
    return len(_payload(part))


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


def _payload(part: email.message.Message) -> bytes:
    """A leaf part's content, decoded by its transfer encoding. Base64 leniently: compat32
    gives up on a length that is not a multiple of 4 and hands back the base64 text itself,
    where what the sender meant is nearly all there; junk characters are dropped and the
    last incomplete group too."""
    try:
        if str(part.get("Content-Transfer-Encoding", "")).strip().lower() == "base64":
            raw = part.get_payload(decode=False)
            if not isinstance(raw, str):
                return b""
            data = _NOT_BASE64.sub(b"", raw.encode("ascii", "surrogateescape"))
            return binascii.a2b_base64(data[: len(data) - len(data) % 4])
        payload = part.get_payload(decode=True)
    except Exception:  # binascii.Error, or a transfer encoding's decoder giving up
        return b""
    return payload if isinstance(payload, bytes) else b""


def _text_of(part: email.message.Message) -> str:
    """A text part's content, decoded by its transfer encoding, then its charset."""
    payload = _payload(part)
    try:
        charset = part.get_content_charset() or "utf-8"
    except Exception:
        charset = "utf-8"
    return decode(payload[:_DECODE_LIMIT], charset)


def decode(payload: bytes, charset: str) -> str:
    """`payload` in `charset`, or as UTF-8 with replacement when that charset is unknown, is
    not a text encoding (bytes.decode refuses "base64" or "zlib"), or cannot replace."""
    try:
        return payload.decode(charset, "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return payload.decode("utf-8", "replace")


# ---- text for display ---------------------------------------------------------------------

# C0 and C1 controls and DEL, except TAB and LF; CR goes too (lines end in LF here).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Bidirectional formatting characters: in a file name they make "exe" read as "txt".
_BIDI = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text safe to put in a page: no lone surrogate (a byte the parser kept as one), no
    control character but tab and newline, CRLF as LF."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = text.replace("\r\n", "\n")
    return _CONTROLS.sub("\ufffd", text)


# The embeddings, overrides and isolates: they reorder what follows them on the line.
_BIDI_REORDER = re.compile(r"[\u202a-\u202e\u2066-\u2069]")


def _code_point(match: re.Match[str]) -> str:
    return f"[U+{ord(match.group()):04X}]"


def one_line(text: str) -> str:
    """A value from the message or the database (a subject, a sender) for one line of a page:
    printable, tabs and newlines as spaces, and no control that reorders the rest of the
    line (a subject must not turn the ID beside it around); marks (LRM, RLM) stay."""
    text = printable(text).replace("\n", " ").replace("\t", " ")
    return _BIDI_REORDER.sub(_code_point, text)


def file_name(name: str) -> str:
    """A file name for the list: one line, every bidi control shown as its code point, so
    that "invoice\u202efdp.exe" cannot read as "invoiceexe.pdf"."""
    return _BIDI.sub(_code_point, one_line(name).strip())[:255]


def _cut(text: str) -> tuple[str, bool]:
    return (text[:PREVIEW_LIMIT], True) if len(text) > PREVIEW_LIMIT else (text, False)


class _HtmlText(HTMLParser):
    """The text of an HTML document: tags dropped, character references resolved, script,
    style and head content skipped, block elements on lines of their own."""

    SKIP = frozenset({"script", "style", "head", "title", "template", "noscript", "svg",
                      "math", "object", "iframe"})
    BLOCK = frozenset({"p", "div", "br", "li", "tr", "table", "h1", "h2", "h3", "h4", "h5",
                       "h6", "blockquote", "pre", "hr", "ul", "ol", "dl", "dt", "dd",
                       "section", "article", "header", "footer", "address", "center"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.out.append("\n")
        elif tag == "td" or tag == "th":
            self.out.append("\t")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCK:  # <br/>: a void element has no end tag to wait for
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(data)


_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def html_to_text(html: str) -> str:
    """The readable text of an HTML body (never rendered: a page shows this as text)."""
    parser = _HtmlText()
    try:
        parser.feed(html[:_HTML_LIMIT])
        parser.close()
    except Exception:  # html.parser is lenient; whatever it read is kept
        pass
    lines = (_SPACES.sub(" ", line).strip() for line in "".join(parser.out).splitlines())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
