"""The LMTP server side: aiosmtpd's LMTP, corrected where RFC 2033 needs it.

aiosmtpd 1.4.6 parses commands well but, for LMTP, it sends ONE reply after DATA on its own error
paths (size or line limit, exceptions), does not advertise PIPELINING/ENHANCEDSTATUSCODES, omits
enhanced status codes, and keeps its 300 s timer running while the message is processed
(docs/design.md §9). So this subclass replaces LHLO and the whole DATA phase:

* the message is read in large chunks (not line by line) up to the terminating CRLF.CRLF, and
  whatever is pipelined after it is handed back to the command reader;
* size and line-length violations are detected after the terminator, and answered with one
  reply per recipient, like everything else after DATA;
* the message goes to the :class:`~lmtpfilter.pipeline.Pipeline`, shielded from the client
  connection: a client that disconnects cannot interrupt a delivery or a quarantine write;
* exactly one reply per accepted recipient, in RCPT order, is written in one write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session, syntax

from .addresses import matches
from .config import Config
from .message import Message
from .options import Address
from .pipeline import UNIX_PEER, Transaction
from .reply import INTERNAL_ERROR, LINE_TOO_LONG, SHUTTING_DOWN, SIZE_EXCEEDED, Reply

log = logging.getLogger(__name__)

Processor = Callable[[Transaction], Awaitable[list[Reply]]]

MAX_LINE = 998  # octets, without CRLF (RFC 5321 §4.5.3.1.6)
READ_SIZE = 256 * 1024

# Enhanced status codes for aiosmtpd's own replies, which carry none (RFC 2034 §3 wants one
# on every 2xx/4xx/5xx reply except the greeting and the LHLO reply).
_ENHANCED_FOR = {
    221: "2.0.0", 250: "2.0.0", 252: "2.5.0", 421: "4.3.2", 451: "4.3.0",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
    530: "5.7.0", 550: "5.0.0", 552: "5.3.4", 553: "5.1.3", 554: "5.0.0", 555: "5.5.4",
}
# The common address forms, parsed without the full RFC 5322 parser aiosmtpd uses (which is
# slow and defines a class on every call); anything else goes to aiosmtpd's parser.
_SIMPLE_PATH = re.compile(
    r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>(?: +(.*))?\Z")
_HAS_ENHANCED = re.compile(rb"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


def new_transaction_id() -> str:
    """Unique across processes and hosts, sortable by time: 8 hex digits of seconds, then 64
    random bits (24 bits would collide about once a minute at 1000 messages/s)."""
    return f"{int(time.time()):08X}{secrets.token_hex(8).upper()}"


def has_long_line(data: bytes) -> bool:
    """True if a line is over 998 octets, not counting its CRLF (or bare LF)."""
    if len(data) <= MAX_LINE:
        return False
    # Fast path in C: no line is even 999 octets long counting a CR.
    if max(map(len, data.split(b"\n"))) <= MAX_LINE:
        return False
    return any(len(line) - line.endswith(b"\r") > MAX_LINE for line in data.split(b"\n"))


class _Handler:
    """aiosmtpd hooks; aiosmtpd does not record a recipient unless the hook does."""

    def __init__(self, app: FilterServer) -> None:
        self.app = app

    async def handle_MAIL(self, server: LMTPSession, session: Session, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        if self.app.draining:
            server.close_after_reply()
            return SHUTTING_DOWN.line()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: LMTPSession, session: Session, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        local = self.app.config.policy.local_domains
        if local and not matches(address, local):
            return f"550 5.1.2 <{address}>: Recipient domain is not handled here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"


class LMTPSession(LMTP):
    """One client connection (aiosmtpd calls it the protocol)."""

    # aiosmtpd sizes its StreamReader buffer from this; our DATA reader needs large reads.
    # Command lines are still limited to 512 octets by aiosmtpd's own check.
    line_length_limit = READ_SIZE

    def __init__(self, app: FilterServer, **kwargs: Any) -> None:
        super().__init__(_Handler(app), **kwargs)
        self.app = app
        self.processing = False  # DATA phase under way: do not interrupt
        self._closing = False
        self._pending: list[bytes] = []  # replies not yet written (see push)

    # ---- connection bookkeeping ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.app.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.app.sessions.discard(self)
        super().connection_lost(error)

    @property
    def idle(self) -> bool:
        """Between transactions and not processing: safe to say 421 and close."""
        return not self.processing and (self.envelope is None or not self.envelope.mail_from)

    def close_after_reply(self) -> None:
        self._closing = True

    def abort(self, reply: Reply) -> None:
        """Say `reply` (a 421) and close, whatever the state (shutdown)."""
        if self.transport is not None and not self.transport.is_closing():
            self._send(reply.line().encode() + b"\r\n", now=True)
            self.transport.close()

    def _send(self, data: bytes, *, now: bool = False) -> None:
        """Queue bytes for the client; write them once the pipelined input is used up.

        Postfix pipelines MAIL, RCPT... and DATA in one packet; answering each with its own
        write() costs a syscall and a packet apiece. Like Postfix's smtpd, replies are held
        while another complete command is already buffered, and written together after the
        last one (or when the session next waits for input, whichever comes first).
        """
        self._pending.append(data)
        if now or b"\n" not in self._reader._buffer:  # type: ignore[attr-defined]
            self._flush()
        elif len(self._pending) == 1:
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._pending and self.transport is not None and not self.transport.is_closing():
            self._writer.write(b"".join(self._pending))
        self._pending.clear()
        if self._closing and self.transport is not None:
            self.transport.close()

    async def push(self, status: str | bytes) -> None:
        line = status.encode("utf-8", "surrogateescape") if isinstance(status, str) else status
        if line[:1] in b"245" and line[3:4] in (b" ", b"-") and line[:3].isdigit() and \
                not line.startswith(b"220") and not _HAS_ENHANCED.match(line):
            code = int(line[:3])
            enhanced = _ENHANCED_FOR.get(code, f"{code // 100}.0.0")
            line = line[:4] + enhanced.encode() + b" " + line[4:]
        # aiosmtpd closes the connection right after 221, 421 and its 502 "goodbye".
        self._send(line + b"\r\n", now=line[:3] in (b"221", b"421", b"502"))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        m = _SIMPLE_PATH.match(arg.strip())
        if m:
            return m.group(1), m.group(2) or ""
        result: tuple[str | None, str | None] = super()._getaddr(arg)
        return result

    # ---- LHLO ---------------------------------------------------------------------------
    @syntax("LHLO hostname")
    async def smtp_LHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: LHLO hostname")
            return
        self._set_rset_state()  # type: ignore[no-untyped-call]
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname, "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME",
                 f"SIZE {self.app.config.server.max_message_size}"]
        reply = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n"
        self._send(reply.encode())

    # ---- DATA ---------------------------------------------------------------------------
    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed("LHLO"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.processing = True
        try:
            received = await self._read_data()
            if received is None:  # connection closed before the final dot: nothing to answer
                return
            nrcpt = len(self.envelope.rcpt_tos)
            if isinstance(received, Reply):
                replies = [received] * nrcpt
            else:
                replies = await self._process(received)
                if len(replies) != nrcpt:  # a bug, but never a wrong number of replies
                    log.error("pipeline returned %d replies for %d recipients",
                              len(replies), nrcpt)
                    replies = [INTERNAL_ERROR] * nrcpt
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            self._send(b"".join(r.line().encode() + b"\r\n" for r in replies), now=True)
            await self._writer.drain()
        finally:
            self.processing = False
            self._reset_timeout()
        if self.app.draining and self.transport is not None:
            self.abort(SHUTTING_DOWN)

    async def _read_data(self) -> bytes | Reply | None:
        """Read up to CRLF.CRLF; return the dot-unstuffed message, or the Reply that refuses
        it (too big, line too long), or None if the client went away."""
        reader = self._reader
        limit = self.app.config.server.max_message_size
        buf = bytearray()
        discarded = 0  # bytes dropped once the message is known to be too big
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                return None
            self._reset_timeout()
            search_from = max(0, len(buf) - 4)
            buf += chunk
            if not discarded and buf.startswith(b".\r\n"):  # empty message
                body_end, term_end = 0, 3
                break
            end = buf.find(b"\r\n.\r\n", search_from)
            if end >= 0:
                body_end, term_end = end + 2, end + 5
                break
            if discarded or (len(buf) > limit and _unstuffed_size(buf) > limit):
                # Too big: keep reading to the terminator, but keep only its possible start.
                discarded += len(buf) - 4
                del buf[:-4]
        leftover = bytes(buf[term_end:])
        if leftover:  # pipelined commands after the dot go back to aiosmtpd's reader
            reader._buffer[0:0] = leftover  # type: ignore[attr-defined]
        overflow = discarded > 0
        if overflow:
            return SIZE_EXCEEDED
        del buf[body_end:]
        data = bytes(buf)
        buf.clear()  # one copy of the message in memory, not two
        if data.startswith(b"."):
            data = data[1:]
        if b"\r\n." in data:  # RFC 5321 §4.5.2: drop the leading dot (copies: only if needed)
            data = data.replace(b"\r\n.", b"\r\n")
        if len(data) > limit:
            return SIZE_EXCEEDED
        if has_long_line(data):
            return LINE_TOO_LONG
        return data

    async def _process(self, data: bytes) -> list[Reply]:
        assert self.envelope is not None and self.session is not None
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()  # processing is not client idleness
        peer = self.session.peer
        tx = Transaction(
            id=new_transaction_id(),
            peer=str(peer[0]) if isinstance(peer, tuple) else UNIX_PEER,  # the IP, no port
            helo=self.session.host_name or "",
            # aiosmtpd records the null sender of bounces as "<>" (it must stay truthy for its
            # own "need MAIL" checks); downstream it is MAIL FROM:<>.
            sender="" if self.envelope.mail_from == "<>" else self.envelope.mail_from or "",
            mail_params=list(self.envelope.mail_options),
            recipients=list(self.envelope.rcpt_tos),
            message=Message.parse(data),
        )
        task = asyncio.ensure_future(self.app.process(tx))
        self.app.inflight.add(task)
        task.add_done_callback(self.app.inflight.discard)
        # Shielded: if the client disconnects, the delivery still completes cleanly (the
        # client, having no reply, will retry; that is the only way a duplicate can happen).
        return await asyncio.shield(task)


def _unstuffed_size(buf: bytearray) -> int:
    return len(buf) - buf.count(b"\r\n..") - (1 if buf.startswith(b"..") else 0)


class FilterServer:
    """The listeners, the live sessions, and graceful shutdown."""

    def __init__(self, config: Config, process: Processor,
                 unlink_on_shutdown: bool = True) -> None:
        self.config = config
        self.unlink_on_shutdown = unlink_on_shutdown
        self.process = process
        self.hostname = config.hostname
        self.sessions: set[LMTPSession] = set()
        self.inflight: set[asyncio.Future[list[Reply]]] = set()
        self.draining = False
        self._servers: list[asyncio.AbstractServer] = []

    def _factory(self) -> LMTPSession:
        return LMTPSession(
            self,
            hostname=self.hostname,
            ident="lmtpfilter",
            data_size_limit=self.config.server.max_message_size,
            timeout=self.config.server.idle_timeout,
        )

    async def start(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Listen on every configured address (or on already bound sockets)."""
        loop = asyncio.get_running_loop()
        if sockets is None:
            sockets = [bind(a, self.config.server.socket_mode)
                       for a in self.config.server.listen]
        for sock in sockets:
            if sock.family == socket.AF_UNIX:
                srv = await loop.create_unix_server(self._factory, sock=sock)
            else:
                srv = await loop.create_server(self._factory, sock=sock)
            self._servers.append(srv)
        log.info("listening on %s", ", ".join(str(a) for a in self.config.server.listen))

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; let transactions finish for up to `timeout`; 421 the rest."""
        self.draining = True
        for srv in self._servers:
            srv.close()
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            for s in list(self.sessions):
                if s.idle:
                    s.abort(SHUTTING_DOWN)
            await asyncio.sleep(0.05)
        for s in list(self.sessions):
            s.abort(SHUTTING_DOWN)
        for task in list(self.inflight):
            task.cancel()
        for srv in self._servers:
            await srv.wait_closed()
        if self.unlink_on_shutdown:
            unlink_sockets(self.config.server.listen)


def bind(address: Address, mode: int) -> socket.socket:
    """A listening socket for `address`; a stale unix socket file is replaced."""
    if address.is_unix:
        _unlink_socket(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # never world-accessible between bind and chmod
        try:
            sock.bind(address.path)
        finally:
            os.umask(old_umask)
        os.chmod(address.path, mode)
    else:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    sock.listen(512)
    sock.setblocking(False)
    return sock


def unlink_sockets(addresses: Sequence[Address]) -> None:
    for address in addresses:
        if address.is_unix:
            _unlink_socket(address.path)


def _unlink_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
