"""The LMTP client protocol (RFC 2033) as a pure state machine: bytes in, results out, no sockets.

In the style of h11: :class:`ClientConnection` is fed the bytes the server sent
(:meth:`~ClientConnection.receive_data`) and says what to send next
(:meth:`~ClientConnection.data_to_send`); the asyncio adapter in ``downstream.py`` only moves
bytes and applies timeouts. All the LMTP rules live here, where they are tested without I/O:

* replies are parsed line by line (multi-line ``250-`` replies, enhanced status codes);
* MAIL, every RCPT and DATA are pipelined when the server offers PIPELINING (RFC 2920),
  one at a time otherwise;
* the body is CRLF-normalised and dot-stuffed (RFC 5321 §4.5.2) and sent only after ``354``;
* after the final dot, exactly one reply is read per *accepted* RCPT, in RCPT order
  (RFC 2033 §4.2) — the step smtplib and aiosmtplib get wrong;
* ``503`` to DATA when no RCPT was accepted is the normal LMTP outcome, followed by RSET;
* ``421`` at any point, EOF, or a garbled reply settle every unsettled recipient with a 4xx.

A recipient is settled with a 2xx only when the server said 2xx for it after the body.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .reply import DOWNSTREAM_LOST, Reply

MAX_REPLY_LINE = 4096  # RFC 5321 §4.5.3.1.5 says 512; be lenient but bounded
MAX_REPLY_LINES = 100


class ProtocolError(Exception):
    """The server sent something that is not an SMTP reply."""


class ReplyParser:
    """Turns bytes into complete :class:`Reply` objects (multi-line replies joined)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code: int | None = None
        self._texts: list[str] = []

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies: list[Reply] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    raise ProtocolError("reply line too long")
                return replies
            raw = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            reply = self._line(raw)
            if reply is not None:
                replies.append(reply)

    def _line(self, raw: bytes) -> Reply | None:
        if len(raw) < 3 or not raw[:3].isdigit() or raw[0:1] not in b"2345" or (
            len(raw) > 3 and raw[3:4] not in (b" ", b"-")
        ):
            raise ProtocolError(f"not an SMTP reply: {raw[:80]!r}")
        code = int(raw[:3])
        if self._code is not None and code != self._code:
            raise ProtocolError(f"reply code changed inside a multi-line reply: {raw[:80]!r}")
        self._code = code
        self._texts.append(raw[4:].decode("utf-8", "replace"))
        if len(self._texts) > MAX_REPLY_LINES:
            raise ProtocolError("multi-line reply too long")
        if raw[3:4] == b"-":
            return None
        reply = Reply.parse_lines(code, self._texts)
        self._code, self._texts = None, []
        return reply


_BARE_LF = re.compile(rb"(?<!\r)\n")

class WireReady:
    """A piece already known to need no encoding (checked once by its owner, without a copy):
    passed to the socket as it is."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)


Chunk = bytes | bytearray | memoryview
Piece = Chunk | WireReady


def needs_encoding(data: bytes, start: int = 0) -> bool:
    """Does data[start:] have a bare LF or a line starting with a dot? C-speed, no copy."""
    return (data.startswith(b".", start) or data.find(b"\n.", start) >= 0
            or data.count(b"\n", start) != data.count(b"\r\n", start))


def encode_chunk(chunk: Piece) -> Chunk:
    """CRLF-normalise and dot-stuff one piece of a message that starts at a line start."""
    if isinstance(chunk, WireReady):
        return chunk.view
    data = chunk if isinstance(chunk, bytes) else bytes(chunk)
    if not needs_encoding(data):
        return chunk if isinstance(chunk, bytes) else data
    if data.count(b"\n") != data.count(b"\r\n"):
        data = _BARE_LF.sub(b"\r\n", data)
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def encode_body(chunks: Iterable[Piece]) -> list[Chunk]:
    """The DATA payload: every chunk encoded, a final CRLF if missing, then the end marker.

    Chunks must each start at the beginning of a line (header block, then body).
    """
    out = [encode_chunk(c) for c in chunks if len(c)]
    if out and bytes(memoryview(out[-1])[-2:]) != b"\r\n":
        out.append(b"\r\n")
    out.append(b".\r\n")
    return out


class Expect(enum.Enum):
    GREETING = "greeting"
    LHLO = "LHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    DELIVERY = "delivery"  # one per accepted RCPT after the final dot
    RSET = "RSET"
    QUIT = "QUIT"


# A MAIL or RCPT parameter, and the extension the server must announce for it to be passed
# on. SIZE= is not here: the protocol sends its own, for the copy it sends.
PASSED_ON = {
    "BODY": "8BITMIME",  # RFC 6152
    "SMTPUTF8": "SMTPUTF8",  # RFC 6531: the addresses go as they are either way
    "RET": "DSN", "ENVID": "DSN", "NOTIFY": "DSN", "ORCPT": "DSN",  # RFC 3461
}


class State(enum.Enum):
    CONNECTING = "connecting"  # waiting for the greeting / the LHLO reply
    READY = "ready"  # may start a transaction
    BUSY = "busy"  # a transaction or its RSET is in progress
    CLOSED = "closed"  # unusable: QUIT sent, 421, EOF or protocol error


@dataclass
class Envelope:
    sender: str
    recipients: Sequence[str]
    mail_params: Sequence[str] = ()  # as the client gave them; see _mail_params
    rcpt_params: Sequence[Sequence[str]] = ()  # per recipient, in order; or none at all


@dataclass
class _Transaction:
    envelope: Envelope
    body: list[Chunk]
    results: list[Reply | None]
    mail_reply: Reply | None = None
    accepted: list[int] = field(default_factory=list)  # indexes of recipients with 2xx RCPT
    pending_rcpt: int = 0  # next recipient to send (no PIPELINING)
    any_reply: bool = False


class ClientConnection:
    """One LMTP client connection, without I/O.

    Usage: after connecting, feed :meth:`receive_data` until :attr:`state` is READY
    (check :attr:`failure`); then :meth:`start_transaction`, send :meth:`data_to_send`,
    feed replies until :attr:`transaction_done`, and read :meth:`results`.
    """

    def __init__(self, local_name: str) -> None:
        self.local_name = local_name
        self.state = State.CONNECTING
        self.capabilities: dict[str, str] = {}
        self.failure: Reply | None = None  # why the connection is unusable, if it is
        self._parser = ReplyParser()
        self._expect: deque[tuple[Expect, int]] = deque([(Expect.GREETING, 0)])
        self._out: list[Chunk] = []
        self._tx: _Transaction | None = None

    # ---- output -------------------------------------------------------------------------
    def data_to_send(self) -> list[Chunk]:
        """The bytes to write now, as a list of buffers for one writelines()."""
        out, self._out = self._out, []
        return out

    def _send(self, command: str, expect: Expect, index: int = 0) -> None:
        self._out.append(command.encode("utf-8", "surrogateescape") + b"\r\n")
        self._expect.append((expect, index))

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.capabilities

    # ---- transactions -------------------------------------------------------------------
    def start_transaction(self, envelope: Envelope, body: Iterable[Piece]) -> None:
        if self.state is not State.READY:
            raise RuntimeError(f"cannot start a transaction in state {self.state.value}")
        if not envelope.recipients:
            raise ValueError("a transaction needs at least one recipient")
        self.state = State.BUSY
        self._tx = _Transaction(
            envelope, encode_body(body), [None] * len(envelope.recipients))
        params = "".join(" " + p for p in self._mail_params(envelope))
        self._send(f"MAIL FROM:<{envelope.sender}>{params}", Expect.MAIL)
        if self.pipelining:
            for i in range(len(envelope.recipients)):
                self._send(self._rcpt_command(i), Expect.RCPT, i)
            self._send("DATA", Expect.DATA)

    def _passed_on(self, params: Iterable[str]) -> list[str]:
        """The parameters whose extension the server announced (the keyword's entry in
        PASSED_ON); the others are dropped, as a relay does (RFC 3461 §4, RFC 6531 §3.7)."""
        return [p for p in params
                if PASSED_ON.get(p.partition("=")[0].upper(), "-") in self.capabilities]

    def _mail_params(self, envelope: Envelope) -> list[str]:
        """The client's parameters the server can take, and our SIZE= (RFC 1870) for the copy
        as it will be sent."""
        out = self._passed_on(envelope.mail_params)
        if "SIZE" in self.capabilities and self._tx is not None:
            # The message as it will be sent, without the end-of-data marker (RFC 1870).
            out.append(f"SIZE={sum(len(c) for c in self._tx.body[:-1])}")
        return out

    def _rcpt_command(self, index: int) -> str:
        assert self._tx is not None
        envelope = self._tx.envelope
        params = self._passed_on(envelope.rcpt_params[index]) if envelope.rcpt_params else []
        return f"RCPT TO:<{envelope.recipients[index]}>" + "".join(" " + p for p in params)

    @property
    def transaction_done(self) -> bool:
        return self._tx is not None and all(r is not None for r in self._tx.results)

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def settled(self) -> bool:
        """The transaction is decided and no reply is outstanding (RSET answered, or closed)."""
        return self.transaction_done and (not self._expect or self.state is State.CLOSED)

    @property
    def transaction_started_replies(self) -> bool:
        """Whether the server answered anything in this transaction (if not, a retry is safe)."""
        return self._tx is not None and self._tx.any_reply

    def results(self) -> list[Reply]:
        """Per-recipient outcome, in RCPT order; only valid once transaction_done."""
        assert self._tx is not None and self.transaction_done
        return [r for r in self._tx.results if r is not None]

    def finish_transaction(self) -> list[Reply]:
        """Take the results and forget the transaction (the RSET may still be in flight)."""
        assert self.settled
        results = self.results()
        self._tx = None
        if self.state is State.BUSY:
            self.state = State.READY
        return results

    def quit(self) -> None:
        if self.state in (State.READY, State.CONNECTING) and not self._expect:
            self._send("QUIT", Expect.QUIT)
        self.state = State.CLOSED

    # ---- input --------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; b"" means the server closed the connection."""
        if not data:
            self.connection_lost(DOWNSTREAM_LOST)
            return
        try:
            replies = self._parser.feed(data)
        except ProtocolError as exc:
            self.connection_lost(Reply(451, "4.4.2", f"Downstream protocol error: {exc}"))
            return
        for reply in replies:
            if self.state is State.CLOSED:
                return
            self._handle(reply)

    def connection_lost(self, reason: Reply) -> None:
        """EOF, timeout or I/O error: unsettled recipients get `reason` (a 4xx)."""
        self._close(reason)

    def _close(self, reason: Reply) -> None:
        if self.failure is None:
            self.failure = reason
        self.state = State.CLOSED
        self._expect.clear()
        if self._tx is not None:
            self._tx.results = [r if r is not None else reason for r in self._tx.results]

    def _handle(self, reply: Reply) -> None:
        if not self._expect:
            self._close(Reply(451, "4.4.2", f"Downstream sent an unexpected reply: {reply}"))
            return
        kind, index = self._expect.popleft()
        if self._tx is not None:
            self._tx.any_reply = True
        if reply.code == 421 and kind is not Expect.QUIT:
            # The server is going away (RFC 5321 §3.8): every unsettled recipient is retried.
            self._close(Reply(451, reply.enhanced or "4.4.2", f"Downstream closing: {reply.text}"))
            return
        handler = getattr(self, f"_on_{kind.name.lower()}")
        handler(reply, index)

    def _on_greeting(self, reply: Reply, _: int) -> None:
        if reply.code != 220:
            self._close(_as_transient(reply, "Downstream refused the connection"))
            return
        self._send(f"LHLO {self.local_name}", Expect.LHLO)

    def _on_lhlo(self, reply: Reply, _: int) -> None:
        if not reply.is_success:
            self._close(_as_transient(reply, "Downstream refused LHLO"))
            return
        for line in reply.lines[1:]:  # the first line is the server's name
            keyword, _sep, value = line.strip().partition(" ")
            self.capabilities[keyword.upper()] = value
        self.state = State.READY

    def _on_mail(self, reply: Reply, _: int) -> None:
        tx = self._tx
        assert tx is not None
        tx.mail_reply = reply
        if not reply.is_success:
            # Every recipient shares the sender's fate; pipelined RCPT/DATA replies (503s)
            # still arrive and are consumed, then RSET.
            tx.results = [reply] * len(tx.results)
            if not self.pipelining:
                self._send("RSET", Expect.RSET)
            return
        if not self.pipelining:
            self._send_next_rcpt(tx)

    def _send_next_rcpt(self, tx: _Transaction) -> None:
        i = tx.pending_rcpt
        if i < len(tx.envelope.recipients):
            tx.pending_rcpt += 1
            self._send(self._rcpt_command(i), Expect.RCPT, i)
        elif tx.accepted:
            self._send("DATA", Expect.DATA)
        else:
            self._send("RSET", Expect.RSET)

    def _on_rcpt(self, reply: Reply, index: int) -> None:
        tx = self._tx
        assert tx is not None
        if tx.mail_reply is not None and tx.mail_reply.is_success:
            if reply.is_success:
                tx.accepted.append(index)
            else:
                tx.results[index] = reply
        if not self.pipelining:
            self._send_next_rcpt(tx)

    def _on_data(self, reply: Reply, _: int) -> None:
        tx = self._tx
        assert tx is not None
        if reply.code == 354 and tx.accepted:
            self._out.extend(tx.body)
            for i in tx.accepted:
                self._expect.append((Expect.DELIVERY, i))
            tx.body = []
            return
        if reply.code == 354:
            # 354 although no recipient was accepted violates RFC 2033 §4.2; we cannot know
            # how many replies would follow an empty body, so the connection is abandoned.
            self._close(Reply(451, "4.4.2", "Downstream accepted DATA without recipients"))
            return
        # 503 when no RCPT was accepted is normal LMTP; any other failure applies to the
        # accepted recipients (for the others their own RCPT reply stands).
        for i in tx.accepted:
            tx.results[i] = reply if not reply.is_success else _unexpected(reply)
        self._send("RSET", Expect.RSET)

    def _on_delivery(self, reply: Reply, index: int) -> None:
        tx = self._tx
        assert tx is not None
        tx.results[index] = reply

    def _on_rset(self, reply: Reply, _: int) -> None:
        if not reply.is_success:
            self._close(_as_transient(reply, "Downstream refused RSET"))

    def _on_quit(self, reply: Reply, _: int) -> None:
        self.state = State.CLOSED


def _as_transient(reply: Reply, what: str) -> Reply:
    """A connection-level refusal must not bounce mail: always a 4xx for our recipients."""
    return Reply(451, "4.4.1", f"{what}: {reply.line()}")


def _unexpected(reply: Reply) -> Reply:
    return Reply(451, "4.4.2", f"Downstream gave an unexpected reply to DATA: {reply.line()}")
