"""Checking a password with Dovecot's authentication server, over its auth-client socket.

This is how Postfix's SASL and Dovecot's own login processes ask: the Dovecot authentication
protocol, version 1.2 (https://doc.dovecot.org/developer_manual/design/auth_protocol/). It
needs no IMAP server: on Debian, dovecot-imapd and cyrus-imapd exclude each other, and a site
that runs Dovecot only for LMTP delivery has no IMAP at all. The page asks once per login
and keeps nothing:

    -> VERSION 1 2, CPID <our pid>
    <- VERSION 1 x, MECH ..., SPID, CUID, COOKIE, DONE
    -> AUTH <id> PLAIN service=lmtpfilter-web secured rip=<client> resp=<base64>
    <- OK <id> user=...  |  FAIL <id> [reason=...]

The handshake and the answer are parsed by :func:`parse_reply` (pure); :func:`check` does the
I/O with a deadline. Dovecot's own per-client delay for failures applies to ``rip``.
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass

SERVICE = "lmtpfilter-web"
MAX_LINE = 16384


class AuthUnavailable(Exception):
    """The authentication server could not be asked (down, refused, spoke nonsense)."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    user: str = ""  # the user name Dovecot answers for a success (its canonical form)


def _escape(value: str) -> str:
    """The protocol's escaping of a parameter value (tabs and newlines would end it)."""
    return (value.replace("\x01", "\x011").replace("\t", "\x01t").replace("\n", "\x01n")
            .replace("\r", "\x01r"))


def handshake(pid: int | None = None) -> bytes:
    return f"VERSION\t1\t2\nCPID\t{pid if pid is not None else os.getpid()}\n".encode()


def auth_request(request_id: int, user: str, password: str, client_ip: str = "") -> bytes:
    """The AUTH line: SASL PLAIN with no authorization identity."""
    response = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
    fields = ["AUTH", str(request_id), "PLAIN", f"service={SERVICE}", "secured"]
    if client_ip:
        fields.append(f"rip={_escape(client_ip)}")
    fields.append(f"resp={response}")
    return ("\t".join(fields) + "\n").encode()


def check_greeting(lines: list[str]) -> None:
    """The server's handshake, up to DONE: major version 1 and PLAIN offered."""
    if not lines or not lines[0].startswith("VERSION\t1\t"):
        raise AuthUnavailable("not a Dovecot auth-client socket")
    if not any(line.split("\t")[:2] == ["MECH", "PLAIN"] for line in lines):
        raise AuthUnavailable("Dovecot does not offer PLAIN (auth_mechanisms)")


def parse_reply(line: str, request_id: int) -> Verdict:
    """OK/FAIL for our request; CONT (a mechanism asking more) or anything else is an error."""
    fields = line.rstrip("\n").split("\t")
    if len(fields) < 2 or fields[1] != str(request_id):
        raise AuthUnavailable("unexpected answer from Dovecot's auth server")
    if fields[0] == "OK":
        user = next((f[5:] for f in fields[2:] if f.startswith("user=")), "")
        return Verdict(True, user)
    if fields[0] == "FAIL":
        return Verdict(False)
    raise AuthUnavailable("unexpected answer from Dovecot's auth server")


async def check(socket_path: str, user: str, password: str, client_ip: str = "",
                timeout: float = 10.0) -> Verdict:
    """Ask Dovecot whether `password` is `user`'s. Raises AuthUnavailable when it cannot."""
    if any(c in user + password for c in "\0\t\n"):
        return Verdict(False)  # no such credentials can exist; do not ask
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(socket_path, limit=MAX_LINE)
            try:
                writer.write(handshake())
                greeting: list[str] = []
                while True:
                    line = (await reader.readline()).decode("utf-8", "replace")
                    if not line:
                        raise AuthUnavailable("Dovecot's auth server closed the connection")
                    if line == "DONE\n":
                        break
                    greeting.append(line.rstrip("\n"))
                    if len(greeting) > 100:
                        raise AuthUnavailable("not a Dovecot auth-client socket")
                check_greeting(greeting)
                writer.write(auth_request(1, user, password, client_ip))
                await writer.drain()
                answer = (await reader.readline()).decode("utf-8", "replace")
                if not answer:
                    raise AuthUnavailable("Dovecot's auth server closed the connection")
                return parse_reply(answer, 1)
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a line over the limit
        raise AuthUnavailable(f"{socket_path}: {exc.__class__.__name__}: {exc}") from None
