"""The LMTP server: the asyncio shell around :mod:`lmtp_server`'s state machine.

Every protocol decision (command syntax, the order of replies, dot-unstuffing, the size and
line limits, one reply per accepted recipient after DATA) is made by
:class:`~lmtpfilter.lmtp_server.ServerConnection`, which is tested without sockets. This module
moves bytes, answers the two questions the protocol asks the application (may this MAIL and
this RCPT go ahead?), runs the :class:`~lmtpfilter.pipeline.Pipeline` for each message, and
keeps the timers and the shutdown (docs/design.md §1).

* Replies to pipelined commands are written together, in one write per batch of input.
* While a message is processed, reading stops; the commands a client pipelined after the
  final dot wait in the state machine's buffer.
* The pipeline runs shielded from the client connection: a client that disconnects cannot
  interrupt a delivery or a quarantine write (it gets no reply and retries; that is the only
  way a duplicate can happen).
* The idle timer does not run while a message is processed: processing is not idleness.
  Outside DATA it is restarted by a complete command, not by any byte (Postfix's
  smtpd_per_record_deadline): a client sending a byte a second of an endless line is idle.
* The transaction timer runs from MAIL to the final dot (our processing does not count): a
  client trickling its message a byte at a time, which keeps the idle timer alive, cannot
  hold a connection slot for ever. A minimum data rate would refuse a slow but honest link
  that a fixed bound lets through, and one deadline is simpler to state and to test.
* Past [server] max_connections a new client gets 421 4.3.2 and is closed; the log says so
  once when the limit is first hit and once, with the count, when the pressure is over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from .config import Config
from .lmtp_server import (
    Capabilities,
    ConnectionClosed,
    Mail,
    MessageReceived,
    Rcpt,
    ServerConnection,
    Signal,
    State,
)
from .message import Message
from .options import Address
from .pipeline import UNIX_PEER, Transaction
from .reply import INTERNAL_ERROR, SHUTTING_DOWN, Reply

log = logging.getLogger(__name__)

Processor = Callable[[Transaction], Awaitable[list[Reply]]]
IDLE_TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
TRANSACTION_TIMEOUT = Reply(421, "4.4.2", "Error: transaction took too long")
TOO_MANY_CONNECTIONS = Reply(421, "4.3.2", "Too many connections, try again later")


def new_transaction_id() -> str:
    """Unique across processes and hosts, sortable by time: 8 hex digits of seconds, then 64
    random bits (24 bits would collide about once a minute at 1000 messages/s)."""
    return f"{int(time.time()):08X}{secrets.token_hex(8).upper()}"


def _peer_of(transport: asyncio.BaseTransport) -> str:
    """The client's IP address (Transaction.peer), or UNIX_PEER on a unix socket."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else UNIX_PEER


class LMTPSession(asyncio.Protocol):
    """One client connection."""

    def __init__(self, app: FilterServer) -> None:
        self.app = app
        server = app.config.server
        self.conn = ServerConnection(
            app.hostname, max_message_size=server.max_message_size,
            capabilities=app.announce(), max_recipients=server.max_recipients,
            max_header_size=server.max_header_size)
        self.transport: asyncio.Transport | None = None
        self.peer = UNIX_PEER
        self.admitted = False  # False: refused (too many connections), or not connected yet
        self._idle_timer: asyncio.TimerHandle | None = None
        self._tx_timer: asyncio.TimerHandle | None = None  # MAIL to the final dot
        self._delivery: asyncio.Task[None] | None = None  # the message being processed

    # ---- connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport: asyncio.Transport's methods, though another event loop's
        # (uvloop's) need not subclass it, so no isinstance check.
        self.transport = transport = cast(asyncio.Transport, transport)
        self.peer = _peer_of(transport)
        if not self.app.admit(self):
            # Instead of the greeting (RFC 5321 3.1); the client comes back later.
            transport.write(TOO_MANY_CONNECTIONS.line().encode() + b"\r\n")
            transport.close()
            return
        self.admitted = True
        self._restart_idle_timer()
        self._drain()  # the greeting

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.app.release(self)
        self._stop_idle_timer()
        self._stop_tx_timer()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        in_data = self.conn.state is State.DATA
        self.conn.receive_data(data)
        # In DATA any byte is progress (the transaction timer bounds a trickle); outside it,
        # only a complete command is, which _drain reports.
        progress = self._drain()
        if (progress or in_data) and self.conn.state not in (State.DELIVERY, State.CLOSED):
            self._restart_idle_timer()

    def eof_received(self) -> bool:
        if not self.admitted:
            return False
        self.conn.receive_data(b"")
        self._drain()
        return True  # keep the transport: replies to what came before the EOF still go out

    @property
    def idle(self) -> bool:
        """Between transactions and not processing: safe to say 421 and close."""
        return self.conn.idle

    def abort(self, reply: Reply) -> None:
        """Say `reply` (a 421) and close, whatever the state (shutdown)."""
        self.conn.shutdown(reply)
        self._drain()

    # ---- the protocol's questions and events --------------------------------------------
    def _drain(self) -> bool:
        """Handle every event the input so far gives, then write all the replies at once.
        True if a command was completed (it gave an event or a reply)."""
        conn = self.conn
        progress = False
        while not isinstance(event := conn.next_event(), Signal):
            progress = True
            if isinstance(event, Mail):
                if self.app.draining:
                    conn.reject(SHUTTING_DOWN)
                else:
                    conn.accept()
            elif isinstance(event, Rcpt):
                refusal = self.app.refuse_recipient(event.address)
                if refusal is None:
                    conn.accept()
                else:
                    conn.reject(refusal)
            elif isinstance(event, MessageReceived):
                self._stop_idle_timer()
                if self.transport is not None:
                    self.transport.pause_reading()
                self._delivery = asyncio.ensure_future(self._deliver(event))
            elif isinstance(event, ConnectionClosed):
                self._stop_tx_timer()
                self._write(conn.data_to_send())
                if self.transport is not None:
                    self.transport.close()
                return True
        self._update_tx_timer()
        out = conn.data_to_send()
        self._write(out)
        return progress or bool(out)

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def _deliver(self, event: MessageReceived) -> None:
        recipients = event.recipients
        try:
            replies = await self.app.run(self._transaction(event))
        except asyncio.CancelledError:  # shutdown past its deadline: the client gets a 421
            self.abort(SHUTTING_DOWN)
            raise
        except Exception:  # the pipeline never raises; a bug must still not lose a reply
            log.exception("processing a message failed")
            replies = []
        if len(replies) != len(recipients):  # a bug, but never a wrong number of replies
            log.error("pipeline returned %d replies for %d recipients",
                      len(replies), len(recipients))
            replies = [INTERNAL_ERROR] * len(recipients)
        self.conn.send_data_replies(replies)
        if self.app.draining:
            self.conn.shutdown(SHUTTING_DOWN)
        if self.transport is not None:
            self.transport.resume_reading()
        self._restart_idle_timer()
        self._drain()

    def _transaction(self, event: MessageReceived) -> Transaction:
        return Transaction(
            id=new_transaction_id(),
            peer=self.peer,
            helo=self.conn.client_name or "",
            sender=event.sender,
            mail_params=list(event.mail_params.raw),
            recipients=[r.address for r in event.recipients],
            rcpt_params=[list(r.params.raw) for r in event.recipients],
            message=Message.parse(event.data),
        )

    # ---- the idle timer -----------------------------------------------------------------
    def _restart_idle_timer(self) -> None:
        self._stop_idle_timer()
        timeout = self.app.config.server.idle_timeout
        if timeout > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(timeout, self._idle_out)

    def _stop_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_out(self) -> None:
        self._idle_timer = None
        if self.conn.state is not State.DELIVERY:
            log.info("client %s: idle for %gs (state %s), closed", self.peer,
                     self.app.config.server.idle_timeout, self.conn.state.value)
            self.abort(IDLE_TIMEOUT)

    # ---- the transaction timer ------------------------------------------------------------
    def _update_tx_timer(self) -> None:
        """Running from MAIL to the final dot; stopped while we process the message (our
        time is not the client's) and between transactions."""
        conn = self.conn
        if conn.idle or conn.state in (State.DELIVERY, State.CLOSED):
            self._stop_tx_timer()
            return
        timeout = self.app.config.server.transaction_timeout
        if self._tx_timer is None and timeout > 0:
            self._tx_timer = asyncio.get_running_loop().call_later(timeout, self._tx_out)

    def _stop_tx_timer(self) -> None:
        if self._tx_timer is not None:
            self._tx_timer.cancel()
            self._tx_timer = None

    def _tx_out(self) -> None:
        self._tx_timer = None
        if self.conn.state is State.DELIVERY:  # cannot happen: stopped at MessageReceived
            return
        # The message never reached the pipeline: nothing is delivered, the client retries.
        log.info("client %s: transaction longer than %gs (state %s), closed", self.peer,
                 self.app.config.server.transaction_timeout, self.conn.state.value)
        self.abort(TRANSACTION_TIMEOUT)


class FilterServer:
    """The listeners, the live sessions, and graceful shutdown."""

    def __init__(self, config: Config, process: Processor, unlink_on_shutdown: bool = True,
                 announce: Callable[[], Capabilities] | None = None) -> None:
        self.config = config
        self.unlink_on_shutdown = unlink_on_shutdown
        self.process = process
        # What LHLO announces beyond the basics: SMTPUTF8 always (downstream gets the
        # addresses as they are, docs/design.md §9), DSN when the downstream announces it.
        self.announce = announce or (lambda: Capabilities(smtputf8=True))
        self.hostname = config.hostname
        self.sessions: set[LMTPSession] = set()
        self.inflight: set[asyncio.Future[list[Reply]]] = set()
        self.draining = False
        self._servers: list[asyncio.AbstractServer] = []
        self._refused = 0  # clients refused for max_connections in the current episode
        self._refused_since = 0.0  # when the episode began (monotonic)

    # ---- the connection limit -----------------------------------------------------------
    def admit(self, session: LMTPSession) -> bool:
        """Count `session` in, or False past max_connections (it is then refused)."""
        limit = self.config.server.max_connections
        if len(self.sessions) < limit:
            self.sessions.add(session)
            return True
        if not self._refused:  # one line per episode, not one per refused client
            self._refused_since = time.monotonic()
            log.warning("connection limit reached: %d clients ([server] max_connections); "
                        "refusing new ones with 421 4.3.2", limit)
        self._refused += 1
        return False

    def release(self, session: LMTPSession) -> None:
        """Count `session` out; the episode is over when a tenth of the slots are free again
        (not at the first free slot, or a steady overload would log a line per client)."""
        self.sessions.discard(session)
        limit = self.config.server.max_connections
        if self._refused and len(self.sessions) <= limit * 9 // 10:
            log.warning("connection limit cleared: %d clients refused in %.0fs",
                        self._refused, time.monotonic() - self._refused_since)
            self._refused = 0

    def refuse_recipient(self, address: str) -> Reply | None:
        """The reply that refuses a recipient at RCPT, or None to accept it. A recipient
        outside local_domains is refused only when asked (refuse_non_local): by default it
        is delivered without spam tags, as amavis does."""
        policy = self.config.policy
        if (policy.refuse_non_local and policy.local_domains
                and not policy.local_domains.matches(address, policy.recipient_delimiter)):
            return Reply(550, "5.1.2", f"<{address}>: Recipient domain is not handled here")
        return None

    async def run(self, tx: Transaction) -> list[Reply]:
        """The pipeline for one message, shielded from the client's connection."""
        task = asyncio.ensure_future(self.process(tx))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        return await asyncio.shield(task)

    def _factory(self) -> LMTPSession:
        return LMTPSession(self)

    async def start(self, sockets: Sequence[socket.socket] | None = None) -> None:
        """Listen on every configured address (or on already bound sockets)."""
        loop = asyncio.get_running_loop()
        if sockets is None:
            sockets = [bind(a, self.config.server.socket_mode)
                       for a in self.config.server.listen]
        for sock in sockets:
            if sock.family == socket.AF_UNIX:
                srv = await _unix_server(loop, self._factory, sock)
            else:
                srv = await loop.create_server(self._factory, sock=sock)
            self._servers.append(srv)
        log.info("listening on %s (event loop: %s)",
                 ", ".join(str(a) for a in self.config.server.listen),
                 type(loop).__module__.split(".")[0])  # "asyncio" or "uvloop"

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


async def _unix_server(loop: asyncio.AbstractEventLoop,
                       factory: Callable[[], asyncio.Protocol], sock: socket.socket
                       ) -> asyncio.Server:
    """A server on a bound unix socket that leaves the socket's file alone when it closes.

    Python 3.13's loop and recent uvloop remove the file by default (cleanup_socket). The file
    is the supervisor's, shared by every worker, and a worker that retires closes its server
    while the others go on: only the process that bound it removes it (unlink_sockets)."""
    keep_file: dict[str, Any] = {"cleanup_socket": False}
    try:
        return await loop.create_unix_server(factory, sock=sock, **keep_file)
    except TypeError:  # a loop older than the option (Python 3.11's): it never removes it
        return await loop.create_unix_server(factory, sock=sock)


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
