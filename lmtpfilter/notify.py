"""Notifications about quarantined messages, through an outbox in the database.

The filter only *enqueues* a notification, in the same transaction as the quarantine row; a
background task sends the outbox over SMTP to ``[notify].smtp`` and retries with backoff when
the MTA is unavailable. So a notification can never delay or fail mail delivery, and none is
lost when the MTA is down. Templates are plain files (``Subject:`` line, blank line, body) with
``${name}`` placeholders; ``[notify].templates`` points to a directory of your own versions.

Each notification is a proper SMTP message (RFC 5321 §2.3.8, §4.5.3.1.6; RFC 5322 §2.1.1): CRLF
line endings only, lines of at most 998 octets, Date, Message-ID and ``Auto-Submitted:
auto-generated`` (RFC 3834 §5), so strict MTAs (Postfix ``smtpd_forbid_bare_newline = yes``)
take it. Every kind goes out with the null sender (see :data:`NULL_SENDER`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.policy
import functools
import logging
import re
import smtplib
import string
import time
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .config import NotifyConfig
from .store import Notification, QuarantineRecord, Store, utcnow

if TYPE_CHECKING:
    from .web.links import ReleaseLinks

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 30
BATCH = 20

# The envelope sender of every notification. The admin and recipient notices are about someone
# else's mail, and the sender notice is a non-delivery report: all are sent with the null
# reverse-path (RFC 5321 §4.5.5, RFC 3834 §3.3), so that one that bounces cannot loop back.
NULL_SENDER = ""

# Building: quoted-printable lines of at most 76 characters (RFC 2045 §6.7). On the wire: CRLF,
# header fields folded at 78 (RFC 5322 §2.1.1), non-ASCII text encoded (RFC 2047, QP).
_BUILD_POLICY = email.policy.SMTP.clone(max_line_length=76)
_WIRE_POLICY = email.policy.SMTP.clone(cte_type="7bit")
MAX_LINE = 998  # octets without the CRLF (RFC 5321 §4.5.3.1.6, RFC 5322 §2.1.1)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+")
_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")


def backoff(attempts: int, interval: float) -> dt.timedelta:
    """Six intervals, then doubling (30 s, 1 min, 2 min... with the default 5 s), up to 1 h."""
    return dt.timedelta(seconds=min(3600.0, 6 * interval * 2 ** max(0, attempts - 1)))


# The recipient notice's ${release_link}: a link when [web] makes them, else the way it was
# before there were links. A template of the admin's own without the placeholder keeps its
# own wording.
RELEASE_LINK_TEXT = (
    "To release it to yourself, open:\n"
    "{url}\n"
    "(valid until {until}; it works once).\n"
    "\n"
    "If the link does not work, ask your mail administrator ({admin}), quoting the\n"
    "quarantine ID above.")
ASK_ADMIN_TEXT = (
    "If you believe this is a mistake, ask your mail administrator ({admin}) to release it,\n"
    "quoting the quarantine ID above.")


class Notifications:
    def __init__(self, config: NotifyConfig, hostname: str,
                 links: ReleaseLinks | None = None) -> None:
        self.config = config
        self.hostname = hostname
        self.links = links  # release links in recipient notices ([web] base_url and key)

    @property
    def enabled(self) -> bool:
        return self.config.smtp is not None

    def template(self, name: str) -> string.Template:
        if self.config.templates is not None:
            custom = Path(self.config.templates) / f"{name}.txt"
            if custom.exists():
                return string.Template(custom.read_text(encoding="utf-8"))
        text = resources.files("lmtpfilter").joinpath("templates", f"{name}.txt")
        return string.Template(text.read_text(encoding="utf-8"))

    def sender_address(self) -> str:
        sender = self.config.from_
        return sender if "@" in sender else f"{sender}@{self.hostname}"

    def render(self, name: str, to: str, values: dict[str, str],
               paragraphs: Mapping[str, str] | None = None) -> str:
        """A complete message, CRLF line endings: the template's Subject line and body, our
        headers. A value cannot add a line or a header: its control characters become
        spaces (a decoded Subject may hold a CR or LF). `paragraphs` are texts of ours, put in
        with their line breaks (their own values were made safe by their maker)."""
        safe = {key: _CONTROL.sub(" ", value) for key, value in values.items()}
        text = self.template(name).safe_substitute({**safe, **(paragraphs or {})})
        first, _, body = text.partition("\n")
        subject = first[len("Subject:"):].strip() if first.lower().startswith("subject:") \
            else "lmtpfilter notification"
        msg = EmailMessage(policy=_BUILD_POLICY)
        msg["From"] = self.sender_address()
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = format_datetime(dt.datetime.now(dt.UTC))
        msg["Message-ID"] = make_msgid(domain=self.hostname)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no auto-replies to this
        body = body.lstrip("\r\n")  # the blank line after Subject, whatever its ending
        msg.set_content(body, cte=_transfer_encoding(body))
        # A non-ASCII address cannot be RFC 2047-encoded: it needs SMTPUTF8 (RFC 6532 §3.2).
        utf8 = not (to.isascii() and self.sender_address().isascii())
        return msg.as_string(policy=_WIRE_POLICY.clone(utf8=utf8))

    def enqueue_quarantine(self, session: Session, record: QuarantineRecord,
                           recipients: list[str]) -> None:
        """The notices of a quarantined message; `recipients` are those it was withheld
        from (a copy quarantined of a message delivered anyway tells only the admin)."""
        if not self.enabled:
            return
        sender = _mailbox(record.sender)
        values = {
            "id": record.id, "sender": sender or "(null sender)",
            "recipients": ", ".join(recipients), "subject": record.subject or "(none)",
            "reason": record.reason, "detail": record.detail,
            "virus": record.detail if record.reason == "virus" else "",
            "date": format_datetime(record.created_at), "hostname": self.hostname,
            "admin": ", ".join(self.config.admin) or "postmaster",
        }
        now = utcnow()
        wanted: list[tuple[str, str]] = []
        if record.reason == "virus":
            wanted += [("admin-virus", a) for a in self.config.admin]
        if self.config.recipient:
            wanted += [("recipient", r) for r in recipients]
        if self.config.sender and sender and recipients:
            wanted.append(("sender", sender))
        for kind, to in wanted:
            paragraphs = ({"release_link": self.release_paragraph(record, to, values["admin"])}
                          if kind == "recipient" else None)
            session.add(Notification(created_at=now, kind=kind, to_address=to,
                                     message=self.render(kind, to, values, paragraphs),
                                     attempts=0, next_attempt_at=now, last_error=""))

    def release_paragraph(self, record: QuarantineRecord, to: str, admin: str) -> str:
        """The recipient notice's ${release_link}: a link for this recipient only (each gets
        their own, since a link releases to the recipient it names), or the way to ask the
        admin. No link for a virus: only an admin releases one (the web page refuses too)."""
        admin = _CONTROL.sub(" ", admin)
        if self.links is None or record.reason == "virus":
            return ASK_ADMIN_TEXT.format(admin=admin)
        now = time.time()
        try:
            url = self.links.make(record.id, to, now)
        except ValueError:  # an address no link can carry (e.g. one with a space in quotes)
            return ASK_ADMIN_TEXT.format(admin=admin)
        until = format_datetime(dt.datetime.fromtimestamp(self.links.expiry(now), dt.UTC))
        return RELEASE_LINK_TEXT.format(url=url, until=until, admin=admin)


def _mailbox(sender: str) -> str:
    """The envelope sender without brackets; "" for the null sender ("<>" or "")."""
    return sender.removeprefix("<").removesuffix(">")


def _transfer_encoding(body: str) -> str:
    """7bit for plain ASCII in lines of at most 998 octets (readable as is); otherwise
    quoted-printable, which keeps every line short (RFC 2045 §6.7)."""
    if body.isascii() and all(len(line) <= MAX_LINE for line in body.splitlines()):
        return "7bit"
    return "quoted-printable"


def wire_bytes(message: str) -> bytes:
    """The message as SMTP sends it: every line ending CRLF (RFC 5321 §2.3.8). Also mends
    rows enqueued by older versions with bare LF."""
    return _ANY_LINE_END.sub(b"\r\n", message.encode("utf-8"))


def mail_options(to: str, wire: bytes) -> list[str]:
    """MAIL FROM parameters: SMTPUTF8 for a non-ASCII address, in the envelope or the header
    (RFC 6531 §3.4); 8BITMIME for 8-bit content (RFC 6152: only rows enqueued by older
    versions have any, new bodies are 7-bit)."""
    header = wire.partition(b"\r\n\r\n")[0]
    if not (to.isascii() and header.isascii()):
        return ["SMTPUTF8", "BODY=8BITMIME"]
    return [] if wire.isascii() else ["BODY=8BITMIME"]


class Outbox:
    """Sends due notifications; runs as a background task of `serve`."""

    def __init__(self, store: Store, config: NotifyConfig, interval: float = 5.0,
                 hostname: str = "localhost") -> None:
        self.store = store
        self.config = config
        self.interval = interval
        self.hostname = hostname  # our EHLO name (RFC 5321 §4.1.1.1: the client's FQDN)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.send_due()
            except Exception:
                log.exception("notification outbox: pass failed")
            await asyncio.sleep(self.interval)

    async def send_due(self) -> int:
        """One pass: claim due notifications, send them, record the outcome."""
        if self.config.smtp is None:
            return 0
        claimed = await self.store.run(_claim)
        sent = 0
        for note_id, to, message, attempts in claimed:
            error = await asyncio.to_thread(self._send, to, message)
            await self.store.run(functools.partial(_done, note_id=note_id, error=error,
                                                   attempts=attempts,
                                                   retry_in=backoff(attempts + 1,
                                                                    self.interval)))
            if error:
                log.warning("notification %d to <%s> failed (attempt %d): %s",
                            note_id, to, attempts + 1, error)
            else:
                sent += 1
        return sent

    def _send(self, to: str, message: str) -> str:
        smtp = self.config.smtp
        assert smtp is not None
        wire = wire_bytes(message)
        try:
            with smtplib.SMTP(smtp.host, smtp.port, timeout=30,
                              local_hostname=self.hostname) as client:
                client.sendmail(NULL_SENDER, [to], wire, mail_options=mail_options(to, wire))
            return ""
        except (OSError, smtplib.SMTPException, UnicodeError) as exc:
            return str(exc) or exc.__class__.__name__


LEASE = dt.timedelta(minutes=10)  # a claimed row's next attempt: if its sender dies, retried then


def _claim(session: Session) -> list[tuple[int, str, str, int]]:
    """Take due rows, pushing their next attempt ahead (the lease) in the same transaction so
    that another Outbox, in this process or on another host, does not send them too.

    PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so concurrent claimers take disjoint rows
    without waiting on each other. SQLite has no row locks (its write transactions, BEGIN
    IMMEDIATE, are serialised anyway): a row is claimed by an update conditional on the due
    date read, which a claimer that got there first has changed."""
    now = utcnow()
    due = (select(Notification.id, Notification.to_address, Notification.message,
                  Notification.attempts, Notification.next_attempt_at)
           .where(Notification.sent_at.is_(None), Notification.next_attempt_at <= now,
                  Notification.attempts < MAX_ATTEMPTS)
           .order_by(Notification.next_attempt_at).limit(BATCH))
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(due.with_for_update(skip_locked=True)).all()
        ids = [note_id for note_id, *_ in rows]
        if ids:
            session.execute(update(Notification).where(Notification.id.in_(ids))
                            .values(next_attempt_at=now + LEASE))
        return [(note_id, to, message, attempts) for note_id, to, message, attempts, _ in rows]
    claimed = []
    for note_id, to, message, attempts, when in session.execute(due).all():
        moved = session.execute(
            update(Notification).where(Notification.id == note_id,
                                       Notification.next_attempt_at == when)
            .values(next_attempt_at=now + LEASE))
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append((note_id, to, message, attempts))
    return claimed


def _done(session: Session, note_id: int, error: str, attempts: int,
          retry_in: dt.timedelta) -> None:
    now = utcnow()
    values: dict[str, object] = {"attempts": attempts + 1, "last_error": error[:1000]}
    if error:
        values["next_attempt_at"] = now + retry_in
    else:
        values["sent_at"] = now
    session.execute(update(Notification).where(Notification.id == note_id).values(**values))
