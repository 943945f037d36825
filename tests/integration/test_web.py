"""`lmtpfilter web` as a process, driven over HTTP: the real Dovecot checks the passwords
(its authentication server, over its auth-client socket) and takes the released mail, the
real filter with clamd and spamd made the quarantine, and the page runs from the same config
file as the filter, as systemd runs it.
(The browser's view of the same page is tests/integration/test_web_browser.py.)"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import USER_PASSWORD, Dovecot, free_port
from tests.harness.scanners import EICAR, GTUBE, Clamd, Spamd
from tests.integration.test_scanning import message
from tests.lmtp_tools import lmtp_session
from tests.unit.test_web_access import csrf_of

pytestmark = pytest.mark.integration

U1, U2, ADMIN = "user1@example.org", "user2@example.org", "user3@example.org"
QUARANTINED = re.compile(r"quarantined as ([A-Za-z0-9_-]{22})$")


@dataclass
class Page:
    """The filter, `lmtpfilter web` beside it, and the quarantined messages."""

    filter: FilterProcess
    web: subprocess.Popen[bytes]
    url: str
    metrics_url: str
    log_path: Path
    spam1: str  # user1's spam
    spam2: str  # user2's spam
    virus: str  # user1's virus

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def db(self, query: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.filter.workdir / "lmtpfilter.db") as conn:
            return conn.execute(query).fetchall()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lmtpfilter web exited: {log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"lmtpfilter web not listening: {log.read_text(errors='replace')}")


async def quarantine(proc: FilterProcess, rcpt: str, body: bytes) -> str:
    result = await lmtp_session(proc.listen, "sender@example.net", [rcpt], body)
    found = QUARANTINED.search(result.data_replies[0])
    assert found, (result.data_replies, proc.log()[-2000:])
    return found.group(1)


@pytest.fixture(scope="module")
def page(filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
               clamd: Clamd, spamd: Spamd) -> Iterator[Page]:
    workdir = new_workdir(daemon_base, "web")
    key = workdir / "web.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    listen = f"127.0.0.1:{free_port()}"
    web_port, metrics_port = free_port(), free_port()
    text = filter_config(
        f"127.0.0.1:{dovecot.lmtp_port}", [listen],
        clamav=f'enabled = true\naddress = "unix:{clamd.socket_path}"',
        spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"',
        web=(f'listen = "127.0.0.1:{web_port}"\nsecret_key_file = "{key}"\n'
             f'dovecot_auth_socket = "{dovecot.auth_socket}"\nadmins = ["{ADMIN}"]\n'
             f'allow_plain_http = true\nmetrics_listen = "127.0.0.1:{metrics_port}"'))
    proc = filter_process(workdir, text, listen).start()

    async def send() -> tuple[str, str, str]:
        return (await quarantine(proc, U1, message("cheap watches", GTUBE.decode() + "\n")),
                await quarantine(proc, U2, message("user2's own spam", GTUBE.decode() + "\n")),
                await quarantine(proc, U1, message("invoice", attachment=("invoice.com",
                                                                          EICAR))))
    spam1, spam2, virus = asyncio.run(send())
    log_path = workdir / "web.log"
    with log_path.open("ab") as log:
        web = subprocess.Popen([sys.executable, "-m", "lmtpfilter", "web", "-c",
                                str(proc.config_path)], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    try:
        wait_for_port(web_port, web, log_path)
        yield Page(proc, web, f"http://127.0.0.1:{web_port}",
                   f"http://127.0.0.1:{metrics_port}/metrics", log_path, spam1, spam2, virus)
    finally:
        if web.poll() is None:
            web.kill()
            web.wait()


async def log_in(client: httpx.AsyncClient, address: str, password: str = USER_PASSWORD
                 ) -> httpx.Response:
    form = await client.get("/login")
    return await client.post("/login", data={"address": address, "password": password,
                                             "csrf": csrf_of(form.text)})


def client(page: Page) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=page.url, timeout=30)


async def test_log_in_with_the_mail_password(page: Page) -> None:
    async with client(page) as c:
        wrong = await log_in(c, U1, "not the password")
        assert wrong.status_code == 200 and "wrong address or password" in wrong.text
        ok = await log_in(c, "User1@Example.org")
        assert ok.status_code == 303, ok.text
        assert "user1@example.org" in (await c.get("/")).text
    log = page.log()
    assert "web login failed user1@example.org from 127.0.0.1" in log
    assert "web login ok user1@example.org from 127.0.0.1" in log
    assert USER_PASSWORD not in log and "not the password" not in log


async def test_a_user_sees_and_releases_her_own_mail(page: Page, dovecot: Dovecot) -> None:
    before = len(dovecot.messages(U1))
    async with client(page) as c:
        await log_in(c, U1)
        listing = (await c.get("/")).text
        assert f'data-id="{page.spam1}"' in listing and f'data-id="{page.virus}"' in listing
        assert page.spam2 not in listing and "user2&#39;s own spam" not in listing
        detail = await c.get(f"/m/{page.spam1}")
        assert detail.status_code == 200
        preview = detail.text.split('<pre id="preview">')[1].split("</pre>")[0]
        assert "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X" in preview
        assert f"X-Quarantine-ID: &lt;{page.spam1}&gt;" in detail.text
        assert (await c.get(f"/m/{page.spam2}")).status_code == 404  # user2's
        csrf = csrf_of(detail.text)
        assert (await c.post(f"/m/{page.spam1}/release")).status_code == 403  # no token
        released = await c.post(f"/m/{page.spam1}/release", data={"csrf": csrf})
        assert released.status_code == 200 and 'id="result"' in released.text
        assert re.search(r"user1@example.org: <code>250 2\.0\.0", released.text)
        again = await c.post(f"/m/{page.spam1}/release", data={"csrf": csrf})
        assert again.status_code == 409 and "already released" in again.text
        assert (await c.post(f"/m/{page.spam2}/release", data={"csrf": csrf})).status_code \
            == 404
    delivered = dovecot.wait_for_messages(U1, before + 1)
    assert sum(f"X-Quarantine-ID: <{page.spam1}>".encode() in m for m in delivered) == 1
    assert page.db(f"select released_by from quarantine where id = '{page.spam1}'") == [
        ("web user1@example.org",)]
    assert page.db(f"select released_at from quarantine where id = '{page.spam2}'") == [(None,)]


async def test_a_virus_is_released_by_an_admin_only(page: Page, dovecot: Dovecot) -> None:
    before = len(dovecot.messages(U1))
    async with client(page) as c:
        await log_in(c, U1)
        detail = await c.get(f"/m/{page.virus}")
        assert detail.status_code == 200 and 'id="release"' not in detail.text
        refused = await c.post(f"/m/{page.virus}/release", data={"csrf": csrf_of(detail.text)})
        assert refused.status_code == 403 and "administrator" in refused.text
    assert page.db(f"select released_at from quarantine where id = '{page.virus}'") == [(None,)]
    async with client(page) as admin:
        await log_in(admin, ADMIN)
        found = await admin.get("/", params={"q": "invoice"})
        assert f'data-id="{page.virus}"' in found.text and page.spam2 not in found.text
        detail = await admin.get(f"/m/{page.virus}")
        released = await admin.post(f"/m/{page.virus}/release",
                                    data={"csrf": csrf_of(detail.text)})
        assert released.status_code == 200, released.text
    delivered = dovecot.wait_for_messages(U1, before + 1)
    assert any(f"X-Quarantine-ID: <{page.virus}>".encode() in m for m in delivered)
    assert page.db(f"select released_by from quarantine where id = '{page.virus}'") == [
        (f"web {ADMIN}",)]


async def test_metrics_then_sigterm(page: Page) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        metrics = (await c.get(page.metrics_url)).text
    ok = re.search(r'^lmtpfilter_web_logins_total\{result="ok"\} (\S+)$', metrics, re.M)
    assert ok and float(ok.group(1)) >= 1
    assert re.search(r'^lmtpfilter_web_releases_total\{result="delivered",via="page"\} [1-9]',
                     metrics, re.M), metrics
    assert "lmtpfilter_messages_total" not in metrics  # the filter's counters are not ours
    page.web.send_signal(signal.SIGTERM)
    assert page.web.wait(15) == 0
    assert "web page stopped" in page.log() and "Traceback" not in page.log()


def run_web(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmtpfilter", "web", "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_refused_starts_are_one_line(page: Page, tmp_path: Path) -> None:
    text = page.filter.config_path.read_text()
    key = re.search(r'secret_key_file = "([^"]+)"', text)
    assert key
    for name, body, says in (
            ("unset", text.replace(key.group(0), ""), "[web] secret_key_file: not set"),
            ("missing", text.replace(key.group(1), str(tmp_path / "nokey")), "does not exist"),
            ("short", text.replace(key.group(1), str(tmp_path / "short")), "fewer than 32")):
        (tmp_path / "short").write_bytes(b"x" * 8)
        (tmp_path / "short").chmod(0o600)
        config = tmp_path / f"{name}.toml"
        config.write_text(body)
        result = run_web(config)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
    readable = tmp_path / "readable"
    readable.write_bytes(os.urandom(32))
    readable.chmod(0o644)
    config = tmp_path / "readable.toml"
    config.write_text(text.replace(key.group(1), str(readable)))
    result = run_web(config)
    assert result.returncode == 2 and "chmod 600" in result.stderr


# ---- the IMAP password check, against a real IMAP server ------------------------------------


async def test_imap_password_check_against_cyrus(daemon_base: Path) -> None:
    """[web] authenticator = "imap" (for Cyrus): Cyrus's imapd accepts the right password,
    refuses a wrong one (and a UTF-8 one, which goes as AUTHENTICATE PLAIN); an IMAP server
    that is not there is "unavailable", not "wrong password"."""
    from lmtpfilter.config import from_mapping
    from lmtpfilter.web.auth import PasswordCheckUnavailable, password_checker
    from tests.harness.cyrus import USER_PASSWORD as CYRUS_PASSWORD
    from tests.harness.cyrus import cyrus_installed, start_cyrus

    if not cyrus_installed():
        if os.environ.get("LMTPFILTER_REQUIRE_DAEMONS") == "1":
            pytest.fail("Cyrus (cyrus-imapd, sasl2-bin) is not installed")
        pytest.skip("Cyrus is not installed")
    cyrus = start_cyrus(daemon_base / "cyw", ["alice@example.org"])
    try:
        web = from_mapping({"web": {"authenticator": "imap",
                                    "imap_address": f"127.0.0.1:{cyrus.imap_port}"}}).web
        check = password_checker(web)
        assert await check("alice@example.org", CYRUS_PASSWORD)
        assert not await check("alice@example.org", "wrong")
        assert not await check("alice@example.org", "pässwörd")
        assert not await check("nobody@example.org", CYRUS_PASSWORD)
    finally:
        cyrus.stop()
    down = from_mapping({"web": {"authenticator": "imap",
                                 "imap_address": f"127.0.0.1:{free_port()}"}}).web
    with pytest.raises(PasswordCheckUnavailable):
        await password_checker(down)("alice@example.org", CYRUS_PASSWORD)


async def test_dovecot_password_check(dovecot: Dovecot) -> None:
    """[web] authenticator = "dovecot": Dovecot's authentication server over its
    auth-client socket, as Dovecot's own login processes ask it."""
    from lmtpfilter.config import from_mapping
    from lmtpfilter.web.auth import PasswordCheckUnavailable, password_checker

    web = from_mapping({"web": {"dovecot_auth_socket": str(dovecot.auth_socket)}}).web
    check = password_checker(web)
    assert await check(U1, USER_PASSWORD)
    assert not await check(U1, "wrong")
    assert not await check(U1, "tab\there")  # refused without asking: no such password
    assert not await check("nobody@example.org", USER_PASSWORD)
    missing = from_mapping({"web": {"dovecot_auth_socket": "/nonexistent/auth"}}).web
    with pytest.raises(PasswordCheckUnavailable):
        await password_checker(missing)(U1, USER_PASSWORD)
