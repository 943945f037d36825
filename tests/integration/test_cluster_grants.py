"""The PostgreSQL roles of several filter hosts (issue 18), as the README creates and grants
them: the owner runs the migrations, then the filter, the janitor and the CLI each do their
work with their own role alone, and the filter and the janitor are refused what they are not
granted (the filter deletes nothing and changes no quarantine row; no role changes the schema).

The SQL is read from the README section "The quarantine in the database, and several filter
hosts", so the README and this test cannot drift apart."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import janitor.cli as janitor_cli
from lmtpfilter import cli
from lmtpfilter import config as cfg
from lmtpfilter import store as st
from lmtpfilter.app import build, extensions_for
from lmtpfilter.notify import Notifications
from lmtpfilter.options import Address
from lmtpfilter.quarantine import new_id, open_quarantine
from lmtpfilter.server import FilterServer, bind
from tests.harness.mailsink import MailSink
from tests.harness.postgres import Postgres
from tests.integration.test_scanning import message
from tests.lmtp_tools import FakeDownstream, lmtp_session, make_config

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### The quarantine in the database, and several filter hosts"
ROLES = ("lmtpfilter_owner", "lmtpfilter_filter", "lmtpfilter_janitor", "lmtpfilter_admin")
PASSWORD = "grants-test-pw"
DATABASE = "clgrants"
INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE of "permission denied" and "must be owner"
U1 = "user1@example.org"


def readme_sql() -> tuple[str, str]:
    """The section's two SQL blocks: the roles and the database (as the superuser), then the
    grants (as the owner, after `db upgrade`), for this test's database and password."""
    section = README.read_text().split(SECTION, 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the README no longer gives the roles, then the grants"
    roles, grants = (b.replace("PASSWORD '...'", f"PASSWORD '{PASSWORD}'")
                     .replace("DATABASE lmtpfilter", f"DATABASE {DATABASE}") for b in blocks)
    return roles, grants


def statements(sql: str) -> list[str]:
    """One statement each: psql -c runs several in one transaction, where CREATE DATABASE
    cannot run."""
    without_comments = re.sub(r"--[^\n]*", "", sql)
    return [s.strip() for s in without_comments.split(";") if s.strip()]


@dataclass
class Cluster:
    postgres: Postgres

    def url(self, role: str) -> str:
        return (f"postgresql+psycopg://{role}:{PASSWORD}@127.0.0.1:{self.postgres.port}"
                f"/{DATABASE}")

    def owner(self) -> Engine:
        return create_engine(self.url("lmtpfilter_owner"), poolclass=NullPool)

    def query(self, sql: str) -> list[tuple[object, ...]]:
        """What the owner sees: the checks read past the roles under test."""
        engine = self.owner()
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql)).all()]
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def cluster(postgres: Postgres) -> Iterator[Cluster]:
    roles_sql, grants_sql = readme_sql()
    for statement in statements(roles_sql):  # as the superuser
        postgres.psql("postgres", statement)
    try:
        found = Cluster(postgres)
        st.upgrade(found.url("lmtpfilter_owner"))  # `lmtpfilter db upgrade` as the owner
        engine = found.owner()
        try:  # as the owner, as the README says (the owner of the tables may grant on them)
            with engine.begin() as conn:
                conn.exec_driver_sql(grants_sql)
        finally:
            engine.dispose()
        yield found
    finally:
        postgres.drop_database(DATABASE)
        postgres.psql("postgres", "DROP ROLE IF EXISTS " + ", ".join(ROLES))


def assert_refused(url: str, *forbidden: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        for sql in forbidden:
            with engine.connect() as conn, pytest.raises(ProgrammingError) as refused:
                conn.execute(text(sql))
            assert getattr(refused.value.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE, \
                (sql, refused.value)
    finally:
        engine.dispose()


def keep(config: cfg.Config, owner: st.Store, data: bytes, age_days: float) -> str:
    """A quarantined message, `age_days` old, written as the owner (as some filter did)."""
    created = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
    qid = new_id()
    stored = open_quarantine(config.quarantine, owner).write(qid, created, [data])
    owner.transaction(lambda s: s.add(st.QuarantineRecord(
        id=qid, message_id="TX", path=stored.path, size=stored.size, sha256=stored.sha256,
        reason="virus", detail="Eicar-Test-Signature", sender="sender@example.net",
        recipients=U1, created_at=created, released_to="", release_replies="")))
    return qid


# ---- the filter --------------------------------------------------------------------------

def refuse_the_row(*args: object) -> None:
    raise RuntimeError("the quarantine row's transaction fails (a fault made by the test)")


async def test_the_filter_role_records_quarantines_notifies_and_deletes_nothing(
        cluster: Cluster, tmp_path: Path, fake: FakeDownstream,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `serve` builds, in this process (a filter process would only add its start-up
    time): the schema check at start, a clean and a banned message, the outbox's pass."""
    sink = MailSink().start()
    config = make_config(fake.address, database={"url": cluster.url("lmtpfilter_filter")},
                         quarantine={"store": "sql", "directory": str(tmp_path / "q")},
                         notify={"smtp": f"127.0.0.1:{sink.port}"},
                         clamav={"enabled": False}, spamassassin={"enabled": False})
    services = build(config)
    pipeline = services.pipeline
    server = FilterServer(config, pipeline.process, announce=extensions_for(pipeline.downstream))
    caplog.set_level(logging.WARNING)  # a refused write is logged, not answered 4xx
    try:
        services.store.check_schema()
        await pipeline.downstream.probe()
        sock = bind(Address(host="127.0.0.1", port=0), 0o660)
        listen = f"127.0.0.1:{sock.getsockname()[1]}"
        await server.start([sock])
        clean = await lmtp_session(listen, "sender@example.net", [U1], message("clean"))
        assert clean.data_replies[0].startswith("250 2.0.0"), caplog.text
        banned = await lmtp_session(listen, "sender@example.net", [U1],
                                    message("invoice", attachment=("invoice.pdf.exe", b"MZ")))
        assert banned.data_replies[0].startswith("250 2.7.0"), caplog.text
        qid = banned.data_replies[0].rsplit(" ", 1)[1]
        # The notice was queued with the quarantine row; the outbox claims it, sends it and
        # records it as sent.
        assert await services.outbox.send_due() == 1
        [notice] = sink.wait_for(1)
        assert notice.recipients == [U1] and qid.encode() in notice.data
        assert not caplog.records, caplog.text
        # A quarantine row that fails to commit after its chunks did (a fake fault: the
        # server cannot be made to fail just there): the filter cannot delete the chunks,
        # and the recipient still gets a 4xx, never a 250 without a copy.
        monkeypatch.setattr(Notifications, "enqueue_quarantine", refuse_the_row)
        failed = await lmtp_session(listen, "sender@example.net", [U1],
                                    message("again", attachment=("again.pdf.exe", b"MZ")))
        assert failed.data_replies[0].startswith("4"), failed.data_replies
        # The log says why (the commit's error), and on a line of its own that the copy
        # stays: a "permission denied" alone would send an admin to grant DELETE.
        failure = next(r for r in caplog.records if "quarantine failed" in r.getMessage())
        assert failure.exc_info and "permission denied" not in str(failure.exc_info[1])
        assert any("stays for the janitor" in r.getMessage()
                   and "permission denied" in r.getMessage() for r in caplog.records)
    finally:
        await server.shutdown(1.0)
        await pipeline.downstream.close()
        services.store.close()
        sink.stop()
    # ... its chunks are left to the janitor, as orphans.
    assert cluster.query("SELECT count(DISTINCT quarantine_id) FROM quarantine_chunks c WHERE "
                         "NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.id = c.quarantine_id)"
                         ) == [(1,)]
    # The verdicts were written before the replies went back.
    assert cluster.query(
        "SELECT m.subject, v.action, v.category, v.quarantine_id, v.reply_code FROM messages m "
        "JOIN recipient_verdicts v ON v.message_id = m.id ORDER BY m.received_at") == [
        ("clean", "deliver", "clean", None, 250), ("invoice", "discard", "banned", qid, 250),
        ("again", "discard", "banned", None, int(failed.data_replies[0][:3]))]
    assert cluster.query(f"SELECT count(*) FROM quarantine_chunks "
                         f"WHERE quarantine_id = '{qid}'") == [(1,)]
    assert cluster.query("SELECT attempts, sent_at IS NOT NULL FROM notifications") == [
        (1, True)]
    assert_refused(
        cluster.url("lmtpfilter_filter"),
        # Without WHERE: a condition needs SELECT on its columns, and would be refused for
        # that even with DELETE granted.
        "DELETE FROM quarantine",
        "DELETE FROM quarantine_chunks",
        "UPDATE quarantine SET expired_at = now()",
        "UPDATE quarantine SET recipients = 'x'",
        "SELECT * FROM recipient_verdicts",
        "DELETE FROM messages",
        "UPDATE user_policies SET updated_at = now()",
        "ALTER TABLE messages ADD COLUMN extra integer",
        "DROP TABLE notifications",
        "CREATE TABLE extra (i integer)",
    )


# ---- the janitor -------------------------------------------------------------------------

def test_the_janitor_role_expires_and_prunes_and_changes_no_policy(
        cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = cfg.from_mapping({
        "database": {"url": cluster.url("lmtpfilter_janitor")},
        "quarantine": {"store": "sql", "directory": str(tmp_path / "quarantine"),
                       "max_size": "1G", "min_free": 0},
        "janitor": {"max_age": "30d", "verdict_retention": "180d"}})
    owner = st.Store(cluster.url("lmtpfilter_owner"))
    try:
        old, young = keep(config, owner, b"old", 40), keep(config, owner, b"young", 1)
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=200)

        def old_records(session: Session) -> None:
            session.add(st.MessageRecord(
                id="OLDTX", received_at=long_ago, host="filter-a.test", sender="s@x", size=1,
                sha256="0" * 64, virus_status="clean", spam_status="scored"))
            session.flush()
            session.add(st.RecipientVerdict(
                message_id="OLDTX", position=0, address=U1, action="deliver",
                category="clean", reply_code=250, reply_text="250 2.0.0 Ok"))
            session.add(st.Notification(
                created_at=long_ago, kind="recipient", to_address=U1, message="x",
                attempts=1, next_attempt_at=long_ago, sent_at=long_ago))

        owner.transaction(old_records)
    finally:
        owner.close()
    caplog.set_level(logging.INFO, logger="janitor")
    summary = janitor_cli.one_pass(config)
    assert summary is not None
    assert (summary.expired, summary.pruned) == (1, 1)
    assert any("pg_database_size" in r.getMessage() for r in caplog.records), caplog.text
    # Nothing refused (the filter test's orphan, younger than a day, is only reported).
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and "has no database row" not in r.getMessage()], caplog.text
    ours = f"('{old}', '{young}')"  # the module's other tests keep messages of their own
    assert cluster.query(f"SELECT id, expired_at IS NOT NULL FROM quarantine WHERE id IN {ours} "
                         "ORDER BY created_at") == [(old, True), (young, False)]
    assert cluster.query(f"SELECT DISTINCT quarantine_id FROM quarantine_chunks "
                         f"WHERE quarantine_id IN {ours}") == [(young,)]
    assert cluster.query("SELECT (SELECT count(*) FROM messages WHERE id = 'OLDTX'), "
                         "(SELECT count(*) FROM recipient_verdicts WHERE message_id = 'OLDTX'), "
                         "(SELECT count(*) FROM notifications WHERE created_at < now() - "
                         "interval '180 days')") == [(0, 0, 0)]
    assert_refused(
        cluster.url("lmtpfilter_janitor"),
        "UPDATE user_policies SET updated_at = now()",
        "SELECT * FROM sender_lists",
        "UPDATE quarantine SET released_to = 'x'",
        "INSERT INTO quarantine_chunks (quarantine_id, seq, data, stored_at) "
        "VALUES ('x', 0, '', now())",
        "SELECT subject FROM messages",
        "DROP TABLE messages",
    )


# ---- the CLI -----------------------------------------------------------------------------

async def test_the_admin_role_runs_the_cli(
        cluster: Cluster, tmp_path: Path, fake: FakeDownstream,
        capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "admin.toml"
    # [server] user = "root": the test runs as root and must stay root (privileges.py).
    config_path.write_text(
        f'[server]\nhostname = "admin.test"\nuser = "root"\n'
        f'[downstream]\naddress = "{fake.address}"\n'
        f'[database]\nurl = "{cluster.url("lmtpfilter_admin")}"\n'
        f'[quarantine]\nstore = "sql"\ndirectory = "{tmp_path / "quarantine"}"\n'
        '[sieve]\nmethod = "none"\n')
    config = cfg.load(config_path)
    owner = st.Store(cluster.url("lmtpfilter_owner"))
    try:
        to_release, to_delete = (keep(config, owner, message(subject), 0)
                                 for subject in ("release me", "delete me"))
    finally:
        owner.close()
    amavis = tmp_path / "amavis"
    amavis.mkdir()
    shutil.copy(Path(__file__).parents[1] / "data" / "amavis_quarantine" / "virus-HV8_NBRLoS-0",
                amavis)

    async def run(*args: str) -> str:
        # In a thread: `quarantine release` runs an event loop of its own.
        code = await asyncio.to_thread(cli.main, [*args, "-c", str(config_path)])
        out, err = capsys.readouterr()
        assert code == 0, (args, out, err)
        return out

    assert to_release in await run("quarantine", "list")
    assert "Subject: release me" in await run("quarantine", "show", to_release)
    assert (await run("quarantine", "release", to_release)).startswith(f"{U1}: 250 2.0.0")
    assert await run("quarantine", "delete", to_delete) == f"deleted {to_delete}\n"
    assert "imported 1" in await run("quarantine", "import-amavis", str(amavis))
    await run("log")
    await run("user", "set", U1, "--kill-level", "12")
    assert "12" in await run("user", "show", U1)
    await run("senders", "add", U1, "friend@example.net", "allow")
    assert "friend@example.net" in await run("senders", "list")
    assert cluster.query(f"SELECT released_by, released_host FROM quarantine "
                         f"WHERE id = '{to_release}'")[0][1] == "admin.test"
    assert_refused(
        cluster.url("lmtpfilter_admin"),
        "UPDATE alembic_version SET version_num = 'x'",
        "DROP TABLE quarantine",
        "ALTER TABLE user_policies ADD COLUMN extra integer",
    )
