"""Notifications through a strict real Postfix into Dovecot:

    lmtpfilter (virus quarantined) --SMTP--> Postfix, smtpd_forbid_bare_newline --> Dovecot

Strict sites run Postfix with ``smtpd_forbid_bare_newline`` (the SMTP smuggling fix, in
Debian 12's Postfix 3.7.11). ``yes`` (an alias of ``normalize``) insists on CRLF.CRLF ending
the data; ``reject`` refuses a message with any bare LF (postconf(5)). Every kind of
notification must get through both, with the null sender and the fields an automatic message
carries.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, Postfix, start_dovecot, start_postfix
from tests.harness.scanners import EICAR, Clamd
from tests.integration.test_scanning import message
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration

SENDER, RECIPIENT, ADMIN = "ann@example.org", "ben@example.org", "admin@example.org"


def strict(mode: str) -> dict[str, str]:
    # By default loopback clients ($mynetworks) are exempt: here nobody is.
    return {"smtpd_forbid_bare_newline": mode, "smtpd_forbid_bare_newline_exclusions": ""}


@dataclass
class Site:
    dovecot: Dovecot
    postfix: Postfix
    proc: FilterProcess


@pytest.fixture(scope="module", params=["yes", "reject"])
def site(request: pytest.FixtureRequest, filter_process: type[FilterProcess],
         daemon_base: Path, clamd: Clamd) -> Iterator[Site]:
    mode: str = request.param
    base = daemon_base / f"notify-smtp-{mode}"
    dovecot = start_dovecot(base, [SENDER, RECIPIENT, ADMIN])
    postfix = start_postfix(base, transport=f"lmtp:inet:127.0.0.1:{dovecot.lmtp_port}",
                            extra_main_cf=strict(mode))
    workdir = new_workdir(daemon_base, f"notify-smtp-{mode}")
    listen = f"unix:{workdir}/lmtp.sock"
    text = filter_config(
        f"127.0.0.1:{dovecot.lmtp_port}", [listen],
        clamav=f'enabled = true\naddress = "unix:{clamd.socket_path}"',
        notify=(f'smtp = "127.0.0.1:{postfix.smtp_port}"\nadmin = ["{ADMIN}"]\n'
                'recipient = true\nsender = true\ninterval = "0.3s"'))
    try:
        yield Site(dovecot, postfix, filter_process(workdir, text, listen).start())
    finally:
        postfix.stop()
        dovecot.stop()


@pytest.mark.parametrize("site", ["reject"], indirect=True)
def test_this_postfix_refuses_a_bare_lf(site: Site) -> None:
    """The check is real: a message with a bare LF does not get through."""
    with pytest.raises(smtplib.SMTPException) as refused:
        site.postfix.send("", [ADMIN], b"Subject: bare\r\n\r\none\ntwo\r\n")
    assert "bare <LF>" in str(refused.value)


async def test_every_notification_is_delivered_through_strict_postfix(site: Site) -> None:
    inboxes = {kind: site.dovecot.messages(address) for kind, address in
               (("sender", SENDER), ("recipient", RECIPIENT), ("admin-virus", ADMIN))}
    result = await lmtp_session(site.proc.listen, SENDER, [RECIPIENT],
                                message("invoice", attachment=("invoice.com", EICAR)))
    assert result.data_replies[0].startswith("250 2.7.0"), site.proc.log()[-3000:]
    qid = result.data_replies[0].rsplit(" ", 1)[1]
    for kind, address in (("sender", SENDER), ("recipient", RECIPIENT),
                          ("admin-virus", ADMIN)):
        stored = site.dovecot.wait_for_messages(address, len(inboxes[kind]) + 1, timeout=30)
        [raw] = [m for m in stored if m not in inboxes[kind]]
        notice = email.message_from_bytes(raw, policy=email.policy.default)
        assert notice["Return-Path"] == "<>", kind  # Dovecot's record of MAIL FROM:<>
        assert notice["Auto-Submitted"] == "auto-generated", kind
        assert notice["Message-ID"].endswith("@filter.test>"), kind
        assert notice["Date"].datetime is not None, kind
        assert notice["To"] == address, kind
        assert qid in notice.get_body().get_content(), kind  # type: ignore[union-attr]
    # Each was taken at the first attempt, with the null sender.
    with sqlite3.connect(site.proc.workdir / "lmtpfilter.db") as db:
        rows = db.execute("select kind, attempts, last_error, sent_at is not null"
                          " from notifications order by kind").fetchall()
    assert rows == [("admin-virus", 1, "", 1), ("recipient", 1, "", 1), ("sender", 1, "", 1)]
    site.postfix.wait_queue_empty()
    assert site.postfix.maillog().count("from=<>") >= 3
