"""Scanning with the real clamd and spamd, in the real filter process, into real Dovecot."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, free_port
from tests.harness.scanners import (
    CLAMAV_TESTFILES,
    EICAR,
    ENVELOPE_TEST_RULE,
    ENVELOPE_TEST_SENDER,
    GTUBE,
    Clamd,
    Spamd,
    slow_tcp_server,
)
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration

SA_EXAMPLES = Path("/usr/share/doc/spamassassin/examples")


def message(subject: str, body: str = "Hello, see you tomorrow.\n",
            attachment: tuple[str, bytes] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Sender <sender@example.net>"
    msg["To"] = "user1@example.org"
    msg["Subject"] = subject
    msg["Date"] = "Sun, 29 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{abs(hash(subject))}@example.net>"
    msg.set_content(body)
    if attachment:
        msg.add_attachment(attachment[1], maintype="application", subtype="octet-stream",
                           filename=attachment[0])
    return msg.as_bytes(policy=email.policy.SMTP)


def start(factory: type[FilterProcess], base: Path, dovecot: Dovecot, clamav: str,
          spamd: str, policy: str = "", spam_timeout: str = "30s",
          clam_timeout: str = "30s", spamd_user: str = "") -> FilterProcess:
    listen = f"127.0.0.1:{free_port()}"
    text = filter_config(
        f"127.0.0.1:{dovecot.lmtp_port}", [listen],
        clamav=f'enabled = true\naddress = "{clamav}"\ntimeout = "{clam_timeout}"',
        spamassassin=(f'enabled = true\naddress = "{spamd}"\ntimeout = "{spam_timeout}"\n'
                      f'user = "{spamd_user}"'),
        policy=policy)
    return factory(new_workdir(base, "scan"), text, listen).start()


@pytest.fixture(scope="module")
def scanning(filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
             clamd: Clamd, spamd: Spamd) -> Iterator[FilterProcess]:
    yield start(filter_process, daemon_base, dovecot, f"unix:{clamd.socket_path}",
                f"127.0.0.1:{spamd.port}",
                policy='virus_destiny = "reject"\nspam_destiny = "pass"')


def count(dovecot: Dovecot, user: str) -> int:
    return len(dovecot.messages(user))


def snapshot(dovecot: Dovecot, user: str) -> set[bytes]:
    return set(dovecot.messages(user))


def newest(dovecot: Dovecot, user: str, before: set[bytes]) -> email.message.EmailMessage:
    """The one message that arrived since `before` (Maildir names do not sort by time)."""
    stored = dovecot.wait_for_messages(user, len(before) + 1)
    new = [m for m in stored if m not in before]
    assert len(new) == 1, f"{len(new)} new messages for {user}"
    parsed = email.message_from_bytes(new[0], policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


async def test_eicar_attachment_is_refused(scanning: FilterProcess, dovecot: Dovecot) -> None:
    before = count(dovecot, "user1@example.org")
    result = await lmtp_session(scanning.listen, "s@example.net",
                                ["user1@example.org", "user2@example.org"],
                                message("invoice", attachment=("invoice.com", EICAR)))
    assert result.data_replies == ["550 5.7.1 virus found: Eicar-Test-Signature.UNOFFICIAL"] * 2
    assert count(dovecot, "user1@example.org") == before


@pytest.mark.parametrize("path", sorted(CLAMAV_TESTFILES.iterdir()), ids=lambda p: p.name)
async def test_each_clamav_testfile_as_attachment(scanning: FilterProcess, path: Path) -> None:
    result = await lmtp_session(scanning.listen, "s@example.net", ["user1@example.org"],
                                message(f"file {path.name}", attachment=(path.name,
                                                                          path.read_bytes())))
    assert result.data_replies[0].startswith("550 5.7.1 virus found: Clamav.Test.File-6")


async def test_gtube_is_tagged_spam(scanning: FilterProcess, dovecot: Dovecot) -> None:
    before = snapshot(dovecot, "user1@example.org")
    result = await lmtp_session(scanning.listen, "s@example.net", ["user1@example.org"],
                                message("cheap watches", GTUBE.decode() + "\n"))
    assert result.data_replies[0].startswith("250 2.0.0")
    got = newest(dovecot, "user1@example.org", before)
    assert got["X-Spam-Flag"] == "YES"
    assert float(got["X-Spam-Score"]) >= 1000
    assert got["X-Spam-Level"] == "*" * 64
    assert got["X-Spam-Status"].startswith("Yes, score=")
    assert "GTUBE=1000" in got["X-Spam-Status"]
    assert got["Subject"] == "[SPAM] cheap watches"
    assert got["X-Virus-Scanned"] == "lmtpfilter at filter.test"


def stored_copy(dovecot: Dovecot, user: str, before: set[bytes]) -> bytes:
    """The raw bytes of the one message that arrived since `before`."""
    stored = dovecot.wait_for_messages(user, len(before) + 1)
    [new] = [m for m in stored if m not in before]
    return new


@pytest.mark.parametrize(("envelope_sender", "hit"), [
    (ENVELOPE_TEST_SENDER, True),
    ("someone-else@example.net", False),
])
async def test_spamd_sees_the_envelope_sender(scanning: FilterProcess, dovecot: Dovecot,
                                              envelope_sender: str, hit: bool) -> None:
    """SpamAssassin's EnvelopeFrom (what SPF checks) is the MAIL FROM, not a Return-Path or
    X-Envelope-From the message itself carries; and what we add for spamd is not delivered."""
    user = "user2@example.org"
    # The message from another sender claims the test address in fields of its own.
    own_fields = b"" if hit else (f"Return-Path: <{ENVELOPE_TEST_SENDER}>\r\n"
                                  f"X-Envelope-From: <{ENVELOPE_TEST_SENDER}>\r\n").encode()
    before = snapshot(dovecot, user)
    result = await lmtp_session(scanning.listen, envelope_sender, [user],
                                own_fields + message(f"envelope {envelope_sender}"))
    assert result.data_replies[0].startswith("250 2.0.0"), result.data_replies
    raw = stored_copy(dovecot, user, before)
    status = email.message_from_bytes(raw, policy=email.policy.default)["X-Spam-Status"]
    assert (f"{ENVELOPE_TEST_RULE}=" in status) is hit, status
    # Only Dovecot's own Return-Path (RFC 5321 §4.4) and the sender's fields, if any: none of
    # the fields we put on top for spamd reach the mailbox.
    header = raw.split(b"\n\n", 1)[0]
    assert header.count(b"X-Envelope-From:") == own_fields.count(b"X-Envelope-From:")
    assert header.count(b"Return-Path:") == 1 + own_fields.count(b"Return-Path:")
    assert header.startswith(f"Return-Path: <{envelope_sender}>".encode())


async def test_spamd_user_header_when_configured(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd, spamd: Spamd) -> None:
    """`[spamassassin] user` is sent as spamd's User: (spamd logs whose check it was)."""
    proc = start(filter_process, daemon_base, dovecot, f"unix:{clamd.socket_path}",
                 f"127.0.0.1:{spamd.port}", spamd_user="lmtpf-prefs")
    result = await lmtp_session(proc.listen, "s@example.net", ["user3@example.org"],
                                message("per-user preferences"))
    assert result.data_replies[0].startswith("250 2.0.0")
    deadline = time.monotonic() + 10  # spamd may log its result line after answering
    while "user=lmtpf-prefs," not in spamd.log_text() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert "user=lmtpf-prefs," in spamd.log_text()


@pytest.mark.parametrize(("sample", "flag"), [("sample-spam.txt", "YES"),
                                              ("sample-nonspam.txt", "NO")])
async def test_spamassassin_samples(scanning: FilterProcess, dovecot: Dovecot, sample: str,
                                    flag: str) -> None:
    raw = (SA_EXAMPLES / sample).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    before = snapshot(dovecot, "user2@example.org")
    result = await lmtp_session(scanning.listen, "s@example.net", ["user2@example.org"], raw)
    assert result.data_replies[0].startswith("250 2.0.0")
    assert newest(dovecot, "user2@example.org", before)["X-Spam-Flag"] == flag


async def test_three_recipients_three_header_sets(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd, spamd: Spamd) -> None:
    proc = start(filter_process, daemon_base, dovecot, f"unix:{clamd.socket_path}",
                 f"127.0.0.1:{spamd.port}", policy="\n".join([
                     'virus_destiny = "pass"', 'spam_destiny = "pass"',
                     'bypass_spam_checks = ["user2@example.org"]',
                     'bypass_virus_checks = ["user3@example.org"]']))
    users = ["user1@example.org", "user2@example.org", "user3@example.org"]
    before = {u: snapshot(dovecot, u) for u in users}
    msg = message("both", GTUBE.decode() + "\n", attachment=("eicar.txt", EICAR))
    result = await lmtp_session(proc.listen, "s@example.net", users, msg)
    assert [r[:9] for r in result.data_replies] == ["250 2.0.0"] * 3
    got = {u: newest(dovecot, u, before[u]) for u in users}
    infected = "Infected (Eicar-Test-Signature.UNOFFICIAL)"
    assert (got[users[0]]["X-Virus-Status"], got[users[0]]["X-Spam-Flag"]) == (infected, "YES")
    assert (got[users[1]]["X-Virus-Status"], got[users[1]]["X-Spam-Flag"]) == (infected, None)
    assert (got[users[2]]["X-Virus-Status"], got[users[2]]["X-Spam-Flag"]) == (None, "YES")
    assert got[users[1]]["Subject"] == "both"
    assert got[users[0]]["Subject"] == got[users[2]]["Subject"] == "[SPAM] both"
    for u in users:
        assert got[u]["X-Virus-Scanned"] == "lmtpfilter at filter.test"


async def test_clamd_stopped_means_4xx_for_all_then_delivery(
        scanning: FilterProcess, dovecot: Dovecot, clamd: Clamd) -> None:
    users = ["user1@example.org", "user2@example.org"]
    before = {u: count(dovecot, u) for u in users}
    msg = message("while clamd is down")
    clamd.stop()
    try:
        result = await lmtp_session(scanning.listen, "s@example.net", users, msg)
    finally:
        clamd.restart()
    assert [r[:9] for r in result.data_replies] == ["451 4.7.1"] * 2
    assert {u: count(dovecot, u) for u in users} == before
    again = await lmtp_session(scanning.listen, "s@example.net", users, msg)
    assert [r[:9] for r in again.data_replies] == ["250 2.0.0"] * 2


async def test_clamd_hanging_times_out_to_4xx(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd, spamd: Spamd) -> None:
    proc = start(filter_process, daemon_base, dovecot, f"unix:{clamd.socket_path}",
                 f"127.0.0.1:{spamd.port}", clam_timeout="1s")
    clamd.pause()
    try:
        result = await lmtp_session(proc.listen, "s@example.net", ["user1@example.org"],
                                    message("clamd hangs"))
    finally:
        clamd.resume()
    assert result.data_replies[0].startswith("451 4.7.1")


async def test_spamd_slower_than_its_timeout_means_4xx(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd) -> None:
    port, stop_slow = slow_tcp_server(30.0)
    try:
        proc = start(filter_process, daemon_base, dovecot, f"unix:{clamd.socket_path}",
                     f"127.0.0.1:{port}", spam_timeout="1s")
        before = count(dovecot, "user1@example.org")
        result = await lmtp_session(proc.listen, "s@example.net", ["user1@example.org"],
                                    message("spamd is slow"))
    finally:
        stop_slow()
    assert result.data_replies[0].startswith("451 4.7.1")
    assert count(dovecot, "user1@example.org") == before


async def test_spamd_down_with_pass_policy_delivers_marked(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd) -> None:
    proc = start(filter_process, daemon_base, dovecot, f"unix:{clamd.socket_path}",
                 f"127.0.0.1:{free_port()}", policy='on_scanner_failure = "pass"')
    before = snapshot(dovecot, "user3@example.org")
    result = await lmtp_session(proc.listen, "s@example.net", ["user3@example.org"],
                                message("spamd is down"))
    assert result.data_replies[0].startswith("250 2.0.0")
    got = newest(dovecot, "user3@example.org", before)
    assert got["X-Spam-Status"] == "No, skipped (scanner unavailable)"
    assert got["X-Virus-Scanned"] == "lmtpfilter at filter.test"


async def test_clamd_stream_limit_is_an_error_not_clean(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        spamd: Spamd) -> None:
    from tests.harness.scanners import start_clamd

    small = start_clamd(daemon_base / "small", stream_max_length="1M")
    try:
        proc = start(filter_process, daemon_base, dovecot, f"unix:{small.socket_path}",
                     f"127.0.0.1:{spamd.port}")
        big = message("big", "x" * 70 + "\n" * 1, attachment=("big.bin", b"\0" * 1_500_000))
        result = await lmtp_session(proc.listen, "s@example.net", ["user1@example.org"], big)
    finally:
        small.stop()
    assert result.data_replies[0].startswith("451 4.7.1")


@pytest.mark.parametrize("where", ["unix", "ip", "name"])
async def test_clamd_client_over_each_kind_of_address(clamd: Clamd, where: str) -> None:
    """The INSTREAM client itself, on a unix socket, an IP literal and a host name; with a
    message under one chunk (one send) and one over three chunks."""
    from lmtpfilter.clamav import CHUNK, ClamdScanner
    from lmtpfilter.config import from_mapping
    from lmtpfilter.scanresult import Status

    address = {"unix": f"unix:{clamd.socket_path}", "ip": f"127.0.0.1:{clamd.tcp_port}",
               "name": f"localhost:{clamd.tcp_port}"}[where]
    scanner = ClamdScanner(from_mapping({"clamav": {"address": address}}).clamav)
    clean = await scanner.scan(message("clean"))
    infected = await scanner.scan(message("big", "x\n" * (CHUNK + CHUNK // 2),
                                          attachment=("eicar.com", EICAR)))
    assert clean.status is Status.CLEAN, clean
    assert infected.status is Status.INFECTED and infected.names[0].startswith(
        "Eicar-Test-Signature"), infected
