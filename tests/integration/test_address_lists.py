"""Address lists written the amavis way, and a recipient delimiter, through the real filter,
spamd and Dovecot: no local recipient is refused because of how a list was written, only
local recipients are tagged, and alice+lists@ is treated as alice@ and recorded as itself."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, free_port, start_dovecot
from tests.harness.scanners import GTUBE, Spamd
from tests.integration.test_scanning import message
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration

LOCAL = ["a@example.org", "b@mail.example.org"]
ELSEWHERE = "c@partner.test"
ALICE = "alice@example.org"

# The tutorial's and Debian's settings, as an amavis admin writes them, in TOML: Debian's
# @local_domains_acl = ( ".$mydomain" ) with $mydomain = example.org; the tutorial's ( "." );
# bypass lists in every form.
AMAVIS_STYLE = {
    "debian": 'spam_destiny = "pass"\nlocal_domains = [".example.org"]',
    "tutorial": 'spam_destiny = "pass"\nlocal_domains = ["."]',
    "mixed": ('spam_destiny = "pass"\n'
              'local_domains = ["example.org", "@.mail.example.org", "!nobody@example.org"]\n'
              'bypass_virus_checks = ["postmaster@", "@partner.test"]\n'
              'bypass_spam_checks = [".lists.example.org", "abuse@example.org"]'),
}


@pytest.fixture(scope="module")
def users_dovecot(daemon_base: Path) -> Iterator[Dovecot]:
    dc = start_dovecot(daemon_base / "lists", [*LOCAL, ELSEWHERE, ALICE])
    try:
        yield dc
    finally:
        dc.stop()


def start(factory: type[FilterProcess], base: Path, dc: Dovecot, spamd: Spamd,
          policy: str) -> FilterProcess:
    listen = f"127.0.0.1:{free_port()}"
    text = filter_config(
        f"127.0.0.1:{dc.lmtp_port}", [listen],
        spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"',
        policy=policy,
        sieve=f'method = "directory"\ndirectory = "{dc.sieve_before_dir}"')
    return factory(new_workdir(base, "al"), text, listen).start()


@pytest.mark.parametrize("settings", sorted(AMAVIS_STYLE))
async def test_no_local_recipient_is_refused_however_the_lists_are_written(
        settings: str, filter_process: type[FilterProcess], daemon_base: Path,
        users_dovecot: Dovecot, spamd: Spamd) -> None:
    proc = start(filter_process, daemon_base, users_dovecot, spamd, AMAVIS_STYLE[settings])
    before = {u: len(users_dovecot.messages(u)) for u in [*LOCAL, ELSEWHERE]}
    result = await lmtp_session(proc.listen, "s@example.net", [*LOCAL, ELSEWHERE],
                                message("lists", "probably spam\n" + GTUBE.decode() + "\n"))
    assert [r[:3] for r in result.rcpt_replies] == ["250"] * 3
    assert [r[:3] for r in result.data_replies] == ["250"] * 3, proc.log()[-2000:]
    for user in LOCAL:  # local: tagged, whatever the form of the list
        stored = users_dovecot.wait_for_messages(user, before[user] + 1)[-1]
        assert b"X-Spam-Flag: YES" in stored and b"Subject: [SPAM] lists" in stored
    stored = users_dovecot.wait_for_messages(ELSEWHERE, before[ELSEWHERE] + 1)[-1]
    if settings == "tutorial":  # "." makes everyone local
        assert b"X-Spam-Flag: YES" in stored
    else:  # amavis tags local recipients only; the others are delivered, untagged
        assert b"X-Spam-" not in stored and b"Subject: lists" in stored
    assert proc.stop() == 0


async def test_alice_plus_lists_gets_alices_policy_and_sieve_script_and_is_recorded_as_is(
        filter_process: type[FilterProcess], daemon_base: Path, users_dovecot: Dovecot,
        spamd: Spamd) -> None:
    proc = start(filter_process, daemon_base, users_dovecot, spamd,
                 'spam_destiny = "discard"\nrecipient_delimiter = "+"')
    # alice's own row: kill-level spam is kept for her (tagged), and her script files it.
    done = subprocess.run(
        [sys.executable, "-m", "lmtpfilter", "user", "set", ALICE, "--kill-level", "5000",
         "--junk-destiny", "junk", "-c", str(proc.config_path)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before = len(users_dovecot.messages(ALICE, "Junk"))
    result = await lmtp_session(proc.listen, "s@example.net", ["alice+lists@example.org"],
                                message("for a list", GTUBE.decode() + "\n"))
    assert [r[:3] for r in result.data_replies] == ["250"], proc.log()[-2000:]
    stored = users_dovecot.wait_for_messages(ALICE, before + 1, folder="Junk")[-1]
    assert b"X-Spam-Flag: YES" in stored
    with sqlite3.connect(proc.workdir / "lmtpfilter.db") as db:
        rows = db.execute("select address, action, category from recipient_verdicts").fetchall()
    assert rows == [("alice+lists@example.org", "deliver", "spammy")]
    assert proc.stop() == 0
