"""SIGTERM: stop accepting, finish in-flight transactions, 421 the rest, exit 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import free_port
from tests.lmtp_tools import FakeDownstream, lmtp_session

pytestmark = pytest.mark.integration

MSG = b"Subject: shutdown\r\n\r\nbody\r\n"


async def _start(factory: type[FilterProcess], base: Path, fake: FakeDownstream,
                 shutdown_timeout: str) -> FilterProcess:
    listen = f"127.0.0.1:{free_port()}"
    text = filter_config(fake.address, [listen],
                         server=f'shutdown_timeout = "{shutdown_timeout}"')
    proc = factory(new_workdir(base, "term"), text, listen)
    await asyncio.to_thread(proc.start)
    return proc


async def _exit_code(proc: FilterProcess) -> int:
    assert proc.proc is not None
    return await asyncio.to_thread(proc.proc.wait, 20)


async def test_idle_connection_gets_421_and_exit_0(
        filter_process: type[FilterProcess], daemon_base: Path) -> None:
    fake = FakeDownstream()
    await fake.start()
    proc = await _start(filter_process, daemon_base, fake, "10s")
    host, port = proc.listen.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    await reader.readuntil(b"\r\n")
    writer.write(b"LHLO x\r\n")
    while not (await reader.readuntil(b"\r\n")).startswith(b"250 "):
        pass
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    reply = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    assert reply.startswith(b"421 4.3.2")
    assert await _exit_code(proc) == 0
    writer.close()
    await fake.stop()


async def test_in_flight_transaction_finishes(
        filter_process: type[FilterProcess], daemon_base: Path) -> None:
    fake = FakeDownstream(delay=1.5)
    await fake.start()
    proc = await _start(filter_process, daemon_base, fake, "10s")
    session = asyncio.create_task(lmtp_session(
        proc.listen, "s@x.net", ["a@example.org", "b@example.org"], MSG))
    await asyncio.sleep(0.7)  # the message is at the (slow) downstream now
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    result = await session
    assert [r[:9] for r in result.data_replies] == ["250 2.0.0", "250 2.0.0"]
    assert result.final.startswith("421"), "QUIT after the transaction meets the shutdown"
    assert await _exit_code(proc) == 0
    # New connections are refused once draining started.
    host, port = proc.listen.split(":")
    with pytest.raises(OSError):
        await asyncio.open_connection(host, int(port))
    await fake.stop()


async def test_transaction_past_the_timeout_gets_421(
        filter_process: type[FilterProcess], daemon_base: Path) -> None:
    fake = FakeDownstream(after_data="hang")
    await fake.start()
    proc = await _start(filter_process, daemon_base, fake, "1s")
    session = asyncio.create_task(lmtp_session(proc.listen, "s@x.net", ["a@example.org"], MSG))
    await asyncio.sleep(0.5)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    result = await session
    # Not a per-recipient 2xx: the 421 tells Postfix to keep the message and retry.
    assert result.data_replies[0].startswith("421 4.3.2")
    assert result.final == "EOF"
    assert await _exit_code(proc) == 0
    await fake.stop()
