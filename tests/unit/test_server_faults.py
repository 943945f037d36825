"""The filter in-process between a raw LMTP client and a scriptable fake downstream server.

Every test checks the invariants: exactly one reply per accepted recipient after DATA, in RCPT
order (the reply after them is the 221 to our pipelined QUIT), and no 2xx for a recipient the
downstream server did not accept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from lmtpfilter.pipeline import Recipient, Transaction
from tests.harness.daemons import short_tmpdir
from tests.lmtp_tools import (
    FakeDownstream,
    SessionResult,
    lmtp_session,
    make_config,
    running_filter,
)

MSG = b"From: a@example.net\r\nSubject: hello\r\n\r\nBody line\r\n"
RCPTS = ["a@example.org", "b@example.org", "c@example.org"]


def assert_invariants(result: SessionResult, fake: FakeDownstream, recipients: Sequence[str]
                      ) -> None:
    assert result.final.startswith("221"), f"extra or missing reply: {result.final!r}"
    accepted = [r for r, reply in zip(recipients, result.rcpt_replies, strict=True)
                if reply.startswith("2")]
    assert len(result.data_replies) == len(accepted)
    delivered = {r for t in fake.transactions for r in t.recipients}
    for rcpt, reply in zip(accepted, result.data_replies, strict=True):
        if reply.startswith("2"):
            assert rcpt in delivered, f"2xx for {rcpt} that downstream never got"
    for reply in result.rcpt_replies + result.data_replies:
        code, enhanced = reply.split(" ")[:2]
        assert enhanced[0] == code[0] and enhanced.count(".") == 2, reply


async def run(fake: FakeDownstream, recipients: Sequence[str] = RCPTS, message: bytes = MSG,
              stages: Sequence[object] = (), **config: dict[str, object]) -> SessionResult:
    cfg = make_config(fake.address, **config)
    async with running_filter(cfg, stages) as (address, _, _):  # type: ignore[arg-type]
        result = await lmtp_session(address, "s@example.net", recipients, message)
    assert_invariants(result, fake, recipients)
    return result


def codes(result: SessionResult) -> list[str]:
    return [r.split(" ")[0] + " " + r.split(" ")[1] for r in result.data_replies]


async def test_all_delivered(fake: FakeDownstream) -> None:
    result = await run(fake)
    assert codes(result) == ["250 2.0.0"] * 3
    assert [r.split(" ", 2)[2] for r in result.data_replies] == [f"<{r}> Saved" for r in RCPTS]
    assert len(fake.transactions) == 1 and fake.transactions[0].recipients == RCPTS


async def test_452_for_the_second_recipient(fake: FakeDownstream) -> None:
    fake.delivery_reply = lambda r, i: "452 4.2.2 Mailbox full" if i == 1 else "250 2.0.0 ok"
    result = await run(fake)
    assert codes(result) == ["250 2.0.0", "452 4.2.2", "250 2.0.0"]


async def test_rejected_at_downstream_rcpt_is_relayed_after_data(fake: FakeDownstream) -> None:
    fake.rcpt_reply = lambda r, i: "550 5.1.1 no such user" if r.startswith("b") else "250 Ok"
    result = await run(fake)
    assert codes(result) == ["250 2.0.0", "550 5.1.1", "250 2.0.0"]
    assert fake.transactions[0].recipients == ["a@example.org", "c@example.org"]


async def test_every_recipient_rejected_downstream(fake: FakeDownstream) -> None:
    fake.rcpt_reply = lambda r, i: "550 5.1.1 no such user"
    result = await run(fake)
    assert codes(result) == ["550 5.1.1"] * 3
    assert fake.transactions == []


async def test_downstream_closes_after_data(fake: FakeDownstream) -> None:
    fake.after_data = "close"
    result = await run(fake)
    assert codes(result) == ["451 4.4.2"] * 3


async def test_downstream_closes_after_first_reply(fake: FakeDownstream) -> None:
    fake.after_data = "close-after-first"
    result = await run(fake)
    assert codes(result) == ["250 2.0.0", "451 4.4.2", "451 4.4.2"]


async def test_downstream_never_answers(fake: FakeDownstream) -> None:
    fake.after_data = "hang"
    result = await run(fake, downstream={"timeout": "0.5s"})
    assert codes(result) == ["451 4.4.7"] * 3


async def test_downstream_unreachable() -> None:
    dead = FakeDownstream()
    await dead.start()
    await dead.stop()  # the port is now closed
    result = await run(dead)
    assert codes(result) == ["451 4.4.1"] * 3


async def test_oversize_message_gets_552_per_recipient(fake: FakeDownstream) -> None:
    big = MSG + (b"x" * 70 + b"\r\n") * 40
    result = await run(fake, message=big, server={"max_message_size": 1000})
    assert codes(result) == ["552 5.3.4"] * 3
    assert fake.transactions == []


async def test_size_declared_in_mail_from_is_refused_early(fake: FakeDownstream) -> None:
    cfg = make_config(fake.address, server={"max_message_size": 1000})
    async with running_filter(cfg) as (address, _, _):
        host, port = address.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        await reader.readuntil(b"\r\n")
        writer.write(b"LHLO x\r\nMAIL FROM:<s@x> SIZE=5000\r\n")
        lhlo = b""
        while not lhlo.startswith(b"250 ", lhlo.rfind(b"\n", 0, -1) + 1):
            lhlo += await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        mail = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        writer.close()
    assert b"PIPELINING" in lhlo and b"ENHANCEDSTATUSCODES" in lhlo
    assert b"8BITMIME" in lhlo and b"SIZE 1000" in lhlo
    assert mail.startswith(b"552 5.3.4")


async def test_line_over_998_octets_refused_per_recipient(fake: FakeDownstream) -> None:
    long_line = MSG + b"y" * 999 + b"\r\n"
    result = await run(fake, message=long_line)
    assert codes(result) == ["554 5.6.0"] * 3
    assert fake.transactions == []


async def test_line_of_exactly_998_octets_passes(fake: FakeDownstream) -> None:
    result = await run(fake, message=MSG + b"y" * 998 + b"\r\n")
    assert codes(result) == ["250 2.0.0"] * 3


class Boom:
    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        raise RuntimeError("stage failed")


async def test_internal_exception_gives_451_per_recipient(fake: FakeDownstream) -> None:
    result = await run(fake, stages=[Boom()])
    assert codes(result) == ["451 4.3.0"] * 3
    assert fake.transactions == []


class TwoVariants:
    """Test-only stage: even-indexed recipients get copy A, odd ones copy B."""

    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        for r in recipients:
            r.variant = r.variant.adding(b"X-Variant: " + (b"A" if r.index % 2 == 0 else b"B"))


async def test_two_variants_two_transactions_replies_in_rcpt_order(fake: FakeDownstream) -> None:
    rcpts = ["a@example.org", "b@example.org", "c@example.org", "d@example.org"]
    fake.delivery_reply = lambda r, i: f"250 2.0.0 <{r}> ok" if r != "c@example.org" \
        else "452 4.2.2 <c> full"
    result = await run(fake, recipients=rcpts, stages=[TwoVariants()])
    assert [r.split(" ", 2)[2] for r in result.data_replies] == [
        "<a@example.org> ok", "<b@example.org> ok", "<c> full", "<d@example.org> ok"]
    by_variant = {t.data.split(b"X-Variant: ")[1][:1]: t.recipients for t in fake.transactions}
    assert by_variant == {b"A": ["a@example.org", "c@example.org"],
                          b"B": ["b@example.org", "d@example.org"]}


class Settle:
    """Test-only stage: settles b@ with a 550 without delivery."""

    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        from lmtpfilter.reply import Reply
        for r in recipients:
            if r.address.startswith("b") and not r.settled:
                r.reply = Reply(550, "5.7.1", "rejected by test stage")


async def test_settled_recipient_is_not_delivered(fake: FakeDownstream) -> None:
    result = await run(fake, stages=[Settle()])
    assert codes(result) == ["250 2.0.0", "550 5.7.1", "250 2.0.0"]
    assert fake.transactions[0].recipients == ["a@example.org", "c@example.org"]


async def test_empty_message(fake: FakeDownstream) -> None:
    result = await run(fake, message=b"")
    assert codes(result) == ["250 2.0.0"] * 3
    assert fake.transactions[0].data.startswith(b"Received: ")


async def test_cached_connection_closed_by_server_is_retried(fake: FakeDownstream) -> None:
    cfg = make_config(fake.address)
    async with running_filter(cfg) as (address, _, pipeline):
        first = await lmtp_session(address, "s@x.net", ["a@example.org"], MSG)
        # The server drops the idle connection (Dovecot does after its idle timeout).
        for conn in pipeline.downstream._idle:
            conn.writer.transport.abort()
        await asyncio.sleep(0.05)
        second = await lmtp_session(address, "s@x.net", ["a@example.org"], MSG)
    assert first.data_replies[0].startswith("250") and second.data_replies[0].startswith("250")
    assert len(fake.transactions) == 2


async def test_many_transactions_on_one_connection_reuse_downstream(fake: FakeDownstream) -> None:
    cfg = make_config(fake.address)
    async with running_filter(cfg) as (address, _, _):
        for _ in range(5):
            result = await lmtp_session(address, "s@x.net", ["a@example.org"], MSG)
            assert result.data_replies[0].startswith("250")
    assert fake.connections == 1 and len(fake.transactions) == 5


async def test_concurrent_sessions(fake: FakeDownstream) -> None:
    cfg = make_config(fake.address)
    async with running_filter(cfg) as (address, _, _):
        results = await asyncio.gather(*(
            lmtp_session(address, f"s{i}@x.net", [f"r{i}@example.org", "z@example.org"], MSG)
            for i in range(20)))
    for result in results:
        assert [r[:3] for r in result.data_replies] == ["250", "250"]
        assert result.final.startswith("221")
    assert len(fake.transactions) == 20


async def test_client_vanishing_mid_data_delivers_nothing(fake: FakeDownstream) -> None:
    cfg = make_config(fake.address)
    async with running_filter(cfg) as (address, _server, _):
        host, port = address.split(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"LHLO x\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n"
                     b"Subject: cut\r\n\r\nhalf a mess")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await asyncio.sleep(0.1)
        # The filter still works for the next client.
        result = await lmtp_session(address, "s@x.net", ["a@example.org"], MSG)
    assert result.data_replies[0].startswith("250")
    assert len(fake.transactions) == 1


async def test_commands_before_lhlo_and_data_without_rcpt(fake: FakeDownstream) -> None:
    cfg = make_config(fake.address)
    async with running_filter(cfg) as (address, _, _):
        host, port = address.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        await reader.readuntil(b"\r\n")
        writer.write(b"MAIL FROM:<s@x>\r\nHELO x\r\n")
        before_lhlo = await reader.readuntil(b"\r\n")
        helo = await reader.readuntil(b"\r\n")
        writer.write(b"LHLO x\r\n")
        while not (await reader.readuntil(b"\r\n")).startswith(b"250 "):
            pass
        writer.write(b"MAIL FROM:<s@x>\r\nDATA\r\n")
        mail = await reader.readuntil(b"\r\n")
        data = await reader.readuntil(b"\r\n")
        writer.close()
    assert before_lhlo.startswith(b"503 5.5.1")
    assert helo.startswith(b"500 5.5.2")
    assert mail.startswith(b"250 2.1.0")
    assert data.startswith(b"503 5.5.1")


async def test_null_sender_of_bounces_is_passed_on(fake: FakeDownstream) -> None:
    cfg = make_config(fake.address)
    async with running_filter(cfg) as (address, _, _):
        result = await lmtp_session(address, "", ["a@example.org"], MSG)
    assert result.data_replies[0].startswith("250")
    assert fake.transactions[0].mail_line.startswith("MAIL FROM:<> ")
    assert fake.transactions[0].sender == ""


async def test_unusual_addresses_use_the_full_parser(fake: FakeDownstream) -> None:
    rcpts = ['"odd local"@example.org', "user+tag@example.org", "postmaster"]
    result = await run(fake, recipients=rcpts)
    assert codes(result) == ["250 2.0.0"] * 3
    assert fake.transactions[0].recipients == rcpts


async def test_downstream_on_a_unix_socket(tmp_path: Path) -> None:
    fake = FakeDownstream(unix_path=str(short_tmpdir("lmtpf-u") / "lmtp.sock"))
    await fake.start()
    try:
        result = await run(fake)
    finally:
        await fake.stop()
    assert codes(result) == ["250 2.0.0"] * 3


async def test_non_local_recipients_are_refused_at_rcpt_only_when_asked(
        fake: FakeDownstream) -> None:
    rcpts = ["a@example.org", "b@elsewhere.test", "c@EXAMPLE.net"]
    lists: dict[str, object] = {"local_domains": ["example.org", "@Example.NET"]}
    # amavis's meaning by default: outside local_domains is not refused (only untagged).
    async with running_filter(make_config(fake.address, policy=lists)) as (address, _, _):
        result = await lmtp_session(address, "s@x.net", rcpts, MSG)
    assert [r[:3] for r in result.rcpt_replies] == ["250"] * 3
    assert fake.transactions[0].recipients == rcpts
    cfg = make_config(fake.address, policy={**lists, "refuse_non_local": True})
    async with running_filter(cfg) as (address, _, _):
        result = await lmtp_session(address, "s@x.net", rcpts, MSG)
    assert result.rcpt_replies[1].startswith("550 5.1.2")
    assert [r[:3] for r in result.data_replies] == ["250", "250"]
    assert fake.transactions[1].recipients == ["a@example.org", "c@EXAMPLE.net"]
