"""Delivery to the final LMTP server: the asyncio shell around :mod:`lmtp_protocol`.

This module only moves bytes and applies timeouts; every protocol decision is made by
:class:`~lmtpfilter.lmtp_protocol.ClientConnection`. Connections are kept in a small pool so that
a busy filter does not pay a connect + greeting + LHLO round trip per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from .config import DownstreamConfig
from .lmtp_protocol import ClientConnection, Envelope, Piece, State
from .options import Address
from .reply import DOWNSTREAM_LOST, DOWNSTREAM_TIMEOUT, DOWNSTREAM_UNAVAILABLE, Reply

log = logging.getLogger(__name__)

READ_SIZE = 65536


SLICE = 256 * 1024


async def write_all(writer: asyncio.StreamWriter, buffers: Sequence[bytes | bytearray |
                                                                   memoryview]) -> None:
    """Write buffers in slices, waiting for the socket between them: the transport never
    holds a copy of a big message (writelines() would join everything into one).

    A connection the server has closed raises ConnectionResetError, on every event loop:
    asyncio's transport drops what is written to it, uvloop's raises RuntimeError."""
    small: list[bytes | bytearray | memoryview] = []
    for buf in buffers:
        if len(buf) <= SLICE:
            small.append(buf)
            continue
        if small:
            _write(writer, b"".join(small))
            small = []
        view = memoryview(buf)
        for offset in range(0, len(view), SLICE):
            _write(writer, view[offset: offset + SLICE])
            await writer.drain()
    if small:
        _write(writer, b"".join(small))
    await writer.drain()


def _write(writer: asyncio.StreamWriter, data: bytes | bytearray | memoryview) -> None:
    if writer.is_closing():
        raise ConnectionResetError("connection closed by the server")
    writer.write(data)


class _Connection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, local_name: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = ClientConnection(local_name)

    async def _flush(self, timeout: float) -> None:
        data = self.protocol.data_to_send()
        if data:
            async with asyncio.timeout(timeout):
                await write_all(self.writer, data)

    async def _pump(self, timeout: float, until: str) -> None:
        """Write what the protocol wants written and feed it replies until `until` holds.

        I/O errors and timeouts are handed to the protocol, which settles whatever is
        unsettled with a 4xx; this never raises for network trouble.
        """
        p = self.protocol
        try:
            while p.state is not State.CLOSED and not getattr(p, until):
                await self._flush(timeout)
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_SIZE)
                p.receive_data(data)
            await self._flush(timeout)
        except TimeoutError:
            p.connection_lost(DOWNSTREAM_TIMEOUT)
        except OSError as exc:
            p.connection_lost(Reply(451, "4.4.2", f"{DOWNSTREAM_LOST.text}: {exc}"))

    async def handshake(self, timeout: float) -> None:
        await self._pump(timeout, "ready")

    async def transaction(
        self, envelope: Envelope, body: Sequence[Piece], timeout: float
    ) -> tuple[list[Reply], bool]:
        """Run one transaction; returns the results and whether the server replied at all."""
        self.protocol.start_transaction(envelope, body)
        await self._pump(timeout, "settled")
        answered = self.protocol.transaction_started_replies
        return self.protocol.finish_transaction(), answered

    @property
    def usable(self) -> bool:
        return self.protocol.state is State.READY and not self.writer.is_closing()

    def close(self) -> None:
        if self.protocol.state is State.READY and not self.writer.is_closing():
            self.protocol.quit()
            for chunk in self.protocol.data_to_send():
                self.writer.write(chunk)
        self.writer.close()


async def _open(address: Address, local_name: str, timeout: float) -> _Connection | Reply:
    """Connect and greet; a Reply (4xx) says why it failed."""
    try:
        if address.is_unix:
            coro = asyncio.open_unix_connection(address.path, limit=READ_SIZE)
        else:
            coro = asyncio.open_connection(address.host, address.port, limit=READ_SIZE)
        reader, writer = await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        return Reply(451, "4.4.1", f"{DOWNSTREAM_UNAVAILABLE.text}: connect timed out")
    except OSError as exc:
        return Reply(451, "4.4.1", f"{DOWNSTREAM_UNAVAILABLE.text}: {exc.strerror or exc}")
    conn = _Connection(reader, writer, local_name)
    await conn.handshake(timeout)
    if conn.protocol.state is not State.READY:
        conn.writer.close()
        return conn.protocol.failure or DOWNSTREAM_UNAVAILABLE
    return conn


class Downstream:
    """A pool of LMTP connections to one server, delivering one transaction at a time each."""

    def __init__(self, config: DownstreamConfig, local_name: str) -> None:
        self.config = config
        self.local_name = local_name
        self._idle: list[_Connection] = []
        # What the server announced in its last LHLO reply (keyword -> value); None until a
        # connection has been made. The LMTP server announces DSN only when this does.
        self.capabilities: dict[str, str] | None = None

    def announces(self, extension: str) -> bool:
        return self.capabilities is not None and extension.upper() in self.capabilities

    async def probe(self) -> None:
        """Connect once (at start) to learn what the server announces; the connection is
        kept for the first delivery. A server that is down is learnt about later."""
        opened = await self._open()
        if not isinstance(opened, Reply):
            self._keep_or_close(opened)

    async def _open(self) -> _Connection | Reply:
        opened = await _open(self.config.address, self.local_name, self.config.connect_timeout)
        if not isinstance(opened, Reply):
            self.capabilities = dict(opened.protocol.capabilities)
        return opened

    def _keep_or_close(self, conn: _Connection) -> None:
        if conn.usable and len(self._idle) < self.config.max_idle_connections:
            self._idle.append(conn)
        else:
            conn.close()

    async def deliver(self, envelope: Envelope, body: Sequence[Piece]) -> list[Reply]:
        """Deliver one message to `envelope.recipients`; one Reply per recipient, in order.

        Never raises for network or protocol trouble: unsettled recipients get a 4xx.
        """
        for _attempt in range(2):
            conn = self._idle.pop() if self._idle else None
            cached = conn is not None
            if conn is None:
                opened = await self._open()
                if isinstance(opened, Reply):
                    return [opened] * len(envelope.recipients)
                conn = opened
            results, answered = await conn.transaction(envelope, body, self.config.timeout)
            self._keep_or_close(conn)
            # A cached connection the server had already closed fails before any reply:
            # nothing was delivered (the body goes only after 354), so one retry is safe.
            if cached and not answered:
                log.debug("downstream: cached connection was closed, retrying on a new one")
                continue
            return results
        return results

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(conn.writer.wait_closed(), 1.0)
