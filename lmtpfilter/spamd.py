"""SpamAssassin through spamd: a small SPAMC/1.5 client (REPORT), async, with a timeout.

REPORT gives both the verdict line (``Spam: True ; 7.2 / 5.0``) and the report table with each
rule's score, which the amavis-style ``tests=[GTUBE=1000, ...]`` needs; SYMBOLS would give the
names only. Parsing is pure and table-tested; the client never raises for spamd trouble.

spamd gets the envelope sender too, which SPF and welcome/block lists by envelope need: the
message goes with a ``Return-Path:`` and an ``X-Envelope-From:`` field on top (what an MDA
adds, and what amavisd-new sends), which SpamAssassin reads as its ``EnvelopeFrom``
(Mail::SpamAssassin::Conf, ``envelope_sender_header``). They go to spamd only: the delivered
copy is built from the received message, never from this request.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence

from .config import SpamassassinConfig
from .downstream import write_all
from .options import Address
from .scanresult import SpamResult, Status, guarded

MAX_RESPONSE = 4 * 1024 * 1024

_STATUS = re.compile(r"SPAMD/(\d+\.\d+) +(\d+) +(.*)")
_SPAM = re.compile(r"(True|False|Yes|No) *; *(-?\d+(?:\.\d+)?) */ *(-?\d+(?:\.\d+)?)", re.I)
_RULE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s+([A-Za-z0-9_]+)\b")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def envelope_fields(sender: str, eol: bytes = b"\r\n") -> bytes:
    """The fields put above the message for spamd: the envelope sender as ``Return-Path:``
    (RFC 5321 §4.4) and ``X-Envelope-From:``, which SpamAssassin trusts on top of the message
    (Mail::SpamAssassin::PerMsgStatus, get_envelope_from; or named by the site config's
    ``envelope_sender_header``). The null sender is ``<>``. A sender that could break the
    header (a control character) gives no fields: SpamAssassin then guesses, as before.
    `eol` is the message's own line ending (SpamAssassin takes it from the first line)."""
    mailbox = sender.removeprefix("<").removesuffix(">")  # "<>" or "": the null sender
    if _CONTROL.search(mailbox):
        return b""
    path = f"<{mailbox}>".encode()
    return b"Return-Path: " + path + eol + b"X-Envelope-From: " + path + eol


def line_ending(data: bytes) -> bytes:
    """The message's line ending, from its first line (only that line is looked at); CRLF,
    as SMTP has it, when there is no line end at all."""
    first = data.find(b"\n")
    bare_lf = first == 0 or (first > 0 and data[first - 1] != 0x0D)
    return b"\n" if bare_lf else b"\r\n"


def request_head(content_length: int, user: str) -> bytes:
    """The SPAMC/1.5 request line and headers; ``User:`` only when one is configured."""
    user_line = f"User: {user}\r\n" if user else ""
    return (f"REPORT SPAMC/1.5\r\nContent-length: {content_length}\r\n{user_line}"
            "\r\n").encode()


def parse_response(raw: bytes) -> SpamResult:
    """spamd's answer to REPORT -> result (pure)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").splitlines()
    if not lines:
        return SpamResult(Status.ERROR, error="spamd closed the connection without a reply")
    m = _STATUS.fullmatch(lines[0].strip())
    if not m:
        return SpamResult(Status.ERROR, error=f"spamd: unexpected reply {lines[0][:120]!r}")
    if m.group(2) != "0":
        return SpamResult(Status.ERROR, error=f"spamd: {m.group(2)} {m.group(3)}")
    verdict = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "spam":
            verdict = _SPAM.search(value)
    if verdict is None:
        return SpamResult(Status.ERROR, error="spamd: no Spam: header in the reply")
    return SpamResult(Status.SCORED, score=float(verdict.group(2)),
                      required=float(verdict.group(3)),
                      rules=parse_report(body.decode("utf-8", "replace")))


def parse_report(report: str) -> tuple[tuple[str, float], ...]:
    """The rule table of a SpamAssassin report: the lines after the "---- ----" rule."""
    rules: list[tuple[str, float]] = []
    in_table = False
    for line in report.splitlines():
        if line.startswith("----"):
            in_table = True
            continue
        if not in_table:
            continue
        m = _RULE.match(line)
        if m and not line.startswith(" " * 8):  # deeply indented: a wrapped description
            rules.append((m.group(2), float(m.group(1))))
    return tuple(rules)


class SpamdScanner:
    def __init__(self, config: SpamassassinConfig) -> None:
        self.config = config
        self._slots: asyncio.Semaphore | None = None
        # Every request sent, until spamd answers it: a strong reference, so that one whose
        # caller stopped waiting is not collected mid-flight (asyncio keeps only weak ones).
        self._in_flight: set[asyncio.Future[SpamResult]] = set()

    async def check(self, data: bytes, envelope_sender: str) -> SpamResult:
        """Score `data`, sent by `envelope_sender` ("" or "<>": the null sender); over
        max_size it is not sent (SKIPPED). Never raises."""
        if len(data) > self.config.max_size:
            return SpamResult(Status.SKIPPED, error=f"message over {self.config.max_size} bytes")
        started = time.monotonic()
        # The envelope goes as one more small chunk in front: the message is never copied.
        envelope = envelope_fields(envelope_sender, line_ending(data))
        head = request_head(len(envelope) + len(data), self.config.user)
        # At most max_connections requests are at spamd at once. Waiting for a free one is
        # bounded by the timeout, and spamd's answer then gets the whole timeout: a request
        # that reached spamd is worth its answer (spamd would scan it anyway), and one that
        # waited too long never reaches spamd. Under overload spamd does only useful work.
        if self._slots is None:  # made in the running loop: each worker process has its own
            self._slots = asyncio.Semaphore(self.config.max_connections)
        try:
            async with asyncio.timeout(self.config.timeout):
                await self._slots.acquire()
        except TimeoutError:
            return SpamResult(Status.ERROR, error=(
                f"spamd busy: no free connection in {self.config.timeout:g}s "
                f"(max_connections = {self.config.max_connections})"),
                seconds=time.monotonic() - started)
        # From here the request is spamd's. A caller that stops waiting (cancels: the virus
        # result has settled every recipient) does not end it: spamd cannot be told to stop,
        # and max_connections must count what spamd is doing, so the request keeps its slot
        # until spamd has answered.
        request = asyncio.ensure_future(self._answer([head + envelope, data]))
        self._in_flight.add(request)
        request.add_done_callback(self._in_flight.discard)
        result = await asyncio.shield(request)
        return SpamResult(result.status, result.score, result.required, result.rules,
                          result.error, time.monotonic() - started)

    async def _answer(self, request: Sequence[bytes]) -> SpamResult:
        """Called with a slot held; frees it."""
        assert self._slots is not None
        try:
            return await guarded(self._request(self.config.address, request),
                                 self.config.timeout, f"spamd at {self.config.address}",
                                 lambda why: SpamResult(Status.ERROR, error=why))
        finally:
            self._slots.release()

    @staticmethod
    async def _request(address: Address, request: Sequence[bytes]) -> SpamResult:
        if address.is_unix:
            reader, writer = await asyncio.open_unix_connection(address.path)
        else:
            reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            await write_all(writer, request)
            if writer.can_write_eof():
                writer.write_eof()
            raw = await reader.read(MAX_RESPONSE)
            while True:  # spamd answers and closes; read to EOF
                more = await reader.read(MAX_RESPONSE)
                if not more or len(raw) > MAX_RESPONSE:
                    break
                raw += more
            return parse_response(raw)
        finally:
            writer.close()
