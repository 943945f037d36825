"""[quarantine] store = "sql": the quarantined bytes in the database (quarantine.QuarantineStore).

As amavisd-new's SQL quarantine (``$quarantine_method = 'sql:'``; its table
quarantine(partition_tag, mail_id, chunk_ind, mail_text)), a message is kept as rows of
``quarantine_chunks`` keyed by (quarantine id, sequence): each row holds CHUNK_SIZE bytes of the
message compressed on its own (zlib), so that a 50 MB message never sits in memory twice: the
writer compresses and inserts one piece at a time from the message the filter already holds,
and a reader fetches and decompresses one row at a time.

Durability, as for files: all the chunks are committed (one transaction, fsynced: the Store's
durable engine) before the quarantine row is, and the row before the 250. A crash in between
leaves chunks without a row, which nobody was told 250 for; the janitor removes them after a
day (ORPHAN_GRACE), as it does files without rows. No foreign key binds the chunks to the row
for that reason: the row does not exist yet when they are written.

Space ([quarantine] max_size, min_free): the budget is the compressed bytes of the live rows
(quarantine.size: the sum of their chunks' lengths), which is what deleting a message frees;
the database's own size (pg_total_relation_size, SQLite's page_count * page_size) is not, since
neither shrinks on DELETE (PostgreSQL reuses the space after VACUUM, SQLite keeps free pages).
min_free is applied to the filesystem of the SQLite file (a percentage of it, or a size); on
PostgreSQL the server's disk is not ours to see and min_free is not applied (docs/design.md §6).
The lock (quarantine.HeldLock): on PostgreSQL, the advisory lock ADVISORY_LOCK_KEY
(AdvisoryLock), which every host sharing the database sees: timers on all of them may fire
and one janitor pass runs; on SQLite (one host), the lock file in [quarantine] directory.

A database that refuses a write for want of space (SQLITE_FULL; PostgreSQL's disk_full,
SQLSTATE 53100) is a full quarantine: QuarantineFull, and on_full decides.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import time
import zlib
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Self

from sqlalchemy import and_, create_engine, delete, exists, func, insert, or_, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from .config import QuarantineConfig
from .quarantine import (
    DayListing,
    FoundFile,
    HeldLock,
    QuarantineBusy,
    QuarantineFull,
    QuarantineLock,
    StoredFile,
    check_space,
    validate_id,
)
from .store import Base, QuarantineChunk, QuarantineRecord, Store

CHUNK_SIZE = 1 << 20  # of the uncompressed message, per row
COMPRESS_LEVEL = 6  # as gzip's default, and the files'
WALK_BATCH = 1000
CHUNKS = Base.metadata.tables[QuarantineChunk.__tablename__]
SQLITE_FULL = 13  # the primary result code; extended codes keep it in the low byte
PG_DISK_FULL = "53100"
STORED_IN_DATABASE = ""  # the quarantine row's path: no file
# THE quarantine lock's key among PostgreSQL's advisory locks (one 64-bit space per database):
# "lmtpquar" in ASCII. A site whose other software takes advisory locks must keep off it.
ADVISORY_LOCK_KEY = 0x6C6D747071756172


def pieces(chunks: Sequence[bytes | memoryview], size: int = CHUNK_SIZE
           ) -> Iterator[bytes | memoryview]:
    """The message in pieces of `size` bytes (the last shorter), copying only where a piece
    spans two of the given chunks."""
    pending = bytearray()
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        start = 0
        if pending:
            take = min(size - len(pending), len(view))
            pending += view[:take]
            start = take
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending.clear()
        while len(view) - start >= size:
            yield view[start: start + size]
            start += size
        pending += view[start:]
    if pending:
        yield bytes(pending)


def is_disk_full(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == SQLITE_FULL:
        return True
    return getattr(exc.orig, "sqlstate", None) == PG_DISK_FULL


def _aware(when: dt.datetime) -> dt.datetime:
    """SQLite gives back naive datetimes; every one the filter writes is UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


class SqlQuarantine:
    def __init__(self, config: QuarantineConfig, store: Store) -> None:
        self.config = config
        self.store = store
        url = make_url(store.url)
        self.sqlite = url.get_backend_name() == "sqlite"
        self.sqlite_file = (Path(url.database) if self.sqlite and url.database
                            and url.database != ":memory:" else None)

    # ---- writing ----------------------------------------------------------------------------
    def write(self, qid: str, created: dt.datetime,
              chunks: Sequence[bytes | memoryview]) -> StoredFile:
        validate_id(qid)
        try:
            # durable=True: fsynced on SQLite (synchronous=FULL); PostgreSQL's commits are.
            return self.store.transaction(lambda s: self._insert(s, qid, created, chunks))
        except DBAPIError as exc:
            if is_disk_full(exc):
                raise QuarantineFull(f"the database refused the write: {exc.orig}") from exc
            raise

    @staticmethod
    def _insert(session: Session, qid: str, created: dt.datetime,
                chunks: Sequence[bytes | memoryview]) -> StoredFile:
        digest = hashlib.sha256()
        size = seq = 0
        statement = insert(CHUNKS)
        for piece in pieces(chunks):
            digest.update(piece)
            data = zlib.compress(piece, COMPRESS_LEVEL)
            session.execute(statement, {"quarantine_id": qid, "seq": seq, "data": data,
                                        "stored_at": created})
            size += len(data)
            seq += 1
            del data  # one compressed piece at a time
        if seq == 0:  # an empty message still has its first chunk: the walk lists those
            data = zlib.compress(b"", COMPRESS_LEVEL)
            session.execute(statement, {"quarantine_id": qid, "seq": 0, "data": data,
                                        "stored_at": created})
            size = len(data)
        return StoredFile(STORED_IN_DATABASE, size, digest.hexdigest())

    # ---- reading ----------------------------------------------------------------------------
    def read_chunks(self, record: QuarantineRecord) -> Iterator[bytes]:
        qid = validate_id(record.id)
        count = self.store.transaction(lambda s: s.scalar(
            select(func.count()).select_from(CHUNKS).where(CHUNKS.c.quarantine_id == qid)),
            durable=False)
        if not count:
            raise FileNotFoundError(f"quarantine {qid}: no chunks in the database")
        return self._pieces(qid, int(count))

    def _pieces(self, qid: str, count: int) -> Iterator[bytes]:
        for seq in range(count):  # one row per query: never the whole message fetched
            data = self.store.transaction(partial(_chunk, qid=qid, seq=seq), durable=False)
            if data is None:
                raise FileNotFoundError(f"quarantine {qid}: chunk {seq} is gone")
            yield zlib.decompress(data)

    def read(self, record: QuarantineRecord) -> bytes:
        return b"".join(self.read_chunks(record))

    def has_file(self, qid: str, rel: str) -> bool:
        return bool(self.store.transaction(lambda s: s.scalar(select(exists().where(
            CHUNKS.c.quarantine_id == qid, CHUNKS.c.seq == 0))), durable=False))

    # ---- removing ---------------------------------------------------------------------------
    def remove(self, record: QuarantineRecord) -> bool:
        return self._delete(validate_id(record.id))

    def remove_found(self, found: FoundFile) -> bool:
        return self._delete(validate_id(found.qid))

    def _delete(self, qid: str) -> bool:
        result = self.store.transaction(lambda s: s.execute(
            delete(CHUNKS).where(CHUNKS.c.quarantine_id == qid)))
        return bool(getattr(result, "rowcount", 0))

    # ---- space and the lock -----------------------------------------------------------------
    def check_budget(self, session: Session, incoming: int) -> None:
        check_space(self.config, session, incoming, self.space_path())

    def space_path(self) -> Path | None:
        return self.sqlite_file.parent if self.sqlite_file is not None else None

    def lock(self, *, exclusive: bool, timeout: float = 0.0) -> HeldLock:
        if self.sqlite:  # one host: the lock file in [quarantine] directory, as for files
            return QuarantineLock(self.config.directory, exclusive=exclusive, timeout=timeout)
        # PostgreSQL: the lock every host sharing the database sees (several filter hosts,
        # one janitor pass for all of them).
        return AdvisoryLock(self.store.url, exclusive=exclusive, timeout=timeout)

    def describe(self) -> str:
        stored = self.store.transaction(lambda s: s.scalar(
            select(func.coalesce(func.sum(func.length(CHUNKS.c.data)), 0))), durable=False)
        if self.sqlite:
            size = self.store.transaction(lambda s: int(
                s.execute(text("PRAGMA page_count")).scalar_one())
                * int(s.execute(text("PRAGMA page_size")).scalar_one()), durable=False)
            return (f"sql: {stored} bytes in chunks; SQLite database {size} bytes "
                    "(page_count * page_size)")
        database, table = self.store.transaction(lambda s: s.execute(text(
            "SELECT pg_database_size(current_database()), "
            "pg_total_relation_size('quarantine_chunks')")).one(), durable=False)
        return (f"sql: {stored} bytes in chunks; PostgreSQL database {database} bytes "
                f"(pg_database_size), chunks table {table} bytes (pg_total_relation_size)")

    # ---- the janitor's walk -----------------------------------------------------------------
    def listings(self) -> Iterator[DayListing]:
        """The stored messages by their first chunks, oldest first, WALK_BATCH at a time
        (an index range scan each: ix_quarantine_chunks_walk). Chunks being written are in
        an uncommitted transaction and not seen."""
        after: tuple[dt.datetime, str] | None = None
        while True:
            batch = self.store.transaction(partial(_first_chunks, after=after), durable=False)
            if not batch:
                return
            after = (batch[-1][1], batch[-1][0])
            ids = [qid for qid, _ in batch]
            sizes = self.store.transaction(partial(_sizes, ids=ids), durable=False)
            yield DayListing([FoundFile(qid, f"quarantine_chunks:{qid}",
                                        int(sizes.get(qid, 0)), _aware(when).timestamp())
                              for qid, when in batch], 0, 0)

    def tidy(self, listing: DayListing) -> None:
        pass  # nothing to tidy: no directories


class AdvisoryLock(HeldLock):
    """THE quarantine lock on PostgreSQL: the session-level advisory lock ADVISORY_LOCK_KEY,
    exclusive (pg_try_advisory_lock) for a janitor pass, shared (pg_try_advisory_lock_shared)
    for a release or a delete, held on a connection of its own for as long as this is held.

    The connection is not the Store's pool's: a pooled connection handed back would keep the
    lock, and one lost (the process killed, the network gone) must drop it. Closing it drops
    the lock whatever happened to the unlock, as closing the lock file drops a flock.
    Waiting polls the try variant rather than blocking in pg_advisory_lock, so that the
    timeout is ours and the connection never sits in a lock wait the server does not time.
    """

    def __init__(self, url: str, *, exclusive: bool, timeout: float = 0.0) -> None:
        super().__init__(exclusive=exclusive, timeout=timeout)
        self.url = url
        self._engine: Engine | None = None
        self._conn: Connection | None = None

    def acquire(self) -> Self:
        role = "janitor" if self.exclusive else "release/delete"
        # application_name: who holds it, for the one who stands aside (and for pg_locks).
        engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                               connect_args={"application_name": f"lmtpfilter {role} "
                                             f"{socket.gethostname()} {os.getpid()}"[:63]})
        try:
            conn = engine.connect()
            try:
                self._wait(conn)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            engine.dispose()
            raise
        self._engine, self._conn = engine, conn
        return self

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # the session ends: its advisory locks go with it
            finally:
                self._conn = None
                if self._engine is not None:
                    self._engine.dispose()
                    self._engine = None

    def _wait(self, conn: Connection) -> None:
        take = text("SELECT pg_try_advisory_lock(:key)" if self.exclusive
                    else "SELECT pg_try_advisory_lock_shared(:key)")
        deadline = time.monotonic() + self.timeout
        while not conn.execute(take, {"key": ADVISORY_LOCK_KEY}).scalar_one():
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.busy_with(holders(conn))
            time.sleep(min(self.POLL, left))

    def busy_with(self, who: list[str]) -> QuarantineBusy:
        held_by = f" (held by {'; '.join(who)})" if who else ""
        if self.exclusive:
            return QuarantineBusy(
                "another janitor pass (on this host or another sharing the "
                "database), a release or a delete holds the quarantine lock (PostgreSQL "
                f"advisory lock {ADVISORY_LOCK_KEY}){held_by}")
        return QuarantineBusy("the janitor is running (it holds the quarantine lock, "
                              f"PostgreSQL advisory lock {ADVISORY_LOCK_KEY}){held_by}; "
                              "try again in a moment")


def holders(conn: Connection) -> list[str]:
    """Who holds the quarantine's advisory lock, as their application_name says ("another
    session" where the server does not show another role's sessions to this one)."""
    rows = conn.execute(text(
        "SELECT a.application_name, l.mode FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = CAST(CAST(:high AS bigint) AS oid) "
        "AND l.objid = CAST(CAST(:low AS bigint) AS oid) AND l.objsubid = 1"),
        {"high": ADVISORY_LOCK_KEY >> 32, "low": ADVISORY_LOCK_KEY & 0xFFFFFFFF}).all()
    return [f"{name or 'another session'}, {'exclusive' if mode == 'ExclusiveLock' else 'shared'}"
            for name, mode in rows]


# ---- the queries, each one transaction --------------------------------------------------------

def _chunk(session: Session, qid: str, seq: int) -> bytes | None:
    data = session.scalar(select(CHUNKS.c.data).where(CHUNKS.c.quarantine_id == qid,
                                                      CHUNKS.c.seq == seq))
    return None if data is None else bytes(data)


def _first_chunks(session: Session, after: tuple[dt.datetime, str] | None
                  ) -> list[tuple[str, dt.datetime]]:
    query = select(CHUNKS.c.quarantine_id, CHUNKS.c.stored_at).where(CHUNKS.c.seq == 0)
    if after is not None:
        when, qid = after
        query = query.where(or_(CHUNKS.c.stored_at > when,
                                and_(CHUNKS.c.stored_at == when, CHUNKS.c.quarantine_id > qid)))
    rows = session.execute(query.order_by(CHUNKS.c.stored_at, CHUNKS.c.quarantine_id)
                           .limit(WALK_BATCH)).tuples().all()
    return [(str(qid), when) for qid, when in rows]


def _sizes(session: Session, ids: list[str]) -> dict[str, int]:
    rows = session.execute(select(CHUNKS.c.quarantine_id, func.sum(func.length(CHUNKS.c.data)))
                           .where(CHUNKS.c.quarantine_id.in_(ids))
                           .group_by(CHUNKS.c.quarantine_id)).tuples().all()
    return {str(qid): int(size or 0) for qid, size in rows}
