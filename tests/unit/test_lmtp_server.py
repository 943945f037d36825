"""The LMTP server state machine, driven by the transcripts in tests/data/lmtp_server_cases.toml
(no I/O), plus the API contract, memory bounds and property tests.

The property tests use hypothesis when it is installed (it is not in the [test] extras yet):
without it they are skipped, the rest runs.
"""

from __future__ import annotations

import itertools
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter import smtp_syntax
from lmtpfilter.lmtp_protocol import ClientConnection, Envelope
from lmtpfilter.lmtp_server import (
    COMMAND_TOO_LONG,
    MAX_LINE,
    NEED_DATA,
    PAUSED,
    Capabilities,
    CloseReason,
    CommandRefused,
    ConnectionClosed,
    Event,
    Lhlo,
    Mail,
    MessageReceived,
    MessageRefused,
    Rcpt,
    Rset,
    ServerConnection,
    Signal,
    State,
    has_long_line,
)
from lmtpfilter.reply import Reply

DATA = Path(__file__).parent.parent / "data"
_FILE = tomllib.loads((DATA / "lmtp_server_cases.toml").read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = _FILE["case"]
PATHS: list[dict[str, Any]] = _FILE["path"]
PARAMS: list[dict[str, Any]] = _FILE["params"]
LHLO = b"LHLO client.example\r\n"


def expand(text: str) -> str:
    """"{N*c}" in the data file is c repeated N times."""
    return re.sub(r"\{(\d+)\*(.)\}", lambda m: m.group(2) * int(m.group(1)), text)


def _stuff(body: bytes) -> bytes:
    """Dot-stuffing as the client does it (RFC 5321 §4.5.2)."""
    return (b"." + body if body.startswith(b".") else body).replace(b"\r\n.", b"\r\n..")


def _long_line_reference(data: bytes) -> bool:
    return any(len(line) - line.endswith(b"\r") > MAX_LINE for line in data.split(b"\n"))


def parse_reply(line: str) -> Reply:
    return Reply.parse_lines(int(line[:3]), [line[4:]])


@dataclass
class App:
    """A scripted application: decides MAIL and RCPT, answers each message at once."""

    reject_mail: str | None = None
    reject_rcpt: dict[str, str] = field(default_factory=dict)
    data_replies: list[str] | None = None
    events: list[Event] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    def pump(self, conn: ServerConnection) -> None:
        """Take events until the machine needs data or is paused, the way an adapter does."""
        while True:
            event = conn.next_event()
            if isinstance(event, Signal):
                return
            self.events.append(event)
            if isinstance(event, Mail):
                if self.reject_mail:
                    conn.reject(parse_reply(self.reject_mail))
                else:
                    conn.accept()
            elif isinstance(event, Rcpt):
                if event.address in self.reject_rcpt:
                    conn.reject(parse_reply(self.reject_rcpt[event.address]))
                else:
                    conn.accept()
            elif isinstance(event, MessageReceived):
                self.messages.append(event.data)
                replies = [parse_reply(r) for r in self.data_replies] if self.data_replies \
                    else [Reply(250, "2.0.0", f"Delivered to <{r.address}>")
                          for r in event.recipients]
                conn.send_data_replies(replies)


def run(conn: ServerConnection, app: App, chunks: Iterable[bytes], eof: bool = False) -> bytes:
    out = conn.data_to_send()
    for chunk in chunks:
        if not chunk:
            continue  # b"" would be EOF
        conn.receive_data(chunk)
        app.pump(conn)
        out += conn.data_to_send()
    if eof:
        conn.receive_data(b"")
        app.pump(conn)
        out += conn.data_to_send()
    return out


def describe(event: Event) -> str:
    """An event as the data file writes it."""
    if isinstance(event, Lhlo):
        return f"Lhlo {event.name}"
    if isinstance(event, Mail):
        return " ".join([f"Mail {event.sender or '<>'}", *event.params.raw])
    if isinstance(event, Rcpt):
        return " ".join([f"Rcpt {event.address}", *event.params.raw])
    if isinstance(event, MessageReceived):
        return f"MessageReceived {len(event.recipients)}"
    if isinstance(event, MessageRefused):
        return f"MessageRefused {event.reply.code} {len(event.recipients)}"
    if isinstance(event, CommandRefused):
        return f"CommandRefused {event.command} {event.reply.code}"
    if isinstance(event, ConnectionClosed):
        return f"ConnectionClosed {event.reason.value}"
    assert isinstance(event, Rset)
    return "Rset"


_REPLY_LINE = re.compile(rb"([2-5]\d\d)([ -])([^\r\n]*)\r\n")
_ENHANCED = re.compile(rb"([245])\.\d{1,3}\.\d{1,3}( |$)")


def check_replies(out: bytes) -> list[bytes]:
    """Every line a well-formed reply: CRLF-terminated, at most 512 octets, an enhanced code
    on every 2xx/4xx/5xx except the greeting and the LHLO reply (RFC 2034)."""
    lines, pos, in_lhlo = [], 0, False
    while pos < len(out):
        m = _REPLY_LINE.match(out, pos)
        assert m, f"malformed reply at {out[pos:pos + 80]!r}"
        assert len(m.group(0)) <= 512
        code, sep, text = m.groups()
        greeting = pos == 0 and code == b"220"
        if not (greeting or in_lhlo or sep == b"-" or code == b"354"):
            e = _ENHANCED.match(text)
            assert e and e.group(1) == code[:1], f"no enhanced code: {m.group(0)!r}"
        in_lhlo = sep == b"-"
        lines.append(m.group(0)[:-2])
        pos = m.end()
    return lines


def case_input(case: dict[str, Any]) -> bytes:
    text = "".join(line + "\r\n" for line in case["lines"]) if "lines" in case else case["raw"]
    data = expand(text).encode(case.get("encoding", "utf-8"))
    return (LHLO if case.get("lhlo", True) else b"") + data


def case_connection(case: dict[str, Any]) -> tuple[ServerConnection, App]:
    conn = ServerConnection(
        "mx.example.org", max_message_size=case.get("max_message_size", 10000),
        capabilities=Capabilities(smtputf8=case.get("smtputf8", False),
                                  dsn=case.get("dsn", False)),
        max_recipients=case.get("max_recipients", 1000),
        max_header_size=case.get("max_header_size", 0))
    app = App(case.get("reject_mail"), case.get("reject_rcpt", {}), case.get("data_replies"))
    return conn, app


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


CHUNKINGS: dict[str, Callable[[bytes], list[bytes]]] = {
    "whole": lambda d: [d], "bytewise": lambda d: pieces(d, 1), "7-byte": lambda d: pieces(d, 7)}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_server_transcript(case: dict[str, Any]) -> None:
    data = case_input(case)
    results = {}
    for name, chunking in CHUNKINGS.items():
        conn, app = case_connection(case)
        out = run(conn, app, chunking(data), eof=case.get("eof", False))
        results[name] = (out, [describe(e) for e in app.events], app.messages, conn.state)
    assert results["bytewise"] == results["whole"] == results["7-byte"]
    out, events, messages, state = results["whole"]
    encoding = "utf-8" if case.get("smtputf8") else "ascii"
    lines = [line.decode(encoding) for line in check_replies(out)]
    if case.get("lhlo", True):
        assert lines[0].startswith("220 mx.example.org")
        end = next(i for i, line in enumerate(lines) if line.startswith("250 "))  # LHLO's last
        lines = lines[end + 1:]
    expected = [expand(e) for e in case["expect"]]
    assert len(lines) == len(expected), "\n".join(lines)
    for line, prefix in zip(lines, expected, strict=True):
        assert line.startswith(prefix), f"{line!r} does not start with {prefix!r}"
    if "events" in case:
        assert events == [expand(e) for e in case["events"]]
    if "messages" in case:
        enc = case.get("encoding", "utf-8")
        assert messages == [expand(m).encode(enc) for m in case["messages"]]
    if "closed" in case:
        assert (state is State.CLOSED) == case["closed"]


@pytest.mark.parametrize("case", PATHS, ids=[p["arg"][:60] for p in PATHS])
def test_parse_path(case: dict[str, Any]) -> None:
    arg = expand(case["arg"])
    mail = case.get("kind", "mail") == "mail"

    def parse() -> tuple[str, str]:
        return smtp_syntax.parse_path(arg, utf8=case.get("utf8", False), null=mail,
                                      postmaster=not mail)

    if "error" in case:
        with pytest.raises(getattr(smtp_syntax, case["error"])):
            parse()
        return
    assert parse() == (expand(case["address"]), case.get("rest", ""))


@pytest.mark.parametrize("case", PARAMS, ids=[p["rest"] or "none" for p in PARAMS])
def test_parse_params(case: dict[str, Any]) -> None:
    rest, dsn, utf8 = case["rest"], case.get("dsn", False), case.get("smtputf8", False)

    def parse() -> smtp_syntax.MailParams | smtp_syntax.RcptParams:
        if case.get("kind", "mail") == "mail":
            return smtp_syntax.parse_mail_params(rest, smtputf8=utf8, dsn=dsn)
        return smtp_syntax.parse_rcpt_params(rest, dsn=dsn, utf8=utf8)

    if "error" in case:
        with pytest.raises(getattr(smtp_syntax, case["error"])):
            parse()
        return
    params = parse()
    assert params.raw == tuple(rest.split())
    for name, value in case["expect"].items():
        got = getattr(params, name)
        assert (list(got) if isinstance(got, tuple) else got) == value, name


# ---- the API contract -------------------------------------------------------------------------

def ready(**kwargs: Any) -> ServerConnection:
    kwargs.setdefault("max_message_size", 10000)
    conn = ServerConnection("mx.example.org", **kwargs)
    conn.receive_data(LHLO)
    assert isinstance(conn.next_event(), Lhlo)
    assert conn.next_event() is NEED_DATA
    conn.data_to_send()
    return conn


def start(conn: ServerConnection, *recipients: str) -> None:
    """MAIL and the RCPTs, all accepted, then DATA (354)."""
    conn.receive_data(b"MAIL FROM:<s@example.net>\r\n" + b"".join(
        f"RCPT TO:<{r}>\r\n".encode() for r in recipients) + b"DATA\r\n")
    for _ in range(1 + len(recipients)):
        assert isinstance(conn.next_event(), Mail | Rcpt)
        conn.accept()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")


def test_greeting_is_queued_at_construction() -> None:
    conn = ServerConnection("mx.example.org", max_message_size=1)
    assert conn.data_to_send() == b"220 mx.example.org LMTP ready\r\n"
    assert conn.data_to_send() == b""
    assert conn.next_event() is NEED_DATA


def test_pipelined_replies_come_out_in_one_write() -> None:
    conn = ready()
    conn.receive_data(b"MAIL FROM:<s@x.net>\r\nRCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n")
    for _ in range(3):
        conn.next_event()
        conn.accept()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == (b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
                                   b"354 End data with <CR><LF>.<CR><LF>\r\n")


def test_paused_until_each_mail_and_rcpt_is_answered() -> None:
    conn = ready()
    conn.receive_data(b"MAIL FROM:<s@x.net>\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), Mail)
    assert conn.next_event() is PAUSED and conn.state is State.ANSWER
    assert conn.data_to_send() == b""  # NOOP waits behind the undecided MAIL
    conn.accept(Reply(250, "2.1.0", "Sender fine"))
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"250 2.1.0 Sender fine\r\n250 2.0.0 Ok\r\n"


def test_paused_holds_pipelined_commands_until_the_data_replies() -> None:
    conn = ready()
    start(conn, "a@x.org", "b@x.org")
    conn.receive_data(b"hi\r\n.\r\nRSET\r\nQUIT\r\n")
    event = conn.next_event()
    assert isinstance(event, MessageReceived) and event.data == b"hi\r\n"
    assert [r.address for r in event.recipients] == ["a@x.org", "b@x.org"]
    for _ in range(3):
        assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b"" and conn.buffered == len(b"RSET\r\nQUIT\r\n")
    assert not conn.idle and conn.state is State.DELIVERY
    with pytest.raises(ValueError, match="1 replies for 2 recipients"):
        conn.send_data_replies([Reply(250, "2.0.0", "ok")])
    with pytest.raises(ValueError, match="2xx, 4xx or 5xx"):
        conn.send_data_replies([Reply(250, "2.0.0", "ok"), Reply(354, "", "go")])
    assert conn.next_event() is PAUSED  # a refused call changes nothing
    conn.send_data_replies([Reply(250, "2.0.0", "a ok"), Reply(452, "4.2.2", "b full")])
    assert isinstance(conn.next_event(), Rset)
    assert conn.next_event() == ConnectionClosed(CloseReason.QUIT)
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == (
        b"250 2.0.0 a ok\r\n452 4.2.2 b full\r\n250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n")


def test_misuse_raises() -> None:
    with pytest.raises(ValueError):
        ServerConnection("mx", max_message_size=0)
    conn = ready()
    with pytest.raises(RuntimeError):
        conn.accept()
    with pytest.raises(RuntimeError):
        conn.reject(Reply(550, "5.1.1", "no"))
    with pytest.raises(RuntimeError):
        conn.send_data_replies([])
    conn.receive_data(b"MAIL FROM:<s@x.net>\r\n")
    assert isinstance(conn.next_event(), Mail)
    with pytest.raises(ValueError):
        conn.accept(Reply(550, "5.1.1", "no"))
    with pytest.raises(ValueError):
        conn.reject(Reply(250, "2.1.0", "yes"))
    conn.reject(Reply(451, "4.3.0", "later"))  # still pending after the refused calls
    assert conn.data_to_send() == b"451 4.3.0 later\r\n"


def test_idle_and_shutdown() -> None:
    conn = ready()
    assert conn.idle
    conn.receive_data(b"MAIL FROM:<s@x.net>\r\n")
    conn.next_event()
    assert not conn.idle  # waiting for the app
    conn.accept()
    assert not conn.idle  # inside a transaction
    conn.receive_data(b"RSET\r\n")
    conn.next_event()
    assert conn.idle
    conn.data_to_send()
    conn.shutdown()
    assert conn.next_event() == ConnectionClosed(CloseReason.SHUTDOWN)
    assert conn.data_to_send() == b"421 4.3.2 Service shutting down, please try again later\r\n"
    conn.shutdown()  # once only
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() is PAUSED and conn.data_to_send() == b""


def test_shutdown_while_the_app_works_makes_its_replies_a_no_op() -> None:
    conn = ready()
    start(conn, "a@x.org")
    conn.receive_data(b"x\r\n.\r\n")
    assert isinstance(conn.next_event(), MessageReceived)
    conn.shutdown()
    conn.send_data_replies([Reply(250, "2.0.0", "too late")])  # the adapter's task finishing
    assert conn.data_to_send() == b"421 4.3.2 Service shutting down, please try again later\r\n"


def test_eof_while_the_app_works_still_takes_the_replies() -> None:
    conn = ready()
    start(conn, "a@x.org")
    conn.receive_data(b"x\r\n.\r\n")
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), MessageReceived)
    assert conn.next_event() is PAUSED
    conn.send_data_replies([Reply(250, "2.0.0", "ok")])
    assert conn.next_event() == ConnectionClosed(CloseReason.EOF)
    assert conn.data_to_send() == b"250 2.0.0 ok\r\n"


@pytest.mark.parametrize("body", [b"a\r\nb\r\n", b"", b"..\r\n", b"\r\n", b".\r\n.\r\n"],
                         ids=repr)
def test_terminator_split_at_every_boundary(body: bytes) -> None:
    """Stuffed body + CRLF.CRLF + a pipelined NOOP, cut in two and in three everywhere."""
    wire = _stuff(body) + b".\r\nNOOP\r\n"
    cuts = [(i, j) for i in range(len(wire) + 1) for j in range(i, len(wire) + 1)]
    for i, j in cuts:
        conn, app = ready(), App()
        start(conn, "a@x.org")
        out = run(conn, app, [wire[:i], wire[i:j], wire[j:]])
        assert app.messages == [body], (i, j)
        assert out == b"250 2.0.0 Delivered to <a@x.org>\r\n250 2.0.0 Ok\r\n", (i, j)


def stream_5_mb(conn: ServerConnection, line: bytes, chunk: int) -> int:
    """Feed 5 MB of `line` in pieces of about `chunk` bytes to a connection in DATA, each
    piece needing more; the most it ever buffered."""
    high = 0
    for _ in range(5_000_000 // (chunk - chunk % len(line))):
        conn.receive_data(line * (chunk // len(line)))
        assert conn.next_event() is NEED_DATA
        high = max(high, conn.buffered)
    return high


def test_oversized_message_is_discarded_while_read() -> None:
    limit, chunk = 100_000, 64 * 1024
    conn, app = ready(max_message_size=limit), App()
    start(conn, "a@x.org", "b@x.org")
    assert stream_5_mb(conn, b"x" * 76 + b"\r\n", chunk) < limit + chunk
    out = run(conn, app, [b".\r\nQUIT\r\n"])
    assert [describe(e) for e in app.events] == ["MessageRefused 552 2", "ConnectionClosed quit"]
    assert out == b"552 5.3.4 Message too big for system\r\n" * 2 + b"221 2.0.0 Bye\r\n"


def test_header_over_its_limit_is_discarded_while_read() -> None:
    """A header section that never ends is not kept past max_header_size, even under a much
    larger max_message_size: a client cannot make us hold 50 MB of header to refuse it."""
    limit, chunk = 10_000, 64 * 1024
    conn, app = ready(max_message_size=50_000_000, max_header_size=limit), App()
    start(conn, "a@x.org", "b@x.org")
    assert stream_5_mb(conn, b"X-Junk: " + b"x" * 68 + b"\r\n", chunk) < limit + chunk
    out = run(conn, app, [b"\r\nbody\r\n.\r\nQUIT\r\n"])
    assert [describe(e) for e in app.events] == ["MessageRefused 552 2", "ConnectionClosed quit"]
    assert out == (b"552 5.3.4 Message header section too big for system\r\n" * 2
                   + b"221 2.0.0 Bye\r\n")


def test_huge_command_line_keeps_memory_bounded() -> None:
    conn = ready()
    for _ in range(100):
        conn.receive_data(b"NOOP " + b"x" * 10_000)
        assert conn.next_event() is NEED_DATA
        assert conn.buffered <= 10_005
    conn.receive_data(b"\r\nNOOP\r\n")
    assert conn.next_event() == CommandRefused("NOOP", COMMAND_TOO_LONG)
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"500 5.5.2 Error: command line too long\r\n250 2.0.0 Ok\r\n"


def test_big_message_is_fast() -> None:
    """The hot path: 32 MB in 256 KiB reads must not be handled line by line."""
    body = (b"y" * 70 + b"\r\n") * (32_000_000 // 72)
    conn, app = ready(max_message_size=64_000_000), App()
    start(conn, "a@x.org")
    began = time.perf_counter()
    run(conn, app, pieces(_stuff(body) + b".\r\n", 256 * 1024))
    elapsed = time.perf_counter() - began
    assert app.messages == [body]
    assert elapsed < 2.0, f"{elapsed:.2f} s for 32 MB"


def test_reply_lines_are_bounded_and_encoded() -> None:
    conn = ready()
    conn.receive_data(b"MAIL FROM:<s@x.net>\r\n")
    conn.next_event()
    conn.reject(Reply(550, "5.7.1", "é" + "x" * 1000 + "\r\nsecond line"))
    (line,) = check_replies(conn.data_to_send())
    assert line.startswith(b"550 5.7.1 ?xxx") and len(line) == 510


@pytest.mark.parametrize(("data", "long"), [
    (b"", False), (b"x" * 998, False), (b"x" * 999, True), (b"x" * 998 + b"\r", False),
    (b"x" * 998 + b"\r\n", False), (b"x" * 999 + b"\r\n", True), (b"x" * 999 + b"\n", True),
    (b"a\n" + b"x" * 998 + b"\rb\n", True), ((b"x" * 500 + b"\n") * 9, False),
    (b"x" * 499 + b"\n" + b"y" * 999 + b"\n", True), (b"x" * 998 + b"\r\r\n", True),
])
def test_has_long_line(data: bytes, long: bool) -> None:
    assert has_long_line(data) is long is _long_line_reference(data)


# ---- properties (hypothesis) ---------------------------------------------------------------

def _hypothesis() -> Any:
    return pytest.importorskip("hypothesis")


def _property(check: Callable[..., None], *strategies: Any, examples: int = 150) -> None:
    h = _hypothesis()
    h.settings(max_examples=examples, deadline=None, database=None)(
        h.given(*strategies)(check))()


def _cuts(st: Any) -> Any:
    """Where to cut a byte string, in thousandths of its length."""
    return st.lists(st.integers(0, 1000), max_size=8).map(sorted)


def _cut(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *(c * len(data) // 1000 for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


TOKENS = [b"LHLO x\r\n", b"MAIL FROM:<s@x.net>\r\n", b"MAIL FROM:<> SIZE=5\r\n",
          b"RCPT TO:<a@x.org>\r\n", b"RCPT TO:<postmaster>\r\n", b"RCPT TO:<bad\r\n",
          b"DATA\r\n", b".\r\n", b"\r\n.\r\n", b"..\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n",
          b"\n", b"\r", b"\x00", b"\xc3\xa9", b"\xff", b".", b"x" * 600, b"y" * 3000 + b"\n",
          b"FOO\r\n", b"HELO x\r\n", b"VRFY\r\n", b"MAIL FROM:<j\xc3\xb6rg@x> SMTPUTF8\r\n"]


def test_property_any_bytes_any_chunking() -> None:
    """Never an exception, only well-formed replies, and the same result however it is cut."""
    h = _hypothesis()
    st = h.strategies
    stream = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=40), max_size=30).map(
        b"".join)

    def check(data: bytes, cuts: list[int], caps: Capabilities, limit: int) -> None:
        results = []
        for chunks in (_cut(data, cuts), [data]):
            conn, app = ServerConnection("mx", max_message_size=limit, capabilities=caps), App()
            out = run(conn, app, chunks, eof=True)
            check_replies(out)
            assert conn.state is State.CLOSED
            results.append((out, [describe(e) for e in app.events], app.messages))
        assert results[0] == results[1]

    _property(check, stream, _cuts(st),
              st.builds(Capabilities, st.booleans(), st.booleans()), st.integers(1, 200),
              examples=300)


def test_property_body_survives_stuffing_and_unstuffing() -> None:
    h = _hypothesis()
    st = h.strategies
    bodies = st.lists(st.sampled_from([b"\r\n", b".", b"..", b"\n", b"\r", b"x", b"\r\n.\r\n"])
                      | st.binary(max_size=20), max_size=40).map(b"".join)

    def check(body: bytes, cuts: list[int]) -> None:
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"  # the client ends the last line before the terminator
        wire = _stuff(body) + b".\r\nNOOP\r\n"
        conn, app = ready(max_message_size=100_000), App()
        start(conn, "a@x.org")
        out = run(conn, app, _cut(wire, cuts))
        assert app.messages == [body]
        assert out.endswith(b"250 2.0.0 Ok\r\n")

    _property(check, bodies, _cuts(st), examples=300)


def test_property_one_data_reply_per_accepted_recipient() -> None:
    h = _hypothesis()
    st = h.strategies
    rcpt = st.tuples(st.sampled_from(["a@x.org", "b@x.org", "bad address", "", "c@[1.2.3.4]"]),
                     st.booleans())  # (address, does the app accept it)
    bodies = st.sampled_from([b"", b"ok\r\n", b"x" * 300 + b"\r\n", b"y" * 1200 + b"\r\n"])

    def check(recipients: list[tuple[str, bool]], body: bytes, limit: int) -> None:
        conn = ServerConnection("mx", max_message_size=limit, max_recipients=4)
        app = App(reject_rcpt={a: "550 5.1.1 refused" for a, ok in recipients if not ok})
        commands = LHLO + b"MAIL FROM:<s@x.net>\r\n" + b"".join(
            f"RCPT TO:<{a}>\r\n".encode() for a, _ in recipients) + b"DATA\r\n"
        lines = check_replies(run(conn, app, [commands]))[6:]  # after greeting and LHLO
        accepted = sum(line.startswith(b"2") for line in lines[1:1 + len(recipients)])
        if accepted:
            assert lines[-1].startswith(b"354")
            after = check_replies(run(conn, app, [_stuff(body) + b".\r\nQUIT\r\n"]))
            assert len(after) == accepted + 1 and after[-1].startswith(b"221")
            refused = isinstance(app.events[-2], MessageRefused)
            assert refused == (len(body) > limit or len(body) > MAX_LINE + 2)
        else:
            assert lines[-1].startswith(b"503 5.5.1")

    _property(check, st.lists(rcpt, max_size=6), bodies, st.integers(1, 2000), examples=300)


def test_property_our_client_against_our_server() -> None:
    """lmtp_protocol.ClientConnection talking to ServerConnection, no sockets: what arrives
    is the message CRLF-normalised, and every recipient gets its own reply."""
    h = _hypothesis()
    st = h.strategies
    messages = st.lists(st.sampled_from([b"\r\n", b"\n", b".", b"..", b"x", b"\r"])
                        | st.binary(max_size=30), max_size=30).map(b"".join)

    def check(message: bytes, recipients: list[str]) -> None:
        server, app = ServerConnection("mx", max_message_size=100_000), App()
        client = ClientConnection("client.example")
        _shuttle(client, server, app)
        assert client.ready
        client.start_transaction(Envelope("s@x.net", recipients), [message])
        _shuttle(client, server, app)
        assert client.transaction_done
        assert [r.text for r in client.finish_transaction()] == [
            f"Delivered to <{r}>" for r in recipients]
        expected = re.sub(rb"(?<!\r)\n", b"\r\n", message)
        if expected and not expected.endswith(b"\r\n"):
            expected += b"\r\n"
        assert app.messages == [expected]

    _property(check, messages, st.lists(st.sampled_from(["a@x.org", "b@x.org"]), min_size=1,
                                        max_size=3))


def _shuttle(client: ClientConnection, server: ServerConnection, app: App) -> None:
    """Move bytes both ways until neither side has anything to say."""
    while True:
        to_client = server.data_to_send()
        if to_client:
            client.receive_data(to_client)
        to_server = b"".join(client.data_to_send())
        if not to_client and not to_server:
            return
        if to_server:
            server.receive_data(to_server)
            app.pump(server)
