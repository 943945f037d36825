"""What the LMTP server state machine (``lmtp_server.py``) says to the application.

The events :meth:`ServerConnection.next_event` returns, the two signals it returns when it has
none, and the flags that decide what LHLO announces. Frozen dataclasses, no behaviour.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .reply import Reply
from .smtp_syntax import MailParams, RcptParams


class Signal(enum.Enum):
    NEED_DATA = "need data"  # feed receive_data()
    PAUSED = "paused"  # the app must act first (accept/reject, send_data_replies) or closed


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


class CloseReason(enum.Enum):
    QUIT = "quit"
    EOF = "eof"  # the client closed (mid-DATA: the message is abandoned)
    SHUTDOWN = "shutdown"  # shutdown(), or the app answered 421
    ERRORS = "errors"  # too many unknown commands


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What LHLO announces beyond PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME and SIZE."""

    smtputf8: bool = False  # RFC 6531: UTF-8 addresses, with MAIL ... SMTPUTF8
    dsn: bool = False  # RFC 3461: RET, ENVID, NOTIFY, ORCPT (announce only if passed on)


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    params: RcptParams


@dataclass(frozen=True, slots=True)
class Lhlo:
    name: str  # as the client gave it (already answered)


@dataclass(frozen=True, slots=True)
class Mail:
    sender: str  # "" is the null sender of bounces
    params: MailParams


@dataclass(frozen=True, slots=True)
class Rcpt:
    address: str  # as written, route dropped; never lower-cased here
    params: RcptParams


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """The app must answer with send_data_replies(), one Reply per recipient."""

    sender: str
    mail_params: MailParams
    recipients: tuple[Recipient, ...]  # the accepted ones, in RCPT order
    data: bytes  # dot-unstuffed, line endings as received


@dataclass(frozen=True, slots=True)
class MessageRefused:
    """Too big or a line too long: one `reply` per recipient is already queued."""

    sender: str
    mail_params: MailParams
    recipients: tuple[Recipient, ...]
    reply: Reply


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class CommandRefused:
    """A command the machine refused by itself (already answered); for logging."""

    command: str  # the verb, upper-cased ("" if unreadable)
    reply: Reply


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Write what data_to_send() holds, then close the socket."""

    reason: CloseReason


Event = (Lhlo | Mail | Rcpt | MessageReceived | MessageRefused | Rset | CommandRefused
         | ConnectionClosed)
