"""Several filter hosts on one PostgreSQL (issue 18 items 2 and 3), on a real PostgreSQL:
one janitor pass for all of them (the quarantine's advisory lock), each notification sent
once whichever hosts run an Outbox (FOR UPDATE SKIP LOCKED), and a message quarantined by
host A released from host B's CLI, audited with B.

"Hosts" are config files naming different [server] hostnames, sharing one database; the
janitors race as threads with engines of their own (one_pass opens its own Store)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import pwd
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text

import janitor.cli as janitor_cli
from janitor.sweep import Summary, Sweeper
from lmtpfilter import config as cfg
from lmtpfilter import release as release_module
from lmtpfilter import store as st
from lmtpfilter.notify import Outbox
from lmtpfilter.quarantine import HeldLock, QuarantineBusy, open_quarantine
from lmtpfilter.quarantine_sql import ADVISORY_LOCK_KEY, AdvisoryLock
from lmtpfilter.release import ReleaseError, release
from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, free_port, short_tmpdir
from tests.harness.mailsink import MailSink
from tests.harness.postgres import Postgres
from tests.harness.scanners import EICAR, Clamd
from tests.integration.quarantine_stores import db
from tests.integration.test_janitor import World, janitor
from tests.integration.test_scanning import message
from tests.lmtp_tools import lmtp_session

ME = pwd.getpwuid(os.getuid()).pw_name  # the CLI's audit names who ran it
pytestmark = pytest.mark.integration
_names = itertools.count()
HOST_A, HOST_B = "filter-a.test", "filter-b.test"
U1 = "user1@example.org"


@pytest.fixture
def world(postgres: Postgres) -> Iterator[World]:
    """A quarantine on PostgreSQL (store = "sql"), as every host of a cluster sees it."""
    base = short_tmpdir("lmtpf-cl-")
    w = World(base, postgres.create_database(f"cl{next(_names)}"), store="sql")
    yield w
    w.store.close()
    shutil.rmtree(base, ignore_errors=True)


def lock_of(world: World, *, exclusive: bool, timeout: float = 0) -> HeldLock:
    return open_quarantine(world.config.quarantine, world.store).lock(
        exclusive=exclusive, timeout=timeout)


# ---- one janitor for the cluster ---------------------------------------------------------

def held_advisory_locks(world: World) -> list[str]:
    """The modes in which the quarantine's advisory lock is held in this test's database
    (pg_locks is the whole server's: other tests' databases are in it too)."""
    return list(world.store.transaction(lambda s: s.execute(text(
        "SELECT mode FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND classid = CAST(CAST(:high AS bigint) AS oid) "
        "AND objid = CAST(CAST(:low AS bigint) AS oid)"),
        {"high": ADVISORY_LOCK_KEY >> 32, "low": ADVISORY_LOCK_KEY & 0xFFFFFFFF}
    ).scalars().all()))


def test_the_lock_on_postgresql_is_the_advisory_lock(world: World) -> None:
    lock = lock_of(world, exclusive=True)
    assert isinstance(lock, AdvisoryLock)
    with lock:
        assert held_advisory_locks(world) == ["ExclusiveLock"]
        assert not world.qdir.exists()  # no lock file: nothing of a host's own
    # Released with the connection: the server ends that backend (and drops its locks) just
    # after the client hangs up, not before close() returns.
    deadline = time.monotonic() + 10
    while held_advisory_locks(world) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held_advisory_locks(world) == []


def test_two_janitors_racing_expire_each_message_once(
        world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two passes started together, many times: one sweeps, the other stands aside. The
    winner's pass is held open until the loser has returned, so that they truly overlap
    (a broken lock would let both sweep: two summaries, and each waits out its timeout)."""
    loser_done = threading.Event()
    real_run = Sweeper.run

    def run_until_the_other_returned(self: Sweeper) -> Summary:
        summary = real_run(self)
        loser_done.wait(10)
        return summary

    monkeypatch.setattr(Sweeper, "run", run_until_the_other_returned)
    caplog.set_level(logging.WARNING, logger="janitor")
    # Host B: its own hostname and its own [quarantine] directory (a lock file there would
    # not be seen by host A's janitor: only the database's lock is).
    host_b = dataclasses.replace(
        world.config, server=dataclasses.replace(world.config.server, hostname=HOST_B),
        quarantine=dataclasses.replace(world.config.quarantine,
                                       directory=world.base / "host-b-quarantine"))
    rounds, old_per_round = 8, 3
    for _ in range(rounds):
        old = [world.keep(40) for _ in range(old_per_round)]
        young = world.keep(1)
        start = threading.Barrier(2)
        results: list[Summary | None] = []

        def one_janitor(config: cfg.Config, start: threading.Barrier,
                        results: list[Summary | None]) -> None:
            start.wait(10)
            summary = janitor_cli.one_pass(config)
            results.append(summary)
            if summary is None:
                loser_done.set()

        loser_done.clear()
        threads = [threading.Thread(target=one_janitor, args=(config, start, results))
                   for config in (world.config, host_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        swept = [s for s in results if s is not None]
        assert len(results) == 2 and len(swept) == 1, results
        assert swept[0].expired == old_per_round
        assert all(not k.exists() and world.expired(k) for k in old)
        assert young.exists() and not world.expired(young)
    stood_aside = [r.getMessage() for r in caplog.records if "stood aside" in r.getMessage()]
    assert len(stood_aside) == rounds
    assert all("lmtpfilter janitor" in line for line in stood_aside)  # who holds it
    expired = world.store.transaction(lambda s: s.scalar(
        select(func.count()).select_from(st.QuarantineRecord)
        .where(st.QuarantineRecord.expired_at.is_not(None))))
    assert expired == rounds * old_per_round


def test_a_janitor_run_stands_aside_with_one_line_and_exit_0(world: World) -> None:
    old = world.keep(40)
    with lock_of(world, exclusive=True):  # another host's janitor pass
        result = janitor(world, "run")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "stood aside" in line and f"advisory lock {ADVISORY_LOCK_KEY}" in line
    assert old.exists() and not world.expired(old)


def test_a_release_holding_the_lock_makes_a_janitor_pass_stand_aside(world: World) -> None:
    old = world.keep(40)
    with lock_of(world, exclusive=False), lock_of(world, exclusive=False):  # two releases
        result = janitor(world, "run")
    assert result.returncode == 0 and "stood aside" in result.stderr
    assert "lmtpfilter release" in result.stderr and "shared" in result.stderr
    assert old.exists() and not world.expired(old)
    assert janitor(world, "run").returncode == 0  # the releases done: it sweeps
    assert not old.exists() and world.expired(old)


def test_a_janitor_pass_makes_a_release_wait_then_fail_busy(world: World) -> None:
    holder = lock_of(world, exclusive=True).acquire()
    threading.Timer(0.5, holder.release).start()
    started = time.monotonic()
    with lock_of(world, exclusive=False, timeout=10):  # waits for the pass
        waited = time.monotonic() - started
    assert 0.4 < waited < 5
    with lock_of(world, exclusive=True), pytest.raises(QuarantineBusy) as busy, \
            lock_of(world, exclusive=False, timeout=0.3):
        pass
    assert "the janitor is running" in str(busy.value)


# ---- notifications, each sent once -------------------------------------------------------

async def test_two_outboxes_racing_send_each_notification_once(postgres: Postgres) -> None:
    url = postgres.create_database(f"cl{next(_names)}")
    st.upgrade(url)
    sink = MailSink().start()
    stores = [st.Store(url), st.Store(url)]  # two hosts: engines of their own
    try:
        notify = cfg.from_mapping({"notify": {"smtp": f"127.0.0.1:{sink.port}"},
                                   "database": {"url": url}}).notify
        count = 60  # three batches: both senders find due rows to claim at once
        now = st.utcnow()
        stores[0].transaction(lambda s: s.add_all([st.Notification(
            created_at=now, kind="admin-virus", to_address=f"n{i}@example.org",
            message=f"Subject: n{i}\r\n\r\nnotice {i}\r\n", attempts=0,
            next_attempt_at=now, last_error="") for i in range(count)]))
        outboxes = [Outbox(store, notify, interval=0.1, hostname=host)
                    for store, host in zip(stores, (HOST_A, HOST_B), strict=True)]

        async def drain(outbox: Outbox) -> int:
            sent = 0
            for _ in range(20):
                sent += await outbox.send_due()
            return sent

        sent = await asyncio.gather(*(drain(o) for o in outboxes))
        assert sum(sent) == count
        got = sorted(r for m in sink.wait_for(count) for r in m.recipients)
        time.sleep(0.3)  # a duplicate would arrive now
        assert len(sink.messages) == count
        assert got == sorted(f"n{i}@example.org" for i in range(count))
        rows = stores[0].transaction(lambda s: s.execute(
            select(st.Notification.attempts, st.Notification.sent_at.is_not(None))).all())
        assert sorted(set(map(tuple, rows))) == [(1, True)]
    finally:
        for store in stores:
            store.close()
        sink.stop()


# ---- release from anywhere ---------------------------------------------------------------

def host_config(hostname: str, url: str, dovecot: Dovecot, listen: str,
                clamd: Clamd) -> str:
    text = filter_config(f"127.0.0.1:{dovecot.lmtp_port}", [listen],
                         clamav=f'enabled = true\naddress = "unix:{clamd.socket_path}"')
    text = text.replace('hostname = "filter.test"', f'hostname = "{hostname}"')
    text = text.replace("[quarantine]\n", '[quarantine]\nstore = "sql"\n', 1)
    return text.replace('url = "sqlite:///{workdir}/lmtpfilter.db"', f'url = "{url}"')


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmtpfilter", *args, "-c", str(config_path)],
                          capture_output=True, text=True, timeout=60)


async def test_a_message_quarantined_by_a_is_released_from_b(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        clamd: Clamd, postgres: Postgres, monkeypatch: pytest.MonkeyPatch) -> None:
    url = postgres.create_database(f"cl{next(_names)}")
    listen = f"127.0.0.1:{free_port()}"
    host_a = filter_process(new_workdir(daemon_base, "host-a"),
                            host_config(HOST_A, url, dovecot, listen, clamd), listen).start()
    b_dir = new_workdir(daemon_base, "host-b")  # B: another config file, nothing else shared
    b_config = b_dir / "lmtpfilter.toml"
    b_config.write_text(host_config(HOST_B, url, dovecot, f"127.0.0.1:{free_port()}", clamd)
                        .replace("{workdir}", str(b_dir)))
    before = len(dovecot.messages(U1))
    result = await lmtp_session(host_a.listen, "sender@example.net", [U1],
                                message("invoice", attachment=("invoice.com", EICAR)))
    assert result.data_replies[0].startswith("250 2.7.0"), host_a.log()[-3000:]
    qid = result.data_replies[0].rsplit(" ", 1)[1]

    # While host A's janitor holds the lock, B's release waits and then says it is busy.
    config_b = cfg.load(str(b_config))
    store_b = st.Store(url)
    try:
        monkeypatch.setattr(release_module, "LOCK_TIMEOUT", 0.3)
        with open_quarantine(config_b.quarantine, store_b).lock(exclusive=True), \
                pytest.raises(ReleaseError, match="the janitor is running"):
            await release(config_b, store_b, qid)
    finally:
        store_b.close()
    assert db(b_config, f"select released_at from quarantine where id = '{qid}'") == [(None,)]

    listed = cli(b_config, "quarantine", "list")
    assert listed.returncode == 0 and qid in listed.stdout
    released = cli(b_config, "quarantine", "release", qid)
    assert released.returncode == 0, released.stderr
    assert re.fullmatch(rf"{re.escape(U1)}: 250 2\.0\.0 .*\n", released.stdout)
    stored = dovecot.wait_for_messages(U1, before + 1)
    assert any(f"X-Quarantine-ID: <{qid}>".encode() in m for m in stored)
    assert db(b_config, f"select released_by, released_host from quarantine "
                        f"where id = '{qid}'") == [(f"cli {ME}", HOST_B)]
    shown = cli(host_a.config_path, "quarantine", "show", qid)  # seen from A as well
    assert shown.returncode == 0, shown.stderr
    assert f"Released by: cli {ME} on {HOST_B}\n" in shown.stdout


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_migration_0008_adds_and_drops_released_host(
        database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path}/lmtpfilter.db" if database == "sqlite" else
           request.getfixturevalue("postgres").create_database(f"cl{next(_names)}"))

    def quarantine_columns() -> set[str]:
        engine = st.make_engine(url)
        try:
            return {c["name"] for c in inspect(engine).get_columns("quarantine")}
        finally:
            engine.dispose()

    st.upgrade(url, "0007")
    assert "released_host" not in quarantine_columns()
    engine = st.make_engine(url)
    try:  # a row released before 0008: it gets "" (host not recorded)
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO quarantine (id, message_id, path, size, sha256, reason, detail, "
                "sender, recipients, subject, created_at, released_to, release_replies, "
                "released_by) VALUES ('A', 'TX', '', 1, '0', 'virus', '', 's', 'r', '', "
                "CURRENT_TIMESTAMP, 'r', '', 'cli')"))
    finally:
        engine.dispose()
    st.upgrade(url)
    assert "released_host" in quarantine_columns()
    store = st.Store(url)
    try:
        store.check_schema()
        row = store.transaction(lambda s: s.get(st.QuarantineRecord, "A"))
        assert row is not None and (row.released_by, row.released_host) == ("cli", "")
    finally:
        store.close()
    st.downgrade(url, "0007")
    assert "released_host" not in quarantine_columns()
