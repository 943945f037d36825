"""lmtpfilter (a real process) in front of a real Dovecot LMTP server."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from lmtpfilter.config import ContentConfig
from lmtpfilter.filtering import content_checks
from lmtpfilter.message import Message
from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import SNIPPETS, Dovecot, dovecot_syntax, free_port
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).parent.parent / "data" / "messages"
FORGEABLE = re.compile(rb"^(x-spam-|x-virus-|x-quarantine-id:|x-amavis-alert:)", re.I | re.M)
MANIFEST = tomllib.loads((CORPUS / "MANIFEST.toml").read_text())


def assert_stored(stored: bytes, expected: bytes, alert: bool = False) -> None:
    """`stored` is Dovecot's headers, then our Received: field, then (for a message the
    content checks flag) our X-Amavis-Alert: field, then exactly `expected`."""
    assert stored.endswith(expected)
    prefix = stored[: len(stored) - len(expected)]
    ours = prefix.index(b"Received: from client.example")
    added = re.split(rb"\n(?![ \t])", prefix[ours:].removesuffix(b"\n"))
    assert [f.split(b":")[0] for f in added] == [b"Received"] + [b"X-Amavis-Alert"] * alert
    assert b"(lmtpfilter)" in added[0]


def words(line: str) -> str:
    return " ".join(line.split())


def test_dovecot_runs_the_production_snippets(dovecot: Dovecot) -> None:
    """The harness's Dovecot is configured from the files for the installed version
    (scripts/conf/dovecot-2.3 or -2.4), which include the production snippets the README
    quotes: `doveconf -n` shows each of their settings, with the test's own paths."""
    syntax = dovecot_syntax()
    assert dovecot.series == syntax.series
    effective = {words(line)
                 for line in (dovecot.dir / "doveconf-n.txt").read_text().splitlines()}
    for name, (production, path) in SNIPPETS.items():
        settings = [words(line.replace(production, str(dovecot.dir / path)))
                    for line in (syntax.conf_dir / name).read_text().splitlines()
                    if production in line and not line.startswith("#")]
        assert settings and not set(settings) - effective, name


def start_filter(factory: type[FilterProcess], base: Path, dovecot: Dovecot) -> FilterProcess:
    listen = f"127.0.0.1:{free_port()}"
    workdir = new_workdir(base, "dovecot")
    return factory(workdir, filter_config(f"127.0.0.1:{dovecot.lmtp_port}", [listen]),
                   listen).start()


async def test_unknown_user_and_quota_in_one_transaction(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot) -> None:
    proc = start_filter(filter_process, daemon_base, dovecot)
    before = {u: len(dovecot.messages(u)) for u in ("user1@example.org", "user2@example.org")}
    message = (b"From: sender@example.net\r\nTo: several\r\nSubject: one transaction\r\n"
               b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
               b"Message-ID: <one-tx@example.net>\r\n\r\nHello,\r\n.dot line\r\n"
               + b"Over the 1K quota of full@.\r\n" * 60 + b"Bye\r\n")
    rcpts = ["user1@example.org", "ghost@example.org", "full@example.org", "user2@example.org"]
    result = await lmtp_session(proc.listen, "sender@example.net", rcpts, message)
    assert result.final.startswith("221")
    codes = [r.split(" ")[0] + " " + r.split(" ")[1] for r in result.data_replies]
    assert codes == ["250 2.0.0", "550 5.1.1", "552 5.2.2", "250 2.0.0"], result.data_replies
    for user in ("user1@example.org", "user2@example.org"):
        stored = dovecot.wait_for_messages(user, before[user] + 1)[-1]
        assert_stored(stored, message.replace(b"\r\n", b"\n"))
    assert dovecot.messages("full@example.org") == []
    assert proc.stop() == 0


async def test_corpus_through_dovecot(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot) -> None:
    proc = start_filter(filter_process, daemon_base, dovecot)
    user = "user3@example.org"
    for name, case in sorted(MANIFEST.items()):
        original = (CORPUS / name).read_bytes()
        known = set(dovecot.messages(user))
        result = await lmtp_session(proc.listen, "s@example.net", [user], original)
        if case["expect"] != "pass":
            assert result.data_replies[0].startswith("554 5.6.0"), name
            continue
        assert result.data_replies[0].startswith("250 "), (name, result.data_replies)
        stored = dovecot.wait_for_messages(user, len(known) + 1)
        new = [m for m in stored if m not in known]
        assert len(new) == 1, name
        sent = original if original.endswith(b"\r\n") else original + b"\r\n"
        expected = re.sub(rb"\r?\n", b"\n", sent)  # Dovecot stores LF line endings
        head, sep, body = expected.partition(b"\n\n")
        if sep and FORGEABLE.search(head):
            # Verdict headers a sender wrote are removed (docs/design.md §4): compare without them.
            kept = [f for f in re.split(rb"\n(?![ \t])", head) if not FORGEABLE.match(f)]
            expected = b"\n".join(kept) + sep + body
        # Messages with a bad header section pass with amavis's alert (bad_header_destiny).
        # The filter checks the message as received (a bare LF is one until delivery).
        flagged = content_checks(Message.parse(sent), ContentConfig(), smtputf8=False)
        assert not flagged.banned, name
        assert_stored(new[0], expected, alert=bool(flagged.bad_headers))
    assert proc.stop() == 0
