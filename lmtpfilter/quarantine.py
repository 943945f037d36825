"""The quarantine, in one place: messages not delivered, kept as files or in the database,
indexed in the database.

Where the bytes are is the QuarantineStore's ([quarantine] store, chosen once by
open_quarantine): QuarantineFiles here (store = "files"), quarantine_sql.SqlQuarantine
(store = "sql"). Callers (verdicts.QuarantineStage, release, the CLI, the web page, the
janitor) use the interface only and never ask which one they have.

It owns, and verdicts.QuarantineStage, release, the CLI and the janitor call rather than redo:
- the ID (new_id, validate_id, ID_PATTERN): 22 random URL-safe characters, checked wherever
  one is read, so that an ID can never name a path outside the quarantine;
- the layout: ``<directory>/<yyyy>/<mm>/<dd>/<id>.eml.gz`` (relative_path; FILE_NAME is what
  the janitor's walk matches), files 0600, directories 0700, ``.<id>.tmp`` while written;
- the files (QuarantineFiles): written under the temporary name, fsynced, renamed, directories
  fsynced, and only then the row committed and a recipient told 250; read and removed never
  through a symlink, never outside the directory, for no ID or row path off the layout;
- THE lock (HeldLock): exclusive for a janitor pass, shared for a release or a delete, so the
  janitor removes no file under them; flock on ``<directory>/.janitor.lock`` (QuarantineLock)
  for files and SQLite, PostgreSQL's advisory lock for sql on PostgreSQL, which every host
  sharing the database sees (quarantine_sql.AdvisoryLock);
- the space: the budget check, the live rows' total, the filesystem statistics of min_free.

Deleting (delete_message, and the janitor likewise) unlinks the file first and marks the row
expired second. A crash in between leaves a live row without a file, which the janitor's next
pass marks expired; the other order would leave an expired row with its file, which the
janitor keeps until max_age: weeks of a file that an administrator asked to be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import gzip
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .config import QuarantineConfig
from .store import QuarantineRecord, Store, utcnow

# ---- IDs ----------------------------------------------------------------------------------

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")


class InvalidQuarantineId(ValueError):
    """An ID, a row's path or a file that is not of the quarantine's pattern: refused."""


class NotInQuarantine(LookupError):
    """No row for a (valid) ID."""


def new_id() -> str:
    """128 random bits, 22 characters; never a leading "-", which a command line (`lmtpfilter
    quarantine show ID`) would take for an option. validate_id accepts one all the same."""
    while (qid := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return qid


def validate_id(qid: str) -> str:
    if not isinstance(qid, str) or not ID_PATTERN.fullmatch(qid):
        text = str(qid)
        shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
        raise InvalidQuarantineId(
            f"invalid quarantine ID {shown}: expected 22 characters of A-Z a-z 0-9 _ -")
    return qid


# ---- layout -------------------------------------------------------------------------------

FILE_SUFFIX = ".eml.gz"
FILE_NAME = re.compile(f"({ID_PATTERN.pattern}){re.escape(FILE_SUFFIX)}")
YEAR_DIR, MONTH_OR_DAY_DIR = re.compile(r"[0-9]{4}"), re.compile(r"[0-9]{2}")
RELATIVE_PATH = re.compile("/".join((YEAR_DIR.pattern, MONTH_OR_DAY_DIR.pattern,
                                     MONTH_OR_DAY_DIR.pattern, FILE_NAME.pattern)))
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"  # the walk skips these: they may still be written
LOCK_NAME = ".janitor.lock"  # in the quarantine directory itself, never in a day directory
LOCK_TIMEOUT = 60.0  # how long a release or a delete waits for a janitor pass


def relative_path(qid: str, created: dt.datetime) -> str:
    return f"{created:%Y/%m/%d}/{validate_id(qid)}{FILE_SUFFIX}"


def temp_name(qid: str) -> str:
    return f"{TEMP_PREFIX}{validate_id(qid)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative
    size: int  # on disk
    sha256: str  # of the uncompressed message


@dataclass(frozen=True)
class FoundFile:  # met by the walk: a stored message, with or without its row
    qid: str
    where: str  # the file's path, or where in the database (for the log)
    size: int  # bytes stored (compressed)
    mtime: float  # when it was stored (seconds since the epoch)


@dataclass(frozen=True)
class DayListing:  # one step of the walk: a day directory, or a batch of database rows
    files: list[FoundFile]  # oldest first
    in_progress: int  # temporary files being written (left alone)
    foreign: int  # anything else, symlinks included (left alone)
    day: Path | None = None  # the day directory (files), for tidy


def _subdirs(path: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Sub-directories named like `pattern`, oldest first; never through a symlink."""
    with os.scandir(path) as it:
        found = [Path(e.path) for e in it
                 if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    return sorted(found)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- the lock -----------------------------------------------------------------------------

class QuarantineBusy(Exception):
    """The lock was not to be had (in time)."""


class HeldLock:
    """What QuarantineStore.lock returns: THE quarantine lock, exclusive for a janitor pass,
    shared for a release or a delete. Files and SQLite hold it as a file lock
    (QuarantineLock), PostgreSQL as an advisory lock (quarantine_sql.AdvisoryLock), so that
    the hosts sharing one database share it; callers never ask which.

    timeout: 0 fails at once when the lock is taken (a second janitor pass has nothing to do),
    more waits that many seconds (a release waits for a running pass), then QuarantineBusy.
    A context manager, sync or async (which waits in a thread).
    """

    POLL = 0.1

    def __init__(self, *, exclusive: bool, timeout: float = 0.0) -> None:
        self.exclusive = exclusive
        self.timeout = timeout

    def acquire(self) -> Self:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.acquire)  # waiting must not block the event loop

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def busy(self) -> QuarantineBusy:
        return QuarantineBusy(
            "another janitor pass, a release or a delete holds the quarantine lock"
            if self.exclusive else "the janitor is running (it holds the "
            "quarantine lock); try again in a moment")


class QuarantineLock(HeldLock):
    """``flock`` on ``<directory>/.janitor.lock``: one host's lock (files, SQLite)."""

    def __init__(self, directory: Path, *, exclusive: bool, timeout: float = 0.0) -> None:
        super().__init__(exclusive=exclusive, timeout=timeout)
        self.directory = directory
        self._fd: int | None = None

    def acquire(self) -> Self:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            self._wait(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None

    def _wait(self, fd: int) -> None:
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:  # EWOULDBLOCK: someone else holds it
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.busy() from None
                time.sleep(min(self.POLL, left))


# ---- space --------------------------------------------------------------------------------

class QuarantineFull(Exception):
    """Keeping the message would pass max_size or min_free."""


@dataclass(frozen=True)
class FsStats:
    total: int
    free: int  # available to unprivileged users (f_bavail): what the filter may use

    def floor(self, config: QuarantineConfig) -> int:
        """The bytes `min_free` says to keep free on this filesystem."""
        return config.min_free.of(self.total)


def filesystem_stats(path: Path) -> FsStats:
    st = os.statvfs(path)
    return FsStats(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


def check_space(config: QuarantineConfig, session: Session, incoming: int,
                floor_path: Path | None) -> None:
    """Raise QuarantineFull if storing `incoming` more bytes would pass max_size (the live
    rows' total) or leave less than min_free on the filesystem of `floor_path` (None: there
    is no filesystem of ours to measure)."""
    used = live_usage(session).size
    if used + incoming > config.max_size:
        raise QuarantineFull(f"quarantine holds {used} bytes, budget is {config.max_size}")
    if floor_path is None:
        return
    stats = filesystem_stats(floor_path)
    floor = stats.floor(config)
    if stats.free - incoming < floor:
        raise QuarantineFull(f"only {stats.free} bytes free on the quarantine filesystem, "
                             f"the floor is {floor}")


@dataclass(frozen=True)
class Usage:
    files: int
    size: int  # bytes on disk, as recorded


def live_usage(session: Session) -> Usage:
    """What the live (not expired) rows hold: the budget counts these."""
    files, size = session.execute(
        select(func.count(), func.coalesce(func.sum(QuarantineRecord.size), 0))
        .where(QuarantineRecord.expired_at.is_(None))).one()
    return Usage(int(files), int(size))


# ---- rows ---------------------------------------------------------------------------------

def find(session: Session, qid: str, *, for_update: bool = False) -> QuarantineRecord:
    record = session.get(QuarantineRecord, validate_id(qid), with_for_update=for_update)
    if record is None:
        raise NotInQuarantine(f"no quarantined message with ID {qid}")
    return record


def mark_expired(session: Session, ids: Sequence[str], when: dt.datetime | None = None
                 ) -> None:
    """Mark these rows expired (their files are gone); rows already expired keep their date."""
    session.execute(update(QuarantineRecord)
                    .where(QuarantineRecord.id.in_(ids), QuarantineRecord.expired_at.is_(None))
                    .values(expired_at=when or utcnow()))


# ---- the interface -------------------------------------------------------------------------

READ_PIECE = 1 << 20  # what read_chunks returns at a time (of the uncompressed message)


class QuarantineStore(Protocol):
    """Where the quarantined bytes are (blocking I/O: the filter calls these from a thread).

    write stores one message durably (QuarantineFull when the storage refuses for want of
    space) and only then may the row be committed and a 250 given; remove is the caller's
    under the lock (see delete_message), except the stage undoing a write whose row failed.
    """

    def write(self, qid: str, created: dt.datetime,
              chunks: Sequence[bytes | memoryview]) -> StoredFile: ...

    def read_chunks(self, record: QuarantineRecord) -> Iterator[bytes]:
        """The message, a piece at a time; FileNotFoundError if it is gone."""
        ...

    def read(self, record: QuarantineRecord) -> bytes: ...

    def remove(self, record: QuarantineRecord) -> bool: ...

    def has_file(self, qid: str, rel: str) -> bool:
        """Whether a row's message is stored."""
        ...

    def check_budget(self, session: Session, incoming: int) -> None: ...

    def lock(self, *, exclusive: bool, timeout: float = 0.0) -> HeldLock: ...

    # the janitor's walk: everything stored, oldest first, in steps of bounded size
    def listings(self) -> Iterator[DayListing]: ...

    def remove_found(self, found: FoundFile) -> bool: ...

    def tidy(self, listing: DayListing) -> None:
        """After a step of the walk (files: remove the day directory if it is empty)."""
        ...

    def space_path(self) -> Path | None:
        """The path whose filesystem min_free is measured on; None: none to measure."""
        ...

    def describe(self) -> str:
        """A line on where the quarantine is and how big its storage is, for the janitor."""
        ...


def open_quarantine(config: QuarantineConfig, store: Store) -> QuarantineStore:
    """THE place the store kind is looked at."""
    if config.store == "sql":
        from .quarantine_sql import SqlQuarantine

        return SqlQuarantine(config, store)
    return QuarantineFiles(config)


# ---- the files ----------------------------------------------------------------------------

class QuarantineFiles:
    """The files (blocking I/O: the filter calls these from a thread). Whoever removes one
    holds the lock (QuarantineLock), except the stage undoing a write whose row failed."""

    def __init__(self, config: QuarantineConfig) -> None:
        self.config = config
        self.root = config.directory

    def write(self, qid: str, created: dt.datetime,
              chunks: Sequence[bytes | memoryview]) -> StoredFile:
        """Store one message durably, dated `created` (its mtime). A filesystem that refuses
        for want of space (ENOSPC: no block or no inode left; EDQUOT) is a full quarantine,
        whatever check_budget saw a moment before: QuarantineFull, so that on_full decides
        (451 4.3.1 by default)."""
        try:
            return self._write(qid, created, chunks)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise QuarantineFull(f"the quarantine filesystem refused the write: "
                                     f"{exc.strerror}") from exc
            raise

    def _write(self, qid: str, created: dt.datetime,
               chunks: Sequence[bytes | memoryview]) -> StoredFile:
        rel = relative_path(qid, created)
        final = self.root / rel
        parent = final.parent
        self._make_day_dir(parent)
        temp = parent / temp_name(qid)
        digest = hashlib.sha256()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
                for chunk in chunks:
                    digest.update(chunk)
                    gz.write(chunk)
                gz.close()
                raw.flush()
                # The janitor ages a file by its mtime: `created`, which is now for the
                # filter, and the original date for an import (amavis_quarantine), set before
                # the fsync so that it is as durable as the bytes.
                when = created.timestamp()
                os.utime(raw.fileno(), (when, when))
                os.fsync(raw.fileno())
            os.rename(temp, final)
            # The new name, and the entry of each directory on its way, must survive a power
            # cut before a 250 can be given. Every level is synced, not only the ones this
            # call made: a directory another writer has just made may not be durable yet (a
            # sync with nothing pending is cheap, and quarantine writes are rare).
            for d in (parent, parent.parent, parent.parent.parent, self.root):
                _fsync_dir(d)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return StoredFile(rel, final.stat().st_size, digest.hexdigest())

    def _make_day_dir(self, day: Path) -> None:
        """Make the yyyy/mm/dd directories, each 0700 (mkdir(parents=True) would give the
        intermediate ones the umask's mode)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (day.parent.parent, day.parent, day):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o700)

    def path_of(self, record: QuarantineRecord) -> Path:
        """The file of a record, refusing any ID or path that is not of the layout."""
        return self._checked_path(record.id, record.path)

    def _checked_path(self, qid: str, rel: str) -> Path:
        validate_id(qid)
        match = RELATIVE_PATH.fullmatch(rel)
        if match is None or match.group(1) != qid:
            raise InvalidQuarantineId(f"quarantine record {qid} has an unexpected path")
        return self.root / rel

    def has_file(self, qid: str, rel: str) -> bool:
        """Whether a row's file is there: a regular file (not a symlink) at a path of the
        layout. A row whose path is not of the layout has no file."""
        try:
            mode = os.lstat(self._checked_path(qid, rel)).st_mode
        except (InvalidQuarantineId, OSError):
            return False
        return stat.S_ISREG(mode)

    def read(self, record: QuarantineRecord) -> bytes:
        fd = os.open(self.path_of(record), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f, gzip.GzipFile(fileobj=f) as gz:
            return gz.read()

    def read_chunks(self, record: QuarantineRecord) -> Iterator[bytes]:
        fd = os.open(self.path_of(record), os.O_RDONLY | os.O_NOFOLLOW)  # raises at the call
        return self._pieces(fd)

    @staticmethod
    def _pieces(fd: int) -> Iterator[bytes]:
        with os.fdopen(fd, "rb") as f, gzip.GzipFile(fileobj=f) as gz:
            while piece := gz.read(READ_PIECE):
                yield piece

    def lock(self, *, exclusive: bool, timeout: float = 0.0) -> QuarantineLock:
        return QuarantineLock(self.root, exclusive=exclusive, timeout=timeout)

    def describe(self) -> str:
        return f"files in {self.root}"

    def remove(self, record: QuarantineRecord) -> bool:
        """Unlink a record's file (False: it was already gone). The row is the caller's, and
        so is the lock: see delete_message."""
        return self._unlink(self.path_of(record))

    def remove_found(self, found: FoundFile) -> bool:
        """Unlink a file the walk found (the janitor holds the lock exclusive)."""
        return self._unlink(Path(found.where))

    def _unlink(self, path: Path) -> bool:
        # The path was of the layout when it was read; a directory swapped for a symlink since
        # would lead elsewhere, so check where the day directory really is now.
        if (FILE_NAME.fullmatch(path.name) is None
                or path.parent.resolve().parent.parent.parent != self.root.resolve()):
            raise InvalidQuarantineId(f"refusing to delete {path}: not inside the quarantine")
        try:
            os.unlink(path)  # unlink never follows a symlink in the last component
            return True
        except FileNotFoundError:
            return False

    # ---- the walk (the janitor's) -------------------------------------------------------
    def listings(self) -> Iterator[DayListing]:
        for day in self.days():
            yield self.scan_day(day)

    def tidy(self, listing: DayListing) -> None:
        if listing.day is not None:
            self.remove_day_if_empty(listing.day)

    def days(self) -> Iterator[Path]:
        """The yyyy/mm/dd directories, oldest first, listed one level at a time so that
        memory stays bounded for any number of files; never through a symlink."""
        if not self.root.is_dir():
            return
        for year in _subdirs(self.root, YEAR_DIR):
            for month in _subdirs(year, MONTH_OR_DAY_DIR):
                yield from _subdirs(month, MONTH_OR_DAY_DIR)

    def scan_day(self, day: Path) -> DayListing:
        """One day's quarantine files, oldest first, and a count of what is not one."""
        files: list[FoundFile] = []
        in_progress = foreign = 0
        with os.scandir(day) as it:
            for entry in it:
                match = FILE_NAME.fullmatch(entry.name)
                if match is None:
                    if is_temp_name(entry.name):
                        in_progress += 1
                    else:
                        foreign += 1
                elif not entry.is_file(follow_symlinks=False):  # a symlink, a directory...
                    foreign += 1
                else:
                    st = entry.stat(follow_symlinks=False)
                    files.append(FoundFile(match.group(1), entry.path, st.st_size,
                                           st.st_mtime))
        files.sort(key=lambda f: (f.mtime, f.qid))
        return DayListing(files, in_progress, foreign, day)

    def remove_day_if_empty(self, day: Path) -> None:
        """rmdir the day, then its month and year, as far as they are empty."""
        for d in (day, day.parent, day.parent.parent):
            try:
                d.rmdir()
            except OSError:
                return

    # ---- space --------------------------------------------------------------------------
    def check_budget(self, session: Session, incoming: int) -> None:
        """Raise QuarantineFull if storing `incoming` more bytes would pass max_size or
        leave less than min_free on the filesystem."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_space(self.config, session, incoming, self.root)

    def space_path(self) -> Path | None:
        return self.root if self.root.is_dir() else None


# ---- deleting a message -------------------------------------------------------------------

@dataclass(frozen=True)
class Deleted:
    qid: str
    file_removed: bool  # False: the file was already gone


def delete_message(config: QuarantineConfig, store: Store, qid: str, *,
                   lock_timeout: float = LOCK_TIMEOUT) -> Deleted:
    """`lmtpfilter quarantine delete ID`: remove the file, then mark the row expired, both
    under the quarantine lock held shared (a janitor pass, exclusive, is waited for up to
    `lock_timeout` seconds, then QuarantineBusy). Unlink before marking: see the module's
    docstring for why. Deleting again is harmless: it finds no file and an expired row."""
    validate_id(qid)  # before anything touches the filesystem
    quarantine = open_quarantine(config, store)
    with quarantine.lock(exclusive=False, timeout=lock_timeout):
        removed = quarantine.remove(store.transaction(lambda s: find(s, qid), durable=False))
        store.transaction(lambda s: mark_expired(s, [qid]))
    return Deleted(qid, removed)
