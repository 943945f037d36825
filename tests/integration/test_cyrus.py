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
    CONF,
    CYR_INFO,
    PROXY_PASSWORD,
    PROXY_USER,
    Cyrus,
    cyrus_installed,
    start_cyrus,
)
from tests.harness.daemons import Postfix, free_port, lmtp_deliver, start_postfix
from tests.harness.managesieve import ManageSieveSession
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
    # Neither SMTPUTF8 nor DSN: the README's table of downstream servers. (Cyrus 3.10, on
    # Debian 13, gives SIZE its limit: "SIZE 2147483647".)
    keywords = {re.sub(r"^SIZE \d+$", "SIZE", line) for line in lines[1:]}
    assert keywords == {"8BITMIME", "ENHANCEDSTATUSCODES", "PIPELINING", "SIZE",
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


async def test_plus_address_gets_the_users_policy(
        filter_process: type[FilterProcess], daemon_base: Path, cyrus: Cyrus,
        spamd: Spamd) -> None:
    """recipient_delimiter = "+": Bob+Junk@Example.ORG is filed by Cyrus into bob's INBOX/Junk
    and gets bob@'s policy from the filter (its subject tag); alice@ in the same transaction
    her own."""
    proc = start_filter(filter_process, daemon_base, cyrus,
                        spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"')
    changed = cli(proc, "user", "set", B, "--spam-subject-tag", "[bob's spam] ")
    assert changed.returncode == 0, changed.stderr
    before = {A: len(cyrus.messages(A)), B: len(cyrus.messages(B, JUNK))}
    spam = message("plus address", GTUBE.decode() + "\n")
    # Cyrus lowercases up to the "+" (lmtp_downcase_rcpt), the filter the whole address.
    result = await lmtp_session(proc.listen, "s@example.net", [A, "Bob+Junk@Example.ORG"], spam)
    assert [r[:5] for r in result.data_replies] == ["250 2"] * 2, result.data_replies
    bobs = cyrus.wait_for_messages(B, before[B] + 1, JUNK)[-1]
    alices = cyrus.wait_for_messages(A, before[A] + 1)[-1]
    assert b"Subject: [bob's spam] plus address" in bobs
    assert b"Subject: [SPAM] plus address" in alices
    log = cli(proc, "log", "--limit", "5")
    assert "bob+junk@example.org" in log.stdout.lower(), log.stdout + log.stderr
    assert proc.stop() == 0


# ---- per-user Sieve over ManageSieve (timsieved) -------------------------------------------


def sieve_session(cyrus: Cyrus, user: str, as_proxy: bool = False) -> ManageSieveSession:
    """A ManageSieve session to timsieved: as a user, or as the filter's proxy login."""
    return ManageSieveSession(cyrus.sieve_port, cyrus.sieve_token(user, as_proxy))


def scripts_of(cyrus: Cyrus, user: str) -> dict[str, str]:
    session = sieve_session(cyrus, user)
    try:
        return session.scripts()
    finally:
        session.close()


@pytest.fixture(scope="module")
def sieve_filter(filter_process: type[FilterProcess], daemon_base: Path, cyrus: Cyrus,
                 spamd: Spamd) -> FilterProcess:
    """A filter installing scripts over ManageSieve; own@ has an active script of their own."""
    own = sieve_session(cyrus, OWN)
    own.put("mine", 'require ["fileinto", "mailbox"];\r\n'
                    'if header :contains "Subject" "lunch" { fileinto :create "INBOX/Lunch"; }\r\n')
    own.command('SETACTIVE "mine"')
    own.close()
    return start_filter(filter_process, daemon_base, cyrus,
                        spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"',
                        sieve=managesieve(cyrus, daemon_base))


async def test_three_destinies_in_one_transaction(sieve_filter: FilterProcess,
                                                  cyrus: Cyrus) -> None:
    for address, destiny in ((J, "junk"), (IN, "inbox"), (D, "discard"), (OWN, "junk")):
        installed = cli(sieve_filter, "user", "set", address, "--junk-destiny", destiny)
        assert installed.returncode == 0, installed.stderr
    # Installed as the users' active scripts, own@'s own script kept behind ours.
    assert set(scripts_of(cyrus, J)) == {"lmtpfilter ACTIVE"}
    assert set(scripts_of(cyrus, OWN)) == {"lmtpfilter", "mine", "lmtpfilter-main ACTIVE"}
    users = (J, IN, D, OWN)
    before = {u: (len(cyrus.messages(u)), len(cyrus.messages(u, JUNK))) for u in users}
    spam = message("cheap watches", GTUBE.decode() + "\n")
    result = await lmtp_session(sieve_filter.listen, "s@example.net", list(users), spam)
    assert [r[:5] for r in result.data_replies] == ["250 2"] * 4, result.data_replies
    cyrus.wait_for_messages(J, before[J][1] + 1, JUNK)
    cyrus.wait_for_messages(OWN, before[OWN][1] + 1, JUNK)
    cyrus.wait_for_messages(IN, before[IN][0] + 1)
    assert len(cyrus.messages(J)) == before[J][0]
    assert len(cyrus.messages(IN, JUNK)) == before[IN][1]
    assert (len(cyrus.messages(D)), len(cyrus.messages(D, JUNK))) == before[D]  # discarded
    # Ham: the inbox for everyone, and own@'s own script still files lunch into INBOX/Lunch.
    ham = await lmtp_session(sieve_filter.listen, "s@example.net", list(users),
                             message("lunch tomorrow?"))
    assert [r[:5] for r in ham.data_replies] == ["250 2"] * 4, ham.data_replies
    for user in (J, IN, D):
        cyrus.wait_for_messages(user, before[user][0] + (2 if user == IN else 1))
    cyrus.wait_for_messages(OWN, 1, "INBOX/Lunch")
    assert len(cyrus.messages(OWN)) == before[OWN][0]


def test_sieve_sync_is_idempotent_and_delete_gives_the_users_script_back(
        sieve_filter: FilterProcess, cyrus: Cyrus) -> None:
    assert cli(sieve_filter, "user", "set", OWN, "--junk-destiny", "inbox").returncode == 0
    first = cli(sieve_filter, "sieve", "sync")
    assert first.returncode == 0, first.stderr
    after_first = {u: scripts_of(cyrus, u) for u in (J, IN, D, OWN)}
    second = cli(sieve_filter, "sieve", "sync")
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr
    assert {u: scripts_of(cyrus, u) for u in (J, IN, D, OWN)} == after_first
    assert 'fileinto "INBOX"' in after_first[OWN]["lmtpfilter"]
    assert 'include :personal "mine"' in after_first[OWN]["lmtpfilter-main ACTIVE"]
    deleted = cli(sieve_filter, "user", "delete", OWN)
    assert deleted.returncode == 0, deleted.stderr
    assert set(scripts_of(cyrus, OWN)) == {"mine ACTIVE"}


def test_managesieve_down_or_refusing_changes_nothing(
        filter_process: type[FilterProcess], daemon_base: Path, cyrus: Cyrus) -> None:
    """A ManageSieve server that is down (nothing listens) or refuses the login: one line
    naming the server, exit 1, and neither the policy nor any script changed."""
    dead = free_port()
    down = start_filter(filter_process, daemon_base, cyrus,
                        sieve=managesieve(cyrus, daemon_base, port=dead))
    scripts = scripts_of(cyrus, J)
    done = cli(down, "user", "set", J, "--junk-destiny", "discard")
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"ManageSieve 127.0.0.1:{dead}" in done.stderr and "nothing changed" in done.stderr
    assert cli(down, "user", "list").stdout == ""  # this filter's own database: no row
    assert scripts_of(cyrus, J) == scripts
    # Logged in with the right password first (the same script as before), then a wrong one.
    wrong = start_filter(filter_process, daemon_base, cyrus,
                         sieve=managesieve(cyrus, daemon_base))
    assert cli(wrong, "user", "set", J, "--junk-destiny", "junk").returncode == 0
    assert scripts_of(cyrus, J) == scripts
    secret = re.search(r'managesieve_password_file = "([^"]+)"',
                       wrong.config_path.read_text())
    assert secret
    Path(secret.group(1)).write_text("not the password\n")
    listed = cli(wrong, "user", "list").stdout
    for args in (("user", "set", J, "--junk-destiny", "discard"), ("user", "delete", J),
                 ("sieve", "sync")):
        refused = cli(wrong, *args)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "login as lmtpfilter for junk@example.org refused" in refused.stderr
        assert "not the password" not in refused.stderr and "Traceback" not in refused.stderr
        assert args[0] == "sieve" or "nothing changed" in refused.stderr, refused.stderr
    assert cli(wrong, "user", "list").stdout == listed and "junk" in listed
    assert scripts_of(cyrus, J) == scripts
    assert down.stop() == 0 and wrong.stop() == 0


# ---- the whole chain: Postfix -> lmtpfilter (clamd, spamd) -> Cyrus ------------------------


@pytest.fixture
def cyrus_chain(filter_process: type[FilterProcess], daemon_base: Path, cyrus: Cyrus,
                clamd: Clamd, spamd: Spamd) -> Iterator[tuple[Postfix, FilterProcess]]:
    """Postfix at Debian's defaults, virtual_transport = lmtp:unix:<the filter's socket>; the
    filter with both scanners delivers to Cyrus's unix socket and installs Sieve scripts."""
    workdir = new_workdir(daemon_base, "cychain")
    listen = f"unix:{workdir}/lmtp.sock"
    text = filter_config(
        f"unix:{cyrus.lmtp_socket}", [listen], policy=CYRUS_POLICY,
        clamav=f'enabled = true\naddress = "unix:{clamd.socket_path}"',
        spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"',
        sieve=managesieve(cyrus, daemon_base))
    proc = filter_process(workdir, text, listen).start()
    postfix = start_postfix(workdir, transport=f"lmtp:{listen}")
    try:
        yield postfix, proc
    finally:
        postfix.stop()


def wait_in_log(postfix: Postfix, text: str, count: int = 1, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while postfix.maillog().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in\n{postfix.maillog()[-3000:]}"
        time.sleep(0.1)


def with_id(messages: list[bytes], message_id: bytes) -> list[bytes]:
    return [m for m in messages if b"Message-ID: " + message_id in m]


def test_the_chain_ends_each_message_where_the_policy_says(
        cyrus_chain: tuple[Postfix, FilterProcess], cyrus: Cyrus) -> None:
    postfix, proc = cyrus_chain
    assert cli(proc, "user", "set", C, "--junk-destiny", "junk").returncode == 0
    clean = message("chain clean")
    spam = message("chain spam", GTUBE.decode() + "\n")
    virus = message("chain virus", attachment=("eicar.com", EICAR))
    for sent in (clean, spam, virus):
        postfix.send("sender@example.net", [C], sent)
    postfix.wait_queue_empty(timeout=60)
    wait_in_log(postfix, "status=sent", 3)
    [inbox] = cyrus.wait_for_messages(C, 1)
    [junk] = cyrus.wait_for_messages(C, 1, JUNK)
    assert b"Subject: chain clean" in inbox and b"X-Spam-Flag: NO" in inbox
    assert b"Subject: [SPAM] chain spam" in junk and b"X-Spam-Flag: YES" in junk
    assert b"chain virus" not in b"".join(cyrus.messages(C) + cyrus.messages(C, JUNK))
    held = cli(proc, "quarantine", "list")
    assert held.returncode == 0, held.stderr
    reasons = sorted(line.split()[3] for line in held.stdout.splitlines() if C in line)
    assert reasons == ["spam", "virus"], held.stdout  # spam over the kill level: a copy kept


def test_cyrus_down_means_postfix_keeps_the_mail_then_delivers_it_once(
        cyrus_chain: tuple[Postfix, FilterProcess], cyrus: Cyrus) -> None:
    postfix, _proc = cyrus_chain
    before = len(cyrus.messages(C))
    sent = message("while Cyrus was down")
    message_id = re.search(rb"Message-ID: (\S+)", sent)
    assert message_id
    cyrus.stop()
    try:
        postfix.send("sender@example.net", [C], sent)
        wait_in_log(postfix, "status=deferred")
        deferred = postfix.maillog()
        assert "451 4.4.1" in deferred and "status=bounced" not in deferred, deferred[-2000:]
        assert not postfix.queue_is_empty()
    finally:
        cyrus.start()
    postfix.flush()
    postfix.wait_queue_empty(timeout=60)
    stored = cyrus.wait_for_messages(C, before + 1)
    time.sleep(1)  # a second copy would be in by now: Postfix's queue is already empty
    assert len(with_id(cyrus.messages(C), message_id.group(1))) == 1
    assert len(stored) == before + 1


# ---- virtdomains: off -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cyrus_without_domains(cyrus: Cyrus, daemon_base: Path) -> Iterator[Cyrus]:
    server = start_cyrus(daemon_base / "cyv", [A], options={"virtdomains": "off"})
    try:
        yield server
    finally:
        server.stop()


async def test_virtdomains_off_one_mailbox_per_local_part(
        filter_process: type[FilterProcess], daemon_base: Path,
        cyrus_without_domains: Cyrus, spamd: Spamd) -> None:
    """Cyrus drops the domain: alice@example.org and alice@example.net are both user "alice".
    The filter's policies stay per address; over ManageSieve it acts for "alice"
    (managesieve_authzid = "local-part"), which is the only name timsieved accepts."""
    cyrus = cyrus_without_domains
    sieve = managesieve(cyrus, daemon_base) + '\nmanagesieve_authzid = "local-part"'
    proc = start_filter(filter_process, daemon_base, cyrus, sieve=sieve,
                        spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"')
    changed = cli(proc, "user", "set", A, "--junk-destiny", "junk", "--spam-subject-tag",
                  "[alice's spam] ")
    assert changed.returncode == 0, changed.stderr
    assert set(scripts_of(cyrus, A)) == {"lmtpfilter ACTIVE"}  # alice's, as user "alice"
    other = "alice@example.net"
    spam = message("no domains", GTUBE.decode() + "\n")
    result = await lmtp_session(proc.listen, "s@example.net", [A, other], spam)
    assert [r[:5] for r in result.data_replies] == ["250 2"] * 2, result.data_replies
    # One mailbox: Cyrus stores a message once per mailbox and Message-ID (its duplicate
    # suppression) and says 250 for both; the first copy was alice@example.org's.
    [first] = cyrus.wait_for_messages(A, 1, JUNK)
    assert b"Subject: [alice's spam] no domains" in first
    time.sleep(0.5)
    assert len(cyrus.messages(A, JUNK)) == 1
    # A message for alice@example.net alone: the filter's default policy, alice's script.
    spam = message("no domains, other address", GTUBE.decode() + "\n")
    result = await lmtp_session(proc.listen, "s@example.net", [other], spam)
    assert result.data_replies[0].startswith("250 2"), result.data_replies
    second = cyrus.wait_for_messages(A, 2, JUNK)[-1]
    assert b"Subject: [SPAM] no domains, other address" in second
    assert proc.stop() == 0


def test_cyrus_runs_the_readme_lines(cyrus: Cyrus) -> None:
    """Cyrus's effective settings (cyr_info conf-all) have each line of
    scripts/conf/cyrus/lmtpfilter-imapd.conf, which the README quotes."""
    effective = subprocess.run(
        ["runuser", "-u", "cyrus", "--", str(CYR_INFO), "-C", str(cyrus.imapd_conf),
         "conf-all"], capture_output=True, text=True, timeout=30, check=True).stdout
    lines = [line for line in (CONF / "lmtpfilter-imapd.conf").read_text().splitlines()
             if line and not line.startswith("#")]
    assert len(lines) == 4 and set(lines) <= set(effective.splitlines()), effective


@pytest.mark.parametrize("groups, reaches", [("mail", True), ("nogroup", False)])
def test_the_lmtp_socket_needs_group_mail(cyrus: Cyrus, groups: str, reaches: bool) -> None:
    """The README's `adduser lmtpfilter mail`: Cyrus's socket directory is 0750 cyrus:mail
    (Debian's tmpfiles.d), so an unprivileged user reaches lmtpd only in group mail."""
    connect = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
               f"try:\n    s.connect({str(cyrus.lmtp_socket)!r})\nexcept OSError as e:\n"
               "    sys.exit(str(e))\nprint(s.recv(100).decode())\n")
    done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                           f"--groups={groups}", "/usr/bin/python3", "-c", connect],
                          capture_output=True, text=True, timeout=30)
    if reaches:
        assert done.returncode == 0 and done.stdout.startswith("220 "), done
    else:
        assert done.returncode != 0 and "Permission denied" in done.stderr, done
