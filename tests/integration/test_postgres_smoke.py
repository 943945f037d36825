"""Smoke tests of the PostgreSQL harness: a real throwaway server, reached via SQLAlchemy."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from tests.harness.daemons import short_tmpdir
from tests.harness.postgres import Postgres, find_pg_bindir, start_postgres

pytestmark = pytest.mark.integration

THREADS = 16
ROWS_PER_THREAD = 50


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    try:
        find_pg_bindir()
    except FileNotFoundError as exc:
        if os.environ.get("LMTPFILTER_REQUIRE_DAEMONS") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    base = short_tmpdir("lmtpf-pg-")
    try:
        server = start_postgres(base)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_connect_select_1(pg: Postgres) -> None:
    engine = sa.create_engine(pg.url())
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
            assert conn.execute(sa.text("select current_user")).scalar_one() == "lmtpfilter"
            db = conn.execute(sa.text("select current_database()")).scalar_one()
            assert db == "lmtpfilter"
            assert conn.execute(sa.text("show fsync")).scalar_one() == "off"
    finally:
        engine.dispose()
    assert pg.startup_seconds < 30


def test_wrong_password_is_refused(pg: Postgres) -> None:
    engine = sa.create_engine(pg.url().replace(":secret@", ":wrong@"))
    try:
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            engine.connect().close()
    finally:
        engine.dispose()


def test_create_and_drop_extra_database(pg: Postgres) -> None:
    url = pg.create_database("extra")
    assert url == pg.url("extra")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("select current_database()")).scalar_one() == "extra"
            conn.execute(sa.text("create table t (x int)"))
            conn.execute(sa.text("insert into t values (42)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("select x from t")).scalar_one() == 42
        # an open pooled connection must not prevent the drop
        held = engine.connect()
        pg.drop_database("extra")
        held.invalidate()
    finally:
        engine.dispose()
    main = sa.create_engine(pg.url())
    try:
        with main.connect() as conn:
            left = conn.execute(
                sa.text("select count(*) from pg_database where datname = 'extra'")
            ).scalar_one()
        assert left == 0
    finally:
        main.dispose()


def test_concurrent_inserts_lose_nothing(pg: Postgres) -> None:
    engine = sa.create_engine(pg.url(), pool_size=THREADS, max_overflow=0)
    meta = sa.MetaData()
    rows = sa.Table(
        "smoke_rows",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("thread", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.UniqueConstraint("thread", "seq"),
    )
    barrier = threading.Barrier(THREADS)

    def worker(thread: int) -> None:
        barrier.wait(timeout=30)  # start together: real concurrency on the server
        for seq in range(ROWS_PER_THREAD):
            with engine.begin() as conn:  # one transaction per row
                conn.execute(rows.insert().values(thread=thread, seq=seq))

    try:
        meta.create_all(engine)
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            for future in [pool.submit(worker, t) for t in range(THREADS)]:
                future.result(timeout=120)  # re-raises a worker's exception
        with engine.connect() as conn:
            got = set(conn.execute(sa.select(rows.c.thread, rows.c.seq)).tuples())
            ids = conn.execute(sa.select(sa.func.count(sa.distinct(rows.c.id)))).scalar_one()
        expected = {(t, s) for t in range(THREADS) for s in range(ROWS_PER_THREAD)}
        assert got == expected
        assert ids == THREADS * ROWS_PER_THREAD
        meta.drop_all(engine)
    finally:
        engine.dispose()
