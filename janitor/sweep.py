"""One janitor pass over the quarantine and the verdict store.

In order: expire quarantine files older than ``max_age``; then, oldest first, delete until the
directory is within ``[quarantine].max_size`` and the filesystem keeps ``min_free``; mark their
rows expired; prune verdict rows older than ``verdict_retention`` in batches; report orphans
both ways and fix them where that is safe.

Safety: the walk never follows symlinks and only ever deletes regular files whose names match
the quarantine pattern, inside ``yyyy/mm/dd`` directories of the quarantine directory. Files
being written (``.<id>.tmp``) are skipped. An exclusive ``flock`` on
``<directory>/.janitor.lock`` keeps two runs from overlapping (releases take it shared).

Memory is bounded for any number of files: directories are read with ``os.scandir`` one day
at a time, in date order, so "oldest first" never needs a listing of the whole tree.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from lmtpfilter.config import Config
from lmtpfilter.store import (
    MessageRecord,
    Notification,
    QuarantineRecord,
    RecipientVerdict,
    Store,
    utcnow,
)

log = logging.getLogger("janitor")

FILE_RE = re.compile(r"([A-Za-z0-9_-]{22})\.eml\.gz")
YEAR_RE, TWO_RE = re.compile(r"\d{4}"), re.compile(r"\d{2}")
LOCK_NAME = ".janitor.lock"
BATCH = 1000
ORPHAN_GRACE = 86400.0  # a file without a row younger than this may still be being recorded
PROGRESS_EVERY = 100_000


@dataclass(frozen=True)
class FsStats:
    total: int
    free: int


def statvfs(path: Path) -> FsStats:
    st = os.statvfs(path)
    return FsStats(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


@dataclass
class Summary:
    scanned: int = 0
    scanned_bytes: int = 0
    expired: int = 0  # by age
    expired_bytes: int = 0
    evicted: int = 0  # for the size budget / free-space floor
    evicted_bytes: int = 0
    orphan_files: int = 0  # files without a row (removed when older than a day)
    orphan_rows: int = 0  # live rows without a file (marked expired)
    foreign: int = 0  # entries that are not quarantine files (left alone)
    in_progress: int = 0  # temp files being written (left alone)
    pruned: int = 0  # verdict rows (messages) pruned
    seconds: float = 0.0
    dry_run: bool = False

    def line(self) -> str:
        would = "would free" if self.dry_run else "freed"
        freed = self.expired + self.evicted + self.orphan_files
        return (f"janitor: {self.scanned} files ({self.scanned_bytes} bytes) scanned; "
                f"{would} {freed} files, "
                f"{self.expired_bytes + self.evicted_bytes} bytes "
                f"({self.expired} by age, {self.evicted} for the budget, "
                f"{self.orphan_files} orphans); {self.orphan_rows} rows without files; "
                f"{self.pruned} old messages pruned; {self.foreign} foreign and "
                f"{self.in_progress} in-progress entries left alone; "
                f"{self.seconds:.2f} s")


class Locked(Exception):
    """Another janitor run holds the lock."""


@contextlib.contextmanager
def exclusive_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Locked("another janitor run (or a release) holds the lock") from None
            raise
        yield
    finally:
        os.close(fd)


@dataclass
class QFile:
    qid: str
    path: Path
    size: int
    mtime: float


def _dirs(path: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Sub-directories named like `pattern`, oldest first; never through a symlink."""
    with os.scandir(path) as it:
        found = [Path(e.path) for e in it
                 if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    return sorted(found)


class Sweeper:
    def __init__(self, config: Config, store: Store, *, dry_run: bool = False,
                 fs_stats: Callable[[Path], FsStats] = statvfs,
                 now: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.root = config.quarantine.directory
        self.dry_run = dry_run
        self.fs_stats = fs_stats
        self.now = now
        self.summary = Summary(dry_run=dry_run)
        self._expired_ids: list[str] = []

    # ---- the walk ------------------------------------------------------------------------
    def days(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for year in _dirs(self.root, YEAR_RE):
            for month in _dirs(year, TWO_RE):
                yield from _dirs(month, TWO_RE)

    def files(self, day: Path) -> list[QFile]:
        """One day's quarantine files, oldest first; counts what is left alone."""
        out = []
        with os.scandir(day) as it:
            for entry in it:
                m = FILE_RE.fullmatch(entry.name)
                if m is None:
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        self.summary.in_progress += 1
                    else:
                        self.summary.foreign += 1
                    continue
                if not entry.is_file(follow_symlinks=False):  # a symlink, a directory...
                    self.summary.foreign += 1
                    continue
                st = entry.stat(follow_symlinks=False)
                out.append(QFile(m.group(1), Path(entry.path), st.st_size, st.st_mtime))
        out.sort(key=lambda f: (f.mtime, f.qid))
        return out

    # ---- the pass ------------------------------------------------------------------------
    def run(self) -> Summary:
        started = time.monotonic()
        total = self.expire_by_age()
        self.enforce_budget(total)
        self.flush_expired()
        self.fix_rows_without_files()
        self.prune_verdicts()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def expire_by_age(self) -> int:
        """Delete files older than max_age; check the others have rows; return the bytes
        that remain."""
        cutoff = self.now() - self.config.janitor.max_age
        remaining = 0
        for day in self.days():
            day_files = self.files(day)
            known = self._known_ids([f.qid for f in day_files])
            for f in day_files:
                self.summary.scanned += 1
                self.summary.scanned_bytes += f.size
                if self.summary.scanned % PROGRESS_EVERY == 0:
                    log.info("janitor: %d files scanned", self.summary.scanned)
                if f.mtime < cutoff:
                    self._remove(f)
                    self.summary.expired += 1
                    self.summary.expired_bytes += f.size
                elif f.qid not in known:
                    if self.now() - f.mtime > ORPHAN_GRACE:
                        # Its row was never committed, so nobody was told 250 for it.
                        self._remove(f, expire_row=False)
                        self.summary.orphan_files += 1
                    else:
                        remaining += f.size
                    log.warning("janitor: %s has no database row", f.path)
                else:
                    remaining += f.size
            if not self.dry_run:
                self._rmdir_if_empty(day)
        return remaining

    def enforce_budget(self, total: int) -> None:
        """Oldest first, until within max_size and the filesystem keeps min_free."""
        q = self.config.quarantine
        freed = 0
        if not self.root.is_dir():
            return

        def over() -> bool:
            if total - freed > q.max_size:
                return True
            stats = self.fs_stats(self.root)
            # A dry run frees nothing, so count what it would have freed.
            free = stats.free + (freed if self.dry_run else 0)
            return free < q.min_free.of(stats.total)

        if not over():
            return
        cutoff = self.now() - self.config.janitor.max_age
        for day in self.days():
            for f in self.files(day):
                if f.mtime < cutoff:
                    continue  # already counted by expire_by_age (dry run)
                if not over():
                    return
                self._remove(f)
                freed += f.size
                self.summary.evicted += 1
                self.summary.evicted_bytes += f.size
        if over():
            log.error("janitor: quarantine still over its budget or the filesystem under "
                      "its floor with nothing left to delete")

    # ---- database --------------------------------------------------------------------------
    def _known_ids(self, ids: list[str]) -> set[str]:
        known: set[str] = set()
        for i in range(0, len(ids), BATCH):
            chunk = ids[i: i + BATCH]
            known |= self.store.transaction(partial(_existing, ids=chunk), durable=False)
        return known

    def flush_expired(self) -> None:
        ids, self._expired_ids = self._expired_ids, []
        if self.dry_run or not ids:
            return
        now = utcnow()
        for i in range(0, len(ids), BATCH):
            chunk = ids[i: i + BATCH]
            self.store.transaction(partial(_mark_expired, ids=chunk, when=now))

    def fix_rows_without_files(self) -> None:
        """Live rows whose file is gone are marked expired (safe: there is nothing to
        release any more)."""
        last = ""
        while True:
            rows = self.store.transaction(partial(_rows_after, after=last), durable=False)
            if not rows:
                break
            last = rows[-1][0]
            missing = [qid for qid, path, live in rows if live
                       and (not (self.root / path).is_file() or (self.root / path).is_symlink())]
            self.summary.orphan_rows += len(missing)
            for qid in missing:
                log.warning("janitor: quarantine row %s has no file", qid)
            self._expired_ids += missing
            self.flush_expired()

    def prune_verdicts(self) -> None:
        """Delete messages (and their recipient rows) past verdict_retention, in batches so
        that the filter is never locked out for long; also sent notifications and long
        expired quarantine rows."""
        cutoff = dt.datetime.fromtimestamp(self.now() - self.config.janitor.verdict_retention,
                                           dt.UTC)
        while True:
            ids = self.store.transaction(lambda s: s.scalars(
                select(MessageRecord.id).where(MessageRecord.received_at < cutoff)
                .limit(BATCH)).all(), durable=False)
            if not ids:
                break
            self.summary.pruned += len(ids)
            if self.dry_run:
                break
            self.store.transaction(partial(_prune_messages, ids=list(ids)))
        if not self.dry_run:
            self.store.transaction(lambda s: (
                s.execute(delete(Notification).where(Notification.sent_at < cutoff)),
                s.execute(delete(QuarantineRecord).where(QuarantineRecord.expired_at < cutoff))))

    # ---- files -----------------------------------------------------------------------------
    def _remove(self, f: QFile, expire_row: bool = True) -> None:
        if expire_row:
            self._expired_ids.append(f.qid)
        if self.dry_run:
            return
        # Still the same regular file inside the quarantine? (A path component replaced by a
        # symlink since the walk would be caught here.)
        if f.path.parent.resolve().parent.parent.parent != self.root.resolve():
            log.error("janitor: refusing to delete %s: not inside the quarantine", f.path)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f.path)
        if len(self._expired_ids) >= BATCH:
            self.flush_expired()

    def _rmdir_if_empty(self, day: Path) -> None:
        for d in (day, day.parent, day.parent.parent):
            try:
                d.rmdir()
            except OSError:
                return


# ---- the database operations, each one transaction -------------------------------------------

def _existing(session: Session, ids: list[str]) -> set[str]:
    return set(session.scalars(select(QuarantineRecord.id)
                               .where(QuarantineRecord.id.in_(ids))).all())


def _mark_expired(session: Session, ids: list[str], when: dt.datetime) -> None:
    session.execute(update(QuarantineRecord)
                    .where(QuarantineRecord.id.in_(ids), QuarantineRecord.expired_at.is_(None))
                    .values(expired_at=when))


def _rows_after(session: Session, after: str) -> list[tuple[str, str, bool]]:
    """The next batch by primary key (id, path, live). Paging on the key alone keeps each
    query an index range scan; filtering on expired_at here would make SQLite sort every
    live row for every batch."""
    rows = session.execute(select(QuarantineRecord.id, QuarantineRecord.path,
                                  QuarantineRecord.expired_at)
                           .where(QuarantineRecord.id > after)
                           .order_by(QuarantineRecord.id).limit(BATCH)).all()
    return [(qid, path, expired is None) for qid, path, expired in rows]


def _prune_messages(session: Session, ids: list[str]) -> None:
    session.execute(delete(RecipientVerdict).where(RecipientVerdict.message_id.in_(ids)))
    session.execute(delete(MessageRecord).where(MessageRecord.id.in_(ids)))
