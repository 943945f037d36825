"""lmtpfilter-janitor on a real quarantine and a real store: on each quarantine store
(tests/integration/quarantine_stores.py: files, sql on SQLite, sql on PostgreSQL), except the
tests of what only files have (symlinks, temporary files, the filesystem's free space), which
are FILES_ONLY. World.keep stores a message on the world's store; World.add makes a file."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from sqlalchemy import func, select

from janitor.sweep import Sweeper
from lmtpfilter import config as cfg
from lmtpfilter import store as st
from lmtpfilter.quarantine import (
    FsStats,
    QuarantineStore,
    new_id,
    open_quarantine,
    relative_path,
)
from tests.harness.daemons import short_tmpdir
from tests.harness.postgres import Postgres
from tests.integration.quarantine_stores import STORES

pytestmark = pytest.mark.integration
DAY = 86400.0
FILES_ONLY = pytest.mark.parametrize("world", ["files"], indirect=True)
_names = itertools.count()


class Kept(Protocol):
    """A stored message, as the tests look at it: a Path for files, a SqlCopy for sql."""

    @property
    def name(self) -> str: ...

    def exists(self) -> bool: ...

    def unlink(self) -> None: ...


@dataclass(frozen=True)
class SqlCopy:
    quarantine: QuarantineStore
    qid: str

    @property
    def name(self) -> str:
        return f"{self.qid}.sql"

    def exists(self) -> bool:
        return self.quarantine.has_file(self.qid, "")

    def unlink(self) -> None:
        self.quarantine.remove(st.QuarantineRecord(id=self.qid, path=""))


class World:
    def __init__(self, base: Path, url: str = "", store: str = "files",
                 **quarantine: object) -> None:
        self.base = base
        self.qdir = base / "quarantine"
        self.url = url or f"sqlite:///{base}/lmtpfilter.db"
        self.config_path = base / "lmtpfilter.toml"
        q = {"store": store, "directory": str(self.qdir), "max_size": "1G", "min_free": 0,
             **quarantine}
        body = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in q.items())
        self.config_path.write_text(f'[database]\nurl = "{self.url}"\n[quarantine]\n{body}'
                                    '[janitor]\nmax_age = "30d"\nverdict_retention = "180d"\n'
                                    'schedule = "* * * * *"\n')
        self.config = cfg.load(self.config_path)
        st.upgrade(self.url)
        self.store = st.Store(self.url)

    def add(self, age_days: float, size: int = 1000, row: bool = True) -> Path:
        qid = new_id()
        created = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
        rel = relative_path(qid, created)
        path = self.qdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        when = time.time() - age_days * DAY
        os.utime(path, (when, when))
        if row:
            self.store.transaction(lambda s: s.add(st.QuarantineRecord(
                id=qid, message_id="TX", path=rel, size=size, sha256="0" * 64,
                reason="virus", detail="X", sender="s@x", recipients="r@x",
                created_at=created, released_to="", release_replies="")))
        return path

    def keep(self, age_days: float, size: int = 1000, row: bool = True) -> Kept:
        """A message of `size` random bytes stored `age_days` ago, on the world's store."""
        if self.config.quarantine.store == "files":
            return self.add(age_days, size, row)
        quarantine = open_quarantine(self.config.quarantine, self.store)
        qid = new_id()
        created = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
        stored = quarantine.write(qid, created, [os.urandom(size)])
        if row:
            self.store.transaction(lambda s: s.add(st.QuarantineRecord(
                id=qid, message_id="TX", path=stored.path, size=stored.size,
                sha256=stored.sha256, reason="virus", detail="X", sender="s@x",
                recipients="r@x", created_at=created, released_to="", release_replies="")))
        return SqlCopy(quarantine, qid)

    def size(self, kept: Kept) -> int:
        """The bytes the row says it stores (for sql: compressed, so not `size`)."""
        qid = kept.name.split(".")[0]
        row = self.store.transaction(lambda s: s.get(st.QuarantineRecord, qid))
        assert row is not None
        return row.size

    def reconfigure(self, **quarantine: object) -> None:
        self.config = cfg.from_mapping({
            "quarantine": {"store": self.config.quarantine.store,
                           "directory": str(self.qdir), **quarantine},
            "database": {"url": self.url}})

    def expired(self, path: Kept) -> bool:
        qid = path.name.split(".")[0]
        row = self.store.transaction(lambda s: s.get(st.QuarantineRecord, qid))
        return row is not None and row.expired_at is not None

    def sweep(self, **kwargs: object) -> Sweeper:
        sweeper = Sweeper(self.config, self.store, **kwargs)  # type: ignore[arg-type]
        sweeper.run()
        return sweeper


@pytest.fixture(params=STORES)
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    base = short_tmpdir("lmtpf-jan-")
    url = ""
    if request.param == "postgresql-sql":
        server: Postgres = request.getfixturevalue("postgres")
        url = server.create_database(f"j{next(_names)}")
    w = World(base, url, store="files" if request.param == "files" else "sql")
    yield w
    w.store.close()
    shutil.rmtree(base, ignore_errors=True)


def janitor(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "janitor", *args, "-c", str(world.config_path)],
                          capture_output=True, text=True, timeout=120)


def test_expires_by_age(world: World) -> None:
    old, middle, new = world.keep(40), world.keep(20), world.keep(1)
    summary = world.sweep().summary
    assert not old.exists() and middle.exists() and new.exists()
    assert world.expired(old) and not world.expired(middle)
    assert (summary.scanned, summary.expired, summary.expired_bytes) == (3, 1, world.size(old))


def test_size_budget_oldest_first(world: World) -> None:
    world.reconfigure(max_size=2500, min_free=0)  # 2 messages of 1000 bytes (1011 with sql)
    files = [world.keep(age) for age in (10, 9, 3, 2)]
    summary = world.sweep().summary
    assert [f.exists() for f in files] == [False, False, True, True]
    assert summary.evicted == 2 and all(world.expired(f) for f in files[:2])


@FILES_ONLY
def test_free_disk_floor_with_injected_stats(world: World) -> None:
    world.config = cfg.from_mapping({"quarantine": {"directory": str(world.qdir),
                                                    "min_free": "50%"},
                                     "database": {"url": world.url}})
    files = [world.add(age) for age in (5, 4, 3, 2, 1)]

    def stats(_: Path) -> FsStats:  # a 5000-byte disk holding only the quarantine
        used = sum(f.stat().st_size for f in files if f.exists())
        return FsStats(total=5000, free=5000 - used)

    world.sweep(fs_stats=stats)
    assert [f.exists() for f in files] == [False, False, False, True, True]


@FILES_ONLY
def test_free_disk_floor_on_a_real_small_filesystem(world: World) -> None:
    mnt = world.base / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        world.qdir = mnt / "quarantine"
        world.config = cfg.from_mapping({"quarantine": {"directory": str(world.qdir),
                                                        "min_free": "50%"},
                                         "database": {"url": world.url}})
        files = [world.add(age, size=200_000) for age in range(8, 0, -1)]  # 1.6 MB of 2 MB
        world.sweep()
        stats = os.statvfs(mnt)
        assert stats.f_bavail * stats.f_frsize >= 0.5 * stats.f_blocks * stats.f_frsize
        kept = [f.exists() for f in files]
        assert kept == sorted(kept) and any(kept)  # the oldest went first, not all
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@FILES_ONLY
def test_symlinks_are_never_followed(world: World) -> None:
    outside = world.base / "outside"
    outside.mkdir()
    victim = outside / ("A" * 22 + ".eml.gz")
    victim.write_bytes(b"precious")
    old = time.time() - 100 * DAY
    os.utime(victim, (old, old))
    day = world.qdir / "2020" / "01" / "01"
    day.mkdir(parents=True)
    (day / ("B" * 22 + ".eml.gz")).symlink_to(victim)
    (world.qdir / "2020" / "01" / "02").symlink_to(outside, target_is_directory=True)
    summary = world.sweep().summary
    assert victim.read_bytes() == b"precious"
    assert (day / ("B" * 22 + ".eml.gz")).is_symlink()
    assert summary.foreign >= 1


@FILES_ONLY
def test_files_being_written_and_foreign_files_are_left_alone(world: World) -> None:
    path = world.add(100)
    temp = path.parent / (".%s.tmp" % ("C" * 22))
    temp.write_bytes(b"half")
    old = time.time() - 100 * DAY
    os.utime(temp, (old, old))
    readme = path.parent / "README"
    readme.write_text("not mine")
    os.utime(readme, (old, old))
    summary = world.sweep().summary
    assert not path.exists() and temp.exists() and readme.exists()
    assert summary.in_progress == 1 and summary.foreign == 1


def test_orphans_both_ways(world: World) -> None:
    stale = world.keep(2, row=False)  # a file whose row was never committed
    fresh = world.keep(0.01, row=False)  # maybe still being recorded
    gone = world.keep(3)
    gone.unlink()
    summary = world.sweep().summary
    assert not stale.exists() and fresh.exists()
    assert world.expired(gone)
    assert (summary.orphan_files, summary.orphan_rows) == (1, 1)


def test_prunes_old_verdicts_in_batches(world: World) -> None:
    now = st.utcnow()
    rows: list[object] = []
    for i, age in enumerate([200] * 1500 + [10] * 3):
        mid = f"TX{i:05d}"
        rows.append(st.MessageRecord(id=mid, received_at=now - dt.timedelta(days=age), host="h",
                                     sender="s", size=1, sha256="0", virus_status="clean",
                                     spam_status="scored"))
        rows.append(st.RecipientVerdict(message_id=mid, position=0, address="r@x",
                                        action="deliver", category="clean", reply_code=250,
                                        reply_text="250"))
    world.store.transaction(lambda s: s.add_all(rows))
    summary = world.sweep().summary
    assert summary.pruned == 1500
    assert world.store.transaction(lambda s: (
        s.scalar(select(func.count()).select_from(st.MessageRecord)),
        s.scalar(select(func.count()).select_from(st.RecipientVerdict)))) == (3, 3)


def test_dry_run_deletes_nothing(world: World) -> None:
    old = world.keep(40)
    result = janitor(world, "run", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert old.exists() and not world.expired(old)
    assert "would free 1 files" in result.stdout and result.stdout.count("\n") == 1


def test_run_prints_one_summary_line(world: World) -> None:
    old = world.keep(40)
    result = janitor(world, "run")
    assert result.returncode == 0 and not old.exists()
    assert result.stdout.startswith("janitor: 1 files") and "freed 1 files" in result.stdout


def test_two_runs_never_overlap(world: World) -> None:
    old = world.keep(40)
    with open_quarantine(world.config.quarantine, world.store).lock(exclusive=True):
        result = janitor(world, "run")
    assert result.returncode == 0 and "skipped" in result.stderr
    assert old.exists()


@FILES_ONLY  # no store is read
def test_bad_config_exit_2(world: World) -> None:
    world.config_path.write_text('[janitor]\nmax_age = "forever"\n')
    result = janitor(world, "run")
    assert result.returncode == 2 and "[janitor] max_age" in result.stderr


@FILES_ONLY  # a minute of waiting: the pass itself is the one tested above
def test_serve_runs_on_schedule_and_stops_on_sigterm(world: World) -> None:
    old = world.add(40)
    proc = subprocess.Popen([sys.executable, "-m", "janitor", "serve", "-c",
                             str(world.config_path)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 75  # "* * * * *": the next minute boundary
        while old.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert not old.exists(), "no pass ran"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert "janitor: 1 files" in log and "stopping" in log
