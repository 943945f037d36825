"""Just enough ManageSieve (RFC 5804) for a test to play a user: log in, put, activate and
list scripts. Dovecot's and Cyrus's tests both use it."""

from __future__ import annotations

import re
import socket

__all__ = ["ManageSieveSession"]


class ManageSieveSession:
    """A logged-in session; `token` is the base64 SASL PLAIN response (authzid, authcid,
    password: tests/harness/daemons.managesieve_plain_token or Cyrus.sieve_token)."""

    def __init__(self, port: int, token: str, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")
        self._until_ok()
        self.command(f'AUTHENTICATE "PLAIN" "{token}"')

    def _until_ok(self) -> bytes:
        data = b""
        while True:
            line = self.file.readline()
            data += line
            if line.startswith((b"OK", b"NO", b"BYE")) or not line:
                assert line.startswith(b"OK"), data
                return data

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self._until_ok()

    def put(self, name: str, script: str) -> None:
        body = script.encode()
        self.command(f'PUTSCRIPT "{name}" {{{len(body)}+}}\r\n{script}')

    def scripts(self) -> dict[str, str]:
        """Every script with its text; the active one's name ends in " ACTIVE"."""
        listing = self.command("LISTSCRIPTS").decode()
        return {name + active: self.command(f'GETSCRIPT "{name}"').decode()
                for name, active in re.findall(r'^"([^"]+)"( ACTIVE)?\r$', listing, re.M)}

    def close(self) -> None:
        self.sock.sendall(b"LOGOUT\r\n")
        self.sock.close()
