"""The production chain: SMTP into a real Postfix -> lmtpfilter on a unix socket -> Dovecot."""

from __future__ import annotations

import os
import stat
import time

import pytest

from tests.conftest import FilterProcess
from tests.harness.daemons import Dovecot, Postfix

pytestmark = pytest.mark.integration


def test_mail_submitted_to_postfix_lands_in_maildirs(
        chain: tuple[Postfix, FilterProcess], dovecot: Dovecot) -> None:
    postfix, proc = chain
    socket_path = proc.listen[len("unix:"):]
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o666  # [server].socket_mode
    users = ["user1@example.org", "user2@example.org"]
    before = {u: len(dovecot.messages(u)) for u in users}
    body = "Grüße aus Köln.\r\n.leading dot\r\n" + "x" * 200 + "\r\n"
    message = ("From: sender@example.net\r\nTo: user1@example.org, user2@example.org\r\n"
               "Subject: through postfix\r\nMessage-ID: <pf-chain@example.net>\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
               "Content-Transfer-Encoding: 8bit\r\n\r\n" + body).encode()
    postfix.send("sender@example.net", users, message)
    for user in users:
        stored = dovecot.wait_for_messages(user, before[user] + 1, timeout=20)[-1]
        assert b"(lmtpfilter)" in stored
        assert stored.endswith(body.encode().replace(b"\r\n", b"\n"))
    postfix.wait_queue_empty()
    log = postfix.maillog()
    assert "lmtp.sock" in log and "status=sent (250 2.0.0 <user1@example.org>" in log
    assert proc.stop() == 0


def test_filter_down_means_postfix_defers_then_delivers(
        chain: tuple[Postfix, FilterProcess], dovecot: Dovecot) -> None:
    postfix, proc = chain
    assert proc.stop() == 0
    before = len(dovecot.messages("user3@example.org"))
    postfix.send("sender@example.net", ["user3@example.org"],
                 b"Subject: deferred\r\nMessage-ID: <deferred@example.net>\r\n\r\nlater\r\n")
    deadline = time.monotonic() + 20
    while "status=deferred" not in postfix.maillog() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "status=deferred" in postfix.maillog()
    assert len(dovecot.messages("user3@example.org")) == before
    proc.start()
    postfix.flush()
    stored = dovecot.wait_for_messages("user3@example.org", before + 1, timeout=20)
    assert len(stored) == before + 1 and b"later" in stored[-1]
