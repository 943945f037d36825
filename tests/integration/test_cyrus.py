"""lmtpfilter in front of a real Cyrus IMAP 3.x (Debian's cyrus-imapd): lmtpd, timsieved, imapd.

Cyrus is started by tests/harness/cyrus.py with Debian's imapd.conf and the lines the README
gives for lmtpfilter (scripts/conf/cyrus/lmtpfilter-imapd.conf); what was stored is read back
over IMAP as each user. Where Cyrus differs from Dovecot, and what the filter does about it:

* lmtpd answers RCPT itself: an unknown mailbox gets a three-line 550 5.1.1, a mailbox whose
  quota is reached 452 4.2.2 (Dovecot: 550 and 552 after DATA). The filter gives each
  recipient the reply Cyrus gave it, whenever Cyrus gave it.
* Folders: Debian's ``altnamespace: no`` puts a user's folders below INBOX ("INBOX/Junk"), so
  junk_folder is "INBOX/Junk"; ``user+Junk@`` reaches INBOX/Junk when anyone may post to it.
* Sieve: one active script per user, only over ManageSieve (no before-scripts): the filter
  logs in as a ``proxyservers`` user for each user, and includes the user's own script.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.cyrus import (
    PROXY_PASSWORD,
    PROXY_USER,
    Cyrus,
    cyrus_installed,
    start_cyrus,
)
from tests.harness.daemons import Postfix, free_port, lmtp_deliver, start_postfix
from tests.harness.scanners import EICAR, GTUBE, Clamd, Spamd
from tests.integration.test_scanning import message
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration

A, B, Q, DOT, GHOST = ("alice@example.org", "bob@example.org", "quota@example.org",
                       "john.doe@example.org", "ghost@example.org")
J, IN, D, OWN = ("junk@example.org", "inbox@example.org", "gone@example.org",
                 "own@example.org")
C = "chain@example.org"
JUNK = "INBOX/Junk"  # Debian's altnamespace: no
CYRUS_POLICY = f'junk_folder = "{JUNK}"\nrecipient_delimiter = "+"\nspam_destiny = "pass"'


@pytest.fixture(scope="module")
def cyrus(daemon_base: Path) -> Iterator[Cyrus]:
    import os
    if not cyrus_installed():
        if os.environ.get("LMTPFILTER_REQUIRE_DAEMONS") == "1":
            pytest.fail("Cyrus (cyrus-imapd, sasl2-bin) is not installed")
        pytest.skip("Cyrus (cyrus-imapd, sasl2-bin) is not installed")
    server = start_cyrus(daemon_base / "cy", [A, B, (Q, 1), DOT, J, IN, D, OWN, C])
    try:
        yield server
    finally:
        server.stop()


def cli(proc: FilterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmtpfilter", *args, "-c",
                           str(proc.config_path)], capture_output=True, text=True, timeout=60)


def start_filter(factory: type[FilterProcess], base: Path, cyrus: Cyrus,
                 **sections: str) -> FilterProcess:
    """A filter delivering to Cyrus's unix socket, as the README configures it."""
    listen = f"127.0.0.1:{free_port()}"
    text = filter_config(f"unix:{cyrus.lmtp_socket}", [listen],
                         **{"policy": CYRUS_POLICY, **sections})
    return factory(new_workdir(base, "cyf"), text, listen).start()


def managesieve(cyrus: Cyrus, base: Path, port: int | None = None) -> str:
    secret = new_workdir(base, "cys") / "managesieve.secret"
    secret.write_text(PROXY_PASSWORD + "\n")
    secret.chmod(0o600)
    return "\n".join([
        'method = "managesieve"',
        f'managesieve_address = "127.0.0.1:{port or cyrus.sieve_port}"',
        f'managesieve_user = "{PROXY_USER}"', f'managesieve_password_file = "{secret}"'])


# ---- the proxy against Cyrus's lmtpd ------------------------------------------------------


def test_cyrus_announces_what_the_readme_says(cyrus: Cyrus) -> None:
    with socket.create_connection(("127.0.0.1", cyrus.lmtp_port), timeout=10) as s:
        f = s.makefile("rwb")
        assert f.readline().startswith(b"220 ")
        f.write(b"LHLO filter.test\r\n")
        f.flush()
        lines = []
        while not (line := f.readline().decode()).startswith("250 "):
            lines.append(line[4:].strip())
    # Neither SMTPUTF8 nor DSN: the README's table of downstream servers.
    assert set(lines[1:]) == {"8BITMIME", "ENHANCEDSTATUSCODES", "PIPELINING", "SIZE",
                              "AUTH EXTERNAL", "IGNOREQUOTA"}, lines


async def test_cyrus_replies_per_recipient_in_one_transaction(
        filter_process: type[FilterProcess], daemon_base: Path, cyrus: Cyrus) -> None:
    # quota@ is at its 1 KB quota: lmtpd refuses the next message at RCPT with 452 4.2.2.
    filler = b"Subject: filler\r\n\r\n" + b"x" * 2000 + b"\r\n"
    if not cyrus.messages(Q):
        _, data = lmtp_deliver(cyrus.lmtp_port, "s@example.net", [Q], filler)
        assert data[0].startswith("250 "), data
    proc = start_filter(filter_process, daemon_base, cyrus)
    before = {u: len(cyrus.messages(u)) for u in (A, DOT)}
    before_junk = len(cyrus.messages(B, JUNK))
    body = ("Grüße aus Köln.\r\n.leading dot\r\n\tTab and trailing space \r\n"
            + "y" * 998 + "\r\n").encode()
    sent = (b"From: sender@example.net\r\nTo: several\r\nSubject: one transaction\r\n"
            b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <cyrus-one-tx@example.net>"
            b"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body)
    rcpts = [A, GHOST, Q, "bob+Junk@example.org", "John.Doe@Example.org"]
    result = await lmtp_session(proc.listen, "sender@example.net", rcpts, sent)
    replies = result.data_replies
    assert len(replies) == 5, replies
    # Cyrus's own replies (its 2xx after DATA says 2.1.5), its 550's three lines in one.
    assert [r[:9] for r in replies] == ["250 2.1.5", "550 5.1.1", "452 4.2.2", "250 2.1.5",
                                        "250 2.1.5"], replies
    assert replies[1].startswith("550 5.1.1 Mailbox unknown.  Either there is no mailbox "
                                 "associated with this; name or you do not have authorization "
                                 "to see it.; User unknown"), replies[1]
    assert replies[2].startswith("452 4.2.2 Over quota"), replies[2]
    # Stored byte for byte as sent, below the filter's Received: field and Cyrus's own.
    for user, folder, count in ((A, "INBOX", before[A]), (B, JUNK, before_junk),
                                (DOT, "INBOX", before[DOT])):
        stored = cyrus.wait_for_messages(user, count + 1, folder)[-1]
        assert stored.endswith(sent), (user, stored[:600])
        prefix = stored[: len(stored) - len(sent)]
        fields = re.split(rb"\r\n(?![ \t])", prefix.removesuffix(b"\r\n"))
        # Cyrus's four fields on top (its Received: names the filter), then the filter's.
        assert [f.split(b":")[0] for f in fields] == [
            b"Return-Path", b"Received", b"X-Cyrus-Session-Id", b"X-Sieve", b"Received"], fields
        assert b"from filter.test" in fields[1] and b"(lmtpfilter)" in fields[4]
    assert not [m for m in cyrus.messages(B) if b"cyrus-one-tx" in m]  # in INBOX/Junk only
    assert not [m for m in cyrus.messages(Q) if b"cyrus-one-tx" in m]
    assert proc.stop() == 0
