"""Logging in to the web page: the rate limiter, CSRF, the session cookie, the refusal over
plain HTTP, the IMAP check's answers (against a scripted IMAP server; the real Dovecot is in
tests/integration/test_web.py), and errors that never reach the client."""

from __future__ import annotations

import asyncio
import base64
import logging
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmtpfilter.config import from_mapping
from lmtpfilter.web import app as web_app
from lmtpfilter.web.auth import (
    ImapPasswordCheck,
    PasswordCheckUnavailable,
    RateLimiter,
    csrf_ok,
    csrf_token,
    login_address,
)
from tests.lmtp_tools import FakeDownstream
from tests.unit.test_web_access import (
    ADMIN,
    ALICE,
    BOB,
    PASSWORD,
    Site,
    csrf_of,
    log_in,
    make_config,
    open_site,
)


@pytest.fixture
def site(tmp_path: Path, fake: FakeDownstream) -> Iterator[Site]:
    with open_site(tmp_path, fake, login_attempts=2, login_window="10m") as opened:
        yield opened


# ---- pure pieces ----------------------------------------------------------------------------

@pytest.mark.parametrize(("typed", "address"), [
    ("alice@example.org", "alice@example.org"),
    ("  Alice@Example.ORG ", "alice@example.org"),
    ("jörg@bücher.example", "jörg@bücher.example"),
    ("alice", None),
    ("alice@", None),
    ("@example.org", None),
    ("a@b@c", None),
    ("alice smith@example.org", None),
    ('"alice"@example.org', None),
    ("alice@example.org\r\nA1 LOGOUT", None),
    ("alice@example.org\x00", None),
    ("x" * 250 + "@example.org", None),
])
def test_login_address(typed: str, address: str | None) -> None:
    assert login_address(typed) == address


def test_rate_limiter_per_address_and_per_client() -> None:
    now = [0.0]
    limiter = RateLimiter(attempts=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert not limiter.limited("a@x", "192.0.2.1")
        limiter.failed("a@x", "192.0.2.1")
    assert limiter.limited("a@x", "192.0.2.1")
    assert limiter.limited("a@x", "198.51.100.7")  # the address, from anywhere
    assert not limiter.limited("b@x", "192.0.2.1")  # the client has 3 of its 12
    for n in range(9):
        limiter.failed(f"guess{n}@x", "192.0.2.1")
    assert limiter.limited("c@x", "192.0.2.1")  # 12 failures from this client
    assert not limiter.limited("c@x", "192.0.2.2")
    now[0] = 60.5  # the window has passed
    assert not limiter.limited("a@x", "192.0.2.1") and not limiter.limited("c@x", "192.0.2.1")


def test_rate_limiter_window_slides_and_success_clears_the_address() -> None:
    now = [0.0]
    limiter = RateLimiter(attempts=2, window=100, clock=lambda: now[0])
    limiter.failed("a@x", "192.0.2.1")
    now[0] = 50
    limiter.failed("a@x", "192.0.2.1")
    assert limiter.limited("a@x", "192.0.2.1")
    now[0] = 100.5  # the first failure left the window, the second not
    assert not limiter.limited("a@x", "192.0.2.1")
    limiter.failed("a@x", "192.0.2.1")
    assert limiter.limited("a@x", "192.0.2.1")
    limiter.succeeded("a@x")
    assert not limiter.limited("a@x", "192.0.2.1")


def test_rate_limiter_counts_ipv6_by_prefix_and_forgets() -> None:
    now = [0.0]
    limiter = RateLimiter(attempts=1, window=10, clock=lambda: now[0])
    for n in range(4):
        limiter.failed(f"u{n}@x", f"2001:db8:1:2::{n + 1}")
    assert limiter.limited("new@x", "2001:db8:1:2:ffff::1")  # the same /64
    assert not limiter.limited("new@x", "2001:db8:1:3::1")
    limiter.failed("v@x", "::ffff:192.0.2.9")
    assert RateLimiter.client_key("::ffff:192.0.2.9") == RateLimiter.client_key("192.0.2.9")
    now[0] = 30
    limiter.limited("any@x", "192.0.2.1")  # sweeps
    assert limiter._failures == {}


def test_csrf_token_and_check() -> None:
    session: dict[str, object] = {}
    token = csrf_token(session)
    assert len(token) >= 40 and csrf_token(session) == token  # made once per session
    assert csrf_ok(session, token)
    for wrong in ("", token[:-1], token + "x", None, 42, "\udcff"):
        assert not csrf_ok(session, wrong)
    assert not csrf_ok({}, token)  # a session without one accepts nothing


# ---- through the application -----------------------------------------------------------------

def samples(result: str) -> float:
    value = web_app.REGISTRY.get_sample_value("lmtpfilter_web_logins_total",
                                              {"result": result})
    return value or 0.0


async def test_login_sets_a_safe_cookie_over_https(site: Site, tmp_path: Path) -> None:
    secure = make_config(tmp_path, site.downstream.address, allow_plain_http=False)
    before = samples("ok")
    async with site.client(https=True, config=secure) as alice:
        page = await alice.get("/login")
        assert page.status_code == 200 and '<form id="login" method="post"' in page.text
        cookie = page.headers["set-cookie"].lower()
        assert cookie.startswith("__host-lmtpfilter=")
        assert all(flag in cookie for flag in ("httponly", "samesite=strict", "secure",
                                               "path=/"))
        done = await alice.post("/login", data={"address": " Alice@Example.org",
                                                "password": PASSWORD,
                                                "csrf": csrf_of(page.text)})
        assert done.status_code == 303 and done.headers["location"] == "/"
        assert "httponly" in done.headers["set-cookie"].lower()
        listing = await alice.get("/")
        assert listing.status_code == 200 and "alice@example.org" in listing.text
        assert (await alice.get("/login")).status_code == 303  # logged in already
    assert site.checked == [(ALICE, PASSWORD)]
    assert samples("ok") == before + 1


async def test_plain_http_is_refused_without_a_cookie(site: Site, tmp_path: Path) -> None:
    secure = make_config(tmp_path, site.downstream.address, allow_plain_http=False)
    async with site.client(config=secure) as client:
        page = await client.get("/login")
        assert "must be served over HTTPS" in page.text and 'class="error"' in page.text
        assert 'id="login"' not in page.text and "set-cookie" not in page.headers
        posted = await client.post("/login", data={"address": ALICE, "password": PASSWORD})
        assert posted.status_code == 403 and "must be served over HTTPS" in posted.text
        assert "set-cookie" not in posted.headers
    assert site.checked == []  # the password went nowhere


async def test_plain_http_allowed_for_localhost(site: Site) -> None:
    async with site.client() as client:
        page = await client.get("/login")
        cookie = page.headers["set-cookie"].lower()
        assert cookie.startswith("lmtpfilter=") and "secure" not in cookie
        assert "httponly" in cookie and "samesite=strict" in cookie


async def test_wrong_password_and_not_an_address(site: Site,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lmtpfilter.web")
    before = samples("failed")
    async with site.client() as client:
        wrong = await log_in(client, ALICE, "guess")
        assert wrong.status_code == 200 and "wrong address or password" in wrong.text
        assert 'value="alice@example.org"' in wrong.text  # typed again for the user
        assert (await client.get("/")).status_code == 303
        no_address = await log_in(client, "alice", "guess")
        assert "mail address" in no_address.text
        empty = await log_in(client, BOB, "")
        assert "wrong address or password" in empty.text
    assert site.checked == [(ALICE, "guess")]  # neither "alice" nor an empty password asked
    assert samples("failed") == before + 2
    assert "web login failed alice@example.org from 192.0.2.10" in caplog.text
    assert "guess" not in caplog.text


async def test_too_many_attempts(site: Site) -> None:
    before = samples("limited")
    async with site.client() as client:
        for _ in range(2):
            assert "wrong address or password" in (await log_in(client, ALICE, "guess")).text
        limited = await log_in(client, ALICE, PASSWORD)
        assert limited.status_code == 429 and "too many attempts, wait" in limited.text
        assert len(site.checked) == 2  # not even asked
        # Per client: 4 x 2 failures from one address, whatever the addresses.
        for n in range(6):
            await log_in(client, f"user{n}@example.org", "guess")
        assert (await log_in(client, BOB, PASSWORD)).status_code == 429
    async with site.client(ip="198.51.100.20") as elsewhere:
        assert (await log_in(elsewhere, BOB, PASSWORD)).status_code == 303
    async with site.client(ip="198.51.100.20") as elsewhere:
        assert (await log_in(elsewhere, ALICE, PASSWORD)).status_code == 429  # her address
    site.now[0] += 601  # the window (10m) has passed
    async with site.client() as client:
        assert (await log_in(client, ALICE, PASSWORD)).status_code == 303
    assert samples("limited") == before + 3


async def test_parallel_guesses_are_counted_before_the_answers(site: Site) -> None:
    answer = asyncio.Event()
    asked: list[str] = []

    async def slow(address: str, password: str) -> bool:
        asked.append(password)
        await answer.wait()
        return False

    app = web_app.create_app(site.config, site.store, password_check=slow, key=b"k" * 32)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://web.test") as client:
        csrf = csrf_of((await client.get("/login")).text)
        guesses = [asyncio.create_task(client.post("/login", data={
            "address": ALICE, "password": f"guess{n}", "csrf": csrf})) for n in range(6)]
        while len(asked) < 2 or sum(g.done() for g in guesses) < 4:
            await asyncio.sleep(0.01)
        answer.set()
        answers = await asyncio.gather(*guesses)
    assert len(asked) == 2  # [web] login_attempts = 2 in this site
    assert sorted(a.status_code for a in answers) == [200, 200, 429, 429, 429, 429]


async def test_password_server_unavailable(site: Site, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    async def down(address: str, password: str) -> bool:
        raise PasswordCheckUnavailable("IMAP 127.0.0.1:1: ConnectionRefusedError")

    app = web_app.create_app(site.config, site.store, password_check=down, key=b"k" * 32)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://web.test") as client:
        for _ in range(3):  # not counted as failures: no lock-out when the server is down
            answer = await log_in(client, ALICE, "s3cret-pw")
            assert answer.status_code == 503
            assert "cannot check passwords right now, try later" in answer.text
    assert "ConnectionRefusedError" in caplog.text and "s3cret-pw" not in caplog.text


async def test_every_post_needs_the_sessions_csrf_token(site: Site) -> None:
    qid = site.add([ALICE], "mine")
    async with site.client() as other:
        foreign = csrf_of((await other.get("/login")).text)  # another session's token
    async with site.client() as alice:
        bare = await alice.post("/login", data={"address": ALICE, "password": PASSWORD})
        assert bare.status_code == 403 and '<p class="error">' in bare.text
        await log_in(alice, ALICE)
        for path, data in ((f"/m/{qid}/release", {}), (f"/m/{qid}/delete", {}),
                           ("/bulk", {"id": qid, "action": "delete"}),
                           ("/settings", {"junk_destiny": "inbox", "tag2_level": "6"}),
                           ("/logout", {})):
            for csrf in (None, "", foreign):
                sent = dict(data, **({} if csrf is None else {"csrf": csrf}))
                refused = await alice.post(path, data=sent)
                assert refused.status_code == 403, (path, csrf)
                assert '<p class="error">' in refused.text
        assert (await alice.get("/")).status_code == 200  # still logged in
    assert site.downstream.transactions == [] and site.record(qid).expired_at is None


async def test_session_lifetime_and_logout(site: Site) -> None:
    async with site.client() as alice:
        await log_in(alice, ALICE)
        page = await alice.get("/")
        assert page.status_code == 200
        site.wall[0] += site.config.web.session_lifetime + 1
        expired = await alice.get("/")
        assert expired.status_code == 303 and expired.headers["location"] == "/login"
        await log_in(alice, ALICE)
        page = await alice.get("/")
        out = await alice.post("/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert (await alice.get("/")).status_code == 303
        # The old token went with the session.
        assert (await alice.post("/logout", data={"csrf": csrf_of(page.text)})).status_code \
            == 403


async def test_a_tampered_cookie_is_no_session(site: Site) -> None:
    async with site.client() as alice:
        await log_in(alice, ALICE)
        value = alice.cookies["lmtpfilter"]
        payload, rest = value.split(".", 1)
        forged = base64.b64encode(base64.b64decode(payload + "==").replace(
            ALICE.encode(), ADMIN.encode())).decode()
        alice.cookies.set("lmtpfilter", f"{forged}.{rest}", domain="web.test")
        assert (await alice.get("/")).status_code == 303


async def test_an_unexpected_error_is_a_generic_page(site: Site, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("database at /var/secret/path said no")

    monkeypatch.setattr(web_app, "listing", broken)
    async with site.client() as alice:
        await log_in(alice, ALICE)
        page = await alice.get("/")
    assert page.status_code == 500
    assert "/var/secret" not in page.text and "Traceback" not in page.text
    assert "RuntimeError" not in page.text and "went wrong on our side" in page.text
    assert "/var/secret/path" in caplog.text  # the details are in the log


async def test_unknown_pages_and_methods(site: Site) -> None:
    async with site.client() as client:
        missing = await client.get("/no/such/page")
        assert missing.status_code == 404 and 'class="error"' in missing.text
        assert (await client.get("/bulk")).status_code == 405
        css = await client.get("/static/style.css")
        assert css.status_code == 200 and "no-store" not in css.headers.get("cache-control", "")
        for page in (missing, css):
            assert page.headers["x-frame-options"] == "DENY"
            assert page.headers["referrer-policy"] == "no-referrer"


# ---- the IMAP check, against a scripted server ------------------------------------------------

@dataclass
class ScriptedImap:
    """An IMAP server that accepts `password` and answers as `mode` says."""

    mode: str = "ok"  # ok | unavailable | logindisabled | hangup
    password: str = "secret"
    commands: list[str] = field(default_factory=list)
    server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> ScriptedImap:
        script = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                if script.mode == "hangup":
                    return
                self.wfile.write(b"* OK scripted ready\r\n")
                while line := self.rfile.readline():
                    tag, _, rest = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
                    script.commands.append(rest)
                    verb = rest.split(" ", 1)[0].upper()
                    if verb == "CAPABILITY":
                        extra = " LOGINDISABLED" if script.mode == "logindisabled" else ""
                        self.reply(f"* CAPABILITY IMAP4rev1 AUTH=PLAIN{extra}\r\n{tag} OK done")
                    elif verb in ("LOGIN", "AUTHENTICATE"):
                        self.reply(f"{tag} {self.login(rest)}")
                    elif verb == "LOGOUT":
                        self.reply(f"* BYE\r\n{tag} OK bye")
                        return
                    else:
                        self.reply(f"{tag} BAD unknown")

            def login(self, rest: str) -> str:
                if rest.upper().startswith("AUTHENTICATE"):
                    self.reply("+ ")
                    answer = base64.b64decode(self.rfile.readline().strip())
                    script.commands.append(answer.decode("utf-8", "replace"))
                    given = answer.split(b"\0")[2].decode("utf-8")
                else:
                    given = rest.split(" ", 2)[2].strip('"')
                if script.mode == "unavailable":
                    return "NO [UNAVAILABLE] Temporary authentication failure."
                if given == script.password:
                    return "OK Logged in"
                return "NO [AUTHENTICATIONFAILED] Authentication failed."

            def reply(self, text: str) -> None:
                self.wfile.write(text.encode() + b"\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def imap_check(port: int, timeout: float = 5.0) -> ImapPasswordCheck:
    config = from_mapping({"web": {"imap_address": f"127.0.0.1:{port}"}})
    return ImapPasswordCheck(config.web, timeout=timeout)


@pytest.fixture
def imap() -> Iterator[ScriptedImap]:
    server = ScriptedImap().start()
    yield server
    server.stop()


async def test_imap_login(imap: ScriptedImap) -> None:
    check = imap_check(imap.port)
    assert await check(ALICE, "secret") is True
    assert await check(ALICE, 'sec"ret\\') is False
    assert imap.commands[-1] == "LOGOUT"  # logged out after the answer
    imap.password = "pässwörd"  # LOGIN carries ASCII only: AUTHENTICATE PLAIN, in UTF-8
    assert await check(ALICE, "pässwörd") is True
    assert f"\0{ALICE}\0pässwörd" in imap.commands


@pytest.mark.parametrize("mode", ["unavailable", "logindisabled", "hangup"])
async def test_imap_trouble_is_not_a_wrong_password(mode: str) -> None:
    server = ScriptedImap(mode=mode).start()
    try:
        with pytest.raises(PasswordCheckUnavailable):
            await imap_check(server.port)(ALICE, "secret")
    finally:
        server.stop()


async def test_imap_down_or_silent() -> None:
    with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as silent:
        port = int(silent.server_address[1])  # listening, never answering (no accept loop)
        with pytest.raises(PasswordCheckUnavailable, match=r"no answer|timed out"):
            await imap_check(port, timeout=0.5)(ALICE, "secret")
    with pytest.raises(PasswordCheckUnavailable, match="ConnectionRefused"):
        await imap_check(port)(ALICE, "secret")
