"""Small LMTP peers for tests: a scriptable fake downstream server and a raw client.

The fake server exists for fault paths the real Dovecot will not produce on demand (a 452 for
the 2nd recipient, a close right after DATA, a server that never answers). The raw client
checks the one thing smtplib cannot: exactly one reply per accepted recipient after DATA, and
nothing more (it sends QUIT afterwards and expects 221 as the very next reply).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from lmtpfilter.config import Config, from_mapping
from lmtpfilter.options import Address
from lmtpfilter.pipeline import Pipeline, Stage
from lmtpfilter.server import FilterServer

ReplyFor = Callable[[str, int], str]  # (recipient, index) -> reply line


@dataclass
class Captured:
    sender: str
    recipients: list[str]  # accepted ones
    data: bytes  # dot-unstuffed, as the server received it
    mail_line: str
    rcpt_lines: list[str] = field(default_factory=list)  # every RCPT command, as sent


@dataclass
class FakeDownstream:
    """An LMTP server whose replies are set by the test."""

    rcpt_reply: ReplyFor = lambda rcpt, i: "250 2.1.5 Ok"
    delivery_reply: ReplyFor = lambda rcpt, i: f"250 2.0.0 <{rcpt}> Saved"
    after_data: str = "reply"  # reply | close | hang | close-after-first
    delay: float = 0.0  # seconds before the post-DATA replies
    capabilities: Sequence[str] = ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE")
    transactions: list[Captured] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    unix_path: str = ""  # listen on this unix socket instead of TCP
    _server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self.unix_path:
            self._server = await asyncio.start_unix_server(
                self._session, self.unix_path, limit=64 * 1024 * 1024)
            return
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0,
                                                  limit=64 * 1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(*lines: str) -> None:
            writer.write(b"".join(line.encode() + b"\r\n" for line in lines))

        say("220 fake.example LMTP")
        sender, mail_line = "", ""
        rcpts: list[str] = []
        rcpt_lines: list[str] = []
        while True:
            line = (await reader.readuntil(b"\r\n")).decode("utf-8").rstrip("\r\n")
            verb = line.split(" ")[0].split(":")[0].upper()
            if verb == "LHLO":
                caps = ["fake.example", *self.capabilities]
                say(*[f"250-{c}" for c in caps[:-1]], f"250 {caps[-1]}")
            elif verb == "MAIL":
                mail_line = line
                sender = line[line.index("<") + 1: line.index(">")]
                rcpts, rcpt_lines = [], []
                say("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpt = line[line.index("<") + 1: line.index(">")]
                rcpt_lines.append(line)
                reply = self.rcpt_reply(rcpt, len(rcpts))
                rcpts.append(rcpt) if reply.startswith("2") else None
                say(reply)
            elif verb == "DATA":
                if not rcpts:
                    say("503 5.5.1 No valid recipients")
                    continue
                say("354 go ahead")
                raw = await reader.readuntil(b"\r\n.\r\n")
                data = raw[:-3]
                data = data[1:] if data.startswith(b".") else data
                data = data.replace(b"\r\n.", b"\r\n")
                self.transactions.append(Captured(sender, list(rcpts), data, mail_line,
                                                  list(rcpt_lines)))
                await writer.drain()
                if self.after_data == "close":
                    return
                if self.after_data == "hang":
                    await asyncio.sleep(3600)
                if self.delay:
                    await asyncio.sleep(self.delay)
                for i, rcpt in enumerate(rcpts):
                    say(self.delivery_reply(rcpt, i))
                    if self.after_data == "close-after-first":
                        await writer.drain()
                        return
            elif verb == "RSET":
                rcpts = []
                say("250 2.0.0 Ok")
            elif verb == "QUIT":
                say("221 2.0.0 Bye")
                await writer.drain()
                return
            else:
                say("500 5.5.2 what?")
            await writer.drain()


@dataclass
class SessionResult:
    rcpt_replies: list[str]
    data_replies: list[str]  # after the final dot, one per accepted recipient
    final: str  # the reply after those (to QUIT): must be the 221, proving no extra reply
    lhlo: str = ""  # the LHLO reply, lines joined by newlines


async def read_reply(reader: asyncio.StreamReader, timeout: float) -> str:
    """One reply (multi-line joined by newlines); "EOF" if the server closed instead."""
    lines = []
    while True:
        try:
            line = (await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)).decode()
        except asyncio.IncompleteReadError:
            return "EOF"
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return "\n".join(lines)


async def lmtp_session(
    address: str, sender: str, recipients: Sequence[str], message: bytes, *,
    pipelined: bool = True, timeout: float = 30.0, stuff: bool = True,
    mail_params: str = "", rcpt_params: Sequence[str] = (),
) -> SessionResult:
    """One LMTP transaction, written the way Postfix writes it (pipelined), then QUIT.
    mail_params: appended to MAIL FROM (" SMTPUTF8 RET=HDRS"); rcpt_params: one string per
    recipient, appended to its RCPT TO."""
    if address.startswith("unix:"):
        reader, writer = await asyncio.open_unix_connection(address[5:])
    else:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
    try:
        assert (await read_reply(reader, timeout)).startswith("220")
        writer.write(b"LHLO client.example\r\n")
        lhlo = await read_reply(reader, timeout)
        assert lhlo.startswith("250"), lhlo
        params = list(rcpt_params) or [""] * len(recipients)
        commands = [f"MAIL FROM:<{sender}>{mail_params}".encode()] + [
            f"RCPT TO:<{r}>{p}".encode() for r, p in zip(recipients, params, strict=True)
        ] + [b"DATA"]
        body = message
        if stuff:
            body = (b"." + body if body.startswith(b".") else body).replace(b"\r\n.", b"\r\n..")
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"
        replies: list[str] = []
        if pipelined:
            writer.write(b"".join(c + b"\r\n" for c in commands))
            for _ in commands:
                replies.append(await read_reply(reader, timeout))
        else:
            for c in commands:
                writer.write(c + b"\r\n")
                replies.append(await read_reply(reader, timeout))
        rcpt_replies = replies[1:-1]
        data_replies: list[str] = []
        if replies[-1].startswith("354"):
            writer.write(body + b".\r\nQUIT\r\n")  # QUIT pipelined right after the dot
            accepted = sum(1 for r in rcpt_replies if r.startswith("2"))
            for _ in range(accepted):
                reply = await read_reply(reader, timeout)
                data_replies.append(reply)
                if reply == "EOF" or reply.startswith("421"):
                    break  # the server is gone: Postfix defers whatever was not answered
        else:
            writer.write(b"QUIT\r\n")
        final = await read_reply(reader, timeout)
        return SessionResult(rcpt_replies, data_replies, final, lhlo)
    finally:
        writer.close()


def make_config(downstream_address: str, **sections: dict[str, object]) -> Config:
    data: dict[str, dict[str, object]] = {
        "server": {"listen": ["127.0.0.1:1"], "hostname": "filter.test"},
        "downstream": {"address": downstream_address, "timeout": "5s", "connect_timeout": "2s"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return from_mapping(data)


@contextlib.asynccontextmanager
async def running_filter(config: Config, stages: Sequence[Stage] = ()
                         ) -> AsyncIterator[tuple[str, FilterServer, Pipeline]]:
    """The filter in this event loop, on a free loopback port; yields its address."""
    from lmtpfilter.app import build_pipeline, extensions_for
    from lmtpfilter.server import bind

    pipeline = build_pipeline(config, stages)
    server = FilterServer(config, pipeline.process,
                          announce=extensions_for(pipeline.downstream))
    await pipeline.downstream.probe()
    sock = bind(Address(host="127.0.0.1", port=0), 0o660)
    port = sock.getsockname()[1]
    await server.start([sock])
    try:
        yield f"127.0.0.1:{port}", server, pipeline
    finally:
        await server.shutdown(1.0)
        await pipeline.downstream.close()
