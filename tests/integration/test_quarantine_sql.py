"""[quarantine] store = "sql" (lmtpfilter/quarantine_sql.py), on SQLite and on PostgreSQL.

What the store itself promises, beyond the matrix that test_quarantine.py, test_janitor.py and
test_quarantine_delete.py run on every store: chunks that read back as written, the budget
counted in the chunks' bytes, the database's own size in the janitor's log, the migration down
and up, a 50 MB message quarantined without a second copy of it in the filter's memory, chunks
committed before the 250 (kill -9 right after the reply: the copy is there), and a full
database answered 451 4.3.1 as a full quarantine disk is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from sqlalchemy import inspect

from lmtpfilter import config as cfg
from lmtpfilter import store as st
from lmtpfilter.quarantine import QuarantineFull, QuarantineStore, new_id, open_quarantine
from lmtpfilter.quarantine_sql import CHUNK_SIZE, SqlQuarantine, pieces
from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, free_port
from tests.integration import test_janitor
from tests.integration.quarantine_stores import Backend, db, stored_ids
from tests.integration.test_full_disk import empty_wal, fill_bytes, tmpfs
from tests.integration.test_janitor import World, janitor
from tests.integration.test_scanning import message
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration
U1, U2 = "user1@example.org", "user2@example.org"


# ---- the store, directly (test_janitor's world, on its sql stores) -----------------------

world = test_janitor.world
SQL_ONLY = pytest.mark.parametrize("world", ["sqlite-sql", "postgresql-sql"], indirect=True)


def quarantine_of(world: World) -> QuarantineStore:
    return open_quarantine(world.config.quarantine, world.store)


def test_pieces_cut_the_message_without_copying_whole_chunks() -> None:
    data = os.urandom(3 * CHUNK_SIZE + 17)
    given: list[bytes | memoryview] = [data[:5], memoryview(data)[5: CHUNK_SIZE + 9],
                                       data[CHUNK_SIZE + 9:]]
    got = list(pieces(given))
    assert [len(p) for p in got] == [CHUNK_SIZE] * 3 + [17]
    assert b"".join(bytes(p) for p in got) == data
    assert list(pieces([])) == [] and [bytes(p) for p in pieces([b"", b"ab"], 1)] == [b"a", b"b"]


@SQL_ONLY
def test_written_in_chunks_and_read_back_as_written(world: World) -> None:
    q = quarantine_of(world)
    assert isinstance(q, SqlQuarantine)
    data = os.urandom(CHUNK_SIZE) + b"A" * (2 * CHUNK_SIZE + 5)
    qid = new_id()
    stored = q.write(qid, dt.datetime.now(dt.UTC), [memoryview(data)[:100], data[100:]])
    assert stored.path == "" and stored.sha256 == hashlib.sha256(data).hexdigest()
    rows = db(world.config_path, "select seq, data from quarantine_chunks where "
                                 f"quarantine_id = '{qid}' order by seq")
    assert [r[0] for r in rows] == [0, 1, 2, 3]  # a row per 1 MiB of the message ...
    blobs = [bytes(b) for _, b in rows if isinstance(b, bytes | memoryview)]
    assert stored.size == sum(len(b) for b in blobs)
    assert zlib.decompress(blobs[3]) == b"A" * 5
    record = st.QuarantineRecord(id=qid, path="")
    assert [len(p) for p in q.read_chunks(record)] == [CHUNK_SIZE] * 3 + [5]  # ... read so
    assert q.read(record) == data
    empty = new_id()
    q.write(empty, dt.datetime.now(dt.UTC), [])
    assert q.read(st.QuarantineRecord(id=empty, path="")) == b""
    assert q.remove(record) and not q.remove(record)
    with pytest.raises(FileNotFoundError):
        q.read(record)


@SQL_ONLY
def test_budget_counts_the_chunks_bytes(world: World) -> None:
    used = world.size(world.keep(1, size=5000))
    assert used > 5000  # random bytes: compressed, a little more
    world.reconfigure(max_size=used + 100, min_free=0)
    q = quarantine_of(world)
    world.store.transaction(lambda s: q.check_budget(s, 100))
    with pytest.raises(QuarantineFull, match=f"holds {used} bytes"):
        world.store.transaction(lambda s: q.check_budget(s, 101))
    # min_free: the SQLite file's filesystem; PostgreSQL's disk is not ours to measure.
    expected = world.base if world.url.startswith("sqlite") else None
    assert q.space_path() == expected


@SQL_ONLY
def test_the_janitor_logs_the_databases_own_measure_of_its_size(world: World) -> None:
    old = world.keep(40)
    run = janitor(world, "run")
    assert run.returncode == 0, run.stderr
    assert "freed 1 files" in run.stdout and not old.exists() and world.expired(old)
    measure = ("pg_database_size" if world.url.startswith("postgresql")
               else "page_count * page_size")
    assert "janitor: quarantine: sql:" in run.stderr and measure in run.stderr


# ---- the filter process ------------------------------------------------------------------

def start(factory: type[FilterProcess], base: Path, dovecot: Dovecot, backend: Backend,
          *, workdir: Path | None = None, database: str = "", quarantine: str = ""
          ) -> FilterProcess:
    listen = f"127.0.0.1:{free_port()}"
    text = backend.config(filter_config(f"127.0.0.1:{dovecot.lmtp_port}", [listen],
                                        server='max_message_size = "60M"'))
    if quarantine:
        text = text.replace("[quarantine]\n", f"[quarantine]\n{quarantine}\n", 1)
    if database:
        text = text.replace('url = "sqlite:///{workdir}/lmtpfilter.db"', database)
    return factory(workdir or new_workdir(base, "qsql"), text, listen).start()


def banned(subject: str, size: int = 100) -> bytes:
    """Stopped by the default banned_rules (an .exe), so no scanner is needed."""
    return message(subject, attachment=("setup.exe", os.urandom(size)))


GROWTH: dict[str, int] = {}  # peak RSS growth per store, for the comparison


def peak_rss(proc: FilterProcess) -> int:
    assert proc.proc is not None
    status = Path(f"/proc/{proc.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmHWM:"))) * 1024


BIG_RAW = 36 * 1024 * 1024  # base64, 76-character lines: a message of 49.3 MiB


@pytest.mark.parametrize("kind", ["files", "sqlite-sql", "postgresql-sql"])
async def test_a_50_mb_message_quarantined_without_a_second_copy_in_memory(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        request: pytest.FixtureRequest, kind: str) -> None:
    """Peak RSS growth of the filter process for one 50 MB message (VmHWM, not timings):
    the sql store may add a few chunks' worth to what the files store costs, never another
    copy of the message."""
    pg = request.getfixturevalue("postgres") if kind == "postgresql-sql" else None
    proc = start(filter_process, daemon_base, dovecot, Backend(kind, pg))
    warm = await lmtp_session(proc.listen, "s@example.net", [U1], banned("warm up"))
    assert warm.data_replies[0].startswith("250 2.7.0"), proc.log()[-3000:]
    big = banned("fifty megabytes", BIG_RAW)
    assert 49 * 1024 * 1024 < len(big) <= 50 * 1024 * 1024
    before = peak_rss(proc)
    result = await lmtp_session(proc.listen, "s@example.net", [U1], big, timeout=300)
    assert result.data_replies[0].startswith("250 2.7.0"), proc.log()[-3000:]
    growth = peak_rss(proc) - before
    qid = result.data_replies[0].rsplit(" ", 1)[1]
    [(sha256, size)] = db(proc.config_path, f"select sha256, size from quarantine "
                                            f"where id = '{qid}'")
    assert qid in stored_ids(proc.config_path)
    shown = subprocess.run([sys.executable, "-m", "lmtpfilter", "quarantine", "show", qid,
                            "-c", str(proc.config_path)], capture_output=True, text=True,
                           timeout=120)
    assert "Subject: fifty megabytes" in shown.stdout, shown.stderr
    GROWTH[kind] = growth
    print(f"{kind}: 50 MB message, peak RSS growth {growth / 2**20:.1f} MiB, "
          f"stored {int(str(size)) / 2**20:.1f} MiB, sha256 {sha256}")
    # Measured here: files 124 MiB, sql 99 MiB (SQLite and PostgreSQL alike) for 49 MiB:
    # what the filter itself holds while it receives and parses, the message once; the sql
    # store adds no more than a few chunks to that (it is the files store's gzip buffers
    # that cost more).
    if kind != "files":
        assert growth < 2.5 * len(big), growth
        if "files" in GROWTH:
            assert growth <= GROWTH["files"] + 8 * CHUNK_SIZE, GROWTH
    else:
        assert growth < 3 * len(big), growth
    proc.stop()


@pytest.mark.parametrize("kind", ["sqlite-sql", "postgresql-sql"])
async def test_chunks_are_committed_before_the_250(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        request: pytest.FixtureRequest, kind: str) -> None:
    pg = request.getfixturevalue("postgres") if kind == "postgresql-sql" else None
    proc = start(filter_process, daemon_base, dovecot, Backend(kind, pg))
    mail = banned("killed after the reply", 3 * CHUNK_SIZE)
    result = await lmtp_session(proc.listen, "s@example.net", [U1, U2], mail)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGKILL)  # the moment the replies are in
    proc.proc.wait(30)
    assert [r[:9] for r in result.data_replies] == ["250 2.7.0"] * 2
    qid = result.data_replies[0].rsplit(" ", 1)[1]
    [(sha256,)] = db(proc.config_path, f"select sha256 from quarantine where id = '{qid}'")
    config = cfg.load(str(proc.config_path))
    store = st.Store(config.database.url)
    try:
        row = store.transaction(lambda s: s.get(st.QuarantineRecord, qid))
        assert row is not None
        data = open_quarantine(config.quarantine, store).read(row)
    finally:
        store.close()
    assert hashlib.sha256(data).hexdigest() == sha256 and b"killed after the reply" in data
    assert len(data) > len(mail)  # as kept: the Received and X-Quarantine-ID headers added


async def test_a_full_database_defers_with_4_3_1_and_recovers(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot) -> None:
    """store = "sql" on SQLite, the database file on a full tmpfs: the chunks cannot be
    written, which is a full quarantine (451 4.3.1), as test_full_disk.py has it for files;
    nothing is left half-written, and once space returns the retry is quarantined once."""
    workdir = new_workdir(daemon_base, "fullsql")
    with tmpfs(workdir / "dbfs", "size=4m,mode=0700") as dbfs:
        dbfile = dbfs / "lmtpfilter.db"
        proc = start(filter_process, daemon_base, dovecot, Backend("sqlite-sql"),
                     workdir=workdir, database=f'url = "sqlite:///{dbfile}"',
                     quarantine="min_free = 0")
        warm = await lmtp_session(proc.listen, "s@example.net", [U1], message("warm"))
        assert warm.data_replies[0].startswith("250 2.0.0"), proc.log()[-3000:]
        empty_wal(dbfile)
        filler = fill_bytes(dbfs)
        before = len(dovecot.messages(U1))
        mail = banned("db full banned", 200_000)

        result = await lmtp_session(proc.listen, "s@example.net", [U1, U2], mail)
        assert [r[:9] for r in result.data_replies] == ["451 4.3.1"] * 2, proc.log()[-3000:]
        assert len(dovecot.messages(U1)) == before
        assert "quarantine full" in proc.log(), proc.log()[-3000:]
        # The filter's budget check saw the full filesystem first (min_free = 0 still wants
        # the message's size free); the write itself, refused by SQLite, is a full
        # quarantine too (SQLITE_FULL), not an error: on_full decides.
        config = cfg.load(str(proc.config_path))
        store = st.Store(config.database.url)
        try:
            with pytest.raises(QuarantineFull, match="the database refused the write"):
                open_quarantine(config.quarantine, store).write(
                    new_id(), dt.datetime.now(dt.UTC), [os.urandom(200_000)])
        finally:
            store.close()

        filler.unlink()
        again = await lmtp_session(proc.listen, "s@example.net", [U1, U2], mail)
        assert [r[:9] for r in again.data_replies] == ["250 2.7.0"] * 2, proc.log()[-3000:]
        qid = again.data_replies[0].rsplit(" ", 1)[1]
        assert stored_ids(proc.config_path) == {qid}  # nothing left of the refused one
        assert db(proc.config_path, "select count(*) from quarantine") == [(1,)]
        assert proc.proc is not None and proc.proc.poll() is None
        proc.stop()



@SQL_ONLY
def test_migration_0007_down_and_up(world: World) -> None:
    """The chunks table comes and goes with its migration, on SQLite and PostgreSQL."""
    world.keep(1)
    world.store.close()
    st.downgrade(world.url, "0006")
    assert "quarantine_chunks" not in inspect_tables(world.url)
    st.upgrade(world.url)
    assert "quarantine_chunks" in inspect_tables(world.url)
    world.store = st.Store(world.url)
    world.store.check_schema()


def inspect_tables(url: str) -> set[str]:
    engine = st.make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
