"""Sender lists (lmtpfilter/senderlists.py): matching as table cases from
tests/data/sender_list_cases.toml, the keys `lmtpfilter senders` stores, and the filter's
cache (one query per reload, reload after the TTL, errors as userpolicy's)."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter import senderlists as sl
from lmtpfilter import store as st
from lmtpfilter.senders_admin import add_entry, remove_entry

DATA = tomllib.loads((Path(__file__).resolve().parent.parent / "data" /
                      "sender_list_cases.toml").read_text(encoding="utf-8"))
ALLOW_SHIFT: float = DATA["allow_shift"]

Row = tuple[str, str, str, float | None]


def rows_of(entries: list[dict[str, Any]]) -> list[Row]:
    return [(e["recipient"], e["sender"], e["action"], e.get("score")) for e in entries]


CHECKS = [pytest.param(case, check, id=f"{case['name']} #{n}")
          for case in DATA["case"] for n, check in enumerate(case["checks"])]


@pytest.mark.parametrize(("case", "check"), CHECKS)
def test_match(case: dict[str, Any], check: dict[str, Any]) -> None:
    index = sl.SenderIndex.build(rows_of(case["entries"]), ALLOW_SHIFT)
    found = index.match(check["recipient"], check["sender"], check.get("delimiter", ""))
    if check["expect"] == "none":
        assert found is None
        return
    assert found == sl.SenderMatch(sl.SenderAction(check["expect"]), check["score"],
                                   check["entry"])


def test_a_row_that_can_never_match_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    case = next(c for c in DATA["case"] if c["name"].startswith("rows that can never"))
    index = sl.SenderIndex.build(rows_of(case["entries"]), ALLOW_SHIFT)
    assert len(index) == 1
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == len(case["entries"]) - 1, ignored


@pytest.mark.parametrize("case", DATA["key"], ids=lambda k: f"{k['kind']} {k['input']!r}")
def test_keys(case: dict[str, Any]) -> None:
    normalise: Callable[[str], str] = {"recipient": sl.recipient_key,
                                       "sender": sl.sender_key}[case["kind"]]
    if "error" in case:
        with pytest.raises(sl.InvalidKey) as caught:
            normalise(case["input"])
        message = str(caught.value)
        assert message.startswith(f"{case['kind']}: ") and case["error"] in message
        assert "\n" not in message.replace("\\n", ""), "one line"
        return
    stored = normalise(case["input"])
    assert stored == case["stored"]
    assert normalise(stored) == stored  # what is stored reads back as itself


def test_every_stored_key_is_one_the_matcher_tries() -> None:
    # The stored forms and the matcher's candidate keys are the same strings.
    index = sl.SenderIndex.build([("@Bücher.example", ".München.example", "block", None)])
    assert sl.recipient_keys("a+b@bücher.example", "+") == (
        "a+b@xn--bcher-kva.example", "a@xn--bcher-kva.example", "@xn--bcher-kva.example",
        ".xn--bcher-kva.example", ".example", ".")
    assert sl.sender_keys("x@a.xn--mnchen-3ya.example") == (
        "x@a.xn--mnchen-3ya.example", "@a.xn--mnchen-3ya.example",
        ".a.xn--mnchen-3ya.example", ".xn--mnchen-3ya.example", ".example")
    assert index.match("a@bücher.example", "x@a.münchen.example") is not None


def test_an_empty_index_matches_nothing() -> None:
    assert not sl.EMPTY_INDEX
    assert sl.EMPTY_INDEX.match("a@example.org", "b@example.org") is None


# ---- the cache ---------------------------------------------------------------------------------


class FakeStore:
    """Store.run's contract, fn(session) off the loop, with a session whose one query
    (senderlists.load_rows) returns `rows`; counts the queries."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.queries = 0
        self.fail: Exception | None = None

    def execute(self, statement: Any) -> list[Row]:
        self.queries += 1
        if self.fail is not None:
            raise self.fail
        return list(self.rows)

    async def run(self, fn: Callable[[Any], Any], durable: bool = True) -> Any:
        assert durable is False  # a read: no fsynced commit
        await asyncio.sleep(0.01)  # a query takes time: concurrent callers overlap
        return await asyncio.to_thread(fn, self)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


RECIPIENTS = ["alice@example.org", "bob@example.org"]


async def test_one_query_for_many_concurrent_transactions(clock: Clock) -> None:
    store = FakeStore([("alice@example.org", "@b.example", "block", None)])
    lists = sl.SenderLists(store, ttl=60.0, allow_shift=ALLOW_SHIFT, clock=clock)
    results = await asyncio.gather(*(lists.matches("x@b.example", RECIPIENTS)
                                     for _ in range(20)))
    assert store.queries == 1
    block = sl.SenderMatch(sl.SenderAction.BLOCK, 0.0,
                           "block <@b.example> for <alice@example.org>")
    assert all(r == {"alice@example.org": block, "bob@example.org": None} for r in results)


async def test_reloaded_after_the_ttl_not_before(clock: Clock) -> None:
    store = FakeStore([])
    lists = sl.SenderLists(store, ttl=60.0, allow_shift=ALLOW_SHIFT, clock=clock)
    assert await lists.matches("x@b.example", RECIPIENTS) == dict.fromkeys(RECIPIENTS)
    store.rows = [(".", "@b.example", "allow", None)]
    clock.now += 59.9
    assert (await lists.matches("x@b.example", RECIPIENTS))["bob@example.org"] is None
    assert store.queries == 1
    clock.now += 0.2
    found = (await lists.matches("x@b.example", RECIPIENTS))["bob@example.org"]
    assert found is not None and (found.action, found.score) == ("allow", ALLOW_SHIFT)
    assert store.queries == 2


async def test_database_down_raises_like_a_policy_lookup(clock: Clock) -> None:
    # userpolicy.DbPolicies serves its cache within the TTL and lets the database's error
    # through after it (the filter answers 451 4.3.0); so do the sender lists.
    store = FakeStore([(".", "@b.example", "block", None)])
    lists = sl.SenderLists(store, ttl=60.0, clock=clock)
    assert (await lists.matches("x@b.example", RECIPIENTS))["bob@example.org"] is not None
    store.fail = ConnectionError("database down")
    clock.now += 30
    assert (await lists.matches("x@b.example", RECIPIENTS))["bob@example.org"] is not None
    clock.now += 31
    outcomes = await asyncio.gather(*(lists.matches("x@b.example", RECIPIENTS)
                                      for _ in range(5)), return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert store.queries == 2  # the five waited for one failed reload
    store.fail = None
    assert (await lists.matches("x@b.example", RECIPIENTS))["bob@example.org"] is not None
    assert store.queries == 3  # the next call tried again


async def test_a_cancelled_transaction_does_not_cancel_the_reload(clock: Clock) -> None:
    store = FakeStore([(".", "@b.example", "block", None)])
    lists = sl.SenderLists(store, ttl=60.0, clock=clock)
    first = asyncio.ensure_future(lists.matches("x@b.example", RECIPIENTS))
    second = asyncio.ensure_future(lists.matches("x@b.example", RECIPIENTS))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second)["alice@example.org"] is not None
    assert store.queries == 1


async def test_disabled_lists_query_nothing(clock: Clock) -> None:
    store = FakeStore([(".", "@b.example", "block", None)])
    lists = sl.SenderLists(store, ttl=60.0, enabled=False, clock=clock)
    assert await lists.matches("x@b.example", RECIPIENTS) == dict.fromkeys(RECIPIENTS)
    assert store.queries == 0


async def test_with_a_real_sqlite_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/lmtpfilter.db"
    st.upgrade(url)
    store = st.Store(url)
    try:
        entry, previous = store.transaction(lambda s: add_entry(
            s, "@Example.org", "Boss@B.example", "allow", -8.0, "the boss"))
        assert previous is None and entry.sender == "boss@b.example"
        store.transaction(lambda s: add_entry(s, ".", "@b.example", "block"))
        lists = sl.SenderLists(store, ttl=0.0)
        got = await lists.matches("BOSS@b.example", ["a@example.org", "a@example.net"])
        assert got == {
            "a@example.org": sl.SenderMatch(sl.SenderAction.ALLOW, -8.0,
                                            "allow <boss@b.example> for <@example.org>"),
            "a@example.net": sl.SenderMatch(sl.SenderAction.BLOCK, 0.0,
                                            "block <@b.example> for <.>")}
        store.transaction(lambda s: remove_entry(s, "@example.org", "boss@b.example"))
        got = await lists.matches("boss@b.example", ["a@example.org"])  # ttl 0: reloaded
        assert got["a@example.org"] == sl.SenderMatch(sl.SenderAction.BLOCK, 0.0,
                                                      "block <@b.example> for <.>")
    finally:
        store.close()
