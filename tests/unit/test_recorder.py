"""The verdict recorder: group commit, and one bad record does not cost the others."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select

from lmtpfilter import store as st
from lmtpfilter.message import Message
from lmtpfilter.pipeline import Recipient, Transaction
from lmtpfilter.reply import Reply
from lmtpfilter.server import new_transaction_id
from lmtpfilter.verdicts import Recorder

OK = Reply(250, "2.0.0", "ok")


def tx(tx_id: str) -> tuple[Transaction, list[Recipient]]:
    t = Transaction(id=tx_id, peer="127.0.0.1", helo="h", sender="s@x", mail_params=[],
                    recipients=["a@x", "b@x"],
                    message=Message.parse(b"Subject: hi\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n"))
    rcpts = [Recipient("a@x", 0, reply=OK), Recipient("b@x", 1, reply=OK)]
    return t, rcpts


async def test_batch_with_a_duplicate_keeps_the_others(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    st.upgrade(url)
    store = st.Store(url)
    try:
        recorder = Recorder(store, "host")
        first, first_rcpts = tx("DUPLICATE")
        await recorder.record(first, first_rcpts, [OK, OK])
        jobs = [tx(new_transaction_id()) for _ in range(5)] + [tx("DUPLICATE")]
        results = await asyncio.gather(*(recorder.record(t, r, [OK, OK]) for t, r in jobs),
                                       return_exceptions=True)
        assert [isinstance(x, Exception) for x in results] == [False] * 5 + [True]
        counts = store.transaction(lambda s: (
            s.scalar(select(func.count()).select_from(st.MessageRecord)),
            s.scalar(select(func.count()).select_from(st.RecipientVerdict))))
        assert counts == (6, 12)
    finally:
        store.close()


def test_transaction_ids_are_unique_and_fit() -> None:
    ids = {new_transaction_id() for _ in range(100_000)}
    assert len(ids) == 100_000
    assert all(len(i) <= 32 for i in ids)


@pytest.mark.parametrize("n", [1, 50])
async def test_records_reach_the_database(tmp_path: Path, n: int) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    st.upgrade(url)
    store = st.Store(url)
    try:
        recorder = Recorder(store, "host")
        jobs = [tx(new_transaction_id()) for _ in range(n)]
        await asyncio.gather(*(recorder.record(t, r, [OK, OK]) for t, r in jobs))
        row = store.transaction(lambda s: s.scalars(select(st.MessageRecord)).first())
        assert row is not None and row.message_id == "<m@x>" and row.subject == "hi"
        assert store.transaction(lambda s: s.scalar(
            select(func.count()).select_from(st.RecipientVerdict))) == 2 * n
    finally:
        store.close()


@pytest.mark.parametrize("stamps", [[1796000000.0, 1796000000.9, 1796000001.0, 1796000000.5],
                                    [0.0, 86399.999, 86400.0]])
def test_trace_dates_are_exact_though_cached_per_second(stamps: list[float]) -> None:
    import datetime as dt
    from email.utils import format_datetime

    from lmtpfilter.pipeline import rfc5322_date

    for stamp in stamps:
        expected = format_datetime(dt.datetime.fromtimestamp(int(stamp), dt.UTC).astimezone())
        assert rfc5322_date(stamp) == expected
