"""The LMTP client state machine, driven by the transcripts in tests/data/*.toml (no I/O)."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter.lmtp_protocol import (
    Chunk,
    ClientConnection,
    Envelope,
    ProtocolError,
    ReplyParser,
    State,
    encode_body,
    encode_chunk,
)

DATA = Path(__file__).parent.parent / "data"
CLIENT_CASES = tomllib.loads((DATA / "lmtp_client_cases.toml").read_text())["case"]
PARSER_CASES = tomllib.loads((DATA / "reply_parser_cases.toml").read_text())["case"]


def _ready(capabilities: list[str]) -> ClientConnection:
    conn = ClientConnection("filter.example")
    conn.receive_data(b"220 mx.example.org LMTP ready\r\n")
    assert conn.data_to_send() == [b"LHLO filter.example\r\n"]
    lhlo = ["mx.example.org", *capabilities]
    lines = [f"250-{x}" for x in lhlo[:-1]] + [f"250 {lhlo[-1]}"]
    conn.receive_data("\r\n".join(lines).encode() + b"\r\n")
    assert conn.state is State.READY
    return conn


def _verbs(chunks: Sequence[Chunk], body: Sequence[Chunk]) -> list[str]:
    """Command verbs written by the client; the message body counts as one "BODY"."""
    verbs: list[str] = []
    data = b"".join(chunks)
    body_bytes = b"".join(body)
    if body_bytes and body_bytes in data:
        before, after = data.split(body_bytes, 1)
        return [*_verbs([before], []), "BODY", *_verbs([after], [])]
    for line in data.split(b"\r\n"):
        if line:
            verbs.append(line.split(b" ")[0].split(b":")[0].decode())
    return verbs


def _run(case: dict[str, Any], byte_by_byte: bool) -> tuple[ClientConnection, list[str], list[str]]:
    conn = _ready(case["capabilities"])
    message = [b"Subject: hi\r\n\r\n", b"Hello\r\n"]
    conn.start_transaction(Envelope("s@example.net", case["recipients"]), message)
    sent = conn.data_to_send()
    for reply in case["replies"]:
        if reply == "EOF":
            conn.receive_data(b"")
        else:
            raw = reply.encode() + b"\r\n"
            pieces = [raw[i:i + 1] for i in range(len(raw))] if byte_by_byte else [raw]
            for piece in pieces:
                conn.receive_data(piece)
        sent += conn.data_to_send()
    assert conn.settled, f"not settled after all replies: {conn.state}"
    results = [r.line() for r in conn.finish_transaction()]
    return conn, results, _verbs(sent, encode_body(message))


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", CLIENT_CASES, ids=[c["name"] for c in CLIENT_CASES])
def test_client_transcript(case: dict[str, Any], byte_by_byte: bool) -> None:
    conn, results, verbs = _run(case, byte_by_byte)
    assert results == case["expect"]
    assert len(results) == len(case["recipients"])  # one result per recipient, always
    if "sent" in case:
        assert verbs == case["sent"]
    if case.get("closed_after"):
        assert conn.state is State.CLOSED
    if case.get("ready_after"):
        assert conn.state is State.READY


@pytest.mark.parametrize("case", PARSER_CASES, ids=[c.get("name", c["raw"]) for c in PARSER_CASES])
def test_reply_parser(case: dict[str, Any]) -> None:
    parser = ReplyParser()
    if "error" in case:
        with pytest.raises(ProtocolError, match=case["error"]):
            parser.feed(case["raw"].encode())
        return
    got = [f"{r.code}|{r.enhanced}|{r.text}" for r in parser.feed(case["raw"].encode())]
    assert got == case["replies"]


def test_greeting_refused_is_transient() -> None:
    conn = ClientConnection("f")
    conn.receive_data(b"554 5.3.2 go away\r\n")
    assert conn.state is State.CLOSED
    assert conn.failure is not None and conn.failure.code == 451


def test_eof_before_greeting() -> None:
    conn = ClientConnection("f")
    conn.receive_data(b"")
    assert conn.state is State.CLOSED and conn.failure is not None


def test_transaction_needs_ready_connection() -> None:
    conn = ClientConnection("f")
    with pytest.raises(RuntimeError):
        conn.start_transaction(Envelope("s", ["r"]), [b"x\r\n"])


def test_mail_params_only_what_server_announced() -> None:
    conn = _ready(["PIPELINING", "8BITMIME", "SIZE 100000"])
    conn.start_transaction(Envelope("s@x", ["r@x"], ["BODY=8BITMIME", "SMTPUTF8"]), [b"a\r\n"])
    assert conn.data_to_send()[0] == b"MAIL FROM:<s@x> BODY=8BITMIME SIZE=3\r\n"
    bare = _ready(["PIPELINING"])
    bare.start_transaction(Envelope("s@x", ["r@x"], ["BODY=8BITMIME"]), [b"a\r\n"])
    assert bare.data_to_send()[0] == b"MAIL FROM:<s@x>\r\n"


def test_null_sender() -> None:
    conn = _ready(["PIPELINING"])
    conn.start_transaction(Envelope("", ["r@x"]), [b"a\r\n"])
    assert conn.data_to_send()[0] == b"MAIL FROM:<>\r\n"


def test_connection_reusable_after_transaction() -> None:
    conn = _ready(["PIPELINING"])
    for n in range(3):
        conn.start_transaction(Envelope("s@x", ["r@x"]), [b"a\r\n"])
        conn.data_to_send()
        conn.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
        assert conn.data_to_send() == [b"a\r\n", b".\r\n"]
        conn.receive_data(f"250 2.0.0 done {n}\r\n".encode())
        assert [r.text for r in conn.finish_transaction()] == [f"done {n}"]
        assert conn.state is State.READY


@pytest.mark.parametrize(("chunk", "wire"), [
    (b"a\r\nb\r\n", b"a\r\nb\r\n"),
    (b".\r\n", b"..\r\n"),
    (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
    (b"..x\r\n", b"...x\r\n"),
    (b"a\n.\nb\n", b"a\r\n..\r\nb\r\n"),  # bare LF normalised, then stuffed
    (b"a\rb\r\n", b"a\rb\r\n"),  # a bare CR inside a line is left alone
    (b"x\r\n\n", b"x\r\n\r\n"),
])
def test_encode_chunk(chunk: bytes, wire: bytes) -> None:
    assert encode_chunk(chunk) == wire


def test_encode_body_adds_final_crlf_and_dot() -> None:
    assert encode_body([b"Subject: x\r\n\r\n", b"no newline"]) == [
        b"Subject: x\r\n\r\n", b"no newline", b"\r\n", b".\r\n"]
    assert encode_body([b"", b""]) == [b".\r\n"]
