"""Quarantine, release, notifications, per-user policy and the CLI, with the real filter
process, real clamd and Dovecot, and an SMTP sink standing in for the notifications MTA.

On each quarantine store (tests/integration/quarantine_stores.py): files, sql on SQLite, sql
on PostgreSQL."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmtpfilter.quarantine import InvalidQuarantineId, validate_id
from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, free_port
from tests.harness.mailsink import MailSink
from tests.harness.scanners import EICAR, Clamd
from tests.integration.quarantine_stores import Backend, backend, stored_ids
from tests.integration.quarantine_stores import db as db_of
from tests.integration.test_scanning import message
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration

U1, U2, U3 = "user1@example.org", "user2@example.org", "user3@example.org"


def cli(proc: FilterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmtpfilter", *args, "-c",
                           str(proc.config_path)], capture_output=True, text=True, timeout=60)


__all__ = ["backend"]  # the fixture: every test taking `proc` runs on each store


def start(factory: type[FilterProcess], base: Path, dovecot: Dovecot, clamd: Clamd,
          notify_port: int, backend: Backend, quarantine: str = "", policy: str = ""
          ) -> FilterProcess:
    listen = f"127.0.0.1:{free_port()}"
    text = filter_config(
        f"127.0.0.1:{dovecot.lmtp_port}", [listen],
        clamav=f'enabled = true\naddress = "unix:{clamd.socket_path}"',
        notify=(f'smtp = "127.0.0.1:{notify_port}"\nadmin = ["admin@example.org"]\n'
                f'from = "filter@example.org"\ninterval = "0.3s"'),
        policy=policy)
    text = text.replace('[database]', '[database]\npolicy_cache_ttl = "0s"')
    if quarantine:
        text = text.replace('[quarantine]', f"[quarantine]\n{quarantine}")
    return factory(new_workdir(base, "q"), backend.config(text), listen).start()


@pytest.fixture(scope="module")
def sink() -> Iterator[MailSink]:
    s = MailSink().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def proc(filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
         clamd: Clamd, sink: MailSink, backend: Backend) -> FilterProcess:
    return start(filter_process, daemon_base, dovecot, clamd, sink.port, backend)


def db(proc: FilterProcess, query: str) -> list[tuple[object, ...]]:
    return db_of(proc.config_path, query)


def quarantine_files(proc: FilterProcess) -> list[Path]:
    return sorted((proc.workdir / "quarantine").rglob("*.eml.gz"))


async def test_virus_quarantined_once_notified_and_released(
        proc: FilterProcess, dovecot: Dovecot, sink: MailSink, backend: Backend) -> None:
    before = {u: len(dovecot.messages(u)) for u in (U1, U2, U3)}
    sink_before = len(sink.messages)
    # The sender wrote verdict headers of its own: they must not come back on release.
    forged = b"X-Spam-Flag: NO\r\nX-Quarantine-ID: <forged>\r\n"
    result = await lmtp_session(proc.listen, "sender@example.net", [U1, U2],
                                forged + message("invoice", attachment=("invoice.com", EICAR)))
    assert [r[:9] for r in result.data_replies] == ["250 2.7.0"] * 2, proc.log()[-3000:]
    ids = {r.rsplit(" ", 1)[1] for r in result.data_replies}
    assert len(ids) == 1
    qid = ids.pop()
    validate_id(qid)
    # One copy of the message (a private file, or chunks), and nothing delivered.
    assert qid in stored_ids(proc.config_path)
    files = [f for f in quarantine_files(proc) if qid in f.name]
    if backend.sql:
        assert files == []
    else:
        assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert {u: len(dovecot.messages(u)) for u in (U1, U2, U3)} == before
    # The records: one quarantine row, a message row, a row per recipient.
    assert db(proc, f"select reason, recipients from quarantine where id = '{qid}'") == [
        ("virus", f"{U1}\n{U2}")]
    rows = db(proc, "select address, action, category, reply_code, quarantine_id from "
                    f"recipient_verdicts where quarantine_id = '{qid}' order by position")
    assert rows == [(U1, "discard", "virus", 250, qid), (U2, "discard", "virus", 250, qid)]
    # The admin and both recipients are told, with the ID.
    got = sink.wait_for(sink_before + 3)[sink_before:]
    assert sorted(r for m in got for r in m.recipients) == sorted(["admin@example.org", U1, U2])
    assert all(qid.encode() in m.data for m in got)
    assert all(m.sender in ("", "<>") for m in got)  # null sender: no bounce loops
    for m in got:  # proper SMTP messages (RFC 5321 §2.3.8, RFC 3834 §5)
        assert not any(b"\r" in line or b"\n" in line for line in m.data.split(b"\r\n"))
        assert b"\r\nAuto-Submitted: auto-generated\r\n" in m.data
        assert b"\r\nMessage-ID: <" in m.data and b"\r\nDate: " in m.data
    # list / show
    listed = cli(proc, "quarantine", "list")
    assert listed.returncode == 0 and qid in listed.stdout and "virus" in listed.stdout
    shown = cli(proc, "quarantine", "show", qid)
    assert shown.returncode == 0 and f"X-Quarantine-ID: <{qid}>" in shown.stdout
    assert "Eicar-Test-Signature" in shown.stdout
    # release: delivered to both Maildirs, downstream's real replies recorded.
    released = cli(proc, "quarantine", "release", qid)
    assert released.returncode == 0, released.stderr
    assert re.findall(r"^(\S+): 250 2\.0\.0", released.stdout, re.M) == [U1, U2]
    for u in (U1, U2):
        stored = dovecot.wait_for_messages(u, before[u] + 1)
        released_copy = next(m for m in stored if f"X-Quarantine-ID: <{qid}>".encode() in m)
        assert b"<forged>" not in released_copy and b"X-Spam-Flag" not in released_copy
    replies = db(proc, f"select release_replies from quarantine where id = '{qid}'")[0][0]
    assert f"{U1}: 250 2.0.0" in str(replies) and f"{U2}: 250 2.0.0" in str(replies)
    # Not twice, unless forced (and then to whom we say).
    again = cli(proc, "quarantine", "release", qid)
    assert again.returncode == 1 and "already released" in again.stderr
    forced = cli(proc, "quarantine", "release", qid, "--force", "--to", U3)
    assert forced.returncode == 0 and forced.stdout.startswith(f"{U3}: 250")
    dovecot.wait_for_messages(U3, before[U3] + 1)


async def test_recipient_with_virus_destiny_pass_gets_it_tagged(
        proc: FilterProcess, dovecot: Dovecot) -> None:
    set_ = cli(proc, "user", "set", U2, "--virus-destiny", "pass")
    assert set_.returncode == 0, set_.stderr
    try:
        before = len(dovecot.messages(U2))
        result = await lmtp_session(proc.listen, "s@example.net", [U1, U2],
                                    message("per user", attachment=("x.txt", EICAR)))
        assert result.data_replies[0].startswith("250 2.7.0 Ok, discarded, quarantined as ")
        assert result.data_replies[1].startswith("250 2.0.0 <user2@example.org>")
        stored = dovecot.wait_for_messages(U2, before + 1)
        assert any(b"X-Virus-Status: Infected (Eicar-Test-Signature.UNOFFICIAL)" in m
                   for m in stored)
    finally:
        assert cli(proc, "user", "delete", U2).returncode == 0


def test_user_commands(proc: FilterProcess) -> None:
    assert cli(proc, "user", "set", "@example.net", "--kill-level", "12",
               "--spam-destiny", "reject").returncode == 0
    assert cli(proc, "user", "set", "boss@example.net", "--bypass-spam-checks",
               "--junk-folder", "Spam").returncode == 0
    listed = cli(proc, "user", "list").stdout
    assert "@example.net  kill_level=12.0 spam_destiny='reject'" in listed
    assert "boss@example.net" in listed
    shown = cli(proc, "user", "show", "boss@example.net").stdout
    assert "kill_level = 12.0" in shown  # from the domain
    assert "bypass_spam_checks = True  (override)" in shown
    assert "junk_folder = 'Spam'  (override)" in shown
    unset = cli(proc, "user", "set", "boss@example.net", "--unset", "junk_folder")
    assert unset.returncode == 0 and "junk_folder" not in unset.stdout
    bad_value = cli(proc, "user", "set", "boss@example.net", "--spam-destiny", "bounce")
    assert bad_value.returncode == 2 and "invalid choice" in bad_value.stderr
    bad_folder = cli(proc, "user", "set", "boss@example.net", "--junk-folder", "a\tb")
    assert bad_folder.returncode == 2 and "junk_folder" in bad_folder.stderr
    bad_address = cli(proc, "user", "set", "boss", "--kill-level", "5")
    assert bad_address.returncode == 2 and "expected user@domain" in bad_address.stderr
    assert cli(proc, "user", "delete", "boss@example.net").returncode == 0
    gone = cli(proc, "user", "delete", "boss@example.net")
    assert gone.returncode == 1 and "no overrides" in gone.stderr
    for err in (bad_value, bad_folder, bad_address, gone):
        assert err.stderr.count("\n") == 1  # one clear line


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "A" * 21 + "/", "A" * 5000,
                                     "%2e%2e%2f%2e%2e%2fetc%2fpasswd", ""])
def test_hostile_quarantine_ids_are_refused(proc: FilterProcess, hostile: str) -> None:
    for action in ("show", "release", "delete"):
        result = cli(proc, "quarantine", action, hostile)
        assert result.returncode == 2
        assert "invalid quarantine ID" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("hostile", ["AAAAAAAAAAA\0AAAAAAAAAA", "A" * 22 + "\n", "..", None])
def test_validate_id(hostile: object) -> None:
    with pytest.raises(InvalidQuarantineId):
        validate_id(hostile)  # type: ignore[arg-type]


def test_log_shows_the_verdicts(proc: FilterProcess) -> None:
    out = cli(proc, "log", "--since", "1h", "--recipient", U1)
    assert out.returncode == 0
    assert f"-> <{U1}> discard/virus" in out.stdout and "quarantine=" in out.stdout


async def test_quarantine_over_budget_defers_and_loses_nothing(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd, sink: MailSink, backend: Backend) -> None:
    small = start(filter_process, daemon_base, dovecot, clamd, sink.port, backend,
                  quarantine='max_size = "200"')
    before = len(dovecot.messages(U1))
    result = await lmtp_session(small.listen, "s@example.net", [U1],
                                message("too big to keep", attachment=("x.com", EICAR)))
    assert result.data_replies[0].startswith("451 4.3.1")
    assert stored_ids(small.config_path) == set()
    assert len(dovecot.messages(U1)) == before
    assert db(small, "select count(*) from quarantine") == [(0,)]


async def test_notifications_retried_until_the_mta_answers(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd, backend: Backend) -> None:
    port = free_port()  # nothing listens here yet
    proc = start(filter_process, daemon_base, dovecot, clamd, port, backend)
    result = await lmtp_session(proc.listen, "s@example.net", [U3],
                                message("notify later", attachment=("x.com", EICAR)))
    assert result.data_replies[0].startswith("250 2.7.0")  # delivery is not held up
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = db(proc, "select attempts, last_error from notifications where sent_at is null")
        if rows and all(int(str(a)) >= 1 for a, _ in rows):
            break
        time.sleep(0.2)
    assert rows and all(err for _, err in rows)
    late = MailSink(port).start()
    try:
        got = late.wait_for(2, timeout=30)  # admin + recipient
        assert sorted(r for m in got for r in m.recipients) == ["admin@example.org", U3]
    finally:
        late.stop()


def test_serve_refuses_an_outdated_schema(daemon_base: Path, dovecot: Dovecot) -> None:
    workdir = new_workdir(daemon_base, "schema")
    config = workdir / "lmtpfilter.toml"
    config.write_text(filter_config(f"127.0.0.1:{dovecot.lmtp_port}",
                                    [f"127.0.0.1:{free_port()}"]).replace("{workdir}",
                                                                          str(workdir)))
    result = subprocess.run([sys.executable, "-m", "lmtpfilter", "serve", "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "run `lmtpfilter db upgrade`" in result.stderr and result.stderr.count("\n") == 1


async def test_quarantining_while_the_janitor_runs(proc: FilterProcess) -> None:
    import asyncio

    async def janitor_run() -> int:
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "janitor", "run", "-c", str(proc.config_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return await p.wait()

    sessions = [lmtp_session(proc.listen, "s@example.net", [U3],
                             message(f"burst {i}", attachment=("x.com", EICAR)))
                for i in range(20)]
    sent, exits = await asyncio.gather(asyncio.gather(*sessions),
                                       asyncio.gather(*(janitor_run() for _ in range(3))))
    replies = [r.data_replies[0] for r in sent]
    assert all(r.startswith("250 2.7.0 Ok, discarded, quarantined as ") for r in replies)
    assert exits == [0, 0, 0]
    ids = {r.rsplit(" ", 1)[1] for r in replies}
    assert len(ids) == 20
    rows: dict[object, object] = {r[0]: r[1] for r in
                                  db(proc, "select id, expired_at from quarantine")}
    on_disk = stored_ids(proc.config_path)
    assert ids <= set(rows)  # every acknowledged message has its row...
    assert all(rows[i] is None and i in on_disk for i in ids)  # ...and its file
    assert on_disk <= set(rows)  # and no file lacks a row
