"""Logging in to the web page: the password check, the rate limiter, CSRF tokens.

Passwords are checked by the delivery server itself (issue 19): Dovecot's authentication
server over its auth-client socket (``[web] authenticator = "dovecot"``), or an IMAP LOGIN
then LOGOUT (``"imap"``: Cyrus, or a Dovecot reached over the network). Nothing is stored;
the password is never logged. A wrong
password and an unreachable server are told apart, so that a user is not told "wrong
password" when Dovecot is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import imaplib
import ipaddress
import re
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable

from ..config import WebConfig
from . import dovecot_auth

PASSWORD_TIMEOUT = 10.0  # seconds for the whole IMAP exchange

# A login is a mail address: one "@", a local part and a domain, no blanks or controls, and
# nothing IMAP would need to quote specially (imaplib quotes, but a user who types a quote or
# a bracket has mistyped). 254 octets at most (RFC 5321 §4.5.3.1.3 less the <>).
_ADDRESS = re.compile(r"[^@\s\"()<>\[\]\\,;:\x00-\x1f\x7f]+@[^@\s\"()<>\[\]\\,;:\x00-\x1f\x7f]+")


def login_address(text: str) -> str | None:
    """The address a user typed, lower-cased; None if it is not a mail address."""
    address = text.strip().lower()
    if len(address.encode("utf-8", "surrogatepass")) > 254 or not _ADDRESS.fullmatch(address):
        return None
    return address


# ---- the password check -------------------------------------------------------------------

class PasswordCheckUnavailable(Exception):
    """The server that checks passwords could not be asked (down, TLS failure, timeout, or it
    said its authentication is unavailable). The message is for the log."""


PasswordCheck = Callable[[str, str], Awaitable[bool]]
"""(address, password) -> whether the server accepted them; raises PasswordCheckUnavailable."""


class ImapPasswordCheck:
    """IMAP LOGIN (AUTHENTICATE PLAIN for a non-ASCII password, which LOGIN cannot carry)
    in a thread, over TLS as [web] imap_tls says."""

    def __init__(self, web: WebConfig, timeout: float = PASSWORD_TIMEOUT,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = web.imap_address.host
        self.port = web.imap_address.port
        self.tls = web.imap_tls
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()

    async def __call__(self, address: str, password: str) -> bool:
        try:
            # The socket timeout bounds each step; wait_for bounds the whole exchange (a
            # server that trickles bytes). A thread that outlives it ends at its own timeout.
            return await asyncio.wait_for(asyncio.to_thread(self._check, address, password),
                                          self.timeout + 1)
        except TimeoutError:
            raise PasswordCheckUnavailable(
                f"IMAP {self.host}:{self.port}: no answer within {self.timeout:g}s") from None

    def _connect(self) -> imaplib.IMAP4:
        if self.tls == "implicit":
            return imaplib.IMAP4_SSL(self.host, self.port, ssl_context=self.ssl_context,
                                     timeout=self.timeout)
        conn = imaplib.IMAP4(self.host, self.port, timeout=self.timeout)
        if self.tls == "starttls":
            try:
                conn.starttls(self.ssl_context)
            except BaseException:
                conn.shutdown()
                raise
        return conn

    def _check(self, address: str, password: str) -> bool:
        where = f"IMAP {self.host}:{self.port}"
        try:
            conn = self._connect()
        except (OSError, imaplib.IMAP4.error) as exc:  # ssl.SSLError is an OSError
            raise PasswordCheckUnavailable(f"{where}: {_reason(exc)}") from None
        try:
            if "LOGINDISABLED" in conn.capabilities:
                raise PasswordCheckUnavailable(
                    f"{where} refuses passwords without TLS (LOGINDISABLED): set [web] "
                    "imap_tls")
            try:
                if address.isascii() and password.isascii():
                    conn.login(address, password)
                else:  # RFC 4616: UTF-8 authcid and password, base64 by imaplib
                    plain = f"\0{address}\0{password}".encode("utf-8", "surrogatepass")
                    conn.authenticate("PLAIN", lambda _challenge: plain)
            except imaplib.IMAP4.abort as exc:  # the connection broke: not the password's fault
                raise PasswordCheckUnavailable(f"{where}: {_reason(exc)}") from None
            except imaplib.IMAP4.error as exc:  # NO or BAD
                # RFC 5530: [UNAVAILABLE] is the server's auth backend, not the password.
                if "[UNAVAILABLE]" in str(exc).upper():
                    raise PasswordCheckUnavailable(f"{where}: {_reason(exc)}") from None
                return False
            return True
        except OSError as exc:
            raise PasswordCheckUnavailable(f"{where}: {_reason(exc)}") from None
        finally:
            # The answer is known; a LOGOUT the server does not take changes nothing.
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                conn.logout()


class DovecotPasswordCheck:
    """Dovecot's authentication server over its auth-client socket (dovecot_auth.py): no
    IMAP server needed (Debian's dovecot-imapd and cyrus-imapd exclude each other, and a
    Dovecot that only delivers over LMTP has none)."""

    def __init__(self, web: WebConfig, timeout: float = PASSWORD_TIMEOUT) -> None:
        self.socket = str(web.dovecot_auth_socket)
        self.timeout = timeout

    async def __call__(self, address: str, password: str) -> bool:
        try:
            verdict = await dovecot_auth.check(self.socket, address, password,
                                               timeout=self.timeout)
        except dovecot_auth.AuthUnavailable as exc:
            raise PasswordCheckUnavailable(f"Dovecot auth: {exc}") from None
        return verdict.ok


def password_checker(web: WebConfig) -> PasswordCheck:
    """The [web] authenticator in use."""
    if web.authenticator == "imap":
        return ImapPasswordCheck(web)
    return DovecotPasswordCheck(web)


def _reason(exc: BaseException) -> str:
    """An exception as one log line; imaplib's carry the server's own words, never ours."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


# ---- the rate limiter ----------------------------------------------------------------------

class RateLimiter:
    """Failed logins per address and per client, in a sliding window.

    In memory: `lmtpfilter web` is one process (one uvicorn worker), so this is all of it; a
    restart forgets, which only gives a guesser one more window. An address is limited to
    `attempts` failures per `window`, a client to four times that (a household or an office
    behind one address mistypes more, a guesser tries many addresses). An IPv6 client
    counts by its /64: whoever holds one address holds the whole prefix. A limited attempt
    is not counted again, so a victim's lock-out ends one window after the guessing stops.
    """

    def __init__(self, attempts: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._next_sweep = 0.0

    @staticmethod
    def client_key(ip: str) -> str:
        try:
            parsed = ipaddress.ip_address(ip)
        except ValueError:
            return f"ip {ip}"
        if isinstance(parsed, ipaddress.IPv6Address):
            if parsed.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is 192.0.2.1
                return f"ip {parsed.ipv4_mapped}"
            return f"ip {ipaddress.IPv6Network((parsed, 64), strict=False)}"
        return f"ip {parsed}"

    def limited(self, address: str, ip: str) -> bool:
        """Whether this attempt must be refused without asking the server."""
        now = self.clock()
        self._sweep(now)
        return (self._count(f"address {address}", now) >= self.attempts
                or self._count(self.client_key(ip), now) >= 4 * self.attempts)

    def failed(self, address: str, ip: str) -> float:
        """Count a failure; returns its time, for undo(). The page counts each attempt as a
        failure before it asks the server: a burst of parallel guesses must not all get in
        while the first answers are still on their way."""
        now = self.clock()
        for key in (f"address {address}", self.client_key(ip)):
            self._failures.setdefault(key, deque()).append(now)
        return now

    def undo(self, address: str, ip: str, when: float) -> None:
        """Take back the failure counted at `when` (the password was right, or never checked)."""
        for key in (f"address {address}", self.client_key(ip)):
            times = self._failures.get(key)
            if times is not None and when in times:
                times.remove(when)

    def succeeded(self, address: str) -> None:
        """A right password clears the address's count (not the client's)."""
        self._failures.pop(f"address {address}", None)

    def _count(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def _sweep(self, now: float) -> None:
        """Forget keys with no failure in the window, at most once per window/10: guessing
        at random addresses must not grow the table without end."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window / 10
        for key in [k for k, times in self._failures.items()
                    if not times or times[-1] <= now - self.window]:
            del self._failures[key]


# ---- CSRF ---------------------------------------------------------------------------------

CSRF_KEY = "csrf"  # in the session and in every form


def csrf_token(session: dict[str, object]) -> str:
    """The session's CSRF token, made at its first form page (the login form's included)."""
    token = session.get(CSRF_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


def csrf_ok(session: dict[str, object], submitted: object) -> bool:
    """Whether a form carried the session's token (compared in constant time)."""
    expected = session.get(CSRF_KEY)
    if not isinstance(expected, str) or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode("utf-8", "surrogatepass"))
