"""The quarantine: messages not delivered, kept as files, indexed in the database.

One file per quarantined message: ``<directory>/<yyyy>/<mm>/<dd>/<id>.eml.gz``, mode 0600.
It is written to a temporary name in the same directory, fsynced, renamed, and the directory
fsynced; only then is the database row committed, and only then may a recipient be told 250.

IDs are random and URL-safe (22 characters of ``[A-Za-z0-9_-]``) and are checked against that
exact pattern wherever one is read, so an ID can never name a path outside the quarantine.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .config import QuarantineConfig
from .store import QuarantineRecord

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")
TEMP_PREFIX = "."  # files being written: ".<id>.tmp" (the janitor skips them)


class InvalidQuarantineId(ValueError):
    pass


class QuarantineFull(Exception):
    pass


def new_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits, 22 characters


def validate_id(qid: str) -> str:
    if not isinstance(qid, str) or not ID_PATTERN.fullmatch(qid):
        text = str(qid)
        shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
        raise InvalidQuarantineId(
            f"invalid quarantine ID {shown}: expected 22 characters of A-Z a-z 0-9 _ -")
    return qid


def relative_path(qid: str, created: dt.datetime) -> str:
    validate_id(qid)
    return f"{created:%Y/%m/%d}/{qid}.eml.gz"


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative
    size: int  # on disk
    sha256: str  # of the uncompressed message


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class QuarantineFiles:
    """The files (blocking I/O: the filter calls these from a thread)."""

    def __init__(self, config: QuarantineConfig) -> None:
        self.config = config
        self.root = config.directory

    def write(self, qid: str, created: dt.datetime,
              chunks: Sequence[bytes | memoryview]) -> StoredFile:
        rel = relative_path(qid, created)
        final = self.root / rel
        parent = final.parent
        new_dirs = [p for p in (parent, parent.parent, parent.parent.parent) if not p.exists()]
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = parent / f"{TEMP_PREFIX}{qid}.tmp"
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
                os.fsync(raw.fileno())
            os.rename(temp, final)
            for d in [parent, *[p.parent for p in reversed(new_dirs)]]:
                _fsync_dir(d)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return StoredFile(rel, final.stat().st_size, digest.hexdigest())

    def path_of(self, record: QuarantineRecord) -> Path:
        """The file of a record, refusing anything that would leave the directory."""
        validate_id(record.id)
        path = (self.root / record.path)
        expected = self.root / relative_path(record.id, record.created_at)
        if path != expected or ".." in Path(record.path).parts:
            raise InvalidQuarantineId(f"quarantine record {record.id} has an unexpected path")
        return path

    def read(self, record: QuarantineRecord) -> bytes:
        path = self.path_of(record)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f, gzip.GzipFile(fileobj=f) as gz:
            return gz.read()

    def delete(self, record: QuarantineRecord) -> bool:
        path = self.path_of(record)
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False

    def check_budget(self, session: Session, incoming: int) -> None:
        """Raise QuarantineFull if storing `incoming` more bytes would pass max_size or
        leave less than min_free on the filesystem."""
        used = session.scalar(select(func.coalesce(func.sum(QuarantineRecord.size), 0))
                              .where(QuarantineRecord.expired_at.is_(None))) or 0
        if used + incoming > self.config.max_size:
            raise QuarantineFull(f"quarantine holds {used} bytes, budget is "
                                 f"{self.config.max_size}")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.statvfs(self.root)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        floor = self.config.min_free.of(total)
        if free - incoming < floor:
            raise QuarantineFull(f"only {free} bytes free on the quarantine filesystem, "
                                 f"the floor is {floor}")
