"""The whole chain, every component real and started here:

    SMTP -> Postfix -> lmtpfilter (unix socket) -> Dovecot LMTP + Sieve
                           |-- clamd, spamd
                           '-- notifications -> Postfix -> Dovecot (the admin's mailbox)
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, Postfix, free_port, start_dovecot, start_postfix
from tests.harness.scanners import EICAR, GTUBE, Clamd, Spamd
from tests.integration.test_scanning import message

pytestmark = pytest.mark.integration

U1, U2, U3 = "ann@example.org", "ben@example.org", "cat@example.org"
JUNK, INBOX, ADMIN = "jay@example.org", "ivy@example.org", "admin@example.org"


class Chain:
    def __init__(self, dovecot: Dovecot, postfix: Postfix, proc: FilterProcess) -> None:
        self.dovecot, self.postfix, self.proc = dovecot, postfix, proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lmtpfilter", *args, "-c",
                               str(self.proc.config_path)], capture_output=True, text=True,
                              timeout=60)

    def wait_sent(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.postfix.maillog().count("status=sent") >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"not {count} deliveries: {self.postfix.maillog()[-2000:]}")


@pytest.fixture(scope="module")
def chain(filter_process: type[FilterProcess], daemon_base: Path, clamd: Clamd,
          spamd: Spamd) -> Iterator[Chain]:
    base = daemon_base / "e2e"
    dovecot = start_dovecot(base, [U1, U2, U3, JUNK, INBOX, ADMIN])
    workdir = new_workdir(daemon_base, "e2e")
    listen = f"unix:{workdir}/lmtp.sock"
    smtp_port = free_port()
    text = filter_config(
        f"127.0.0.1:{dovecot.lmtp_port}", [listen],
        clamav=f'enabled = true\naddress = "unix:{clamd.socket_path}"',
        spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"',
        policy='spam_destiny = "pass"',
        sieve=f'method = "directory"\ndirectory = "{dovecot.sieve_before_dir}"',
        notify=(f'smtp = "127.0.0.1:{smtp_port}"\nadmin = ["{ADMIN}"]\nrecipient = false\n'
                'interval = "0.3s"'))
    proc = filter_process(workdir, text, listen).start()
    postfix = start_postfix(base, transport=f"lmtp:{listen}", smtp_port=smtp_port)
    try:
        yield Chain(dovecot, postfix, proc)
    finally:
        postfix.stop()
        dovecot.stop()


def test_clean_mail_to_three_users(chain: Chain) -> None:
    body = "Dear all,\n\nthe minutes are attached. Grüße!\n.\n..two dots\n"
    msg = message("minutes", body)
    before = chain.postfix.maillog().count("status=sent")
    chain.postfix.send("boss@example.net", [U1, U2, U3], msg)
    chain.wait_sent(before + 3)
    expected = msg.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
    for user in (U1, U2, U3):
        stored = chain.dovecot.wait_for_messages(user, 1)[-1]
        assert stored.endswith(expected)  # the body as it was sent
        assert b"X-Spam-Flag: NO" in stored and b"X-Virus-Scanned: lmtpfilter" in stored


def test_spam_to_junk_and_inbox_destinies(chain: Chain) -> None:
    assert chain.cli("user", "set", JUNK, "--junk-destiny", "junk").returncode == 0
    assert chain.cli("user", "set", INBOX, "--junk-destiny", "inbox").returncode == 0
    chain.postfix.send("spammer@example.net", [JUNK, INBOX],
                       message("cheap watches", GTUBE.decode() + "\n"))
    junk = chain.dovecot.wait_for_messages(JUNK, 1, folder="Junk")[0]
    inbox = chain.dovecot.wait_for_messages(INBOX, 1)[0]
    for stored in (junk, inbox):
        assert b"X-Spam-Flag: YES" in stored
        assert b"Subject: [SPAM] cheap watches" in stored
    assert chain.dovecot.messages(JUNK) == []


def test_virus_quarantined_and_admin_notified_through_postfix(chain: Chain) -> None:
    admin_before = len(chain.dovecot.messages(ADMIN))
    u3_before = len(chain.dovecot.messages(U3))
    chain.postfix.send("evil@example.net", [U3], message("invoice", attachment=("x.com", EICAR)))
    note = chain.dovecot.wait_for_messages(ADMIN, admin_before + 1, timeout=30)[-1]
    qid = re.search(rb"Quarantine ID: ([A-Za-z0-9_-]{22})", note)
    assert qid is not None and b"Eicar-Test-Signature" in note
    assert len(chain.dovecot.messages(U3)) == u3_before
    files = list((chain.proc.workdir / "quarantine").rglob(f"{qid.group(1).decode()}.eml.gz"))
    assert len(files) == 1
    listed = chain.cli("quarantine", "list")
    assert qid.group(1).decode() in listed.stdout
    assert "status=sent (250 2.7.0 Ok, discarded, quarantined as" in chain.postfix.maillog()


def test_clamd_down_defers_then_delivers_once(chain: Chain, clamd: Clamd) -> None:
    before = len(chain.dovecot.messages(U2))
    clamd.stop()
    try:
        chain.postfix.send("someone@example.net", [U2], message("while clamd is away"))
        deadline = time.monotonic() + 20
        while "451 4.7.1" not in chain.postfix.maillog() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "status=deferred" in chain.postfix.maillog()
        assert "451 4.7.1" in chain.postfix.maillog()
        assert "while clamd is away" in chain.postfix.queue() or not chain.postfix.queue_is_empty()
        assert len(chain.dovecot.messages(U2)) == before
    finally:
        clamd.restart()
    chain.postfix.flush()
    chain.postfix.wait_queue_empty(30)
    stored = chain.dovecot.wait_for_messages(U2, before + 1)
    assert len(stored) == before + 1
    assert sum(b"while clamd is away" in m for m in stored) == 1


def test_sigkill_in_a_burst_loses_nothing(chain: Chain) -> None:
    """200 messages; the filter is killed with SIGKILL in the middle and restarted. Every
    message must arrive. A duplicate is acceptable only where Postfix never got our reply
    (downstream had accepted, then we died): Postfix retried. They are counted and bounded
    by the transactions that can be in flight at once."""
    total = 200
    for i in range(total):
        chain.postfix.send("bulk@example.net", [U1], message(f"burst {i:03d}", f"number {i}\n"))
        if i == 60:
            assert chain.proc.proc is not None
            chain.proc.proc.send_signal(signal.SIGKILL)
            chain.proc.proc.wait()
    chain.proc.start()
    chain.postfix.flush()
    chain.postfix.wait_queue_empty(90)
    stored = chain.dovecot.messages(U1)
    counts = [sum(f"Subject: burst {i:03d}".encode() in m for m in stored) for i in range(total)]
    lost = [i for i, n in enumerate(counts) if n == 0]
    duplicated = [i for i, n in enumerate(counts) if n > 1]
    assert lost == []
    # Postfix's default lmtp concurrency per destination is 20: at most that many replies
    # can have been lost with the process.
    assert len(duplicated) <= 20, duplicated
    print(f"burst: {total} delivered, {len(duplicated)} duplicated by retries: {duplicated}")
