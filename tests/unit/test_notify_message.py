"""Notifications are proper SMTP messages: CRLF only, lines of at most 998 octets, Date,
Message-ID and Auto-Submitted, and the null sender (RFC 5321 §2.3.8, §4.5.3.1.6, §4.5.5;
RFC 5322 §2.1.1, §3.6; RFC 3834 §5)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import smtplib
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import pytest

from lmtpfilter.app import build
from lmtpfilter.config import NotifyConfig, from_mapping
from lmtpfilter.notify import MAX_LINE, Notifications, Outbox, mail_options, wire_bytes
from lmtpfilter.store import Notification, QuarantineRecord
from lmtpfilter.web.links import ReleaseLinks

HOSTNAME = "filter.example.org"
ADMIN = "admin@example.org"
LONG_RECIPIENTS = [f"user-with-a-rather-long-name-{i}@example.org" for i in range(60)]


def config(**notify_options: object) -> NotifyConfig:
    options: dict[str, object] = {"smtp": "127.0.0.1:25", "admin": [ADMIN],
                                  "from": "postmaster", **notify_options}
    return from_mapping({"notify": options}).notify


def record(sender: str = "sender@example.net", subject: str = "invoice",
           detail: str = "Eicar-Test-Signature") -> QuarantineRecord:
    return QuarantineRecord(
        id="AbCdEfGhIjKlMnOpQrStUv", message_id="TX1", path="x", size=1, sha256="0" * 64,
        reason="virus", detail=detail, sender=sender, recipients="",
        subject=subject, created_at=dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC),
        released_to="", release_replies="")


class Session:
    """Stands in for the SQLAlchemy session: enqueue_quarantine only adds rows."""

    def __init__(self) -> None:
        self.added: list[Notification] = []

    def add(self, row: Notification) -> None:
        self.added.append(row)


def enqueue(notifications: Notifications, rec: QuarantineRecord,
            recipients: list[str]) -> dict[str, Notification]:
    session = Session()
    notifications.enqueue_quarantine(session, rec, recipients)  # type: ignore[arg-type]
    return {f"{n.kind} {n.to_address}": n for n in session.added}


def assert_proper_smtp_message(wire: bytes) -> email.message.EmailMessage:
    """Every line ends in CRLF, no bare CR or LF, no line over 998 octets, the header fields
    a notification needs; returns the message parsed back."""
    assert wire.endswith(b"\r\n")
    lines = wire[:-2].split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines), "bare CR or LF"
    assert max(len(line) for line in lines) <= MAX_LINE
    parsed = email.message_from_bytes(wire, policy=email.policy.SMTP)
    assert isinstance(parsed, email.message.EmailMessage)
    for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version"):
        assert len(parsed.get_all(name) or []) == 1, name
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert re.fullmatch(rf"<[^<>@\s]+@{re.escape(HOSTNAME)}>", parsed["Message-ID"])
    assert parsed["Date"].datetime.tzinfo is not None  # RFC 5322 §3.3, with a zone
    return parsed


HOSTILE_SUBJECTS = {
    "plain": "invoice",
    "non-ASCII": "Rechnung für Grüße – 請求書",
    "CR LF injection": "hi\r\nBcc: victim@example.com\r\n\r\nfake body",
    "bare CR": "one\rtwo",
    "long token": "x" * 1500,
    "long words": " ".join(["word"] * 400),
}


@pytest.mark.parametrize("subject", HOSTILE_SUBJECTS.values(), ids=HOSTILE_SUBJECTS.keys())
def test_every_kind_is_a_proper_smtp_message(subject: str) -> None:
    notifications = Notifications(config(sender=True), HOSTNAME)
    rows = enqueue(notifications, record(subject=subject), LONG_RECIPIENTS[:3])
    assert sorted(rows) == sorted([f"admin-virus {ADMIN}", "sender sender@example.net"]
                                  + [f"recipient {r}" for r in LONG_RECIPIENTS[:3]])
    for key, row in rows.items():
        parsed = assert_proper_smtp_message(row.message.encode("utf-8"))
        assert parsed["To"] == row.to_address, key
        assert parsed["From"] == f"postmaster@{HOSTNAME}"
        assert "Bcc" not in parsed
        text = parsed.get_body().get_content()  # type: ignore[union-attr]
        assert "AbCdEfGhIjKlMnOpQrStUv" in text
        if "recipient" in key or "sender" in key:
            assert " ".join(subject.split()) in " ".join(text.split()), key


def test_long_lines_are_encoded_and_non_ascii_survives() -> None:
    """A recipients line of some 3000 octets goes quoted-printable (lines of 76 at most,
    RFC 2045 §6.7) and decodes back to the same text."""
    notifications = Notifications(config(), HOSTNAME)
    rec = record(detail="Win.Test.Ünïcode")
    rows = enqueue(notifications, rec, LONG_RECIPIENTS)
    parsed = assert_proper_smtp_message(rows[f"admin-virus {ADMIN}"].message.encode())
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert ", ".join(LONG_RECIPIENTS) in parsed.get_body().get_content()  # type: ignore[union-attr]
    assert "Ünïcode" in parsed["Subject"]
    assert rows[f"admin-virus {ADMIN}"].message.isascii()  # 7-bit: no 8BITMIME needed


def test_short_ascii_lines_stay_readable() -> None:
    rows = enqueue(Notifications(config(), HOSTNAME), record(), ["u@example.org"])
    parsed = assert_proper_smtp_message(rows["recipient u@example.org"].message.encode())
    assert parsed["Content-Transfer-Encoding"] == "7bit"


def test_custom_template_with_crlf_and_a_long_line(tmp_path: Path) -> None:
    (tmp_path / "recipient.txt").write_bytes(
        b"Subject: Quarantined: ${subject}\r\n\r\nHello,\r\n" + b"y" * 1200 + b"\r\n${id}\r\n")
    notifications = Notifications(config(templates=str(tmp_path)), HOSTNAME)
    rows = enqueue(notifications, record(), ["u@example.org"])
    parsed = assert_proper_smtp_message(rows["recipient u@example.org"].message.encode())
    assert parsed["Subject"] == "Quarantined: invoice"
    text = parsed.get_body().get_content()  # type: ignore[union-attr]
    assert text.startswith("Hello,\r\n") and "y" * 1200 in text  # no blank line first


@pytest.mark.parametrize("null", ["", "<>"])
def test_no_sender_notice_for_the_null_sender(null: str) -> None:
    rows = enqueue(Notifications(config(sender=True), HOSTNAME), record(sender=null),
                   ["u@example.org"])
    assert sorted(rows) == [f"admin-virus {ADMIN}", "recipient u@example.org"]
    assert "<(null sender)>" in rows[f"admin-virus {ADMIN}"].message


def test_a_non_ascii_address_makes_a_utf8_header() -> None:
    """An address cannot be RFC 2047-encoded (RFC 6532 §3.2): it is written as UTF-8, and
    the message goes with SMTPUTF8."""
    rows = enqueue(Notifications(config(), HOSTNAME), record(), ["jörg@example.org"])
    message = rows["recipient jörg@example.org"].message
    wire = wire_bytes(message)
    parsed = assert_proper_smtp_message(wire)
    assert parsed["To"] == "jörg@example.org"
    assert mail_options("jörg@example.org", wire) == ["SMTPUTF8", "BODY=8BITMIME"]


@pytest.mark.parametrize(("stored", "wire"), [
    ("Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n"),
    ("Subject: x\n\nbody\n", b"Subject: x\r\n\r\nbody\r\n"),  # a row from an older version
    ("Subject: x\r\n\r\na\rb\n", b"Subject: x\r\n\r\na\r\nb\r\n"),
])
def test_wire_bytes_has_crlf_only(stored: str, wire: bytes) -> None:
    assert wire_bytes(stored) == wire


@pytest.mark.parametrize(("to", "wire", "options"), [
    ("u@example.org", b"Subject: x\r\n\r\nascii\r\n", []),
    ("u@example.org", "Subject: x\r\n\r\nGrüße\r\n".encode(), ["BODY=8BITMIME"]),
    ("ü@example.org", b"Subject: x\r\n\r\nascii\r\n", ["SMTPUTF8", "BODY=8BITMIME"]),
    ("u@example.org", "From: pöst@example.org\r\n\r\nascii\r\n".encode(),
     ["SMTPUTF8", "BODY=8BITMIME"]),
])
def test_mail_options(to: str, wire: bytes, options: list[str]) -> None:
    assert mail_options(to, wire) == options


class RecordingSMTP:
    """Stands in for smtplib.SMTP: records the EHLO name and each sendmail call."""

    calls: ClassVar[list[tuple[str, str, list[str], bytes, list[str]]]] = []

    def __init__(self, host: str, port: int, timeout: float, local_hostname: str) -> None:
        self.local_hostname = local_hostname

    def __enter__(self) -> RecordingSMTP:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None
                 ) -> None:
        return None

    def sendmail(self, from_addr: str, to_addrs: list[str], msg: bytes,
                 mail_options: list[str]) -> dict[str, Any]:
        self.calls.append((self.local_hostname, from_addr, to_addrs, msg, mail_options))
        return {}


def test_outbox_sends_crlf_with_the_null_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RecordingSMTP, "calls", [])
    monkeypatch.setattr(smtplib, "SMTP", RecordingSMTP)
    outbox = Outbox(None, config(), hostname=HOSTNAME)  # type: ignore[arg-type]
    assert outbox._send("u@example.org", "Subject: legacy row\n\nbare LF\n") == ""
    [(ehlo, sender, to, wire, options)] = RecordingSMTP.calls
    assert (ehlo, sender, to, options) == (HOSTNAME, "", ["u@example.org"], [])
    assert wire == b"Subject: legacy row\r\n\r\nbare LF\r\n"


def test_outbox_records_an_smtp_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refusing(*args: object, **kwargs: object) -> None:
        raise smtplib.SMTPDataError(550, b"5.5.2 bare <LF> received")

    monkeypatch.setattr(RecordingSMTP, "sendmail", refusing)
    monkeypatch.setattr(smtplib, "SMTP", RecordingSMTP)
    outbox = Outbox(None, config(), hostname=HOSTNAME)  # type: ignore[arg-type]
    assert "bare <LF>" in outbox._send("u@example.org", "Subject: x\r\n\r\ny\r\n")


# ---- the release link in the recipient notice ------------------------------------------------

BASE_URL = "https://mail.example.org/quarantine"


def links() -> ReleaseLinks:
    return ReleaseLinks(b"k" * 32, BASE_URL, 7 * 86400)


def body_of(row: Notification) -> str:
    parsed = assert_proper_smtp_message(wire_bytes(row.message))
    return parsed.get_body().get_content()  # type: ignore[union-attr, no-any-return]


def test_each_recipient_gets_a_link_for_themselves() -> None:
    rec = record()
    rec.reason, rec.detail = "spam", "score 31.2"
    rows = enqueue(Notifications(config(sender=True), HOSTNAME, links()), rec,
                   ["alice@example.org", "Bob+lists@Example.org"])
    for to in ("alice@example.org", "Bob+lists@Example.org"):
        text = body_of(rows[f"recipient {to}"])
        assert "To release it to yourself, open:\r\n" in text
        [url] = [line for line in text.splitlines() if line.startswith(BASE_URL)]
        claim = links().verify(url.removeprefix(f"{BASE_URL}/r/"))
        assert (claim.qid, claim.recipient) == (rec.id, to)
        assert "; it works once).\r\n" in text and "(valid until " in text
        assert "$" not in text
    assert BASE_URL not in rows["sender sender@example.net"].message  # the sender gets none


def test_no_link_for_a_virus_nor_without_links() -> None:
    """Only an admin releases a virus; without [web] base_url and a key, no link at all:
    both say to ask the admin, as the notice always did."""
    spam = record()
    spam.reason = "spam"
    for notifications, rec in [(Notifications(config(), HOSTNAME, links()), record()),
                               (Notifications(config(), HOSTNAME), spam)]:
        text = body_of(enqueue(notifications, rec, ["u@example.org"])["recipient u@example.org"])
        assert BASE_URL not in text and "$" not in text
        assert " ".join(text.split()).endswith(
            f"If you believe this is a mistake, ask your mail administrator ({ADMIN}) to "
            "release it, quoting the quarantine ID above.")


def test_an_address_no_link_can_carry_gets_the_old_paragraph() -> None:
    rec = record()
    rec.reason = "spam"
    to = '"john doe"@example.org'
    text = body_of(enqueue(Notifications(config(), HOSTNAME, links()), rec, [to])
                   [f"recipient {to}"])
    assert BASE_URL not in text and "ask your mail administrator" in text


def test_a_custom_template_without_the_placeholder_still_renders(tmp_path: Path) -> None:
    (tmp_path / "recipient.txt").write_text(
        "Subject: Quarantined\n\nAsk ${admin} about ${id}.\n", encoding="utf-8")
    rec = record()
    rec.reason = "spam"
    rows = enqueue(Notifications(config(templates=str(tmp_path)), HOSTNAME, links()), rec,
                   ["u@example.org"])
    assert body_of(rows["recipient u@example.org"]) == f"Ask {ADMIN} about {rec.id}.\r\n"


def test_a_bad_key_file_stops_serve_at_start(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    cfg = from_mapping({"database": {"url": f"sqlite:///{tmp_path}/x.db"},
                        "web": {"base_url": BASE_URL, "secret_key_file": str(key)}})
    with pytest.raises(ValueError, match=r"^\[web\] secret_key_file .* chmod 600 "):
        build(cfg)
