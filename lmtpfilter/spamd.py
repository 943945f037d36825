"""SpamAssassin through spamd: a small SPAMC/1.5 client (REPORT), async, with a timeout.

REPORT gives both the verdict line (``Spam: True ; 7.2 / 5.0``) and the report table with each
rule's score, which the amavis-style ``tests=[GTUBE=1000, ...]`` needs; SYMBOLS would give the
names only. Parsing is pure and table-tested; the client never raises for spamd trouble.
"""

from __future__ import annotations

import asyncio
import re
import time

from .config import SpamassassinConfig
from .downstream import write_all
from .options import Address
from .scanresult import SpamResult, Status, guarded

MAX_RESPONSE = 4 * 1024 * 1024

_STATUS = re.compile(r"SPAMD/(\d+\.\d+) +(\d+) +(.*)")
_SPAM = re.compile(r"(True|False|Yes|No) *; *(-?\d+(?:\.\d+)?) */ *(-?\d+(?:\.\d+)?)", re.I)
_RULE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s+([A-Za-z0-9_]+)\b")


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

    async def check(self, data: bytes) -> SpamResult:
        """Score `data`; over max_size it is not sent (SKIPPED). Never raises."""
        if len(data) > self.config.max_size:
            return SpamResult(Status.SKIPPED, error=f"message over {self.config.max_size} bytes")
        started = time.monotonic()
        result = await guarded(self._request(self.config.address, data), self.config.timeout,
                               f"spamd at {self.config.address}",
                               lambda why: SpamResult(Status.ERROR, error=why))
        return SpamResult(result.status, result.score, result.required, result.rules,
                          result.error, time.monotonic() - started)

    @staticmethod
    async def _request(address: Address, data: bytes) -> SpamResult:
        if address.is_unix:
            reader, writer = await asyncio.open_unix_connection(address.path)
        else:
            reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            await write_all(writer, [
                f"REPORT SPAMC/1.5\r\nContent-length: {len(data)}\r\n\r\n".encode(), data])
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
