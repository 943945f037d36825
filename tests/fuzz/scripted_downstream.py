"""A downstream LMTP server that answers whatever the fuzzer scripts: normal replies, garbage,
421, nothing at all, too few or too many replies, a dropped connection.

The real Dovecot never does most of this on demand, hence a fake (tests/lmtp_tools.py has the
polite one). It records, per message, which recipients it answered 2xx after the data: the
invariant "no 2xx to the client unless the downstream said 2xx" is checked against that.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

MARKER = re.compile(rb"X-Fuzz-Id: (\d+)")
_RCPT = re.compile(r"TO:<(.*)>(?: |$)", re.IGNORECASE)


@dataclass
class Script:
    """How the downstream behaves for the connections and transactions that follow."""

    greeting: str = "normal"  # normal | 421 | garbage | close
    rcpt_replies: tuple[str, ...] = ("250 2.1.5 Ok",)  # cycled by recipient index
    data_replies: tuple[str, ...] = ("250 2.0.0 Saved",)  # cycled by recipient index
    after_data: str = "reply"  # reply | close | hang | fewer | more | close-mid | mail-421


@dataclass
class ScriptedDownstream:
    script: Script = field(default_factory=Script)
    port: int = 0
    accepted: set[tuple[int, str]] = field(default_factory=set)  # (marker, recipient) said 2xx
    received: set[int] = field(default_factory=set)  # markers of every message whose data came
    _server: asyncio.AbstractServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0,
                                                  limit=64 * 1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            pass  # cancelled by stop(): ending quietly keeps asyncio's stream callback quiet
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                        ) -> None:
        # The script is read afresh at every command: a new one also applies to the
        # connection the filter keeps open between messages.
        script = self.script
        def say(*lines: str | bytes) -> None:
            writer.write(b"".join((line if isinstance(line, bytes) else line.encode())
                                  + b"\r\n" for line in lines))

        if script.greeting == "close":
            return
        if script.greeting == "421":
            say("421 4.3.2 busy")
            await writer.drain()
            return
        say("220 down.example LMTP" if script.greeting == "normal" else "hello there")
        rcpts: list[str] = []
        while True:
            line = (await reader.readuntil(b"\n")).decode("utf-8", "replace").rstrip("\r\n")
            script = self.script
            verb = line.split(" ")[0].split(":")[0].upper()
            if verb == "LHLO":
                say("250-down.example", "250-PIPELINING", "250-ENHANCEDSTATUSCODES",
                    "250-8BITMIME", "250-SMTPUTF8", "250 SIZE")
            elif verb == "MAIL":
                rcpts = []
                if script.after_data == "mail-421":
                    say("421 4.3.2 going away")
                    await writer.drain()
                    return
                say("250 2.1.0 Ok")
            elif verb == "RCPT":
                m = _RCPT.search(line)
                reply = script.rcpt_replies[len(rcpts) % len(script.rcpt_replies)]
                # Only recipients accepted here take part in the data phase (RFC 2033 §4.2).
                if reply.startswith("2"):
                    rcpts.append(m.group(1) if m else line)
                say(reply)
            elif verb == "DATA":
                if not rcpts:
                    say("503 5.5.1 No valid recipients")
                    await writer.drain()
                    continue
                say("354 go ahead")
                await writer.drain()
                raw = await reader.readuntil(b"\r\n.\r\n")
                found = MARKER.search(raw)
                marker = int(found.group(1)) if found else -1
                self.received.add(marker)
                if not await self._after_data(script, say, writer, rcpts, marker):
                    return
                rcpts = []
            elif verb == "RSET":
                rcpts = []
                say("250 2.0.0 Ok")
            elif verb == "NOOP":
                say("250 2.0.0 Ok")
            elif verb == "QUIT":
                say("221 2.0.0 Bye")
                await writer.drain()
                return
            else:
                say("500 5.5.2 what?")
            await writer.drain()

    async def _after_data(self, script: Script, say: Callable[..., None],
                          writer: asyncio.StreamWriter, rcpts: list[str], marker: int) -> bool:
        """The replies after the final dot; False when the connection is to be dropped."""
        mode = script.after_data
        if mode == "close":
            return False
        if mode == "hang":
            await asyncio.sleep(3600)  # the filter's downstream timeout must fire
        count = len(rcpts)
        if mode == "fewer":
            count = max(0, count - 1)
        elif mode == "close-mid":
            count = count // 2
        for i in range(count):
            reply = script.data_replies[i % len(script.data_replies)]
            if reply.startswith("2"):
                self.accepted.add((marker, rcpts[i]))
            say(reply)
            await writer.drain()
        if mode == "more":
            say("250 2.0.0 one too many", "250 2.0.0 and another")
        elif mode == "fewer":
            await writer.drain()
            await asyncio.sleep(3600)  # the missing reply never comes: a timeout again
        elif mode == "close-mid":
            return False
        await writer.drain()
        return True
