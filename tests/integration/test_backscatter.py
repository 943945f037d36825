"""No backscatter: sure spam with spam_destiny = "reject" is discarded and quarantined at or
above dsn_cutoff_level, so the real Postfix in front sends no bounce to its forged sender;
below the cutoff the 5xx stands and Postfix bounces, as the admin asked."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from lmtpfilter.app import warn_about_policy
from lmtpfilter.config import from_mapping
from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, start_postfix
from tests.harness.scanners import GTUBE, Spamd
from tests.integration.test_scanning import message

pytestmark = pytest.mark.integration

FORGED = "someone-innocent@example.net"  # spam's envelope sender is someone else's address


@pytest.mark.parametrize(("cutoff", "bounced"), [(10.0, False), (2000.0, True)])
def test_sure_spam_is_not_bounced_to_its_forged_sender(
        cutoff: float, bounced: bool, filter_process: type[FilterProcess],
        daemon_base: Path, dovecot: Dovecot, spamd: Spamd) -> None:
    workdir = new_workdir(daemon_base, "bs")
    listen = f"unix:{workdir}/lmtp.sock"
    text = filter_config(
        f"127.0.0.1:{dovecot.lmtp_port}", [listen],
        spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"',
        policy=f'spam_destiny = "reject"\ndsn_cutoff_level = {cutoff}')
    proc = filter_process(workdir, text, listen).start()
    postfix = start_postfix(workdir, transport=f"lmtp:{listen}")
    try:
        before = len(dovecot.messages("user1@example.org"))
        postfix.send(FORGED, ["user1@example.org"], message("cheap", GTUBE.decode() + "\n"))
        postfix.wait_queue_empty()
        log = postfix.maillog()
        assert len(dovecot.messages("user1@example.org")) == before  # not delivered either way
        if bounced:  # under the cutoff: the admin's reject stands, Postfix bounces
            assert "status=bounced" in log and "5.7.1 Message rejected as spam" in log
        else:  # at or above: 250 2.7.0, quarantined, and no bounce for the forged sender
            assert "status=bounced" not in log, log[-2000:]
            assert "status=sent (250 2.7.0 Ok, discarded, quarantined as" in log
            with sqlite3.connect(workdir / "lmtpfilter.db") as db:
                rows = db.execute("select reason, sender from quarantine").fetchall()
            assert rows == [("spam", FORGED)]
        assert proc.stop() == 0
    finally:
        postfix.stop()


def test_virus_destiny_reject_is_warned_about_at_start(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    with caplog.at_level(logging.WARNING):
        warn_about_policy(from_mapping({"policy": {"virus_destiny": "reject"}}))
        warn_about_policy(from_mapping({}))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "backscatter" in warnings[0]
    assert "virus_destiny" in warnings[0]
