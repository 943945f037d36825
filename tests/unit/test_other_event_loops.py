"""The server on an event loop other than asyncio's own: uvloop's transports do not subclass
asyncio.Transport (server.py once asserted they did, and refused every connection). bench/
compare.py measures lmtpfilter on uvloop (issue 17 item 3); this keeps it working."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

from lmtpfilter import event_loop
from lmtpfilter.config import ConfigError, load
from lmtpfilter.options import Address
from lmtpfilter.pipeline import Transaction
from lmtpfilter.reply import Reply
from lmtpfilter.server import FilterServer, bind
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


def test_a_closed_server_leaves_the_unix_socket_file_to_its_owner() -> None:
    """A worker shares the supervisor's unix socket: when it closes its server (it retires,
    [server] worker_max_messages) the file must stay for the other workers. Python 3.13's
    loop and recent uvloop's remove it by default (found on Debian 13, where the next client
    got ENOENT); on both loops and every Python the file stays until the supervisor unlinks
    it."""
    for new_loop in (asyncio.new_event_loop, uvloop.new_event_loop):
        with tempfile.TemporaryDirectory(prefix="lmtpf-sock-") as tmp:
            path = Path(tmp) / "lmtp.sock"
            sock = bind(Address(path=str(path)), 0o600)
            server = FilterServer(make_config("127.0.0.1:1"), refuse_all, unlink_on_shutdown=False)
            loop = new_loop()
            try:
                loop.run_until_complete(server.start([sock]))
                loop.run_until_complete(server.shutdown(0.1))
            finally:
                loop.close()
            assert path.exists(), new_loop
            sock.close()


async def refuse_all(tx: Transaction) -> list[Reply]:
    raise AssertionError("no message is sent here")


def test_auto_takes_uvloop_where_it_is_installed_and_asyncio_elsewhere(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert event_loop.resolve("auto") == "uvloop"
    assert event_loop.loop_factory("auto") is uvloop.new_event_loop
    assert event_loop.loop_factory("asyncio") is asyncio.new_event_loop
    monkeypatch.setattr(event_loop, "uvloop_installed", lambda: False)
    assert event_loop.resolve("auto") == "asyncio"
    assert event_loop.loop_factory("auto") is asyncio.new_event_loop
    # Asked for by name where it is missing: check-config says so, in one line.
    path = tmp_path / "lmtpfilter.toml"
    path.write_text('[server]\nevent_loop = "uvloop"\n')
    with pytest.raises(ConfigError, match=r'\[server\] event_loop: "uvloop" is not installed'):
        load(path)
