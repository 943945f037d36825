"""`lmtpfilter quarantine import-amavis` on what the real amavisd-new quarantined (issue 14).

Debian's amavisd-new, with Debian's conf.d as shipped plus checks on and discarding destinies,
gets an EICAR and a GTUBE message over LMTP and keeps them in its file quarantine (hashed
layout, spam gzipped). The import lists both with their envelopes, a release delivers the
original message to Dovecot, a second import adds nothing, and the janitor expires an
imported message by the age amavis gave its file; on the sql store (PostgreSQL) as well.
"""

from __future__ import annotations

import gzip
import os
import pwd
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import filter_config, new_workdir
from tests.harness.amavisd import ENABLE_CHECKS, Amavisd, debian_conf_files, start_amavisd
from tests.harness.daemons import Dovecot, lmtp_deliver
from tests.harness.postgres import Postgres
from tests.harness.scanners import EICAR, GTUBE, Clamd, Spamd

pytestmark = pytest.mark.integration

U1, U2, U3 = "user1@example.org", "user2@example.org", "user3@example.org"
VIRUS_SENDER, SPAM_SENDER = "virus-sender@example.net", "spam-sender@example.net"
# What a test box changes beyond Debian's conf.d: both kinds discarded (and so quarantined).
# GTUBE scores 1000, far above Debian's kill level (6.31).
DESTINIES = """\
$final_virus_destiny = D_DISCARD; $final_spam_destiny = D_DISCARD;
$virus_admin = undef; $spam_admin = undef;
"""
DISCARDED = re.compile(r"250 2\.7\.0 Ok, discarded, id=\S+ - (INFECTED|spam)")
MAX_AGE_DAYS = 30


@pytest.fixture(scope="module")
def amavisd(daemon_base: Path, clamd: Clamd, spamd: Spamd, dovecot: Dovecot
            ) -> Iterator[Amavisd]:
    daemon = start_amavisd(
        daemon_base, clamd_socket=clamd.socket_path, spamd_site_dir=spamd.dir / "site",
        protocol="LMTP", forward_method=f"lmtp:[127.0.0.1]:{dovecot.lmtp_port}",
        conf_files=debian_conf_files(), extra=ENABLE_CHECKS + DESTINIES)
    try:
        yield daemon
    finally:
        daemon.stop()


def message(sender: str, recipient: str, subject: str, body: bytes) -> bytes:
    return (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.net>\r\n\r\n").encode() + body


def quarantine(amavisd: Amavisd, sender: str, recipient: str, subject: str, body: bytes
               ) -> tuple[bytes, Path]:
    """Send one message through amavisd; return it and the quarantine file amavis wrote."""
    data = message(sender, recipient, subject, body)
    _, replies = lmtp_deliver(amavisd.port, sender, [recipient], data)
    assert len(replies) == 1 and DISCARDED.match(replies[0]), (replies, amavisd.log_tail())
    mail_id = re.search(rf"<{re.escape(sender)}> -> <{re.escape(recipient)}>.*?"
                        r"quarantine: (\S+), ", amavisd.log())
    assert mail_id, amavisd.log_tail()
    path = amavisd.quarantine_dir / mail_id.group(1)
    assert path.is_file()
    return data, path


def amavis_files(amavisd: Amavisd) -> list[Path]:
    return [p for p in amavisd.quarantine_dir.rglob("*")
            if p.is_file() and p.name.startswith(("virus-", "spam-"))]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmtpfilter", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def filter_conf(daemon_base: Path, dovecot: Dovecot) -> Path:
    """A filter's config (database, quarantine, downstream = Dovecot), schema created."""
    workdir = new_workdir(daemon_base, "amavis-import")
    config = workdir / "lmtpfilter.toml"
    config.write_text(filter_config(
        f"127.0.0.1:{dovecot.lmtp_port}", [f"unix:{workdir}/lmtp.sock"],
        janitor=f'max_age = "{MAX_AGE_DAYS}d"'))
    upgraded = cli(config, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    return config


def listed(config: Path) -> dict[str, str]:
    """`quarantine list --all`: the line of each ID."""
    result = cli(config, "quarantine", "list", "--all")
    assert result.returncode == 0, result.stderr
    return {line.split()[0]: line for line in result.stdout.splitlines()}


def test_import_list_release_reimport_and_expire(
        amavisd: Amavisd, filter_conf: Path, dovecot: Dovecot) -> None:
    virus, virus_file = quarantine(amavisd, VIRUS_SENDER, U1, "invoice", EICAR + b"\r\n")
    spam, spam_file = quarantine(amavisd, SPAM_SENDER, U2, "cheap pills",
                                 b"buy now\r\n" + GTUBE + b"\r\n")
    # Debian's layout: a sub-directory per first mail_id character; spam gzipped.
    assert virus_file.parent.parent == amavisd.quarantine_dir
    assert virus_file.name.startswith("virus-") and spam_file.name.startswith("spam-")
    assert spam_file.suffix == ".gz"
    sources = {p: (p.stat().st_mtime, p.read_bytes()) for p in (virus_file, spam_file)}
    held = len(amavis_files(amavisd))  # 2, or more if another test of the module ran first

    imported = cli(filter_conf, "quarantine", "import-amavis", str(amavisd.quarantine_dir))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == f"imported {held}, already there 0, skipped 0\n"
    assert imported.stderr == ""

    lines = listed(filter_conf)
    assert len(lines) == held
    virus_line = next(line for line in lines.values() if f"<{VIRUS_SENDER}> -> {U1} " in line)
    spam_line = next(line for line in lines.values() if f"<{SPAM_SENDER}> -> {U2} " in line)
    assert " virus " in virus_line and "Eicar-Test-Signature" in virus_line
    assert " spam " in spam_line and "'cheap pills'" in spam_line
    # The score amavis recorded (GTUBE's 1000 and the small rules SpamAssassin added).
    recorded = re.search(rb"^X-Spam-Score: (\S+)$", gzip.decompress(spam_file.read_bytes()),
                         re.M)
    assert recorded and float(spam_line.split("  ")[-2]) == float(recorded.group(1))
    virus_id, spam_id = virus_line.split()[0], spam_line.split()[0]

    # The amavis file name finds the imported message too.
    shown = cli(filter_conf, "quarantine", "show", virus_file.name)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"Quarantine-ID: {virus_id}\n")
    assert f"X-Quarantine-ID: <{virus_id}>" in shown.stdout
    assert "X-Envelope-To" not in shown.stdout and "X-Amavis-Alert" not in shown.stdout

    # A release delivers the original message (amavis's Received: on top) to the mailbox.
    for qid, rcpt, original in ((virus_id, U1, virus), (spam_id, U2, spam)):
        before = len(dovecot.messages(rcpt))
        released = cli(filter_conf, "quarantine", "release", qid)
        assert released.returncode == 0, released.stderr
        assert released.stdout.startswith(f"{rcpt}: 250 2.0.0")
        got = dovecot.wait_for_messages(rcpt, before + 1)
        copy = next(m for m in got if f"X-Quarantine-ID: <{qid}>".encode() in m)
        header, body = original.split(b"\r\n\r\n", 1)
        assert copy.replace(b"\r\n", b"\n").endswith(
            header.replace(b"\r\n", b"\n") + b"\n\n" + body.replace(b"\r\n", b"\n"))
        assert b"X-Envelope-From" not in copy and b"X-Amavis-Alert" not in copy
        assert b"by localhost (amavis.example.org" in copy  # amavis's own Received:

    again = cli(filter_conf, "quarantine", "import-amavis", str(amavisd.quarantine_dir))
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"imported 0, already there {held}, skipped 0\n"
    assert {p: (p.stat().st_mtime, p.read_bytes()) for p in sources} == sources

    # An old one (amavis wrote it 40 days ago): imported with that age, so the janitor
    # expires it at its next pass and keeps the others.
    _, old_file = quarantine(amavisd, SPAM_SENDER, U3, "old spam", GTUBE + b"\r\n")
    old = time.time() - (MAX_AGE_DAYS + 10) * 86400
    os.utime(old_file, (old, old))
    third = cli(filter_conf, "quarantine", "import-amavis", str(amavisd.quarantine_dir))
    assert third.stdout == f"imported 1, already there {held}, skipped 0\n", third.stderr
    old_id = next(qid for qid, line in listed(filter_conf).items() if f"-> {U3} " in line)
    janitor = subprocess.run([sys.executable, "-m", "janitor", "run", "-c", str(filter_conf)],
                             capture_output=True, text=True, timeout=120)
    assert janitor.returncode == 0, janitor.stderr
    states = {qid: line.split()[4] for qid, line in listed(filter_conf).items()}
    assert {qid: states[qid] for qid in (old_id, virus_id, spam_id)} == {
        old_id: "expired", virus_id: "released", spam_id: "released"}
    database = filter_conf.parent / "lmtpfilter.db"
    with sqlite3.connect(database) as conn:
        (created,) = conn.execute("select created_at from quarantine where id = ?",
                                  (old_id,)).fetchone()
    assert str(created).startswith(time.strftime("%Y-%m-%d", time.gmtime(old)))
    assert old_file.exists()  # the source is never touched


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_root_runs_it_as_the_service_user_who_needs_group_amavis(
        amavisd: Amavisd, daemon_base: Path, service_bin: Path,
        service_user: pwd.struct_passwd) -> None:
    """Started as root, the command is the service user's (privileges.py) and so cannot read
    amavis's 0750 quarantine: it says so, and what to do, in one line. Done, it works."""
    quarantine(amavisd, "priv-sender@example.net", U1, "for the service user",
               EICAR + b"\r\n")
    state = new_workdir(daemon_base, "amavis-priv")
    os.chown(state, service_user.pw_uid, service_user.pw_gid)
    config = state / "lmtpfilter.toml"
    config.write_text(filter_config("127.0.0.1:1", [f"unix:{state}/lmtp.sock"]))
    lmtpfilter = str(service_bin / "lmtpfilter")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([lmtpfilter, *args, "-c", str(config)], capture_output=True,
                              text=True, timeout=120)

    assert run("db", "upgrade").returncode == 0
    refused = run("quarantine", "import-amavis", str(amavisd.quarantine_dir))
    name = service_user.pw_name
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (f"lmtpfilter: cannot read {amavisd.quarantine_dir}: Permission "
                              f"denied (running as {name}); amavis keeps its quarantine for "
                              f"group amavis: add {name} to it (adduser {name} amavis) and run "
                              "again\n")
    subprocess.run(["usermod", "-aG", "amavis", name], check=True, capture_output=True)
    done = run("quarantine", "import-amavis", str(amavisd.quarantine_dir))
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"imported [1-9][0-9]*, already there 0, skipped 0\n", done.stdout)
    stored = list((state / "quarantine").rglob("*.eml.gz"))
    assert stored and all(p.stat().st_uid == service_user.pw_uid for p in stored)


def test_import_into_the_sql_store_on_postgresql(
        amavisd: Amavisd, daemon_base: Path, dovecot: Dovecot, postgres: Postgres) -> None:
    """store = "sql": the copies go into the database dated as amavis's files, so the
    janitor expires an old one at its next pass and keeps the others."""
    # A sender of its own: quarantine() finds amavis's file by the envelope in its log.
    _, old_file = quarantine(amavisd, "sql-spam-sender@example.net", U3, "old spam for sql",
                             GTUBE + b"\r\n")
    old = time.time() - (MAX_AGE_DAYS + 10) * 86400
    os.utime(old_file, (old, old))
    sources = amavis_files(amavisd)
    too_old = sum(p.stat().st_mtime < time.time() - MAX_AGE_DAYS * 86400 for p in sources)
    workdir = new_workdir(daemon_base, "amavis-sql")
    config = workdir / "lmtpfilter.toml"
    text = filter_config(f"127.0.0.1:{dovecot.lmtp_port}", [f"unix:{workdir}/lmtp.sock"],
                         janitor=f'max_age = "{MAX_AGE_DAYS}d"')
    text = text.replace("[quarantine]\n", '[quarantine]\nstore = "sql"\n', 1)
    config.write_text(re.sub(r'url = "sqlite:///[^"]*"',
                             f'url = "{postgres.create_database("amavis_sql")}"', text))
    assert cli(config, "db", "upgrade").returncode == 0

    imported = cli(config, "quarantine", "import-amavis", str(amavisd.quarantine_dir))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == f"imported {len(sources)}, already there 0, skipped 0\n"
    old_id = next(qid for qid, line in listed(config).items() if "'old spam for sql'" in line)
    shown = cli(config, "quarantine", "show", old_file.name)  # read back from the chunks
    assert shown.returncode == 0 and f"X-Quarantine-ID: <{old_id}>" in shown.stdout
    assert not list((workdir / "quarantine").rglob("*.eml.gz"))

    janitor = subprocess.run([sys.executable, "-m", "janitor", "run", "-c", str(config)],
                             capture_output=True, text=True, timeout=120)
    assert janitor.returncode == 0, janitor.stderr
    states = {qid: line.split()[4] for qid, line in listed(config).items()}
    assert states[old_id] == "expired"
    assert sorted(states.values()) == ["expired"] * too_old + ["held"] * (len(sources) - too_old)
