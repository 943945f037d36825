"""SMTPUTF8 and DSN through the filter, with Postfix at Debian's defaults (smtputf8_enable =
yes): what the filter announces, what it passes on, and what arrives."""

from __future__ import annotations

import smtplib
import socket
import sqlite3

import pytest

from tests.conftest import FilterProcess
from tests.harness.daemons import LOOPBACK, Dovecot, Postfix
from tests.lmtp_tools import FakeDownstream, lmtp_session, make_config, running_filter

pytestmark = pytest.mark.integration

MSG = b"From: a@example.net\r\nSubject: dsn\r\n\r\nBody\r\n"
UTF8_SENDER = "josé@exämple.net"
BASIC = ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE")


def announced(lhlo: str) -> set[str]:
    return {line[4:].split(" ")[0].upper() for line in lhlo.splitlines()[1:]}


def dovecot_announces(dovecot: Dovecot, extension: str) -> bool:
    with socket.create_connection((LOOPBACK, dovecot.lmtp_port), timeout=10) as sock:
        stream = sock.makefile("rwb")
        stream.readline()
        stream.write(b"LHLO probe\r\n")
        stream.flush()
        lines = [stream.readline().decode()]
        while lines[-1][3:4] == "-":
            lines.append(stream.readline().decode())
        stream.write(b"QUIT\r\n")
        stream.flush()
    return extension in announced("".join(lines).replace("\r\n", "\n").strip())


def test_a_utf8_sender_through_postfix_arrives_intact_and_nothing_bounces(
        chain: tuple[Postfix, FilterProcess], dovecot: Dovecot) -> None:
    """Postfix 3.7 at its defaults bounces mail that needs SMTPUTF8 when the LMTP next hop
    does not announce it ("SMTPUTF8 is required, but was not offered"); the filter announces
    it, and passes the message to Dovecot 2.3 (which does not) with the addresses and headers
    unchanged."""
    postfix, proc = chain
    user = "user2@example.org"
    before = len(dovecot.messages(user))
    headers = ("From: José <josé@exämple.net>\r\nTo: user2@example.org\r\n"
               "Subject: Grüße, 日本語の件名\r\nMessage-ID: <utf8-1@exämple.net>\r\n"
               "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\n")
    body = "Ça marche: ünïcödé.\r\n"
    message = (headers + body).encode()
    with smtplib.SMTP(LOOPBACK, postfix.smtp_port, local_hostname="localhost",
                      timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("smtputf8")  # Debian's default, not switched off
        refused = smtp.sendmail(UTF8_SENDER, [user], message, mail_options=["SMTPUTF8"])
    assert refused == {}
    stored = dovecot.wait_for_messages(user, before + 1, timeout=20)[-1]
    assert headers.replace("\r\n", "\n").encode() in stored  # the header bytes, unchanged
    # Dovecot 2.3 accepts a UTF-8 sender given without SMTPUTF8 but records the null sender
    # in its place (Return-Path: <>, "envelope-from <>"); 2.4.1 announces SMTPUTF8 no more
    # than 2.3 but keeps the address; one that announces it gets the parameter and keeps it
    # too. The README's SMTPUTF8 table says so.
    if dovecot.series == "2.3" and not dovecot_announces(dovecot, "SMTPUTF8"):
        assert b"Return-Path: <>" in stored
    else:
        assert f"Return-Path: <{UTF8_SENDER}>".encode() in stored
    assert stored.endswith(body.replace("\r\n", "\n").encode())
    postfix.wait_queue_empty()
    log = postfix.maillog()
    assert "status=sent" in log and "status=bounced" not in log, log[-2000:]
    assert "SMTPUTF8 is required" not in log
    # Recorded under the UTF-8 address as it came.
    with sqlite3.connect(proc.workdir / "lmtpfilter.db") as db:
        senders = [row[0] for row in db.execute("select sender from messages")]
    assert UTF8_SENDER in senders
    assert proc.stop() == 0


async def test_dovecot_23_is_told_neither_smtputf8_nor_dsn(dovecot: Dovecot) -> None:
    """What the README's table records: Dovecot 2.3's LMTP announces neither extension, so the
    filter passes neither parameter to it, and announces DSN to Postfix only when a
    downstream that takes it is configured."""
    async with running_filter(make_config(f"127.0.0.1:{dovecot.lmtp_port}")) as (
            address, _server, pipeline):
        result = await lmtp_session(address, "s@example.net", ["user1@example.org"], MSG)
        downstream = pipeline.downstream.capabilities or {}
    assert "SMTPUTF8" not in downstream and "DSN" not in downstream
    assert "SMTPUTF8" in announced(result.lhlo) and "DSN" not in announced(result.lhlo)
    assert result.data_replies[0].startswith("250")


async def test_dsn_parameters_reach_a_downstream_that_announces_dsn(
        fake: FakeDownstream) -> None:
    fake.capabilities = (*BASIC, "DSN", "SMTPUTF8")
    recipients = ["a@example.org", "b@example.org", "c@example.org"]
    async with running_filter(make_config(fake.address)) as (address, _, _):
        result = await lmtp_session(
            address, UTF8_SENDER, recipients, MSG,
            mail_params=" SMTPUTF8 BODY=8BITMIME RET=HDRS ENVID=QQ314159 SIZE=60",
            rcpt_params=[" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bx@example.org",
                         " NOTIFY=NEVER", ""])
    assert {"DSN", "SMTPUTF8"} <= announced(result.lhlo)
    assert [r[:3] for r in result.data_replies] == ["250"] * 3
    [tx] = fake.transactions
    # Every parameter the downstream announced, verbatim; our own SIZE for our copy.
    mail = tx.mail_line.split(" ")
    assert mail[1] == f"FROM:<{UTF8_SENDER}>"
    assert mail[2:6] == ["SMTPUTF8", "BODY=8BITMIME", "RET=HDRS", "ENVID=QQ314159"]
    assert mail[6].startswith("SIZE=") and mail[6] != "SIZE=60"
    assert tx.rcpt_lines == [
        "RCPT TO:<a@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bx@example.org",
        "RCPT TO:<b@example.org> NOTIFY=NEVER",
        "RCPT TO:<c@example.org>",
    ]


async def test_a_downstream_without_the_extensions_gets_the_addresses_but_not_the_parameters(
        fake: FakeDownstream) -> None:
    """Like Dovecot 2.3: no SMTPUTF8, no DSN announced. The UTF-8 sender goes as it is,
    without the parameter, and each recipient gets the downstream's own reply."""
    fake.delivery_reply = lambda rcpt, i: f"250 2.0.0 <{rcpt}> stored by the fake"
    async with running_filter(make_config(fake.address)) as (address, _, _):
        result = await lmtp_session(address, UTF8_SENDER, ["a@example.org"], MSG,
                                    mail_params=" SMTPUTF8 BODY=8BITMIME")
        refused = await lmtp_session(address, "s@example.net", ["a@example.org"], MSG,
                                     rcpt_params=[" NOTIFY=NEVER"])
    assert "DSN" not in announced(result.lhlo)
    assert result.data_replies == ["250 2.0.0 <a@example.org> stored by the fake"]
    [tx] = fake.transactions
    assert tx.sender == UTF8_SENDER
    assert tx.mail_line.startswith(f"MAIL FROM:<{UTF8_SENDER}> BODY=8BITMIME SIZE=")
    assert "SMTPUTF8" not in tx.mail_line
    # DSN was not announced, so a client may not use it (RFC 3461 §4): refused at RCPT.
    assert refused.rcpt_replies[0].startswith("555 5.5.4")
    assert refused.data_replies == []
