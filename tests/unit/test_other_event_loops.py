"""The server on an event loop other than asyncio's own: uvloop's transports do not subclass
asyncio.Transport (server.py once asserted they did, and refused every connection). bench/
compare.py measures lmtpfilter on uvloop (issue 17 item 3); this keeps it working."""

from __future__ import annotations

import pytest

from tests.lmtp_tools import (
    FakeDownstream,
    SessionResult,
    lmtp_session,
    make_config,
    running_filter,
)

uvloop = pytest.importorskip("uvloop")  # in the test extra: never skipped in CI

MESSAGE = b"From: a@example.net\r\nSubject: on uvloop\r\n\r\nBody\r\n.leading dot\r\n"


async def one_session() -> tuple[SessionResult, list[bytes]]:
    fake = FakeDownstream()
    await fake.start()
    try:
        async with running_filter(make_config(fake.address)) as (address, _, _):
            result = await lmtp_session(address, "s@example.net",
                                        ["a@example.org", "b@example.org"], MESSAGE)
    finally:
        await fake.stop()
    return result, [t.data for t in fake.transactions]


def test_a_whole_session_on_uvloop() -> None:
    loop = uvloop.new_event_loop()
    try:
        result, delivered = loop.run_until_complete(one_session())
    finally:
        loop.close()
    assert result.final.startswith("221")
    assert [r[:3] for r in result.data_replies] == ["250", "250"]
    [data] = delivered
    assert data.endswith(MESSAGE) and data.startswith(b"Received: ")
