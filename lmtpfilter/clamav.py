"""ClamAV through clamd: INSTREAM over a unix socket or TCP, without blocking the event loop.

python-clamd (the `clamd` package) is synchronous and streams in 1 KiB sends, which would
block the event loop and cost a syscall per KiB; the scan itself is therefore streamed here
in large chunks (DESIGN.md §9). The package is still used, off the event loop, for the
version probe logged at start-up.

clamd's replies (zINSTREAM, NUL-terminated):
    stream: OK
    stream: Eicar-Test-Signature.UNOFFICIAL FOUND     (one line per name with AllMatchScans)
    INSTREAM size limit exceeded. ERROR                (then clamd closes the connection)
Anything but OK or FOUND is an error, never "clean".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time

from .config import Address, ClamavConfig
from .downstream import write_all
from .scanresult import Status, VirusResult, guarded

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_REPLY = 64 * 1024


def parse_reply(raw: bytes) -> VirusResult:
    """Turn clamd's INSTREAM reply into a result (pure; table-tested)."""
    text = raw.replace(b"\0", b"\n").decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return VirusResult(Status.ERROR, error="clamd closed the connection without a reply")
    names: list[str] = []
    for line in lines:
        _, _, result = line.rpartition("stream: ") if "stream: " in line else ("", "", line)
        if result == "OK":
            continue
        if result.endswith(" FOUND"):
            names.append(result[: -len(" FOUND")].strip())
            continue
        return VirusResult(Status.ERROR, error=f"clamd: {line[:200]}")
    if names:
        return VirusResult(Status.INFECTED, names=tuple(dict.fromkeys(names)))
    return VirusResult(Status.CLEAN)


async def _open(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if address.is_unix:
        return await asyncio.open_unix_connection(address.path)
    return await asyncio.open_connection(address.host, address.port)


class ClamdScanner:
    def __init__(self, config: ClamavConfig) -> None:
        self.config = config

    async def scan(self, data: bytes) -> VirusResult:
        """Scan `data`; never raises for clamd trouble (that is an ERROR result)."""
        started = time.monotonic()
        result = await guarded(self._instream(data), self.config.timeout,
                               f"clamd at {self.config.address}",
                               lambda why: VirusResult(Status.ERROR, error=why))
        return VirusResult(result.status, result.names, result.error,
                           time.monotonic() - started)

    async def _instream(self, data: bytes) -> VirusResult:
        reader, writer = await _open(self.config.address)
        try:
            view = memoryview(data)
            parts: list[bytes | memoryview] = [b"zINSTREAM\0"]
            for offset in range(0, len(view), CHUNK):
                chunk = view[offset: offset + CHUNK]
                parts += [struct.pack(">I", len(chunk)), chunk]
            parts.append(struct.pack(">I", 0))
            # clamd stops reading at StreamMaxLength; its reply says so.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await write_all(writer, parts)
            raw = await reader.read(MAX_REPLY)
            while raw and not raw.endswith(b"\0"):
                more = await reader.read(MAX_REPLY)
                if not more:
                    break
                raw += more
            return parse_reply(raw)
        finally:
            writer.close()


def probe_version(config: ClamavConfig) -> str:
    """clamd's version string, using python-clamd (blocking: call it in a thread)."""
    import clamd

    address = config.address
    client = (clamd.ClamdUnixSocket(path=address.path, timeout=5) if address.is_unix
              else clamd.ClamdNetworkSocket(host=address.host, port=address.port, timeout=5))
    return str(client.version())
