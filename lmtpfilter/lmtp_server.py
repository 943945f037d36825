"""The LMTP server protocol (RFC 2033) as a pure state machine: bytes in, events out, no sockets.

In the style of h11 and of our client side (``lmtp_protocol.py``): :class:`ServerConnection`
is fed what the client sent (``receive_data``), hands out events (``next_event``, the events
are in ``lmtp_events.py`` and re-exported here) and says what to send back
(``data_to_send``). The asyncio adapter only moves bytes, applies timeouts and runs the
pipeline. All the LMTP server rules live here:

* the greeting, LHLO with PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME, SIZE and, if the app
  asks, SMTPUTF8 and DSN; HELO and EHLO are not LMTP (RFC 2033 §4.1);
* NOOP, RSET, QUIT, HELP, VRFY (252), EXPN (502), unknown commands, syntax errors, bad
  sequences (503) and over-long command lines are answered here. The app decides MAIL and
  RCPT (:meth:`~ServerConnection.accept` / :meth:`~ServerConnection.reject`); paths and
  parameters are parsed in ``smtp_syntax.py``;
* every 2xx/4xx/5xx reply but the greeting and LHLO's has an enhanced status code (RFC 2034);
* after ``354`` the message is read in large pieces up to CRLF.CRLF (never line by line), dot-
  unstuffed (RFC 5321 §4.5.2); bare LF is kept as content, and only CRLF.CRLF ends it;
* a message over the size limit (RFC 1870), with a header section over its own limit or
  with a line over 998 octets (RFC 5321 §4.5.3.1.6) is refused after the terminator; past a
  limit it is discarded while read, so memory stays bounded however big it is;
* past ``max_recipients`` accepted RCPTs, RCPT gets 452 4.5.3 (RFC 5321 §4.5.3.1.10);
* after the final dot there is exactly one reply per accepted RCPT, in RCPT order, on every
  path (RFC 2033 §4.2); DATA without an accepted RCPT is 503 (RFC 2033 §4.2);
* while the app processes a message nothing more is read: pipelined commands wait in the
  buffer until :meth:`~ServerConnection.send_data_replies` (RFC 2920 batching otherwise:
  replies to buffered commands pile up until the adapter calls ``data_to_send``).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from .lmtp_events import (
    NEED_DATA,
    PAUSED,
    Capabilities,
    CloseReason,
    CommandRefused,
    ConnectionClosed,
    Event,
    Lhlo,
    Mail,
    MessageReceived,
    MessageRefused,
    Rcpt,
    Recipient,
    Rset,
    Signal,
)
from .reply import LINE_TOO_LONG, SHUTTING_DOWN, SIZE_EXCEEDED, Reply
from .smtp_syntax import (
    BadCommand,
    BadPath,
    MailParams,
    PathTooLong,
    RcptParams,
    SyntaxProblem,
    UnsupportedParameter,
    parse_mail_params,
    parse_path,
    parse_rcpt_params,
)

__all__ = [  # the whole API, events included, from this one module
    "NEED_DATA", "PAUSED", "Capabilities", "CloseReason", "CommandRefused", "ConnectionClosed",
    "Event", "Lhlo", "Mail", "MailParams", "MessageReceived", "MessageRefused", "Rcpt",
    "RcptParams", "Recipient", "Rset", "ServerConnection", "Signal", "State", "has_long_line",
]

MAX_LINE = 998  # message line, octets without CRLF (RFC 5321 §4.5.3.1.6)
MAX_COMMAND = 512  # command line, octets without its line ending (as aiosmtpd had it)
# MAIL and RCPT grow with the path and the parameters of SIZE, BODY, SMTPUTF8 and DSN
# (RFC 5321 §4.5.3.1.4 lets extensions lengthen them); 2048 is Postfix's line_length_limit.
MAX_TRANSACTION_COMMAND = 2048
MAX_REPLY = 510  # reply line, octets without CRLF (RFC 5321 §4.5.3.1.5)
MAX_UNKNOWN = 5  # unknown commands before the connection is closed (as aiosmtpd did)
MAX_RECIPIENTS = 1000  # RFC 5321 §4.5.3.1.8 asks for at least 100
BASIC = Capabilities()  # neither SMTPUTF8 nor DSN

MAIL_OK = Reply(250, "2.1.0", "Ok")
RCPT_OK = Reply(250, "2.1.5", "Ok")
OK = Reply(250, "2.0.0", "Ok")
BYE = Reply(221, "2.0.0", "Bye")
HELP_REPLY = Reply(214, "2.0.0", "Commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP")
BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
UNKNOWN = Reply(500, "5.5.2", "Error: command not recognized")
TOO_MANY_UNKNOWN = Reply(502, "5.5.1", "Too many unrecognized commands, goodbye")
NOT_LMTP = Reply(500, "5.5.2", "Error: this is LMTP, say LHLO")  # RFC 2033 §4.1
COMMAND_TOO_LONG = Reply(500, "5.5.2", "Error: command line too long")
NUL_IN_COMMAND = Reply(500, "5.5.2", "Error: NUL character in command")
CR_IN_COMMAND = Reply(500, "5.5.2", "Error: bare CR in command")
EIGHT_BIT = Reply(500, "5.5.2", "Error: 8-bit characters in command (no SMTPUTF8)")
BAD_UTF8 = Reply(500, "5.5.2", "Error: invalid UTF-8 in command")
NEED_LHLO = Reply(503, "5.5.1", "Error: send LHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")  # RFC 2033 §4.2
TOO_MANY_RCPTS = Reply(452, "4.5.3", "Error: too many recipients")  # RFC 5321 §4.5.3.1.10
SIZE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
# 552 5.3.4 rather than 554 5.6.0: the header section is well-formed, only too big for us, as a
# message over max_message_size is (RFC 3463 5.3.4 "too big for system"); 5xx because sending
# it again cannot help, and one code for both size limits is what senders' MTAs expect.
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header section too big for system")


class State(enum.Enum):
    COMMAND = "command"  # reading commands
    DATA = "data"  # reading a message after 354
    ANSWER = "answer"  # waiting for accept() or reject() of a Mail or Rcpt event
    DELIVERY = "delivery"  # waiting for send_data_replies() after MessageReceived
    CLOSED = "closed"


@dataclass
class _Transaction:
    sender: str
    params: MailParams
    recipients: list[Recipient]


@dataclass
class _Body:
    """Progress through one message."""

    scanned: int = 0  # bytes of the buffer already searched for the terminator
    dots: int = 0  # "\r\n." seen in them: dots that unstuffing will remove
    oversized: bool = False  # past a limit: read to the terminator, keep nothing
    refusal: Reply | None = None  # why, once oversized
    header_scanned: int = 0  # bytes already searched for the empty line ending the header
    header_done: bool = False  # the header section ended within its limit (or no limit)


class ServerConnection:
    """One LMTP server connection, without I/O (see the module docstring)."""

    def __init__(self, hostname: str, *, max_message_size: int,
                 capabilities: Capabilities = BASIC,
                 max_recipients: int = MAX_RECIPIENTS, max_header_size: int = 0) -> None:
        if max_message_size < 1 or max_recipients < 1 or max_header_size < 0:
            raise ValueError("max_message_size and max_recipients must be positive, "
                             "max_header_size not negative")
        self.hostname = hostname
        self.max_message_size = max_message_size
        # 0: only max_message_size applies. A limit that is not below it is moot, and off,
        # so that one message over both always gets the same reply however it was read.
        self.max_header_size = max_header_size if max_header_size < max_message_size else 0
        self.capabilities = capabilities
        self.max_recipients = max_recipients
        self.state = State.COMMAND
        self.client_name: str | None = None  # the LHLO argument, once given
        self._buf = bytearray()
        self._out: list[bytes] = [f"220 {hostname} LMTP ready\r\n".encode()]
        self._events: deque[Event] = deque()
        self._eof = False
        self._skipping: str | None = None  # the verb of a command line that is too long
        self._unknown = 0
        self._tx: _Transaction | None = None
        self._pending: Mail | Rcpt | None = None
        self._body = _Body()

    # ---- input and output ---------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the client; b"" means it closed its side (EOF)."""
        if self.state is State.CLOSED or self._eof:
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    def data_to_send(self) -> bytes:
        """Every reply queued so far, in order, for one write."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def idle(self) -> bool:
        """Between transactions and waiting for nothing: safe to say 421 and close."""
        return self.state is State.COMMAND and self._tx is None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet processed (to pause reading while the app works)."""
        return len(self._buf)

    def shutdown(self, reply: Reply = SHUTTING_DOWN) -> None:
        """Queue `reply` (a 421) and close, whatever the state; pending work is dropped."""
        if self.state is not State.CLOSED:
            self._send(reply)
            self._events.append(self._close(CloseReason.SHUTDOWN))

    # ---- events ---------------------------------------------------------------------------
    def next_event(self) -> Event | Signal:
        """The next event, or NEED_DATA (feed more bytes) or PAUSED (the app must act)."""
        if self._events:
            return self._events.popleft()
        while True:
            if self.state is State.COMMAND:
                event = self._next_command()
            elif self.state is State.DATA:
                event = self._read_body()
            else:
                return PAUSED
            if event is not None:
                return event

    def accept(self, reply: Reply | None = None) -> None:
        """Accept the pending Mail or Rcpt event (default: 250 2.1.0 / 250 2.1.5 Ok)."""
        if reply is not None and not reply.is_success:
            raise ValueError(f"accept() needs a 2xx reply, not {reply.code}")
        pending = self._take_pending()
        if pending is None:
            return
        if isinstance(pending, Mail):
            self._tx = _Transaction(pending.sender, pending.params, [])
        else:
            assert self._tx is not None
            self._tx.recipients.append(Recipient(pending.address, pending.params))
        self._send(reply or (MAIL_OK if isinstance(pending, Mail) else RCPT_OK))

    def reject(self, reply: Reply) -> None:
        """Refuse the pending Mail or Rcpt event; a 421 also closes the connection."""
        if not 400 <= reply.code < 600:
            raise ValueError(f"reject() needs a 4xx or 5xx reply, not {reply.code}")
        if self._take_pending() is None:
            return
        self._send(reply)
        if reply.code == 421:
            self._events.append(self._close(CloseReason.SHUTDOWN))

    def send_data_replies(self, replies: Sequence[Reply]) -> None:
        """Answer MessageReceived: exactly one reply per accepted recipient, in RCPT order."""
        if self.state is State.CLOSED:
            return
        if self.state is not State.DELIVERY or self._tx is None:
            raise RuntimeError("send_data_replies() without a MessageReceived to answer")
        if len(replies) != len(self._tx.recipients):
            raise ValueError(f"{len(replies)} replies for {len(self._tx.recipients)} recipients")
        if any(not (200 <= r.code < 300 or 400 <= r.code < 600) for r in replies):
            raise ValueError("a data reply must be 2xx, 4xx or 5xx")
        for reply in replies:
            self._send(reply)
        self._tx = None
        self.state = State.COMMAND

    def _take_pending(self) -> Mail | Rcpt | None:
        if self.state is State.CLOSED:
            return None
        if self.state is not State.ANSWER or self._pending is None:
            raise RuntimeError("no Mail or Rcpt event is waiting for an answer")
        pending, self._pending = self._pending, None
        self.state = State.COMMAND
        return pending

    # ---- replies --------------------------------------------------------------------------
    def _send(self, reply: Reply) -> None:
        line = reply.line().encode("utf-8" if self.capabilities.smtputf8 else "ascii", "replace")
        if len(line) > MAX_REPLY:
            line = line[:MAX_REPLY].decode("utf-8", "ignore").encode()
        self._out.append(line + b"\r\n")

    def _refuse(self, command: str, reply: Reply) -> CommandRefused:
        self._send(reply)
        return CommandRefused(command, reply)

    def _close(self, reason: CloseReason) -> ConnectionClosed:
        self.state = State.CLOSED
        self._buf.clear()
        self._tx = self._pending = None
        return ConnectionClosed(reason)

    # ---- commands -------------------------------------------------------------------------
    def _next_command(self) -> Event | Signal | None:
        buf = self._buf
        end = buf.find(b"\n")
        if end < 0:
            if self._skipping is None and len(buf) > MAX_TRANSACTION_COMMAND:
                self._skipping = _verb(buf[:16])
            if self._skipping is not None:
                buf.clear()  # no need to keep it: it is refused at its end
            return self._close(CloseReason.EOF) if self._eof else NEED_DATA
        line = bytes(buf[: end - 1 if end and buf[end - 1] == 13 else end])
        del buf[: end + 1]
        if self._skipping is not None:
            verb, self._skipping = self._skipping, None
            return self._refuse(verb, COMMAND_TOO_LONG)
        return self._command(line)

    def _command(self, line: bytes) -> Event | None:
        verb = _verb(line[:16])
        limit = MAX_TRANSACTION_COMMAND if verb in ("MAIL", "RCPT") else MAX_COMMAND
        if len(line) > limit:
            return self._refuse(verb, COMMAND_TOO_LONG)
        if b"\0" in line:
            return self._refuse(verb, NUL_IN_COMMAND)
        if b"\r" in line:
            return self._refuse(verb, CR_IN_COMMAND)
        if not line.isascii():
            if not self.capabilities.smtputf8:
                return self._refuse(verb, EIGHT_BIT)
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                return self._refuse(verb, BAD_UTF8)
        else:
            text = line.decode("ascii")
        arg = text.partition(" ")[2].strip(" \t")
        if not line:
            return self._refuse(verb, BAD_SYNTAX)
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._unknown += 1
            if self._unknown >= MAX_UNKNOWN:
                self._events.append(self._close(CloseReason.ERRORS))
                return self._refuse(verb, TOO_MANY_UNKNOWN)
            return self._refuse(verb, UNKNOWN)
        return handler(self, arg)

    def _lhlo(self, arg: str) -> Event | None:
        if not arg:
            return self._refuse("LHLO", Reply(501, "5.5.4", "Syntax: LHLO hostname"))
        self._tx = None  # LHLO resets the transaction (RFC 5321 §4.1.4)
        self.client_name = arg
        lines = [self.hostname, "PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME",
                 f"SIZE {self.max_message_size}"]
        lines += ["SMTPUTF8"] * self.capabilities.smtputf8 + ["DSN"] * self.capabilities.dsn
        self._out.append("".join(f"250-{x}\r\n" for x in lines[:-1]).encode()
                         + f"250 {lines[-1]}\r\n".encode())
        return Lhlo(arg)

    def _mail(self, arg: str) -> Event | None:
        if self.client_name is None:
            return self._refuse("MAIL", NEED_LHLO)
        if self._tx is not None:
            return self._refuse("MAIL", NESTED_MAIL)
        caps = self.capabilities
        try:
            sender, rest = parse_path(_after(arg, "FROM:"), utf8=caps.smtputf8, null=True,
                                      postmaster=False)
            params = parse_mail_params(rest, smtputf8=caps.smtputf8, dsn=caps.dsn)
        except SyntaxProblem as exc:
            return self._refuse("MAIL", _syntax_reply(exc, "5.1.7", "sender", "MAIL FROM"))
        if params.size is not None and params.size > self.max_message_size:
            return self._refuse("MAIL", SIZE_TOO_BIG)
        if not sender.isascii() and not params.smtputf8:  # RFC 6531 §3.5
            return self._refuse("MAIL", Reply(
                550, "5.6.7", "Non-ASCII addresses not permitted for that sender"))
        return self._ask(Mail(sender, params))

    def _rcpt(self, arg: str) -> Event | None:
        if self.client_name is None:
            return self._refuse("RCPT", NEED_LHLO)
        if self._tx is None:
            return self._refuse("RCPT", NEED_MAIL)
        if len(self._tx.recipients) >= self.max_recipients:
            return self._refuse("RCPT", TOO_MANY_RCPTS)
        utf8 = self.capabilities.smtputf8
        try:
            address, rest = parse_path(_after(arg, "TO:"), utf8=utf8, null=False,
                                       postmaster=True)
            params = parse_rcpt_params(rest, dsn=self.capabilities.dsn,
                                       utf8=utf8 and self._tx.params.smtputf8)
        except SyntaxProblem as exc:
            return self._refuse("RCPT", _syntax_reply(exc, "5.1.3", "recipient", "RCPT TO"))
        if not address.isascii() and not self._tx.params.smtputf8:  # RFC 6531 §3.5
            return self._refuse("RCPT", Reply(
                553, "5.6.7", "Non-ASCII addresses not permitted for that recipient"))
        return self._ask(Rcpt(address, params))

    def _ask(self, event: Mail | Rcpt) -> Event:
        self._pending = event
        self.state = State.ANSWER
        return event

    def _data(self, arg: str) -> Event | None:
        if self.client_name is None:
            return self._refuse("DATA", NEED_LHLO)
        if self._tx is None:
            return self._refuse("DATA", NEED_MAIL)
        if not self._tx.recipients:
            return self._refuse("DATA", NEED_RCPT)
        if arg:
            return self._refuse("DATA", Reply(501, "5.5.4", "Syntax: DATA"))
        self._out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        self.state = State.DATA
        self._body = _Body(header_done=not self.max_header_size)
        return None

    def _rset(self, arg: str) -> Event | None:
        if arg:
            return self._refuse("RSET", Reply(501, "5.5.4", "Syntax: RSET"))
        self._tx = None
        self._send(OK)
        return Rset()

    def _quit(self, arg: str) -> Event | None:
        if arg:
            return self._refuse("QUIT", Reply(501, "5.5.4", "Syntax: QUIT"))
        self._send(BYE)
        return self._close(CloseReason.QUIT)

    def _fixed(self, arg: str, verb: str) -> Event | None:
        """NOOP, HELP, VRFY, EXPN, HELO, EHLO: a reply that depends on nothing."""
        if verb == "VRFY" and not arg:
            return self._refuse(verb, Reply(501, "5.5.4", "Syntax: VRFY <address>"))
        reply = _FIXED[verb]
        if reply.is_success:
            self._send(reply)
            return None
        return self._refuse(verb, reply)

    # ---- the message ----------------------------------------------------------------------
    def _read_body(self) -> Event | Signal:
        buf, body = self._buf, self._body
        if not body.oversized and buf.startswith(b".\r\n"):  # an empty message
            return self._end_of_body(0, 3)
        end = buf.find(b"\r\n.\r\n", max(0, body.scanned - 4))
        if end >= 0:
            return self._end_of_body(end + 2, end + 5)
        if not body.oversized and not body.header_done:
            self._check_header(buf, body)
        if not body.oversized:
            # A lower bound of the unstuffed size: every "\r\n." loses its dot (it cannot
            # overlap itself, so count only the new ones), and the last two bytes may be the
            # terminator's ".\r". Past the limit for sure: stop keeping the message.
            body.dots += buf.count(b"\r\n.", max(0, body.scanned - 2))
            size = len(buf) - 2 - body.dots - buf.startswith(b".")
            if size > self.max_message_size:
                body.oversized, body.refusal = True, SIZE_EXCEEDED
        if body.oversized and len(buf) > 4:
            del buf[:-4]  # keep only what may be the start of the terminator
        body.scanned = len(buf)
        return self._close(CloseReason.EOF) if self._eof else NEED_DATA

    def _check_header(self, buf: bytearray, body: _Body) -> None:
        """Look for the end of the header section in what came since the last look; past
        max_header_size octets without it, the message is refused and no longer kept.

        The search runs on the stuffed bytes (a stuffed dot is one octet more, harmless) and
        takes an empty line after CRLF or a bare LF, so that a bare-LF message is not refused.
        """
        limit = self.max_header_size
        if buf.startswith((b"\r\n", b"\n")):  # no header at all
            body.header_done = True
            return
        start = max(0, body.header_scanned - 2)
        # An empty line at p (after the LF at p - 1) within the limit: p - 1 < limit.
        for sep in (b"\n\r\n", b"\n\n"):
            if buf.find(sep, start, limit + len(sep) - 1) >= 0:
                body.header_done = True
                return
        body.header_scanned = min(len(buf), limit + 2)
        # Past the limit and no empty line in it. The final dot may still be in the bytes
        # after the limit (a message that is all header): that too is a header over it.
        if len(buf) > limit + 2:
            body.oversized, body.refusal = True, HEADER_TOO_BIG

    def _end_of_body(self, body_end: int, term_end: int) -> Event:
        tx = self._tx
        assert tx is not None
        buf = self._buf
        refusal = self._body.refusal
        data = b""
        if not self._body.oversized and self._header_too_big(buf, body_end):
            refusal = HEADER_TOO_BIG
        elif not self._body.oversized:
            start = 1 if body_end and buf.startswith(b".") else 0  # RFC 5321 §4.5.2
            with memoryview(buf) as view, view[start:body_end] as part:
                data = bytes(part)
            if b"\r\n." in data:
                data = data.replace(b"\r\n.", b"\r\n")
            refusal = (SIZE_EXCEEDED if len(data) > self.max_message_size
                       else LINE_TOO_LONG if has_long_line(data) else None)
        del buf[:term_end]  # what follows is pipelined commands
        recipients = tuple(tx.recipients)
        if refusal is None:
            self.state = State.DELIVERY
            return MessageReceived(tx.sender, tx.params, recipients, data)
        for _ in recipients:
            self._send(refusal)
        self._tx = None
        self.state = State.COMMAND
        return MessageRefused(tx.sender, tx.params, recipients, refusal)

    def _header_too_big(self, buf: bytearray, end: int) -> bool:
        """The check of _check_header on the whole message, buf[:end] as received (it may
        end in the same piece of input that began it, before _read_body looked). The header
        limit is below the size limit, so a message over both gets this reply either way."""
        limit = self.max_header_size
        if not limit or end <= limit or buf.startswith((b"\r\n", b"\n")):
            return False
        return all(buf.find(sep, 0, min(end, limit + len(sep) - 1)) < 0
                   for sep in (b"\n\r\n", b"\n\n"))


_FIXED = {
    "NOOP": OK, "HELP": HELP_REPLY, "HELO": NOT_LMTP, "EHLO": NOT_LMTP,
    "VRFY": Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"),
    "EXPN": Reply(502, "5.5.1", "EXPN not implemented"),
}
_HANDLERS: dict[str, Callable[[ServerConnection, str], Event | None]] = {
    "LHLO": ServerConnection._lhlo, "MAIL": ServerConnection._mail,
    "RCPT": ServerConnection._rcpt, "DATA": ServerConnection._data,
    "RSET": ServerConnection._rset, "QUIT": ServerConnection._quit,
    **{verb: partial(ServerConnection._fixed, verb=verb) for verb in _FIXED},
}


def _verb(start: bytes | bytearray) -> str:
    """The command verb, upper-cased, from the start of a line; "" if it is not one."""
    verb = bytes(start).partition(b" ")[0]
    return verb.upper().decode() if verb.isalpha() and verb.isascii() and len(verb) < 16 else ""


def _after(arg: str, keyword: str) -> str:
    """The rest of a MAIL or RCPT argument after FROM: or TO:, any case."""
    if arg[: len(keyword)].upper() != keyword:
        raise BadCommand(f"expected {keyword}")
    return arg[len(keyword):]


def _syntax_reply(exc: SyntaxProblem, address_code: str, who: str, form: str) -> Reply:
    if isinstance(exc, BadPath):
        return Reply(553, address_code, f"Bad {who} address syntax")
    if isinstance(exc, PathTooLong):
        return Reply(501, address_code, f"The {who} path is too long")
    if isinstance(exc, UnsupportedParameter):
        return Reply(555, "5.5.4", _sentence(exc))
    if isinstance(exc, BadCommand):
        return Reply(501, "5.5.4", f"Syntax: {form}:<address> [parameters]")
    return Reply(501, "5.5.4", _sentence(exc))


def _sentence(exc: SyntaxProblem) -> str:
    text = str(exc)
    return text[:1].upper() + text[1:]


def has_long_line(data: bytes) -> bool:
    """True if a line is over 998 octets, not counting its CRLF (or bare LF).

    C-speed without splitting: a line of 999 octets or more contains an LF-free window of 500
    octets at any 500-octet step from its start, so only such windows are looked at closely.
    """
    size = len(data)
    if size <= MAX_LINE:
        return False
    step = (MAX_LINE + 2) // 2  # 2 * step - 1 <= MAX_LINE + 1
    find, pos = data.find, 0
    while pos < size:
        if find(b"\n", pos, pos + step) >= 0:
            pos += step
            continue
        start = data.rfind(b"\n", 0, pos) + 1
        end = find(b"\n", pos)
        if end < 0:
            end = size
        if end - start - (data[end - 1: end] == b"\r") > MAX_LINE:
            return True
        pos = end + 1
    return False
