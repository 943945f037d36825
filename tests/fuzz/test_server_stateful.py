"""Hypothesis drives the real LMTP server in-process (issue 16 item 1).

The real asyncio adapter and pipeline (scanners off) listen on loopback, in front of a
scripted downstream (scripted_downstream.py) that can answer anything. The machine plays a
hostile client: commands in any order with valid and invalid arguments, pipelined batches
written in pieces split at random points, NUL, bare CR, bare LF, 8-bit and UTF-8, lines of 0
to 100,000 octets, up to 1,000 recipients, DATA with and without its final dot, the
connection dropped anywhere. It checks, on every step and after every example:

* every command line gets exactly one reply, well-formed; the server closes only after a
  reply that says so (221, 421, or 502 for too many unknown commands);
* after the final dot, exactly one reply per accepted RCPT, then nothing more (a NOOP sent
  right behind the dot gets the very next reply);
* no 2xx after the dot for a recipient unless the downstream said 2xx for it, for that
  message; a message cut off before its dot reaches nobody;
* nothing logged with a traceback, nothing at ERROR (client input and downstream faults are
  expected, not bugs);
* the server still greets a fresh client with 220 and answers LHLO and QUIT.

LMTPFILTER_FUZZ_PROFILE=long (scripts/fuzz.sh) runs many more and longer examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lmtpfilter.event_loop import loop_factory
from lmtpfilter.lmtp_server import MAX_UNKNOWN, _verb
from lmtpfilter.smtp_syntax import SyntaxProblem, parse_path
from tests.fuzz import profile
from tests.fuzz.scripted_downstream import Script, ScriptedDownstream
from tests.lmtp_tools import make_config, running_filter

T = TypeVar("T")
REPLY_TIMEOUT = 15.0  # only guards against a hang: a downstream timeout is 0.3 s here
_REPLY_LINE = re.compile(rb"[2-5]\d\d([ -])[^\r\n]*\r\n")
STATS = os.environ.get("LMTPFILTER_FUZZ_STATS")  # scripts/fuzz.sh counts examples there


class Violation(AssertionError):
    pass


class Capture(logging.Handler):
    """Everything the lmtpfilter loggers say during one example."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# ---- what the client sends ------------------------------------------------------------------
KNOWN_VERBS = {"LHLO", "MAIL", "RCPT", "DATA", "RSET", "QUIT", "NOOP", "HELP", "VRFY", "EXPN",
               "HELO", "EHLO"}
VERBS = ["LHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP", "VRFY", "EXPN",
         "HELO", "EHLO", "BDAT", "STARTTLS", "AUTH", ""]
LOCALS = st.sampled_from(["a", "user1", "x.y", "u+tag", "postmaster", '"odd local"', "ü",
                          "üser", "a" * 64, "a" * 65, ".bad", "bad.", "a..b", ""])
DOMAINS = st.sampled_from(["example.org", "EXAMPLE.org", "[127.0.0.1]", "[IPv6:::1]",
                           "bücher.example", "-bad.example", "a" * 64 + ".example", "",
                           "example.org.", "ex ample.org"])
PARAMS = st.sampled_from(["", " SIZE=100", " SIZE=999999999999999999999", " SIZE=x",
                          " BODY=8BITMIME", " BODY=7BIT", " BODY=BINARYMIME", " SMTPUTF8",
                          " NOTIFY=SUCCESS,FAILURE", " NOTIFY=NEVER,SUCCESS",
                          " ORCPT=rfc822;a+2Bb@example.org", " ORCPT=rfc822;%%",
                          " RET=HDRS", " ENVID=x+3Dy", " FOO=bar", " =", "  ", " SIZE=",
                          " AUTH=<>", "\t"])
JUNK = st.sampled_from(["<", ">", "<>", ":", "<<a@b>>", "FROM:<", "TO:<>", "FROM: <a@b>",
                        "FROM:<a@b", "TO:<a@b", "FROM:a@b", "<@relay:a@b>", "<@:a@b>",
                        "\x00", "\r", "\x7f", "\xff", "\u2028", "\ufeff", " ", "\t", ""])


@st.composite
def paths(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(JUNK)
    local, domain = draw(LOCALS), draw(DOMAINS)
    address = local if draw(st.integers(0, 9)) == 0 else f"{local}@{domain}"
    if draw(st.integers(0, 9)) == 0:
        address = draw(st.sampled_from(["", "postmaster", "Postmaster"]))
    return f"<{address}>"


@st.composite
def argument(draw: st.DrawFn, verb: str) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:  # raw text of any kind, no line break (a line break makes two lines)
        return draw(st.text(max_size=40)).replace("\n", "")
    if kind == 1:
        return draw(JUNK) + draw(JUNK)
    if verb == "MAIL":
        return f"FROM:{draw(paths())}{draw(PARAMS)}{draw(PARAMS)}"
    if verb == "RCPT":
        return f"TO:{draw(paths())}{draw(PARAMS)}"
    if verb in ("LHLO", "HELO", "EHLO"):
        return draw(st.sampled_from(["client.example", "", "[127.0.0.1]", "x y", "ü"]))
    if verb == "VRFY":
        return draw(st.sampled_from(["", "a@example.org"]))
    return "" if kind < 8 else draw(JUNK)


@st.composite
def command_line(draw: st.DrawFn) -> bytes:
    """One command line with its ending (CRLF, or bare LF: the server ends a line at LF)."""
    if draw(st.integers(0, 29)) == 0:  # a huge line, up to 100,000 octets
        verb = draw(st.sampled_from(["MAIL FROM:<", "RCPT TO:<", "NOOP ", "", "X"]))
        size = draw(st.integers(0, 100_000))
        text = verb.encode() + draw(st.sampled_from([b"a", b"\xff", b"\r", b" "])) * size
    else:
        verb = draw(st.sampled_from(VERBS))
        if draw(st.integers(0, 3)) == 0:
            verb = verb.lower() if draw(st.booleans()) else verb.capitalize()
        arg = draw(argument(verb.upper()))
        sep = draw(st.sampled_from([" ", " ", " ", "", "  ", "\t"]))
        raw = (verb + sep + arg) if arg or draw(st.booleans()) else verb
        encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1"]))
        text = raw.encode(encoding, "replace")
    return text + draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))


@st.composite
def body(draw: st.DrawFn) -> list[bytes]:
    """Message lines (without their endings), anything but the terminator itself."""
    lines = draw(st.lists(st.one_of(
        st.binary(max_size=60),
        st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from([b".", b"..", b".\r", b"\r", b"\n", b"\x00", b"Subject: x", b"",
                         b"From: a@example.org", b"\xff\xfe", b" folded", b".\n.",
                         b"Content-Type: text/plain; charset=utf-8", b"\r\n.\r"]),
        st.integers(0, 1_200).map(lambda n: b"y" * n),
    ), max_size=12))
    if draw(st.integers(0, 9)) == 0:  # now and then a line of up to 100,000 octets
        lines.insert(draw(st.integers(0, len(lines))), b"z" * draw(st.integers(0, 100_000)))
    return lines


_ENHANCED = re.compile(r"(\d)\d\d[ -]([245])\.\d{1,3}\.\d{1,3}( |$)")


def check_enhanced(reply: str) -> None:
    """An enhanced status code of the reply's class on its last line (RFC 2034), as every
    reply but the greeting, LHLO's 250 and 354 has."""
    m = _ENHANCED.match(reply.rsplit("\n", 1)[-1])
    if not m or m.group(1) != m.group(2):
        raise Violation(f"no enhanced status code of its class: {reply!r}")


def stuff(data: bytes) -> bytes:
    """Dot-stuffing as the server undoes it (lmtp_server._end_of_body)."""
    return (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")


def server_address(arg: bytes) -> str | None:
    """The recipient as the server's own parser reads it, to look up in the downstream's
    record; None if it cannot be parsed (then the RCPT must not have been accepted)."""
    text = arg.decode("utf-8", "replace").rstrip("\r\n")
    m = re.match(r"(?i)RCPT\s+TO:", text)
    if not m:
        return None
    try:
        address, _ = parse_path(text[m.end():], utf8=True, null=False, postmaster=True)
    except SyntaxProblem:
        return None
    return address


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


class Closed(Exception):
    """The server closed the connection (EOF where a reply was awaited)."""


class LMTPMachine(RuleBasedStateMachine):
    # The event loop the server runs on ([server] event_loop): asyncio's here, uvloop's below.
    EVENT_LOOP: ClassVar[str] = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.loop = loop_factory(self.EVENT_LOOP)()
        self.capture = Capture()
        logging.getLogger("lmtpfilter").addHandler(self.capture)
        self.downstream = ScriptedDownstream()
        self.filter: contextlib.AbstractAsyncContextManager[Any] | None = None
        self.address = ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.marker = 0
        self.reset_model()
        self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> None:
        await self.downstream.start()
        config = make_config(self.downstream.address,
                             downstream={"timeout": "0.3s", "connect_timeout": "0.3s"},
                             server={"max_message_size": 2_000_000})
        self.filter = running_filter(config)
        self.address, _, _ = await self.filter.__aenter__()

    def reset_model(self) -> None:
        self.lhlo = False
        self.in_tx = False
        self.accepted: list[str] = []  # recipients accepted in this transaction, in order
        self.in_data = False
        self.unknown = 0  # "command not recognized" replies on this connection

    # ---- the client's connection ----------------------------------------------------------
    async def _connect(self) -> str:
        host, port = self.address.rsplit(":", 1)
        self.reader, self.writer = await asyncio.open_connection(host, int(port))
        return await self._reply()

    async def _reply(self) -> str:
        """One whole reply, lines joined by newlines; raises Closed at EOF."""
        assert self.reader is not None
        lines: list[bytes] = []
        while True:
            try:
                raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), REPLY_TIMEOUT)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise Violation(f"a reply cut off: {exc.partial!r}") from None
                raise Closed from None
            except (ConnectionError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    raise Violation(f"no reply within {REPLY_TIMEOUT} s") from None
                raise Closed from None
            m = _REPLY_LINE.fullmatch(raw)
            if not m or (lines and raw[:3] != lines[0][:3]):
                raise Violation(f"malformed reply line {raw!r}")
            lines.append(raw[:-2])
            if m.group(1) == b" ":
                return "\n".join(line.decode("utf-8", "replace") for line in lines)

    async def _write(self, chunks: list[bytes]) -> None:
        """Write the pieces one by one, letting the server run between them."""
        assert self.writer is not None
        for chunk in chunks:
            with contextlib.suppress(ConnectionError):
                self.writer.write(chunk)
                await self.writer.drain()
            await asyncio.sleep(0)

    async def _expect_close(self) -> None:
        try:
            extra = await self._reply()
        except Closed:
            self._forget_connection()
            return
        raise Violation(f"a reply after the connection should have closed: {extra!r}")

    def _forget_connection(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.reset_model()

    @property
    def connected(self) -> bool:
        return self.writer is not None

    # ---- rules ----------------------------------------------------------------------------
    @initialize(lhlo=st.integers(0, 3))
    def greet(self, lhlo: int) -> None:
        reply = self.run(self._connect())
        assert reply.startswith("220 "), reply
        if lhlo:  # mostly: the interesting paths are behind LHLO
            self.run(self._commands([b"LHLO client.example\r\n"], []))

    @precondition(lambda self: not self.connected)
    @rule(lhlo=st.integers(0, 3))
    def reconnect(self, lhlo: int) -> None:
        self.greet(lhlo)

    @rule(greeting=st.sampled_from(["normal", "normal", "normal", "421", "garbage", "close"]),
          rcpt=st.lists(st.sampled_from(["250 2.1.5 Ok", "250 2.1.5 Ok", "550 5.1.1 no",
                                         "452 4.2.2 full", "421 4.3.2 bye", "hello",
                                         "250"]), min_size=1, max_size=4).map(tuple),
          data=st.lists(st.sampled_from(["250 2.0.0 Saved", "250 2.0.0 Saved",
                                         "452 4.2.2 full", "550 5.2.2 over quota",
                                         "421 4.3.2 bye", "hello", "", "999 9.9.9 what",
                                         "2", "250-continued", "\xff\xfe"]),
                        min_size=1, max_size=4).map(tuple),
          after=st.sampled_from(["reply", "reply", "reply", "close", "hang", "fewer", "more",
                                 "close-mid", "mail-421"]))
    def script_downstream(self, greeting: str, rcpt: tuple[str, ...], data: tuple[str, ...],
                          after: str) -> None:
        self.downstream.script = Script(greeting, rcpt, data, after)

    @precondition(lambda self: self.connected and not self.in_data)
    @rule(lines=st.lists(command_line(), min_size=1, max_size=8),
          cuts=st.lists(st.integers(0, 10**6), max_size=6))
    def commands(self, lines: list[bytes], cuts: list[int]) -> None:
        """A pipelined batch (one command is a batch of one), written in random pieces."""
        self.run(self._commands(self._group(lines), cuts))

    def _group(self, lines: list[bytes]) -> list[bytes]:
        """The batch cut after a command that may end it, as RFC 2920 §3.1 asks of clients:
        DATA (what follows is the message), QUIT, or the unknown command that makes the
        server hang up. Bytes sent after the server closed would make its kernel answer with
        a RST, and the client would lose the replies still in flight (TCP, not a bug)."""
        unknown = self.unknown
        for i, line in enumerate(lines):
            verb = _verb(line.removesuffix(b"\n").removesuffix(b"\r")[:16])
            if verb not in KNOWN_VERBS:
                unknown += 1
            if verb in ("DATA", "QUIT") or unknown >= MAX_UNKNOWN:
                return lines[:i + 1]
        return lines

    @precondition(lambda self: self.connected and not self.in_data)
    @rule(sender=st.sampled_from(["s@example.net", "", "ü@example.net"]),
          count=st.one_of(st.integers(1, 5), st.integers(0, 1000)),
          dup=st.booleans(),
          cuts=st.lists(st.integers(0, 10**6), max_size=4),
          data=st.integers(0, 3).map(bool))
    def transaction_start(self, sender: str, count: int, dup: bool, cuts: list[int],
                          data: bool) -> None:
        """MAIL, many RCPTs and (maybe) DATA, pipelined as Postfix does."""
        params = " SMTPUTF8" if not sender.isascii() else ""
        lines = [] if self.lhlo else [b"LHLO client.example\r\n"]
        lines += [f"MAIL FROM:<{sender}>{params}\r\n".encode()]
        lines += [f"RCPT TO:<r{0 if dup and i % 3 else i}@example.org>\r\n".encode()
                  for i in range(count)]
        if data:
            lines.append(b"DATA\r\n")
        self.run(self._commands(lines, cuts))

    @precondition(lambda self: self.in_data)
    @rule(lines=body(), crlf=st.booleans(), final_dot=st.booleans(),
          cuts=st.lists(st.integers(0, 10**6), max_size=6))
    def message(self, lines: list[bytes], crlf: bool, final_dot: bool, cuts: list[int]
                ) -> None:
        self.run(self._message(lines, crlf, final_dot, cuts))

    @precondition(lambda self: self.connected)
    @rule(partial=st.binary(max_size=30), half_close=st.booleans(), now=st.integers(0, 3))
    def drop(self, partial: bytes, half_close: bool, now: int) -> None:
        """The client vanishes, maybe in the middle of a line or of a message (one time in
        four: a session cut short at once finds little)."""
        if now == 0:
            self.run(self._drop(partial, half_close))

    # ---- what the rules do ------------------------------------------------------------------
    async def _commands(self, lines: list[bytes], cuts: list[int]) -> None:
        await self._write(splits(b"".join(lines), cuts))
        for line in lines:
            try:
                reply = await self._reply()
            except Closed:
                raise Violation(f"no reply to {line[:80]!r}: the server closed") from None
            closing = self._apply(line, reply)
            if closing:
                await self._expect_close()
                return
            if self.in_data:
                return  # what follows DATA is message content (see message())

    def _apply(self, line: bytes, reply: str) -> bool:
        """Update the model with the reply to one command; True if the server must close."""
        code = reply[:3]
        text = line.rstrip(b"\r\n")
        verb = text.split(b" ")[0].upper()
        if reply.startswith("500 5.5.2 Error: command not recognized"):
            self.unknown += 1
        if code == "421":
            return True
        if reply.startswith("502 5.5.1 Too many unrecognized"):
            return True
        if verb == b"QUIT" and code == "221":
            return True
        if code[0] not in "2345":
            raise Violation(f"reply {reply!r} to {text[:80]!r}")
        if not (verb == b"LHLO" and code == "250") and code != "354":
            check_enhanced(reply)
        if verb == b"LHLO" and code == "250":
            self.lhlo, self.in_tx, self.accepted = True, False, []
        elif verb == b"MAIL" and code == "250":
            if self.in_tx or not self.lhlo:
                raise Violation(f"MAIL accepted out of sequence: {text[:80]!r}")
            self.in_tx, self.accepted = True, []
        elif verb == b"RCPT" and code[0] == "2":
            address = server_address(text)
            if not self.in_tx or address is None:
                raise Violation(f"RCPT accepted without a transaction or a valid path: "
                                f"{text[:200]!r} -> {reply!r}")
            self.accepted.append(address)
        elif verb == b"RSET" and code == "250":
            self.in_tx, self.accepted = False, []
        elif verb == b"DATA" and code == "354":
            if not self.accepted:
                raise Violation("354 to DATA without an accepted recipient")
            self.in_data = True
        elif code == "354":
            raise Violation(f"354 to {text[:80]!r}")
        return False

    async def _message(self, lines: list[bytes], crlf: bool, final_dot: bool,
                       cuts: list[int]) -> None:
        self.marker += 1
        marker = self.marker
        ending = b"\r\n" if crlf else b"\n"
        content = b"X-Fuzz-Id: %d\r\n" % marker + ending.join(lines)
        data = stuff(content)
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        if not final_dot:
            await self._write(splits(data, cuts))
            await self._drop(b"", half_close=False)
            if self.downstream.received and marker in self.downstream.received:
                raise Violation(f"a message without its final dot was delivered: {marker}")
            return
        await self._write(splits(data + b".\r\nNOOP\r\n", cuts))
        accepted, self.accepted = self.accepted, []
        codes: list[str] = []
        self.in_data = self.in_tx = False
        for address in accepted:
            try:
                reply = await self._reply()
            except Closed:
                raise Violation(f"fewer replies after the dot than the {len(accepted)} "
                                f"accepted recipients") from None
            if reply.startswith("421"):
                await self._expect_close()
                return
            if reply[0] not in "245" or reply[3] == "-":
                raise Violation(f"bad reply after the dot: {reply!r}")
            check_enhanced(reply)
            codes.append(reply[0] + "xx")
            if reply[0] == "2" and (marker, address) not in self.downstream.accepted:
                raise Violation(f"2xx for <{address}> that the downstream did not accept "
                                f"({reply!r}; script {self.downstream.script})")
        event(f"message with {min(len(accepted), 3)}+ recipients, downstream "
              f"{self.downstream.script.after_data}: {sorted(set(codes))} after the dot")
        after = await self._reply()
        if not after.startswith("250 2.0.0"):
            raise Violation(f"an extra reply after the dot (or no reply to NOOP): {after!r}")

    async def _drop(self, partial: bytes, half_close: bool) -> None:
        assert self.writer is not None
        with contextlib.suppress(ConnectionError):
            if partial:
                self.writer.write(partial)
            if half_close and self.writer.can_write_eof():
                self.writer.write_eof()
            await self.writer.drain()
        await asyncio.sleep(0.01)
        self._forget_connection()

    # ---- invariants -------------------------------------------------------------------------
    @invariant()
    def nothing_bad_logged(self) -> None:
        for record in self.capture.records:
            if record.exc_info or record.levelno >= logging.ERROR:
                text = logging.Formatter().format(record)
                raise Violation(f"logged: {text}")

    def teardown(self) -> None:
        try:
            self.run(self._teardown())
            self.nothing_bad_logged()
        finally:
            logging.getLogger("lmtpfilter").removeHandler(self.capture)
            self._close_loop()
            if STATS:
                with Path(STATS).open("a") as f:
                    f.write("example\n")

    async def _teardown(self) -> None:
        if self.connected:
            await self._drop(b"", False)
        # A fresh client is still served, whatever happened before.
        self.downstream.script = Script()
        reply = await self._connect()
        if not reply.startswith("220 "):
            raise Violation(f"a fresh client got {reply!r}")
        await self._write([b"LHLO fresh.example\r\n"])
        lhlo = await self._reply()
        await self._write([b"QUIT\r\n"])
        bye = await self._reply()
        if not (lhlo.startswith("250") and bye.startswith("221")):
            raise Violation(f"a fresh client got {lhlo!r} / {bye!r}")
        self._forget_connection()
        assert self.filter is not None
        await self.filter.__aexit__(None, None, None)
        await self.downstream.stop()

    def _close_loop(self) -> None:
        loop = self.loop
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


LMTPMachine.TestCase.settings = profile()
TestLMTPServer = LMTPMachine.TestCase


class LMTPMachineOnUvloop(LMTPMachine):
    """The same sessions with the server on uvloop, whose transports fail differently (a
    write to a closed one raises instead of being dropped)."""

    EVENT_LOOP = "uvloop"


LMTPMachineOnUvloop.TestCase.settings = profile()
TestLMTPServerOnUvloop = LMTPMachineOnUvloop.TestCase
