"""A full disk, really (issue 16 item 3): the quarantine, and separately the SQLite database,
on a small tmpfs that is full, with the real filter process, real clamd and Dovecot.

What docs/design.md §5 and §6 promise, checked on a filesystem that really answers ENOSPC:
a message that must be quarantined is deferred (451) for each of its recipients, nothing is
delivered for them and nothing half-written is left; once space returns (the janitor, or the
filler removed), the same message sent again, as Postfix would retry it, is quarantined once.
Mounting needs root (CAP_SYS_ADMIN); where it is refused the tests skip, as test_janitor's
small-filesystem test does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from lmtpfilter import store as st
from lmtpfilter.quarantine import new_id, relative_path
from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, free_port
from tests.harness.scanners import EICAR, Clamd
from tests.integration.test_scanning import message
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration

U1, U2 = "user1@example.org", "user2@example.org"


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs at `path`, unmounted on the way out whatever happened."""
    path.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_bytes(directory: Path) -> Path:
    """Write one file until the filesystem refuses (ENOSPC): no byte is left for anyone."""
    filler = directory / "filler"
    chunk = os.urandom(64 * 1024)
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # The last partial pages, byte by byte.
    with filler.open("ab", buffering=0) as f, contextlib.suppress(OSError):
        for _ in range(64 * 1024):
            f.write(b"x")
    assert os.statvfs(directory).f_bavail == 0
    return filler


def fill_inodes(directory: Path) -> list[Path]:
    """Create empty files until no inode is left: bytes are free, files cannot be made."""
    made: list[Path] = []
    try:
        while True:
            path = directory / f"inode-{len(made)}"
            path.touch()
            made.append(path)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    return made


def start(factory: type[FilterProcess], base: Path, dovecot: Dovecot, clamd: Clamd,
          workdir: Path, *, quarantine: str, database: str = "") -> FilterProcess:
    listen = f"127.0.0.1:{free_port()}"
    text = filter_config(
        f"127.0.0.1:{dovecot.lmtp_port}", [listen],
        clamav=f'enabled = true\naddress = "unix:{clamd.socket_path}"',
        quarantine=quarantine)
    if database:
        text = text.replace('url = "sqlite:///{workdir}/lmtpfilter.db"', database)
    return factory(workdir, text, listen).start()


def virus(subject: str) -> bytes:
    return message(subject, attachment=("invoice.com", EICAR))


def db(path: Path, query: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(query).fetchall()


def empty_wal(dbfile: Path) -> None:
    """Checkpoint and truncate the WAL, so that the next commit must grow a file on the full
    disk (a WAL keeps its size after a plain checkpoint, and a commit could fit in it). A
    reader of the filter's may hold it back a moment: try again until it is done."""
    deadline = time.monotonic() + 30  # a guard against a hang only
    while True:
        [(busy, _, _)] = db(dbfile, "pragma wal_checkpoint(TRUNCATE)")
        wal = dbfile.with_name(dbfile.name + "-wal")
        if busy == 0 and (not wal.exists() or wal.stat().st_size == 0):
            return
        assert time.monotonic() < deadline, busy
        time.sleep(0.1)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")] if root.exists() else []


def rows_without_files(dbfile: Path, qroot: Path) -> list[str]:
    live = db(dbfile, "select id, path from quarantine where expired_at is null")
    return [str(qid) for qid, rel in live if not (qroot / str(rel)).is_file()]


def counts(dovecot: Dovecot) -> dict[str, int]:
    return {u: len(dovecot.messages(u)) for u in (U1, U2)}


def add_old_quarantined(dbfile: Path, qroot: Path, n: int, size: int) -> list[Path]:
    """Quarantined messages from days ago, file and row, as the filter would have left them:
    what the janitor may evict to give space back."""
    store = st.Store(f"sqlite:///{dbfile}")
    paths = []
    try:
        for i in range(n):
            qid = new_id()
            created = dt.datetime.now(dt.UTC) - dt.timedelta(days=20 - i)
            rel = relative_path(qid, created)
            path = qroot / rel
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_bytes(os.urandom(size))
            paths.append(path)
            record = st.QuarantineRecord(
                id=qid, message_id="OLD", path=rel, size=size, sha256="0" * 64,
                reason="virus", detail="X", sender="s@x", recipients=U1,
                created_at=created, released_to="", release_replies="")

            def add(session: Session, record: st.QuarantineRecord = record) -> None:
                session.add(record)

            store.transaction(add)
    finally:
        store.close()
    return paths


def assert_no_traceback(proc: FilterProcess) -> None:
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


async def test_full_quarantine_defers_then_the_janitor_frees_space_and_it_goes_through_once(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd) -> None:
    workdir = new_workdir(daemon_base, "fullq")
    with tmpfs(workdir / "qfs", "size=2m,mode=0700") as qfs:
        qroot = qfs / "quarantine"
        proc = start(filter_process, daemon_base, dovecot, clamd, workdir,
                     quarantine=f'directory = "{qroot}"\nmin_free = "5%"')
        dbfile = workdir / "lmtpfilter.db"
        old = add_old_quarantined(dbfile, qroot, 6, 250_000)  # 1.5 MB of 2 MB
        fill_bytes(qfs)  # and the rest: the disk is full
        before = counts(dovecot)
        mail = virus("full quarantine")

        result = await lmtp_session(proc.listen, "sender@example.net", [U1, U2], mail)
        assert [r[:9] for r in result.data_replies] == ["451 4.3.1"] * 2, proc.log()[-3000:]
        assert counts(dovecot) == before  # nothing delivered to them
        assert temp_files(qroot) == []  # nothing half-written
        assert db(dbfile, "select count(*) from quarantine") == [(6,)]
        assert rows_without_files(dbfile, qroot) == []

        # The janitor's pass gives back space (oldest first, down to min_free) ...
        swept = subprocess.run([sys.executable, "-m", "janitor", "run", "-c",
                                str(proc.config_path)], capture_output=True, text=True,
                               timeout=120)
        assert swept.returncode == 0, swept.stderr
        assert not old[0].exists() and old[-1].exists()
        # ... and Postfix retries: the same message now goes through, once.
        again = await lmtp_session(proc.listen, "sender@example.net", [U1, U2], mail)
        assert [r[:9] for r in again.data_replies] == ["250 2.7.0"] * 2, proc.log()[-3000:]
        qid = again.data_replies[0].rsplit(" ", 1)[1]
        assert again.data_replies[1].endswith(qid)
        assert db(dbfile, "select id, recipients from quarantine "
                          "where subject = 'full quarantine'") == [(qid, f"{U1}\n{U2}")]
        assert rows_without_files(dbfile, qroot) == [] and temp_files(qroot) == []
        assert counts(dovecot) == before
        assert_no_traceback(proc)
        proc.stop()


async def test_quarantine_out_of_inodes_defers_with_4_3_1_and_recovers(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd) -> None:
    """Bytes free but no inode left: the budget check passes, the write itself gets ENOSPC.
    That is a full quarantine too, and must be answered as one (4.3.1), without a traceback."""
    workdir = new_workdir(daemon_base, "inodeq")
    with tmpfs(workdir / "qfs", "size=2m,nr_inodes=64,mode=0700") as qfs:
        qroot = qfs / "quarantine"
        proc = start(filter_process, daemon_base, dovecot, clamd, workdir,
                     quarantine=f'directory = "{qroot}"\nmin_free = "5%"')
        qroot.mkdir(mode=0o700, exist_ok=True)
        fillers = fill_inodes(qfs)
        dbfile = workdir / "lmtpfilter.db"
        before = counts(dovecot)
        mail = virus("no inode left")

        result = await lmtp_session(proc.listen, "sender@example.net", [U1, U2], mail)
        assert [r[:9] for r in result.data_replies] == ["451 4.3.1"] * 2, proc.log()[-3000:]
        assert counts(dovecot) == before
        assert temp_files(qroot) == []
        assert db(dbfile, "select count(*) from quarantine") == [(0,)]
        assert_no_traceback(proc)

        for f in fillers:
            f.unlink()
        again = await lmtp_session(proc.listen, "sender@example.net", [U1, U2], mail)
        assert [r[:9] for r in again.data_replies] == ["250 2.7.0"] * 2, proc.log()[-3000:]
        assert db(dbfile, "select count(*) from quarantine") == [(1,)]
        assert rows_without_files(dbfile, qroot) == [] and temp_files(qroot) == []
        assert counts(dovecot) == before
        proc.stop()


async def test_database_on_a_full_disk(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd) -> None:
    """design.md §5: a quarantine row that cannot be committed leaves its recipients 451 and
    its file removed; verdict rows that cannot be written are logged and the replies stand
    (the mail is already delivered, a 4xx would deliver it twice). The filter keeps serving
    and records again once space returns."""
    workdir = new_workdir(daemon_base, "fulldb")
    with tmpfs(workdir / "dbfs", "size=2m,mode=0700") as dbfs:
        dbfile = dbfs / "lmtpfilter.db"
        qroot = workdir / "quarantine"
        proc = start(filter_process, daemon_base, dovecot, clamd, workdir,
                     quarantine=f'directory = "{qroot}"',
                     database=f'url = "sqlite:///{dbfile}"')
        warm = await lmtp_session(proc.listen, "sender@example.net", [U1],
                                  message("before the disk filled"))
        assert warm.data_replies[0].startswith("250 2.0.0"), proc.log()[-3000:]
        empty_wal(dbfile)
        filler = fill_bytes(dbfs)
        before = counts(dovecot)

        result = await lmtp_session(proc.listen, "sender@example.net", [U1, U2],
                                    virus("db full virus"))
        assert [r[:3] for r in result.data_replies] == ["451"] * 2, proc.log()[-3000:]
        assert counts(dovecot) == before
        assert list(qroot.rglob("*.eml.gz")) == [] and temp_files(qroot) == []

        clean = await lmtp_session(proc.listen, "sender@example.net", [U1],
                                   message("db full clean"))
        assert clean.data_replies[0].startswith("250 2.0.0"), proc.log()[-3000:]
        dovecot.wait_for_messages(U1, before[U1] + 1)
        assert db(dbfile, "select count(*) from messages where subject like 'db full%'") == [
            (0,)]

        filler.unlink()  # space returns: the filter recovers without a restart
        again = await lmtp_session(proc.listen, "sender@example.net", [U1, U2],
                                   virus("db full virus"))
        assert [r[:9] for r in again.data_replies] == ["250 2.7.0"] * 2, proc.log()[-3000:]
        assert db(dbfile, "select count(*) from quarantine where subject = 'db full virus'"
                  ) == [(1,)]
        assert rows_without_files(dbfile, qroot) == []
        after = await lmtp_session(proc.listen, "sender@example.net", [U1],
                                   message("after the disk emptied"))
        assert after.data_replies[0].startswith("250 2.0.0")
        assert db(dbfile, "select count(*) from messages where subject = "
                          "'after the disk emptied'") == [(1,)]
        assert proc.proc is not None and proc.proc.poll() is None
        proc.stop()
