"""Hostile and greedy clients against the real `lmtpfilter serve` process, delivering to the
real Dovecot (issue 16 item 4): connections held idle or trickling a byte a second do not stop
a normal client, past [server] max_connections a client gets 421 4.3.2 and the log says so
once per episode, and the idle, transaction, recipient and header limits hold on the wire.

The protocol side of the recipient and header limits is in tests/data/lmtp_server_cases.toml;
here they are checked once through the config file and the real process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import secrets
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, free_port
from tests.lmtp_tools import FakeDownstream, lmtp_session, make_config, read_reply, running_filter

pytestmark = pytest.mark.integration

HELD = 1000  # connections held open by the hostile clients
HANG_GUARD = 10.0  # seconds: only guards against a hang, not a speed requirement
USER, OTHER = "user1@example.org", "user2@example.org"  # the dovecot fixture's users

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for HELD sockets here and in the filter process, which inherits this limit from
    the test process (FilterProcess starts it with Popen)."""
    need = 3 * HELD + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it to run this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _start(factory: type[FilterProcess], base: Path, dovecot: Dovecot,
                 server: str) -> FilterProcess:
    listen = f"127.0.0.1:{free_port()}"
    text = filter_config(f"127.0.0.1:{dovecot.lmtp_port}", [listen], server=server)
    proc = factory(new_workdir(base, "hostile"), text, listen)
    await asyncio.to_thread(proc.start)
    return proc


async def _connect(proc: FilterProcess) -> Stream:
    host, port = proc.listen.rsplit(":", 1)
    return await asyncio.wait_for(asyncio.open_connection(host, int(port)), HANG_GUARD)


async def _reply(reader: asyncio.StreamReader, timeout: float = HANG_GUARD) -> str:
    """One reply, multi-line joined by newlines; "EOF" if the server closed instead."""
    return await read_reply(reader, timeout)


async def _command(stream: Stream, line: str) -> str:
    stream[1].write(line.encode() + b"\r\n")
    return await _reply(stream[0])


async def _wait_log(proc: FilterProcess, pattern: str, timeout: float = HANG_GUARD) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = proc.log()
        if re.search(pattern, log):
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} in the log:\n{log[-3000:]}")
        await asyncio.sleep(0.1)


def _message(marker: str, header: bytes = b"") -> bytes:
    return (f"From: s@example.net\r\nTo: {USER}\r\nSubject: {marker}\r\n".encode() + header
            + b"\r\nHello.\r\n")


def _delivered(dovecot: Dovecot, address: str, marker: str) -> int:
    return sum(marker.encode() in m for m in dovecot.messages(address))


async def _normal_client(proc: FilterProcess, marker: str) -> float:
    """One ordinary transaction; its latency in seconds. It must get through."""
    started = time.monotonic()
    result = await lmtp_session(proc.listen, "s@example.net", [USER], _message(marker),
                                timeout=HANG_GUARD)
    latency = time.monotonic() - started
    assert [r[:3] for r in result.data_replies] == ["250"], result
    assert result.final.startswith("221"), result
    return latency


# ---- the hostile clients ---------------------------------------------------------------------

async def _hold_idle(proc: FilterProcess) -> Stream:
    """Connects, reads the greeting, says nothing."""
    stream = await _connect(proc)
    assert (await _reply(stream[0])).startswith("220")
    return stream


async def _hold_in_command(proc: FilterProcess) -> Stream:
    """LHLO, then a command line that never ends (trickled by _trickle)."""
    stream = await _hold_idle(proc)
    assert (await _command(stream, "LHLO hostile.example")).startswith("250")
    stream[1].write(b"NOOP ")
    return stream


async def _hold_in_data(proc: FilterProcess, marker: str) -> Stream:
    """A transaction up to 354, then a message that never ends (trickled by _trickle)."""
    stream = await _hold_idle(proc)
    assert (await _command(stream, "LHLO hostile.example")).startswith("250")
    assert (await _command(stream, "MAIL FROM:<hostile@example.net>")).startswith("250")
    assert (await _command(stream, f"RCPT TO:<{OTHER}>")).startswith("250")
    assert (await _command(stream, "DATA")).startswith("354")
    stream[1].write(f"Subject: {marker}\r\n\r\n".encode())
    return stream


async def _trickle(stream: Stream, interval: float) -> None:
    """A byte every `interval` seconds until cancelled or the server closes."""
    writer = stream[1]
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing():
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(interval)


def _close_all(streams: list[Stream]) -> None:
    for _, writer in streams:
        writer.close()


async def test_held_connections_do_not_stop_a_normal_client(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        many_files: None) -> None:
    # HELD hostile connections, one normal client, then one filler to reach the limit.
    limit = HELD + 1
    proc = await _start(filter_process, daemon_base, dovecot, f"max_connections = {limit}")
    token = secrets.token_hex(6)
    baseline = await _normal_client(proc, f"baseline-{token}")

    held: list[Stream] = []
    tricklers: list[asyncio.Task[None]] = []
    try:
        # A third each: idle after the greeting, trickling a command line, trickling DATA.
        def hold(i: int) -> Awaitable[Stream]:
            kind = i % 3
            return (_hold_idle(proc) if kind == 0 else _hold_in_command(proc) if kind == 1
                    else _hold_in_data(proc, f"held-{token}"))

        for start in range(0, HELD, 100):  # in batches: the listen backlog is 512
            held.extend(await asyncio.gather(*map(hold, range(start, min(HELD, start + 100)))))
        tricklers = [asyncio.create_task(_trickle(s, 1.0)) for i, s in enumerate(held)
                     if i % 3]
        await asyncio.sleep(3)  # let the trickle run a few rounds

        latency = await _normal_client(proc, f"normal-{token}")
        print(f"\nnormal client latency: {latency * 1000:.0f} ms with {HELD} connections held "
              f"({len(tricklers)} trickling a byte a second), {baseline * 1000:.0f} ms before")
        await asyncio.to_thread(dovecot.wait_for_messages, USER, 1)
        assert _delivered(dovecot, USER, f"normal-{token}") == 1

        # The normal client has gone: one slot is free again. Fill it, then overflow. Its
        # slot may still be counted for an instant after its QUIT, so a 421 to the filler
        # is possible and counted like the others.
        refused = 0
        filler = await _connect(proc)
        held.append(filler)
        greeting = await _reply(filler[0])
        if greeting.startswith("421"):
            refused += 1
        else:
            assert greeting.startswith("220"), greeting
        for _ in range(5):
            reader, writer = await _connect(proc)
            greeting = await _reply(reader)
            assert greeting == "421 4.3.2 Too many connections, try again later", greeting
            assert await _reply(reader) == "EOF", "closed after the 421"
            writer.close()
            refused += 1
        log = await _wait_log(proc, "connection limit reached")
        assert len(re.findall("connection limit reached", log)) == 1, log[-3000:]
    finally:
        for task in tricklers:
            task.cancel()
        await asyncio.gather(*tricklers, return_exceptions=True)
        _close_all(held)

    # The held clients are gone: the episode ends with one line and the count.
    log = await _wait_log(proc, r"connection limit cleared: \d+ clients refused")
    assert len(re.findall("connection limit reached", log)) == 1, log[-3000:]
    assert re.findall(r"connection limit cleared: (\d+) clients refused", log) == [str(refused)]
    assert "Traceback" not in log
    print("".join(line + "\n" for line in log.splitlines() if "connection limit" in line))
    # The messages cut off mid-DATA were never delivered; the filter still serves.
    await _normal_client(proc, f"after-{token}")
    assert _delivered(dovecot, OTHER, f"held-{token}") == 0


async def test_idle_timeout_is_per_command_not_per_byte(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot) -> None:
    proc = await _start(filter_process, daemon_base, dovecot, 'idle_timeout = "2s"')
    # Whole commands more often than the idle timeout, for longer than it: not idle.
    busy = await _hold_idle(proc)
    for _ in range(6):
        assert (await _command(busy, "NOOP")).startswith("250 2.0.0")
        await asyncio.sleep(0.5)
    # A byte every 0.25 s of a line that never ends: idle, whatever the bytes say. Before
    # the per-command rule every byte restarted the timer and this held the slot for ever.
    trickler = await _hold_in_command(proc)
    task = asyncio.create_task(_trickle(trickler, 0.25))
    try:
        assert await _reply(trickler[0]) == "421 4.4.2 Error: timeout exceeded"
        assert await _reply(trickler[0]) == "EOF"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        _close_all([busy, trickler])
    log = await _wait_log(proc, "idle for 2s")
    assert "Traceback" not in log


async def test_transaction_timeout_cuts_off_a_trickled_message(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot) -> None:
    proc = await _start(filter_process, daemon_base, dovecot,
                        'idle_timeout = "2s"\ntransaction_timeout = "3s"')
    marker = f"trickled-{secrets.token_hex(6)}"
    # In DATA each byte is progress for the idle timer (0.25 s < 2 s): only the
    # transaction timer can end this.
    stream = await _hold_in_data(proc, marker)
    task = asyncio.create_task(_trickle(stream, 0.25))
    try:
        assert await _reply(stream[0]) == "421 4.4.2 Error: transaction took too long"
        assert await _reply(stream[0]) == "EOF"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        _close_all([stream])
    log = await _wait_log(proc, "transaction longer than 3s")
    assert "Traceback" not in log
    # A transaction that finishes in time is not affected, and the cut one left nothing.
    await _normal_client(proc, f"on-time-{marker}")
    assert _delivered(dovecot, OTHER, marker) == 0


async def test_recipient_and_header_limits_from_the_config(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot) -> None:
    proc = await _start(filter_process, daemon_base, dovecot,
                        'max_recipients = 100\nmax_header_size = "1K"')
    stream = await _hold_idle(proc)
    try:
        assert (await _command(stream, "LHLO client.example")).startswith("250")
        assert (await _command(stream, "MAIL FROM:<s@example.net>")).startswith("250")
        replies = [await _command(stream, f"RCPT TO:<{USER}>") for _ in range(101)]
        assert [r[:9] for r in replies] == ["250 2.1.5"] * 100 + ["452 4.5.3"]
        assert (await _command(stream, "RSET")).startswith("250")
    finally:
        _close_all([stream])

    marker = f"big-header-{secrets.token_hex(6)}"
    header = b"".join(b"X-Filler: " + b"y" * 60 + b"\r\n" for _ in range(20))  # 1.4 KB
    result = await lmtp_session(proc.listen, "s@example.net", [USER, OTHER],
                                _message(marker, header), timeout=HANG_GUARD)
    assert result.data_replies == ["552 5.3.4 Message header section too big for system"] * 2
    assert result.final.startswith("221")
    await _normal_client(proc, f"small-header-{marker}")  # the same limit lets this through
    assert _delivered(dovecot, USER, marker) == 1  # only the small-header one
    assert _delivered(dovecot, OTHER, marker) == 0
    assert "Traceback" not in proc.log()


async def test_our_processing_time_does_not_count_against_the_transaction() -> None:
    """A downstream slower than transaction_timeout: the client still gets its 250s, because
    the timer stops at the final dot (a 421 then would make Postfix send it again). In-process
    with the fake downstream: a real Dovecot cannot be made to take 2 s on purpose."""
    fake = FakeDownstream(delay=2.0)
    await fake.start()
    config = make_config(fake.address, server={"transaction_timeout": "1s"})
    try:
        async with running_filter(config) as (address, _, _):
            result = await lmtp_session(address, "s@example.net", [USER, OTHER],
                                        _message("slow downstream"), timeout=HANG_GUARD)
    finally:
        await fake.stop()
    assert [r[:9] for r in result.data_replies] == ["250 2.0.0"] * 2, result
    assert result.final.startswith("221"), result
    assert len(fake.transactions) == 1
