"""Our Received: field names the client by its IP address (RFC 5321 §4.4), never its port.

Transaction.peer holds exactly that: the client's IP, or "unix" for a unix-socket client.
"""

from __future__ import annotations

import re
import shutil

import pytest

from lmtpfilter.app import build_pipeline
from lmtpfilter.message import Message
from lmtpfilter.pipeline import UNIX_PEER, Transaction, address_literal, received_header
from lmtpfilter.server import FilterServer, bind
from tests.harness.daemons import short_tmpdir
from tests.lmtp_tools import FakeDownstream, lmtp_session, make_config, running_filter

MSG = b"From: a@example.net\r\nSubject: hello\r\n\r\nBody\r\n"


def transaction(peer: str, recipients: list[str]) -> Transaction:
    return Transaction(id="TXID", peer=peer, helo="client.example", sender="s@x.net",
                       mail_params=[], recipients=recipients, message=Message.parse(MSG),
                       received_at=1796000000.0)


def unfolded(field: bytes) -> str:
    return re.sub(r"\r\n[ \t]+", " ", field.decode()).rstrip("\r\n")


@pytest.mark.parametrize(("peer", "clause"), [
    ("192.0.2.1", "from client.example ([192.0.2.1])"),
    ("2001:db8::1", "from client.example ([IPv6:2001:db8::1])"),
    ("::ffff:192.0.2.1", "from client.example ([192.0.2.1])"),  # IPv4 on a dual-stack socket
    ("fe80::1%eth0", "from client.example ([IPv6:fe80::1])"),
    (UNIX_PEER, "from client.example (unix)"),
])
def test_the_client_clause(peer: str, clause: str) -> None:
    field = unfolded(received_header(transaction(peer, ["a@example.org"]), "filter.test"))
    assert field.startswith(f"Received: {clause} by filter.test (lmtpfilter) with LMTP id TXID"
                            " for <a@example.org>; ")


def test_for_clause_only_with_a_single_recipient() -> None:
    field = unfolded(received_header(transaction("192.0.2.1", ["a@x", "b@x"]), "filter.test"))
    assert " for <" not in field


def test_something_that_is_not_an_address_is_still_bracketed() -> None:
    assert address_literal("not-an-ip") == "[not-an-ip]"


def received_of(data: bytes) -> str:
    first = data.split(b"\r\n\r\n", 1)[0]
    match = re.match(rb"Received: .*?(?=\r\n[^ \t])", first, re.S)
    assert match is not None, first
    return unfolded(match.group(0))


async def test_tcp_client_is_named_by_its_ip_without_the_port(fake: FakeDownstream) -> None:
    async with running_filter(make_config(fake.address)) as (address, _, _):
        result = await lmtp_session(address, "s@example.net", ["a@example.org"], MSG)
    assert result.data_replies[0].startswith("250")
    field = received_of(fake.transactions[0].data)
    assert field.startswith("Received: from client.example ([127.0.0.1]) by filter.test ")


async def test_unix_socket_client(fake: FakeDownstream) -> None:
    directory = short_tmpdir("lmtpf-rx")  # short: sun_path holds 107 bytes
    path = str(directory / "lmtp.sock")
    config = make_config(fake.address, server={"listen": [f"unix:{path}"]})
    pipeline = build_pipeline(config, [])
    server = FilterServer(config, pipeline.process)
    try:
        await server.start([bind(config.server.listen[0], 0o600)])
        try:
            result = await lmtp_session(f"unix:{path}", "s@example.net", ["a@example.org"], MSG)
        finally:
            await server.shutdown(1.0)
            await pipeline.downstream.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert result.data_replies[0].startswith("250")
    field = received_of(fake.transactions[0].data)
    assert field.startswith("Received: from client.example (unix) by filter.test ")
