"""Fuzz targets for the pure parts (issue 16 item 1): each takes arbitrary bytes and raises
AssertionError (or an unexpected exception) when a property breaks.

* ``message``: the message parser and header editor. The header block and body split the
  input exactly; a copy with fields added and removed keeps the body byte-identical, every
  added field on top, and a header section made only of whole lines.
* ``alert``: X-Amavis-Alert from any text: printable ASCII, folded, every line far below 998.
* ``client``: the LMTP client state machine fed any server bytes, cut anywhere: no exception
  (a protocol error closes the connection, it is not raised), and once the server has closed,
  exactly one result per recipient, each a 2xx, 4xx or 5xx.
* ``server``: the LMTP server state machine fed any client bytes, cut anywhere, with any
  answers from the app: no exception, only well-formed replies, exactly one reply per
  accepted recipient after the final dot, closed at EOF.
* ``config``: the config loader on any TOML (or any mapping of known keys to odd values):
  a ConfigError or a Config, nothing else.

Run one under atheris (coverage-guided, libFuzzer options after the name):
``python -m tests.fuzz.run_atheris message .fuzz/corpus/message -max_total_time=60``;
``--list`` names them. tests/fuzz/test_targets.py runs each on a few hundred inputs in CI.
"""

from __future__ import annotations

import datetime
import math
import re
import tomllib
from collections.abc import Callable
from typing import Any

from lmtpfilter.config import SECTIONS, ConfigError, from_mapping
from lmtpfilter.headers import amavis_alert
from lmtpfilter.lmtp_protocol import ClientConnection, Envelope, State
from lmtpfilter.lmtp_server import (
    Capabilities,
    Mail,
    MessageReceived,
    Rcpt,
    ServerConnection,
    Signal,
)
from lmtpfilter.lmtp_server import State as State_
from lmtpfilter.message import Message
from lmtpfilter.options import declared, key_of
from lmtpfilter.reply import Reply

Target = Callable[[bytes], None]


class Bytes:
    """Structure drawn from the input's first bytes (the rest is the payload)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        part = self.data[self.pos:self.pos + n]
        self.pos += len(part)
        return part

    def rest(self) -> bytes:
        return self.data[self.pos:]


# ---- the message parser and header editor ------------------------------------------------
def message(data: bytes) -> None:
    src = Bytes(data)
    flags = src.byte()
    raw = src.rest()
    msg = Message.parse(raw)
    assert msg.header_block + bytes(msg.body) == raw, "header block and body must split it"
    for f in msg.fields:  # the fields cover the header block, byte for byte
        assert f.raw
    assert b"".join(f.raw for f in msg.fields) == msg.header_block
    msg.header_text("subject")  # never raises, whatever the encoded-words
    added = [b"X-Fuzz: %d" % flags, b"Received: from fuzz\r\n\tby fuzz"][: 1 + (flags & 1)]
    remove = frozenset({"subject", "x-spam-flag"} if flags & 2 else ())
    tag = b"[SPAM] " if flags & 4 else b""
    chunks = msg.copy_with(added, remove, tag)
    header, body = bytes(chunks[0]), bytes(chunks[-1])
    assert body == bytes(msg.body), "the body must stay byte-identical"
    eol = msg.line_ending
    top = b"".join(h + eol for h in added)
    assert header.startswith(top), "added fields come first"
    # Only whole lines: the header section ends with a line ending (or is empty), so the
    # body still starts at a line start after it.
    assert not header or header.endswith(b"\n"), f"header section ends mid-line: {header!r}"
    if msg.body_offset < len(raw) or not raw:
        return
    # No empty line: everything was header; the copy must not have turned any of it into body.
    assert not body


def alert(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    field = amavis_alert(text)
    assert field.startswith(b"X-Amavis-Alert:")
    lines = field.split(b"\r\n")
    for i, line in enumerate(lines):
        assert len(line) <= 998 and all(0x20 <= c < 0x7F or c == 9 for c in line), line[:80]
        assert i == 0 or line[:1] in (b" ", b"\t"), "a continuation line must be folded"


# ---- the LMTP client state machine -------------------------------------------------------
def client(data: bytes) -> None:
    src = Bytes(data)
    count = 1 + src.byte() % 5
    cuts = [1 + src.byte() % 64 for _ in range(4)]
    payload = src.rest()
    conn = ClientConnection("filter.test")
    envelope = Envelope("s@example.net", [f"r{i}@example.org" for i in range(count)],
                        ["BODY=8BITMIME"], [["NOTIFY=NEVER"]] * count)
    started = False
    results: list[Any] = []
    pos, i = 0, 0
    while pos < len(payload):
        size = cuts[i % len(cuts)]
        i += 1
        conn.receive_data(payload[pos:pos + size])
        pos += size
        conn.data_to_send()
        if conn.ready and not started:
            conn.start_transaction(envelope, [b"Subject: x\r\n\r\n.body\r\n"])
            started = True
        if started and not results and conn.settled:
            results = conn.finish_transaction()
    conn.receive_data(b"")  # the server closed
    assert conn.state is State.CLOSED
    if started and not results:
        assert conn.transaction_done, "EOF must settle every recipient"
        results = conn.results()
    if started:
        assert len(results) == count
        for reply in results:
            assert 200 <= reply.code < 300 or 400 <= reply.code < 600, reply


# ---- the LMTP server state machine ------------------------------------------------------
_REPLY_LINE = re.compile(rb"[2-5]\d\d[ -][^\r\n]*")
_APP_REPLIES = [Reply(250, "2.0.0", "Ok"), Reply(452, "4.2.2", "Mailbox full"),
                Reply(550, "5.1.1", "No such user"), Reply(451, "4.3.0", "Try again")]


def server(data: bytes) -> None:
    """Any client bytes, cut anywhere, any app decisions: no exception; only well-formed
    reply lines of at most 512 octets; after each MessageReceived or MessageRefused exactly
    one reply per accepted recipient; the connection never stalls with input unprocessed."""
    src = Bytes(data)
    flags = src.byte()
    cuts = [1 + src.byte() % 200 for _ in range(3)]
    conn = ServerConnection("mx.example.org", max_message_size=50 + 20 * src.byte(),
                            capabilities=Capabilities(smtputf8=bool(flags & 1),
                                                      dsn=bool(flags & 2)),
                            max_recipients=1 + src.byte() % 5,
                            max_header_size=src.byte() % 4 * 40)  # 0: off
    payload = src.rest()
    out = conn.data_to_send()
    pos, i = 0, 0
    while pos <= len(payload):
        chunk = payload[pos:pos + cuts[i % len(cuts)]]
        i += 1
        pos += max(len(chunk), 1)
        conn.receive_data(chunk)  # the last one is b"": EOF
        while not isinstance(event := conn.next_event(), Signal):
            if isinstance(event, (Mail, Rcpt)):
                if src.byte() % 4:
                    conn.accept()
                else:
                    conn.reject(Reply(550, "5.7.1", "refused"))
            elif isinstance(event, MessageReceived):
                out += conn.data_to_send()
                conn.send_data_replies([_APP_REPLIES[src.byte() % len(_APP_REPLIES)]
                                        for _ in event.recipients])
                replies = conn.data_to_send()
                assert replies.count(b"\r\n") == len(event.recipients), replies
                out += replies
        out += conn.data_to_send()
    assert conn.state is State_.CLOSED, "EOF must close the connection"
    lines = out.split(b"\r\n")
    assert lines[-1] == b"", "every reply ends with CRLF"
    for line in lines[:-1]:
        assert _REPLY_LINE.fullmatch(line) and len(line) <= 510, line[:100]


# ---- the config loader -------------------------------------------------------------------
ODD: list[Any] = [
    0, -1, 1, 2**63, -(2**63), 10**30, 0.5, -0.0, math.inf, -math.inf, math.nan, True, False,
    "", " ", "0", "-1", "1k", "10M", "1e9", "nan", "inf", "1s", "-1s", "0s", "99999d", "x",
    "127.0.0.1:0", "127.0.0.1:65536", "[::1]:25", "unix:/run/x.sock", "unix:rel", "/", "../..",
    "\x00", "\udcff", "é", "a" * 5000, "@example.org", "*", "0o777", "0777",
    [], [""], ["127.0.0.1:10024"], [1, 2], [[]], [{}], {}, {"a": 1},
    datetime.date(2026, 1, 1), datetime.time(1, 2), datetime.datetime(2026, 1, 1),
]


def config(data: bytes) -> None:
    src = Bytes(data)
    mode = src.byte()
    mapping: dict[str, Any]
    if mode & 1:  # raw TOML: whatever parses
        try:
            mapping = tomllib.loads(src.rest().decode("utf-8", "replace"))
        except tomllib.TOMLDecodeError:
            return
    else:  # known sections and keys, odd values: reaches the validators
        mapping = {}
        for _ in range(1 + src.byte() % 6):
            section = SECTIONS[src.byte() % len(SECTIONS)]
            fields = declared(section)
            key = key_of(fields[src.byte() % len(fields)])
            value = ODD[src.byte() % len(ODD)]
            mapping.setdefault(section.SECTION, {})[key] = value  # type: ignore[attr-defined]
        if src.byte() & 1:  # the few keys a usable config needs, so the rest is checked
            server = mapping.setdefault("server", {})
            server.setdefault("listen", ["127.0.0.1:10024"])
            mapping.setdefault("downstream", {}).setdefault("address", "127.0.0.1:24")
    try:
        from_mapping(mapping, "fuzz.toml")
    except ConfigError as exc:
        assert "\n" not in str(exc).rstrip("\n") or len(str(exc)) < 10_000
    except RecursionError:  # not the loader's: TOML nests as deep as it likes
        pass


TARGETS: dict[str, Target] = {"message": message, "alert": alert, "client": client,
                              "server": server, "config": config}
