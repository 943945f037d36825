"""The verdict store: SQLAlchemy 2.x models, the engine, and the schema check.

The schema is created and changed only by Alembic (``migrations/``, ``lmtpfilter db
upgrade``); ``serve`` refuses to start on an outdated schema. SQLite is the default: it runs in
WAL mode with a busy timeout, and every write transaction starts with ``BEGIN IMMEDIATE`` (a
plain BEGIN takes the write lock late and fails with "database is locked" or loses updates
when several processes write). The same code runs on PostgreSQL given its URL.

All database calls are blocking; the filter runs them in a small thread pool
(:meth:`Store.run`) so that they never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
)
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeEngine

from .config import per_user_options
from .options import UserKind, user_kind

T = TypeVar("T")

# Constraint names are stable across SQLite and PostgreSQL, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class MessageRecord(Base):
    """One row per message the filter answered for."""

    __tablename__ = "messages"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the transaction id
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    host: Mapped[str] = mapped_column(String(255))  # which filter instance
    message_id: Mapped[str] = mapped_column(String(998), default="")
    sender: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(998), default="")
    virus_status: Mapped[str] = mapped_column(String(16))
    virus_names: Mapped[str] = mapped_column(Text, default="")
    virus_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    spam_status: Mapped[str] = mapped_column(String(16))
    spam_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    spam_rules: Mapped[str] = mapped_column(Text, default="")  # "GTUBE=1000,NO_RECEIVED=0"
    spam_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    scanner_errors: Mapped[str] = mapped_column(Text, default="")


class RecipientVerdict(Base):
    """One row per recipient of a message: what we decided and what we answered."""

    __tablename__ = "recipient_verdicts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # RCPT order
    address: Mapped[str] = mapped_column(String(512), index=True)
    action: Mapped[str] = mapped_column(String(16))  # deliver|discard|reject|tempfail|error
    category: Mapped[str] = mapped_column(String(16))  # policy.Category: clean, spam, banned, ...
    reply_code: Mapped[int] = mapped_column(Integer)  # the reply we gave Postfix
    reply_text: Mapped[str] = mapped_column(Text)
    downstream_reply: Mapped[str] = mapped_column(Text, default="")  # when delivered
    quarantine_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # What decided besides the scores: the [content] rule that banned a part, the bad header,
    # the sender list entry (policy.Decision.rule); "" when the scores alone decided.
    rule: Mapped[str] = mapped_column(Text, default="", server_default="")


# `lmtpfilter log --recipient` matches addresses case-insensitively (lmtpfilter/queries.py).
# SQLite does not reflect expression indexes: Alembic's autogenerate cannot see this one, so
# migration 0003 creates it by hand, and a batch (copy-and-move) migration of this table must
# create it again.
Index("ix_recipient_verdicts_address_lower", func.lower(RecipientVerdict.address))


class QuarantineRecord(Base):
    """One row per quarantined message (stored once, whatever its number of recipients)."""

    __tablename__ = "quarantine"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(32), index=True)  # messages.id
    path: Mapped[str] = mapped_column(String(255))  # relative to [quarantine].directory
    size: Mapped[int] = mapped_column(Integer)  # bytes on disk (compressed)
    sha256: Mapped[str] = mapped_column(String(64))  # of the stored message, uncompressed
    reason: Mapped[str] = mapped_column(String(16), index=True)  # virus | spam
    detail: Mapped[str] = mapped_column(Text, default="")  # virus names or the score
    sender: Mapped[str] = mapped_column(String(512))
    recipients: Mapped[str] = mapped_column(Text)  # newline-separated, RCPT order
    subject: Mapped[str] = mapped_column(String(998), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    expired_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    released_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                            nullable=True)
    released_to: Mapped[str] = mapped_column(Text, default="")
    release_replies: Mapped[str] = mapped_column(Text, default="")
    # Who released it last: "cli" (`quarantine release`), "web <address>" (the page, by
    # the user logged in) or "link <address>" (a notification's release link).
    released_by: Mapped[str] = mapped_column(String(600), default="", server_default="")
    # The host that released it last ([server] hostname of the process that did): with several
    # filter hosts sharing one PostgreSQL, any may release what another quarantined.
    released_host: Mapped[str] = mapped_column(String(255), default="", server_default="")

    __table_args__ = (Index("ix_quarantine_live", "expired_at", "created_at"),)

    @property
    def recipient_list(self) -> list[str]:
        return [r for r in self.recipients.split("\n") if r]


class QuarantineChunk(Base):
    """[quarantine] store = "sql": a quarantined message's bytes, in pieces of CHUNK_SIZE
    bytes of the message, each compressed on its own (zlib), so that neither writing nor
    reading ever holds more than one piece compressed. As amavisd-new's SQL quarantine
    (``$quarantine_method = 'sql:'``, table quarantine(partition_tag, mail_id, chunk_ind,
    mail_text)). No foreign key to quarantine: the chunks are committed before the row
    (lmtpfilter/quarantine_sql.py says why)."""

    __tablename__ = "quarantine_chunks"
    quarantine_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)  # zlib-compressed
    stored_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    # The janitor's walk: first chunks (seq 0), oldest first.
    __table_args__ = (Index("ix_quarantine_chunks_walk", "seq", "stored_at", "quarantine_id"),)


# The per-user form of each per_user [policy] key, as a column type (options.UserKind).
OVERRIDE_COLUMN_TYPES: dict[UserKind, Callable[[], TypeEngine[Any]]] = {
    UserKind.NUMBER: Float,
    UserKind.TEXT: lambda: String(200),
    UserKind.CHOICE: lambda: String(16),
    UserKind.FLAG: Boolean,
    UserKind.MEMBERSHIP: Boolean,
}


def _override_columns() -> list[Column[Any]]:
    """One nullable column per per-user key of the option table (config.PolicyConfig)."""
    return [Column(f.name, OVERRIDE_COLUMN_TYPES[user_kind(f.metadata["parse"])](),
                   nullable=True)
            for f in per_user_options()]


class UserPolicy(Base):
    """Per-user (``user@example.org``) or per-domain (``@example.org``) overrides of [policy].

    The override columns are not written here: there is one per per_user key of the option
    table, named after it (``row.kill_level``; read them with getattr). NULL means "not
    overridden": the domain's value, else the config's, applies. A new key needs a migration
    that adds its column; tests/unit/test_policy_keys.py compares the migrations with this.
    """

    __table__ = Table(
        "user_policies", Base.metadata,
        Column("address", String(512), primary_key=True),
        *_override_columns(),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    address: Mapped[str]
    updated_at: Mapped[dt.datetime]


class Notification(Base):
    """The outbox: notifications are sent by a background task and retried on failure."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(32))  # admin-virus | recipient | sender
    to_address: Mapped[str] = mapped_column(String(512))
    message: Mapped[str] = mapped_column(Text)  # the whole RFC 5322 message
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")


class ReleaseLinkUse(Base):
    """A release link (lmtpfilter/web/links.py) that was used: each works once."""

    __tablename__ = "release_link_uses"
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    quarantine_id: Mapped[str] = mapped_column(String(32))
    used_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class SenderListEntry(Base):
    """One entry of the per-recipient sender lists (`lmtpfilter senders`, senderlists.py).

    Keys are stored normalised (senderlists.recipient_key / sender_key): lower-case, domains
    in their ASCII (xn--) form. recipient: "user@dom", "@dom", ".dom" or "." (everyone);
    sender: "user@dom", "@dom", ".dom" (and its subdomains) or "<>" (the null sender).
    """

    __tablename__ = "sender_lists"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recipient: Mapped[str] = mapped_column(String(512))
    sender: Mapped[str] = mapped_column(String(512))
    action: Mapped[str] = mapped_column(String(16))  # allow | bypass | block
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # allow: None = default
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (UniqueConstraint("recipient", "sender"),)


# ---------------------------------------------------------------------------------------------


def make_engine(url: str, durable: bool = True) -> Engine:
    """An engine with the SQLite settings that concurrent writers need.

    durable: every commit is fsynced (synchronous=FULL), so it survives a power cut; needed
    where a commit backs a 250 reply (the quarantine row). Otherwise synchronous=NORMAL: in
    WAL mode a commit survives a crash of the process, and costs no fsync.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def migrations_dir() -> Path:
    return Path(str(resources.files("migrations")))


def alembic_config(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


class SchemaError(Exception):
    """The database schema is missing or older than this version of lmtpfilter."""


def check_schema(engine: Engine, url: str) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current != heads:
        have = ", ".join(sorted(current)) or "none"
        raise SchemaError(f"database schema is at {have}, this lmtpfilter needs "
                          f"{', '.join(sorted(heads))}: run `lmtpfilter db upgrade`")


class BulkInserter:
    """Many-row INSERTs through the DB driver itself, on one long-lived connection.

    For the hot path, the verdict rows. At one message per commit, SQLAlchemy's execute
    machinery (session, cache key, execution context, events) costs three times the insert
    itself: 480 us against 140 us per message here. The statement is still compiled by
    SQLAlchemy for the dialect, and values still go through the column types' own bind
    processors (DateTime on SQLite, say), so the rows read back exactly like ORM-written ones.
    The transaction is the driver's too (BEGIN IMMEDIATE on SQLite, as make_engine's
    engines begin; psycopg begins by itself), without SQLAlchemy's begin and commit events:
    at the one commit per message a filter below saturation makes (verdicts.Recorder groups
    only what arrives during a commit), a one-message commit cost 310-350 us of CPU with
    them and costs 260-290 without (bench/verdict_commit.py).
    Runs in its own single thread: the connection is used by that thread only.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._statements: dict[tuple[str, tuple[str, ...]], _DriverInsert] = {}
        self._conn: Any = None  # the pool's proxy of a DB-API connection
        self._begin = "BEGIN IMMEDIATE" if engine.dialect.name == "sqlite" else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-bulk")

    async def insert(self, batches: Sequence[tuple[Table, Sequence[Mapping[str, Any]]]]) -> None:
        """Insert each (table, rows) in order, all in one transaction."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._insert, batches)

    def _insert(self, batches: Sequence[tuple[Table, Sequence[Mapping[str, Any]]]]) -> None:
        if self._conn is None:
            self._conn = self.engine.raw_connection()  # the engine's connect events ran
        conn = self._conn
        try:
            cursor = conn.cursor()
            try:
                if self._begin:
                    cursor.execute(self._begin)
                for table, rows in batches:
                    if rows:
                        statement = self._statement(table, tuple(rows[0]))
                        cursor.executemany(statement.sql, statement.params(rows))
                conn.commit()
            finally:
                cursor.close()
        except BaseException:
            # The connection may be broken (the server restarted): start afresh next time.
            self._conn = None
            with contextlib.suppress(Exception):
                conn.rollback()
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()
            raise

    def _statement(self, table: Table, keys: tuple[str, ...]) -> _DriverInsert:
        key = (table.name, keys)
        if key not in self._statements:
            self._statements[key] = _DriverInsert(table, keys, self.engine.dialect)
        return self._statements[key]

    def close(self) -> None:
        """Close the connection in the thread that made it (SQLite insists), then the thread."""
        self._thread.submit(self._close).result()
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _DriverInsert:
    """`INSERT INTO table (keys) VALUES (...)` compiled for one dialect, and its parameters."""

    def __init__(self, table: Table, keys: tuple[str, ...], dialect: Dialect) -> None:
        for column in table.columns:
            generated = table.autoincrement_column is column
            if column.name not in keys and not generated and (
                    column.default is not None or not column.nullable):
                raise ValueError(f"{table.name}.{column.name} must be given: "
                                 "driver-level inserts apply no defaults")
        compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
        self.sql = compiled.string
        processors = {k: table.c[k].type.dialect_impl(dialect).bind_processor(dialect)
                      for k in keys}
        self.processors = {k: p for k, p in processors.items() if p is not None}
        # qmark/numeric/format drivers (sqlite3) take tuples, named ones (psycopg2) dicts.
        self.order: list[str] | None = (list(compiled.positiontup or ())
                                        if dialect.positional else None)

    def params(self, rows: Sequence[Mapping[str, Any]]
               ) -> list[tuple[Any, ...]] | list[dict[str, Any]]:
        converted = [{k: (self.processors[k](v) if k in self.processors else v)
                      for k, v in row.items()} for row in rows] if self.processors else rows
        if self.order is None:
            return [dict(row) for row in converted]
        order = self.order
        return [tuple(row[k] for k in order) for row in converted]


class Store:
    """The engine, sessions, and a thread pool so DB work stays off the event loop."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite: a second engine whose commits are fsynced; PostgreSQL's always are.
        sqlite = self.engine.dialect.name == "sqlite"
        self.fast_engine = make_engine(url, durable=False) if sqlite else self.engine
        self.fast_sessions = sessionmaker(self.fast_engine, expire_on_commit=False)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="db")
        self.bulk = BulkInserter(self.fast_engine)

    def check_schema(self) -> None:
        check_schema(self.engine, self.url)

    async def run(self, fn: Callable[[Session], T], durable: bool = True) -> T:
        """Run `fn(session)` in one transaction in the DB thread pool; commit if it returns.

        durable=False for records whose loss in a power cut loses no mail (verdicts)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.transaction, fn, durable)

    def transaction(self, fn: Callable[[Session], T], durable: bool = True) -> T:
        with (self.sessions if durable else self.fast_sessions).begin() as session:
            return fn(session)

    def preview(self, fn: Callable[[Session], T]) -> T:
        """fn's result in a transaction that is then rolled back: what a change would give,
        with nothing changed (the CLI installs a change's Sieve scripts before committing)."""
        with self.sessions() as session:
            try:
                return fn(session)
            finally:
                session.rollback()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.bulk.close()
        self.engine.dispose()
        self.fast_engine.dispose()
