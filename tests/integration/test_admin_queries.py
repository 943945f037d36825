"""`lmtpfilter log` and `lmtpfilter quarantine list` on a store with hundreds of rows, on SQLite
and on a real PostgreSQL: every filter is applied in SQL before the limit, newest first, with a
line on stderr when the limit cut the list. The expected rows come from a plain Python model of
the same data (`Data`), filtered and sorted the obvious way."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from lmtpfilter import queries
from lmtpfilter import store as st
from tests.harness.postgres import Postgres

pytestmark = pytest.mark.integration

N = 300  # messages, one every STEP minutes back from now: 100 hours
STEP = 20
SENDERS = ["alice@ex.net", "Bob@Ex.Net", "carol@ex.net"]
RARE = "Rare.User@Example.ORG"  # only on old rows, far beyond the newest 100
# Addresses that must not match each other: a suffix, a prefix, LIKE's wildcards (and its
# escape character) taken literally.
TRICKY = {
    250: ["bob@x.org", "xbob@x"],
    251: ["BOB@X", "z@z"],
    252: ["bob@x"],
    253: ["a_b%c@x"],
    254: ["aXb%c@x", "a_bYc@x", "a_b%c@x.org"],
    255: ["sl/ash@x"],
    256: ["sl//ash@x", "slash@x"],
}


@dataclass
class Msg:
    i: int  # age in steps: 0 is the newest
    id: str
    sender: str
    recipients: list[str]
    actions: list[tuple[str, str]]  # (action, category) per recipient
    reason: str
    state: str  # of its quarantine row

    @property
    def age_minutes(self) -> int:
        return self.i * STEP


def build() -> list[Msg]:
    msgs = []
    for i in range(N):
        rcpts = [f"user{i % 5}@example.org"] + (["Shared@Example.org"] if i % 2 == 0 else [])
        if i in TRICKY:
            rcpts = TRICKY[i]
        elif i == 280:
            rcpts = ["x@y", RARE]
        elif i == 285:
            rcpts = [RARE.lower()]
        actions = [("reject", "spam") if (i + n) % 10 == 0 else
                   ("discard", "virus") if (i + n) % 10 == 5 else
                   ("deliver", "clean") for n in range(len(rcpts))]
        msgs.append(Msg(
            i=i, id=f"TX{i:04d}", sender="" if i % 50 == 7 else SENDERS[i % 3],
            recipients=rcpts, actions=actions, reason="virus" if i % 2 else "spam",
            state=("expired" if i % 11 == 4 or i == 285 else
                   "released" if i % 7 == 3 else "held")))
    return msgs


DATA = build()


@dataclass
class Filled:
    """A filled store and a config file that points at it."""

    config: Path
    url: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lmtpfilter", *args, "-c",
                               str(self.config)], capture_output=True, text=True, timeout=60)


def fill(url: str) -> None:
    st.upgrade(url)
    store = st.Store(url)
    now = st.utcnow()

    def add(session: Any) -> None:
        for m in DATA:
            when = now - dt.timedelta(minutes=m.age_minutes)
            session.add(st.MessageRecord(
                id=m.id, received_at=when, host="h", sender=m.sender, size=100,
                sha256="0" * 64, virus_status="clean", spam_status="scored",
                spam_score=float(m.i % 30)))
            for n, (rcpt, (action, category)) in enumerate(
                    zip(m.recipients, m.actions, strict=True)):
                session.add(st.RecipientVerdict(
                    message_id=m.id, position=n, address=rcpt, action=action,
                    category=category, reply_code=250, reply_text="250 2.0.0 ok"))
            session.add(st.QuarantineRecord(
                id=f"Q{m.i:04d}" + "A" * 17, message_id=m.id, path="x", size=10,
                sha256="0" * 64, reason=m.reason, detail="d", sender=m.sender,
                recipients="\n".join(m.recipients), subject=f"s{m.i}", created_at=when,
                expired_at=when if m.state == "expired" else None,
                released_at=when if m.state == "released" else None))

    try:
        store.transaction(add)
    finally:
        store.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Filled:
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp}/lmtpfilter.db"
    else:
        server: Postgres = request.getfixturevalue("postgres")
        url = server.create_database("admin_queries")
    config = tmp / "lmtpfilter.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[quarantine]\ndirectory = "{tmp}/q"\n')
    fill(url)
    return Filled(config, url)


# --- the model: what each command must print ---------------------------------------------------


@dataclass(frozen=True)
class Query:
    """Filters as minutes of age (never a multiple of STEP, so a few minutes between filling
    the store and running the command move no row across a boundary)."""

    recipient: str | None = None
    sender: str | None = None
    since: int | None = None
    until: int | None = None
    action: str | None = None
    category: str | None = None
    reason: str | None = None
    states: tuple[str, ...] = ("held", "released")

    def keeps(self, m: Msg) -> bool:
        return ((self.sender is None or m.sender.lower() == self.sender.lower().strip("<>"))
                and (self.since is None or m.age_minutes < self.since)
                and (self.until is None or m.age_minutes > self.until))


def expected_log(q: Query) -> list[tuple[str, str]]:
    """(message id, recipient) rows: newest first, then RCPT order."""
    return [(m.id, rcpt) for m in DATA if q.keeps(m)
            for rcpt, (action, category) in zip(m.recipients, m.actions, strict=True)
            if (q.recipient is None or rcpt.lower() == q.recipient.lower())
            and (q.action is None or action == q.action)
            and (q.category is None or category == q.category)]


def expected_quarantine(q: Query) -> list[str]:
    return [m.id for m in DATA if q.keeps(m) and m.state in q.states
            and (q.reason is None or m.reason == q.reason)
            and (q.recipient is None or q.recipient.lower() in
                 [r.lower() for r in m.recipients])]


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+) <(.*?)> -> <(.*?)> (\w+)/(\w+) "
                      r"score=\S+ 250 2\.0\.0 ok$")
QUARANTINE_LINE = re.compile(r"^Q(\d{4})A{17}  \d{4}-\d\d-\d\d \d\d:\d\d  (virus|spam )"
                             r" (held|released|expired) +10  <(.*?)> -> (.*)  d  's\d+'$")


def parse_log(out: str) -> list[tuple[str, str]]:
    rows = []
    for line in out.splitlines():
        m = LOG_LINE.match(line)
        assert m, f"unexpected log line: {line!r}"
        rows.append((m.group(1), m.group(3)))
    return rows


def parse_quarantine(out: str) -> list[str]:
    rows = []
    for line in out.splitlines():
        m = QUARANTINE_LINE.match(line)
        assert m, f"unexpected quarantine line: {line!r}"
        rows.append(f"TX{m.group(1)}")
    return rows


def check_page(result: subprocess.CompletedProcess[str], got: list[Any], matching: list[Any],
               limit: int | None) -> None:
    """`got` is the newest `limit` of `matching`, and stderr says so exactly when it cut."""
    assert result.returncode == 0, result.stderr
    shown = matching if limit is None else matching[:limit]
    assert got == shown
    if len(shown) < len(matching):
        assert result.stderr == (f"(showing the newest {len(shown):,} of {len(matching):,}; "
                                 "use --limit N or --limit all)\n")
    else:
        assert result.stderr == ""


def flags(q: Query) -> list[str]:
    args = []
    for name in ("recipient", "sender", "action", "category", "reason"):
        if getattr(q, name) is not None:
            args += [f"--{name}", getattr(q, name)]
    for name in ("since", "until"):
        if getattr(q, name) is not None:
            args += [f"--{name}", f"{getattr(q, name)}m"]
    return args


def limit_flags(limit: int | None) -> list[str]:
    return ["--limit", "all"] if limit is None else [] if limit == 100 else ["--limit",
                                                                          str(limit)]


# --- log -------------------------------------------------------------------------------------

LOG_CASES: dict[str, tuple[Query, int | None]] = {
    "no filter: the newest 100 and a cut line": (Query(), 100),
    "everything": (Query(), None),
    "a small limit": (Query(), 7),
    "a recipient seen only 95 hours ago, in any case": (Query(recipient="RARE.user@example.org"),
                                                        100),
    "bob@x is neither bob@x.org nor xbob@x": (Query(recipient="bob@x"), 100),
    "% and _ are literal": (Query(recipient="a_b%c@x"), 100),
    "the LIKE escape character is literal too": (Query(recipient="sl/ash@x"), 100),
    "a frequent recipient, cut": (Query(recipient="shared@EXAMPLE.org"), 25),
    "a sender in any case, and an action": (Query(sender="bob@ex.NET", action="reject"), 100),
    "the null sender": (Query(sender="<>"), 100),
    "a category, only old rows": (Query(category="virus", until=3010), 100),
    "a window": (Query(since=3010, until=1210), None),
    "a window and a limit": (Query(since=3010, until=1210), 10),
    "since only": (Query(since=610), 100),
}


@pytest.mark.parametrize("case", LOG_CASES)
def test_log(filled: Filled, case: str) -> None:
    q, limit = LOG_CASES[case]
    result = filled.cli("log", *flags(q), *limit_flags(limit))
    check_page(result, parse_log(result.stdout), expected_log(q), limit)


def test_log_finds_old_rows_a_newer_limit_would_hide(filled: Filled) -> None:
    """The rows matching --recipient are older than the newest 100: still found."""
    q = Query(recipient=RARE)
    assert expected_log(q) == [("TX0280", RARE), ("TX0285", RARE.lower())]
    assert parse_log(filled.cli("log", "--recipient", RARE).stdout) == expected_log(q)


# --- quarantine list ---------------------------------------------------------------------------

ALL = ("held", "released", "expired")
QUARANTINE_CASES: dict[str, tuple[Query, list[str], int | None]] = {
    "default: held and released, newest 100": (Query(), [], 100),
    "--all --limit all": (Query(states=ALL), ["--all"], None),
    "a rare recipient, 93 hours old": (Query(recipient="rare.USER@example.org"), [], 100),
    "a rare recipient, expired rows too": (Query(recipient=RARE, states=ALL), ["--all"], 100),
    "bob@x, whole lines only": (Query(recipient="Bob@X", states=ALL), ["--all"], 100),
    "% and _ are literal": (Query(recipient="a_b%c@x", states=ALL), ["--all"], 100),
    "the LIKE escape character is literal": (Query(recipient="sl/ash@x", states=ALL),
                                             ["--all"], 100),
    "a line in the middle": (Query(recipient="user3@example.org", states=ALL), ["--all"],
                             None),
    "a frequent recipient, cut": (Query(recipient="shared@example.org"), [], 9),
    "released only": (Query(states=("released",)), ["--state", "released"], None),
    "held and expired": (Query(states=("held", "expired")),
                         ["--state", "held", "--state", "expired"], 50),
    "--state wins over --all": (Query(states=("expired",)), ["--all", "--state", "expired"],
                                None),
    "reason, sender and a window": (Query(reason="virus", sender="ALICE@ex.net", since=4990,
                                          until=1010), [], 100),
    "the null sender": (Query(sender="<>", states=ALL), ["--all"], 100),
}


@pytest.mark.parametrize("case", QUARANTINE_CASES)
def test_quarantine_list(filled: Filled, case: str) -> None:
    q, extra, limit = QUARANTINE_CASES[case]
    result = filled.cli("quarantine", "list", *flags(q), *extra, *limit_flags(limit))
    check_page(result, parse_quarantine(result.stdout), expected_quarantine(q), limit)


def test_the_tricky_cases_are_what_they_say(filled: Filled) -> None:
    """The model itself: a test that compares with the wrong expectation proves nothing."""
    def ids(recipient: str) -> list[str]:
        return expected_quarantine(Query(recipient=recipient, states=ALL))

    assert ids("bob@x") == ["TX0251", "TX0252"]
    assert ids("a_b%c@x") == ["TX0253"]
    assert ids("sl/ash@x") == ["TX0255"]
    assert ids(RARE) == ["TX0280", "TX0285"]
    assert expected_quarantine(Query(recipient=RARE)) == ["TX0280"]  # 285 is expired
    assert len(expected_quarantine(Query())) > 100


# --- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["log", "--limit", "0"],
    ["log", "--limit", "many"],
    ["quarantine", "list", "--limit", "-5"],
    ["log", "--since", "1h", "--until", "2h"],
    ["quarantine", "list", "--recipient", "a b@x"],
    ["log", "--sender", "a\tb@x"],
    ["log", "--action", "bounce"],
    ["quarantine", "list", "--state", "gone"],
])
def test_bad_arguments_are_one_line_and_exit_2(filled: Filled, args: list[str]) -> None:
    result = filled.cli(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 or "usage:" in result.stderr


# --- the query plans (SQLite) ------------------------------------------------------------------


def plan(url: str, statement: Any) -> str:
    store = st.Store(url)
    try:
        def explain(session: Any) -> str:
            sql = str(statement.compile(dialect=session.bind.dialect,
                                        compile_kwargs={"literal_binds": True}))
            return " | ".join(str(r[3]) for r in session.execute(text(
                "EXPLAIN QUERY PLAN " + sql)))
        return store.transaction(explain)
    finally:
        store.close()


PLANS: dict[str, tuple[Callable[[], Any], str]] = {
    "log, no filter: walks received_at newest first": (
        lambda: queries.log_query(queries.LogFilters()).limit(101),
        "ix_messages_received_at"),
    "log --recipient: the lower(address) index": (
        lambda: queries.log_query(queries.LogFilters(recipient="Bob@x")).limit(101),
        "ix_recipient_verdicts_address_lower"),
    "log --recipient --since: still the address index": (
        lambda: queries.log_query(queries.LogFilters(
            recipient="Bob@x", since=st.utcnow() - dt.timedelta(days=30))).limit(101),
        "ix_recipient_verdicts_address_lower"),
    "quarantine list: held and released by created_at": (
        lambda: queries.quarantine_query(queries.QuarantineFilters()).limit(101),
        "ix_quarantine_live"),
    "quarantine list --all": (
        lambda: queries.quarantine_query(queries.QuarantineFilters(
            states=frozenset(ALL))).limit(101),
        "ix_quarantine_created_at"),
}


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('plans')}/lmtpfilter.db"
    fill(url)
    return url


@pytest.mark.parametrize("case", PLANS)
def test_sqlite_uses_the_indexes(sqlite_url: str, case: str) -> None:
    statement, index = PLANS[case]
    assert index in plan(sqlite_url, statement())


def test_the_migration_creates_the_address_index(filled: Filled) -> None:
    """Alembic cannot compare expression indexes on SQLite (tests/unit/test_policy_keys.py
    skips this one), so look for it in the catalogue."""
    catalogue = ("select name from sqlite_master where type = 'index'"
                 if filled.url.startswith("sqlite") else "select indexname from pg_indexes")
    store = st.Store(filled.url)
    try:
        names = store.transaction(lambda s: set(s.scalars(text(catalogue))))
    finally:
        store.close()
    assert "ix_recipient_verdicts_address_lower" in names


def test_counting_stops_at_the_cap(filled: Filled, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from lmtpfilter.cli import _say_if_cut

    monkeypatch.setattr(queries, "COUNT_CAP", 20)
    store = st.Store(filled.url)
    try:
        capped = store.transaction(lambda s: queries.log_page(s, queries.LogFilters(), 5))
        exact = store.transaction(lambda s: queries.quarantine_page(
            s, queries.QuarantineFilters(recipient="bob@x", states=frozenset(ALL)), 1))
        whole = store.transaction(lambda s: queries.log_page(
            s, queries.LogFilters(recipient="bob@x"), None))
    finally:
        store.close()
    assert [v.message_id for _, v in capped.rows] == [f"TX{i:04d}" for i in (0, 0, 1, 2, 2)]
    assert (capped.total, capped.more, capped.cut) == (20, True, True)
    assert (len(exact.rows), exact.total, exact.more, exact.cut) == (1, 2, False, True)
    assert (len(whole.rows), whole.total, whole.cut) == (2, 2, False)
    for page in (capped, exact, whole):
        _say_if_cut(page)
    assert capsys.readouterr().err == (
        "(showing the newest 5 of more than 20; use --limit N or --limit all)\n"
        "(showing the newest 1 of 2; use --limit N or --limit all)\n")


def test_like_escape() -> None:
    assert queries.like_escape("a_b%c/d") == "a/_b/%c//d"
    with pytest.raises(ValueError, match="not an address"):
        queries.address_arg("a\nb@x", "--recipient")
    assert queries.address_arg(" <Bob@X> ") == "Bob@X"
    assert queries.address_arg("<>") == ""
