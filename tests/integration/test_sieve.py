"""Per-user spam destiny through generated Sieve scripts, with real Dovecot and spamd.

Dovecot is the installed one, 2.3 or 2.4, configured from the files for its version
(scripts/conf/dovecot-*/): its before-scripts chain and master user are the production
snippets the README quotes.

GTUBE goes through the real filter and real spamd in ONE transaction to users with the
destinies junk / inbox / discard; Dovecot runs the installed scripts. Each installer has its
own Dovecot, so that a default script never reaches another test's users.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import (
    MASTER_PASSWORD,
    MASTER_USER,
    Dovecot,
    free_port,
    managesieve_plain_token,
    start_dovecot,
)
from tests.harness.managesieve import ManageSieveSession
from tests.harness.scanners import GTUBE, Spamd
from tests.integration.test_scanning import message
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration

J, IN, D, U = "junk@example.org", "inbox@example.org", "gone@example.org", "plain@example.org"
H, X = "hostile@example.org", "x@other.org"
M1, M2, M3 = "m1@example.org", "m2@example.org", "m3@example.org"
HOSTILE = 'Junk"; discard; "'


def cli(proc: FilterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmtpfilter", *args, "-c",
                           str(proc.config_path)], capture_output=True, text=True, timeout=60)


def spam() -> bytes:
    return message("cheap watches", GTUBE.decode() + "\n")


def count(dc: Dovecot, user: str, folder: str = "INBOX") -> int:
    return len(dc.messages(user, folder))


def start_filter(factory: type[FilterProcess], base: Path, dc: Dovecot, spamd: Spamd,
                 sieve: str) -> FilterProcess:
    listen = f"127.0.0.1:{free_port()}"
    text = filter_config(
        f"127.0.0.1:{dc.lmtp_port}", [listen],
        spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"',
        policy='spam_destiny = "pass"', sieve=sieve)
    return factory(new_workdir(base, "sv"), text, listen).start()


@pytest.fixture(scope="module")
def dir_dovecot(daemon_base: Path) -> Iterator[Dovecot]:
    dc = start_dovecot(daemon_base / "svd", [J, IN, D, U, H, X])
    try:
        yield dc
    finally:
        dc.stop()


@pytest.fixture(scope="module")
def dir_filter(filter_process: type[FilterProcess], daemon_base: Path, dir_dovecot: Dovecot,
               spamd: Spamd) -> FilterProcess:
    proc = start_filter(filter_process, daemon_base, dir_dovecot, spamd,
                        f'method = "directory"\ndirectory = "{dir_dovecot.sieve_before_dir}"')
    for address, destiny in ((J, "junk"), (IN, "inbox"), (D, "discard")):
        result = cli(proc, "user", "set", address, "--junk-destiny", destiny)
        assert result.returncode == 0, result.stderr
    synced = cli(proc, "sieve", "sync")
    assert synced.returncode == 0, synced.stderr
    return proc


async def test_one_transaction_three_destinies(dir_filter: FilterProcess,
                                               dir_dovecot: Dovecot) -> None:
    dc = dir_dovecot
    for user in (J, IN, D):
        script = dc.sieve_before_dir / f"{user}.sieve"
        assert script.exists() and 'header :is "X-Spam-Flag" "YES"' in script.read_text()
        # Precompiled: Dovecot (2.3 and 2.4 alike) uses the .svbin beside the script, and would
        # log an error for each delivery if it had to compile and could not save it here.
        assert script.with_suffix(".svbin").stat().st_mtime >= script.stat().st_mtime
    before = {u: (count(dc, u), count(dc, u, "Junk")) for u in (J, IN, D)}
    result = await lmtp_session(dir_filter.listen, "s@example.net", [J, IN, D], spam())
    assert [r[:9] for r in result.data_replies] == ["250 2.0.0"] * 3
    dc.wait_for_messages(J, before[J][1] + 1, folder="Junk")
    dc.wait_for_messages(IN, before[IN][0] + 1)
    assert count(dc, J) == before[J][0]
    assert count(dc, IN, "Junk") == before[IN][1]
    assert (count(dc, D), count(dc, D, "Junk")) == before[D]  # discarded
    # Ham stays in the inbox for everyone.
    ham = await lmtp_session(dir_filter.listen, "s@example.net", [J, IN, D],
                             message("lunch tomorrow?"))
    assert [r[:9] for r in ham.data_replies] == ["250 2.0.0"] * 3
    for user in (J, IN, D):
        dc.wait_for_messages(user, before[user][0] + (2 if user == IN else 1))
    assert "Error" not in dc.log_text().replace("Error: (none)", "")


async def test_default_and_domain_scripts(dir_filter: FilterProcess,
                                          dir_dovecot: Dovecot) -> None:
    dc = dir_dovecot
    assert (dc.sieve_before_dir / "default.sieve").exists()  # [policy] junk_destiny = junk
    assert cli(dir_filter, "user", "set", "@other.org", "--junk-destiny", "inbox").returncode == 0
    assert (dc.sieve_before_dir / "@other.org.sieve").exists()
    before = {u: (count(dc, u), count(dc, u, "Junk")) for u in (U, X)}
    result = await lmtp_session(dir_filter.listen, "s@example.net", [U, X], spam())
    assert [r[:9] for r in result.data_replies] == ["250 2.0.0"] * 2
    dc.wait_for_messages(U, before[U][1] + 1, folder="Junk")  # the default: junk
    dc.wait_for_messages(X, before[X][0] + 1)  # the domain's override: inbox
    assert count(dc, X, "Junk") == before[X][1]


async def test_hostile_folder_name_is_a_folder(dir_filter: FilterProcess,
                                               dir_dovecot: Dovecot) -> None:
    set_ = cli(dir_filter, "user", "set", H, "--junk-folder", HOSTILE)
    assert set_.returncode == 0, set_.stderr
    result = await lmtp_session(dir_filter.listen, "s@example.net", [H], spam())
    assert result.data_replies[0].startswith("250 2.0.0")
    stored = dir_dovecot.wait_for_messages(H, 1, folder=HOSTILE)
    assert b"X-Spam-Flag: YES" in stored[0]


def test_user_delete_removes_the_script(dir_filter: FilterProcess,
                                        dir_dovecot: Dovecot) -> None:
    assert cli(dir_filter, "user", "set", "temp@example.org", "--junk-destiny",
               "discard").returncode == 0
    script = dir_dovecot.sieve_before_dir / "temp@example.org.sieve"
    assert script.exists()
    assert cli(dir_filter, "user", "delete", "temp@example.org").returncode == 0
    assert not script.exists()


# ---- ManageSieve ---------------------------------------------------------------------------

def sieve_session(port: int, user: str) -> ManageSieveSession:
    """A ManageSieve session as `user` (password "secret")."""
    return ManageSieveSession(port, managesieve_plain_token("", user, "secret"))


@pytest.fixture(scope="module")
def ms_dovecot(daemon_base: Path) -> Iterator[Dovecot]:
    dc = start_dovecot(daemon_base / "svm", [M1, M2, M3])
    try:
        yield dc
    finally:
        dc.stop()


async def test_managesieve_installer(filter_process: type[FilterProcess], daemon_base: Path,
                                     ms_dovecot: Dovecot, spamd: Spamd) -> None:
    dc = ms_dovecot
    # m1 already has an active script of their own.
    own = sieve_session(dc.managesieve_port, M1)
    own.put("mine", 'require ["fileinto", "mailbox"];\n'
                    'if header :contains "Subject" "lunch" { fileinto :create "Lunch"; }\n')
    own.command('SETACTIVE "mine"')
    own.close()
    secret = new_workdir(daemon_base, "msp") / "managesieve.secret"
    secret.write_text(MASTER_PASSWORD + "\n")
    proc = start_filter(filter_process, daemon_base, dc, spamd, "\n".join([
        'method = "managesieve"', f'managesieve_address = "127.0.0.1:{dc.managesieve_port}"',
        f'managesieve_user = "{MASTER_USER}"', f'managesieve_password_file = "{secret}"']))
    for address, destiny in ((M1, "junk"), (M2, "inbox"), (M3, "discard")):
        installed = cli(proc, "user", "set", address, "--junk-destiny", destiny)
        assert installed.returncode == 0, installed.stderr
    result = await lmtp_session(proc.listen, "s@example.net", [M1, M2, M3], spam())
    assert [r[:9] for r in result.data_replies] == ["250 2.0.0"] * 3
    dc.wait_for_messages(M1, 1, folder="Junk")
    dc.wait_for_messages(M2, 1)
    assert count(dc, M1) == 0 and dc.messages(M3) == [] and dc.messages(M3, "Junk") == []
    # m1's own script still runs for ham.
    ham = await lmtp_session(proc.listen, "s@example.net", [M1], message("lunch at noon"))
    assert ham.data_replies[0].startswith("250 2.0.0")
    dc.wait_for_messages(M1, 1, folder="Lunch")
    # Deleting the overrides gives m1 their own script back.
    assert cli(proc, "user", "delete", M1).returncode == 0
    check = sieve_session(dc.managesieve_port, M1)
    listing = check.command("LISTSCRIPTS")
    check.close()
    assert b'"mine" ACTIVE' in listing and b"lmtpfilter" not in listing
