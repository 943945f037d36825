"""lmtpfilter-janitor on a real quarantine tree and a real (SQLite) store."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from janitor.sweep import Sweeper
from lmtpfilter import config as cfg
from lmtpfilter import store as st
from lmtpfilter.quarantine import FsStats, QuarantineLock, new_id, relative_path
from tests.harness.daemons import short_tmpdir

pytestmark = pytest.mark.integration
DAY = 86400.0


class World:
    def __init__(self, base: Path, **quarantine: object) -> None:
        self.base = base
        self.qdir = base / "quarantine"
        self.url = f"sqlite:///{base}/lmtpfilter.db"
        self.config_path = base / "lmtpfilter.toml"
        q = {"directory": str(self.qdir), "max_size": "1G", "min_free": 0, **quarantine}
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

    def expired(self, path: Path) -> bool:
        qid = path.name.split(".")[0]
        row = self.store.transaction(lambda s: s.get(st.QuarantineRecord, qid))
        return row is not None and row.expired_at is not None

    def sweep(self, **kwargs: object) -> Sweeper:
        sweeper = Sweeper(self.config, self.store, **kwargs)  # type: ignore[arg-type]
        sweeper.run()
        return sweeper


@pytest.fixture
def world() -> Iterator[World]:
    base = short_tmpdir("lmtpf-jan-")
    w = World(base)
    yield w
    w.store.close()
    shutil.rmtree(base, ignore_errors=True)


def janitor(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "janitor", *args, "-c", str(world.config_path)],
                          capture_output=True, text=True, timeout=120)


def test_expires_by_age(world: World) -> None:
    old, middle, new = world.add(40), world.add(20), world.add(1)
    summary = world.sweep().summary
    assert not old.exists() and middle.exists() and new.exists()
    assert world.expired(old) and not world.expired(middle)
    assert (summary.scanned, summary.expired, summary.expired_bytes) == (3, 1, 1000)


def test_size_budget_oldest_first(world: World) -> None:
    world.config = cfg.from_mapping({"quarantine": {"directory": str(world.qdir),
                                                    "max_size": 2500, "min_free": 0},
                                     "database": {"url": world.url}})
    files = [world.add(age) for age in (10, 9, 3, 2)]
    summary = world.sweep().summary
    assert [f.exists() for f in files] == [False, False, True, True]
    assert summary.evicted == 2 and all(world.expired(f) for f in files[:2])


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
    stale = world.add(2, row=False)  # a file whose row was never committed
    fresh = world.add(0.01, row=False)  # maybe still being recorded
    gone = world.add(3)
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
    old = world.add(40)
    result = janitor(world, "run", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert old.exists() and not world.expired(old)
    assert "would free 1 files" in result.stdout and result.stdout.count("\n") == 1


def test_run_prints_one_summary_line(world: World) -> None:
    old = world.add(40)
    result = janitor(world, "run")
    assert result.returncode == 0 and not old.exists()
    assert result.stdout.startswith("janitor: 1 files") and "freed 1 files" in result.stdout


def test_two_runs_never_overlap(world: World) -> None:
    old = world.add(40)
    with QuarantineLock(world.qdir, exclusive=True):
        result = janitor(world, "run")
    assert result.returncode == 0 and "skipped" in result.stderr
    assert old.exists()


def test_bad_config_exit_2(world: World) -> None:
    world.config_path.write_text('[janitor]\nmax_age = "forever"\n')
    result = janitor(world, "run")
    assert result.returncode == 2 and "[janitor] max_age" in result.stderr


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
