"""The store on SQLite and on a real PostgreSQL: migrations, concurrency, policies."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, update
from sqlalchemy.orm import Session

from lmtpfilter import store as st
from lmtpfilter.config import PolicyConfig
from lmtpfilter.userpolicy import DbPolicies, set_overrides
from tests.harness.postgres import Postgres

pytestmark = pytest.mark.integration
_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/lmtpfilter.db"
    server: Postgres = request.getfixturevalue("postgres")
    return server.create_database(f"t{next(_names)}")


def tables(url: str) -> set[str]:
    engine = st.make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_up_and_down(db_url: str) -> None:
    store = st.Store(db_url)
    try:
        with pytest.raises(st.SchemaError, match="run `lmtpfilter db upgrade`"):
            store.check_schema()
        st.upgrade(db_url)
        store.check_schema()
        assert {"messages", "recipient_verdicts", "quarantine", "user_policies",
                "notifications"} <= tables(db_url)
        st.downgrade(db_url, "base")
        assert tables(db_url) <= {"alembic_version"}
        with pytest.raises(st.SchemaError):
            store.check_schema()
        st.upgrade(db_url)
        store.check_schema()
    finally:
        store.close()


def _message(i: int) -> list[object]:
    now = st.utcnow()
    return [
        st.MessageRecord(id=f"TX{i:04d}", received_at=now, host="h", sender="s@x", size=1,
                         sha256="0" * 64, virus_status="clean", spam_status="scored"),
        *[st.RecipientVerdict(message_id=f"TX{i:04d}", position=n, address=f"r{n}@x",
                              action="deliver", category="clean", reply_code=250,
                              reply_text="250 2.0.0 ok") for n in range(2)],
    ]


def test_sixteen_concurrent_writers_lose_nothing(db_url: str) -> None:
    st.upgrade(db_url)
    seed = st.Store(db_url)
    seed.transaction(lambda s: s.add(st.Notification(
        created_at=st.utcnow(), kind="k", to_address="a@x", message="m", attempts=0,
        next_attempt_at=st.utcnow(), last_error="")))
    seed.close()
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        store = st.Store(db_url)  # its own engine: like 16 separate processes
        try:
            barrier.wait()
            store.transaction(lambda s: s.add_all(_message(i)))

            def increment(s: Session) -> None:
                # Read-modify-write, as the code does it: the row is locked (FOR UPDATE on
                # PostgreSQL; BEGIN IMMEDIATE on SQLite). A plain read would lose updates.
                n = s.scalar(select(st.Notification.attempts).with_for_update())
                s.execute(update(st.Notification).values(attempts=(n or 0) + 1))

            store.transaction(increment)
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    check = st.Store(db_url)
    try:
        counts = check.transaction(lambda s: (
            s.scalar(select(func.count()).select_from(st.MessageRecord)),
            s.scalar(select(func.count()).select_from(st.RecipientVerdict)),
            s.scalar(select(st.Notification.attempts))))
    finally:
        check.close()
    assert counts == (16, 32, 16)


async def test_user_and_domain_overrides(db_url: str) -> None:
    st.upgrade(db_url)
    store = st.Store(db_url)
    try:
        store.transaction(lambda s: set_overrides(PolicyConfig(), s, "@example.org",
                                                  {"kill_level": 10.0, "spam_destiny": "reject"}))
        store.transaction(lambda s: set_overrides(PolicyConfig(), s, "Boss@Example.org",
                                                  {"spam_destiny": "pass",
                                                   "bypass_spam_checks": True}))
        policies = DbPolicies(store, PolicyConfig(), ttl=60)
        got = await policies.lookup(["boss@example.org", "other@example.org", "x@elsewhere.net"])
        boss = got["boss@example.org"]
        assert (boss.kill_level, boss.spam_destiny, boss.listed(boss.bypass_spam_checks)) == (
            10.0, "pass", True)
        assert (got["other@example.org"].kill_level,
                got["other@example.org"].spam_destiny) == (10.0, "reject")
        assert (got["x@elsewhere.net"].kill_level,
                got["x@elsewhere.net"].spam_destiny) == (25.0, "discard")
        # Cached: a change is seen only after the TTL.
        store.transaction(lambda s: set_overrides(PolicyConfig(), s, "other@example.org",
                                                  {"spam_destiny": "pass"}))
        again = await policies.lookup(["other@example.org"])
        assert again["other@example.org"].spam_destiny == "reject"
        fresh = await DbPolicies(store, PolicyConfig(), ttl=0).lookup(["other@example.org"])
        assert fresh["other@example.org"].spam_destiny == "pass"
    finally:
        store.close()


def test_bad_overrides_are_refused(db_url: str) -> None:
    st.upgrade(db_url)
    store = st.Store(db_url)
    try:
        cases: list[tuple[str, dict[str, object], str]] = [
            ("user@example.org", {"spam_destiny": "bounce"}, "spam_destiny: must be one of"),
            ("user@example.org", {"junk_folder": ""}, "junk_folder"),
            ("user@example.org", {"frobnicate": 1}, "unknown policy key"),
            ("not-an-address", {"kill_level": 1.0}, "expected user@domain or @domain"),
            # The config's cross-key rule, with the values the override inherits.
            ("user@example.org", {"tag2_level": 30.0},
             r"tag_level <= tag2_level <= kill_level does not hold \(-999, 30, 25\)"),
            ("@example.org", {"kill_level": 4.0}, "tag_level <= tag2_level <= kill_level"),
        ]
        for address, changes, words in cases:
            with pytest.raises(ValueError, match=words):
                store.transaction(functools.partial(set_overrides, PolicyConfig(),
                                                    address=address, changes=changes))
        assert store.transaction(lambda s: s.scalar(
            select(func.count()).select_from(st.UserPolicy))) == 0
    finally:
        store.close()


def test_a_domain_change_is_checked_against_its_users_overrides(db_url: str) -> None:
    st.upgrade(db_url)
    store = st.Store(db_url)
    try:
        store.transaction(lambda s: set_overrides(PolicyConfig(), s, "boss@example.org",
                                                  {"tag2_level": 20.0}))
        # kill_level 15 for the domain would leave boss at tag2 20 > kill 15: refused whole.
        with pytest.raises(ValueError, match=r"boss@example.org: tag_level <= tag2_level"):
            store.transaction(lambda s: set_overrides(PolicyConfig(), s, "@example.org",
                                                      {"kill_level": 15.0}))
        assert store.transaction(lambda s: s.get(st.UserPolicy, "@example.org")) is None
    finally:
        store.close()


async def test_a_bad_row_in_the_database_is_skipped_and_logged(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A row written behind the CLI's back (or valid before a config change) must not break
    delivery: the recipient keeps the policy it would have without it, and the log says so."""
    st.upgrade(db_url)
    store = st.Store(db_url)
    try:
        store.transaction(lambda s: set_overrides(PolicyConfig(), s, "@example.org",
                                                  {"kill_level": 12.0}))
        store.transaction(lambda s: s.add(st.UserPolicy(
            address="odd@example.org", spam_destiny="bounce", updated_at=st.utcnow())))
        store.transaction(lambda s: s.add(st.UserPolicy(
            address="high@example.org", tag2_level=50.0, updated_at=st.utcnow())))
        got = await DbPolicies(store, PolicyConfig(), ttl=0).lookup(
            ["odd@example.org", "high@example.org"])
        assert (got["odd@example.org"].spam_destiny, got["odd@example.org"].kill_level) == (
            "discard", 12.0)
        assert (got["high@example.org"].tag2_level, got["high@example.org"].kill_level) == (
            5.0, 12.0)
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("odd@example.org" in e and "spam_destiny: must be one of" in e
                   for e in errors), errors
        assert any("high@example.org" in e and "tag2_level <= kill_level" in e
                   for e in errors), errors
    finally:
        store.close()


def test_timestamps_round_trip_as_utc(db_url: str) -> None:
    st.upgrade(db_url)
    store = st.Store(db_url)
    try:
        when = dt.datetime(2026, 11, 29, 5, 0, tzinfo=dt.UTC)
        store.transaction(lambda s: s.add(st.QuarantineRecord(
            id="A" * 22, message_id="TX", path="2026/11/29/" + "A" * 22 + ".eml.gz", size=1,
            sha256="0" * 64, reason="virus", detail="X", sender="s@x", recipients="r@x",
            created_at=when, released_to="", release_replies="")))
        row = store.transaction(lambda s: s.get(st.QuarantineRecord, "A" * 22))
        assert row is not None
        assert row.created_at.replace(tzinfo=row.created_at.tzinfo or dt.UTC) == when
    finally:
        store.close()


MESSAGES = st.Base.metadata.tables["messages"]
VERDICTS = st.Base.metadata.tables["recipient_verdicts"]
WHEN = dt.datetime(2026, 11, 29, 5, 0, 1, 123456, tzinfo=dt.UTC)


def message(tx_id: str) -> dict[str, object]:
    """A `messages` row as verdicts.Recorder makes it."""
    return dict(id=tx_id, received_at=WHEN, host="h", message_id="<m@x>", sender="",
                size=10, sha256="0" * 64, subject="Grüße", virus_status="clean",
                virus_names="", virus_seconds=0.25, spam_status="scored", spam_score=-1.5,
                spam_rules="A=1", spam_seconds=0.5, scanner_errors="")


def verdict(tx_id: str, position: int) -> dict[str, object]:
    return dict(message_id=tx_id, position=position, address=f"{position}@x",
                action="deliver", category="clean", reply_code=250,
                reply_text="250 2.0.0 ok", downstream_reply="250 2.0.0 ok",
                quarantine_id=None, rule="")


def message_ids(store: st.Store) -> list[str]:
    return store.transaction(
        lambda s: list(s.scalars(select(st.MessageRecord.id).order_by(st.MessageRecord.id))))


async def test_bulk_rows_read_back_like_orm_rows(db_url: str) -> None:
    """The driver-level insert of the verdict path stores what the ORM would have stored."""
    st.upgrade(db_url)
    store = st.Store(db_url)
    try:
        await store.bulk.insert([(MESSAGES, [message("T1"), message("T2")]),
                                 (VERDICTS, [verdict("T1", 0), verdict("T1", 1)])])
        # A batch that fails (duplicate key) is rolled back whole, and the next one works.
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            await store.bulk.insert([(MESSAGES, [message("T3"), message("T1")])])
        await store.bulk.insert([(MESSAGES, [message("T4")]), (VERDICTS, [verdict("T4", 0)])])

        def read(s: Session) -> tuple[list[str], st.MessageRecord | None, int]:
            ids = list(s.scalars(select(st.MessageRecord.id).order_by(st.MessageRecord.id)))
            count = s.scalar(select(func.count()).select_from(st.RecipientVerdict)) or 0
            return ids, s.get(st.MessageRecord, "T1"), count

        ids, row, count = store.transaction(read)
        assert ids == ["T1", "T2", "T4"] and count == 3
        assert row is not None and row.subject == "Grüße" and row.spam_score == -1.5
        assert row.received_at.replace(tzinfo=row.received_at.tzinfo or dt.UTC) == WHEN
    finally:
        store.close()


async def test_bulk_inserter_reconnects_after_the_server_dropped_its_connection(
        postgres: Postgres) -> None:
    """PostgreSQL restarted, or an administrator ended the session: the batch in flight fails
    (the recorder then answers 4xx for its messages), and the next batch gets a fresh
    connection instead of failing for ever on the dead one."""
    name = f"t{next(_names)}"
    url = postgres.create_database(name)
    st.upgrade(url)
    store = st.Store(url)
    try:
        await store.bulk.insert([(MESSAGES, [message("R1")]), (VERDICTS, [verdict("R1", 0)])])
        postgres.psql(name, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        with pytest.raises(Exception, match=r"(?i)terminat|closed|connection"):
            await store.bulk.insert([(MESSAGES, [message("R2")])])
        await store.bulk.insert([(MESSAGES, [message("R3")]), (VERDICTS, [verdict("R3", 0)])])
        assert message_ids(store) == ["R1", "R3"]
    finally:
        store.close()


def test_bulk_insert_refuses_to_skip_a_defaulted_column() -> None:
    with pytest.raises(ValueError, match=r"messages\.host must be given"):
        st._DriverInsert(st.Base.metadata.tables["messages"], ("id", "received_at"),
                         st.make_engine("sqlite://").dialect)
