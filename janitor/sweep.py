"""One janitor pass over the quarantine and the verdict store.

In order: expire quarantine files older than ``max_age``; then, oldest first, delete until the
directory is within ``[quarantine].max_size`` and the filesystem keeps ``min_free``; mark their
rows expired; prune verdict rows older than ``verdict_retention`` in batches; report orphans
both ways and fix them where that is safe.

The stored messages are lmtpfilter.quarantine's QuarantineStore's, files or database rows
([quarantine] store; this module never asks which): its walk (files: one day directory at a
time, in date order, so memory stays bounded and "oldest first" needs no listing of the whole
tree; never through a symlink; temporary files left alone; sql: the chunks' first rows, oldest
first, a batch at a time), its removal (files: only quarantine files, only inside the
quarantine directory), the path whose filesystem min_free is measured on, and its lock, which
the caller (janitor.cli) holds exclusive for the whole pass. This module decides what goes: by
age, for the budget, and orphans.

A file is unlinked before its row is marked expired (the marks are batched), as
``quarantine delete`` does: a pass that dies in between leaves live rows without files, which
the next pass marks expired.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lmtpfilter.config import Config
from lmtpfilter.quarantine import (
    DayListing,
    FoundFile,
    FsStats,
    InvalidQuarantineId,
    filesystem_stats,
    mark_expired,
    open_quarantine,
)
from lmtpfilter.store import (
    MessageRecord,
    Notification,
    QuarantineRecord,
    RecipientVerdict,
    Store,
    utcnow,
)

log = logging.getLogger("janitor")

BATCH = 1000
ORPHAN_GRACE = 86400.0  # a file without a row younger than this may still be being recorded
PROGRESS_EVERY = 100_000


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


class Sweeper:
    def __init__(self, config: Config, store: Store, *, dry_run: bool = False,
                 fs_stats: Callable[[Path], FsStats] = filesystem_stats,
                 now: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.quarantine = open_quarantine(config.quarantine, store)
        self.dry_run = dry_run
        self.fs_stats = fs_stats
        self.now = now
        self.summary = Summary(dry_run=dry_run)
        self._expired_ids: list[str] = []

    # ---- the walk ------------------------------------------------------------------------
    def files(self, listing: DayListing) -> list[FoundFile]:
        """One step's stored messages, oldest first; counts what is left alone."""
        self.summary.in_progress += listing.in_progress
        self.summary.foreign += listing.foreign
        return listing.files

    # ---- the pass ------------------------------------------------------------------------
    def run(self) -> Summary:
        started = time.monotonic()
        total = self.expire_by_age()
        self.enforce_budget(total)
        self.flush_expired()
        self.fix_rows_without_files()
        self.prune_verdicts()
        self.summary.seconds = time.monotonic() - started
        try:  # what the storage holds, by its own measure (docs/design.md §6)
            log.info("janitor: quarantine: %s", self.quarantine.describe())
        except Exception as exc:
            log.warning("janitor: could not measure the quarantine's storage: %s", exc)
        return self.summary

    def expire_by_age(self) -> int:
        """Delete files older than max_age; check the others have rows; return the bytes
        that remain."""
        cutoff = self.now() - self.config.janitor.max_age
        remaining = 0
        for listing in self.quarantine.listings():
            day_files = self.files(listing)
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
                    log.warning("janitor: %s has no database row", f.where)
                else:
                    remaining += f.size
            if not self.dry_run:
                self.quarantine.tidy(listing)
        return remaining

    def enforce_budget(self, total: int) -> None:
        """Oldest first, until within max_size and the filesystem keeps min_free."""
        q = self.config.quarantine
        freed = 0
        floor_path = self.quarantine.space_path()

        def over() -> bool:
            if total - freed > q.max_size:
                return True
            if floor_path is None:
                return False
            stats = self.fs_stats(floor_path)
            # A dry run frees nothing, so count what it would have freed.
            free = stats.free + (freed if self.dry_run else 0)
            return free < stats.floor(q)

        if not over():
            return
        cutoff = self.now() - self.config.janitor.max_age
        for listing in self.quarantine.listings():
            for f in self.files(listing):
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
            self.store.transaction(partial(mark_expired, ids=chunk, when=now))

    def fix_rows_without_files(self) -> None:
        """Live rows whose file is gone are marked expired (safe: there is nothing to
        release any more)."""
        last = ""
        while True:
            rows = self.store.transaction(partial(_rows_after, after=last), durable=False)
            if not rows:
                break
            last = rows[-1][0]
            missing = [qid for qid, path, live in rows
                       if live and not self.quarantine.has_file(qid, path)]
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
    def _remove(self, f: FoundFile, expire_row: bool = True) -> None:
        if not self.dry_run:
            try:
                self.quarantine.remove_found(f)
            except InvalidQuarantineId as exc:  # a directory became a symlink since the walk
                log.error("janitor: %s", exc)
                return
        if expire_row:
            self._expired_ids.append(f.qid)
        if len(self._expired_ids) >= BATCH:
            self.flush_expired()


# ---- the database operations, each one transaction -------------------------------------------

def _existing(session: Session, ids: list[str]) -> set[str]:
    return set(session.scalars(select(QuarantineRecord.id)
                               .where(QuarantineRecord.id.in_(ids))).all())


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
