"""The quarantine self-service page in a real browser (Debian's chromium through Selenium),
against real daemons: Dovecot checks the passwords (IMAP LOGIN) and takes the released mail,
the filter process (with clamd and spamd) makes the quarantine, and `lmtpfilter web` runs as
its own process with the same config file, as systemd/lmtpfilter-web.service runs it.

Each test sends its own messages, so the tests do not depend on their order. Screenshots of
the main pages go to a temporary directory, and to docs/screenshots/ with
LMTPFILTER_SCREENSHOTS=1 (that is how the README's pictures are made).
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.browser import Browser, browser_missing, open_browser, save_screenshot, status
from tests.harness.daemons import USER_PASSWORD, Dovecot, free_port, lmtp_deliver, start_dovecot
from tests.harness.mailsink import MailSink
from tests.harness.scanners import EICAR, GTUBE, Clamd, Spamd

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL, DAVE = ("alice@example.org", "bob@example.org", "carol@example.org",
                           "dave@example.org")
ADMIN = "admin@example.org"
WRONG_PASSWORD = "not-Alices-passw0rd"
LINK = re.compile(r"https?://[^\s/]+/r/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
QUARANTINED = re.compile(r"^250 2\.7\.0 .* quarantined as ([A-Za-z0-9_-]{22})$")


# --------------------------------------------------------------------------- the setup


def mail(subject: str, body: str, *, sender: str = "news@shop.example.net",
         html: str | None = None, attachment: tuple[str, bytes] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Sender <{sender}>"
    msg["To"] = ALICE
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = email.utils.make_msgid(domain="example.net")
    if body:
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    else:  # HTML only, as much spam is
        msg.set_content(html or "", subtype="html")
    if attachment is not None:
        msg.add_attachment(attachment[1], maintype="application", subtype="octet-stream",
                           filename=attachment[0])
    return msg.as_bytes(policy=email.policy.SMTP)


def spam(subject: str, body: str = "Hello,\n\nplease find the details below.\n") -> bytes:
    """A message spamd scores 1000 (GTUBE): above the default kill level, so quarantined."""
    return mail(subject, f"{body}\n{GTUBE.decode()}\n")


class Web:
    """The daemons, the filter and `lmtpfilter web`, and what the tests do with them."""

    def __init__(self, dovecot: Dovecot, proc: FilterProcess, sink: MailSink, url: str,
                 metrics: str, web_log: Path, shots: Path) -> None:
        self.dovecot, self.proc, self.sink = dovecot, proc, sink
        self.url, self.metrics_url, self.web_log, self.shots = url, metrics, web_log, shots

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lmtpfilter", *args, "-c",
                               str(self.proc.config_path)], capture_output=True, text=True,
                              timeout=60)

    def send(self, recipients: list[str], message: bytes) -> list[str]:
        """Send `message` through the filter, from its From: address; the replies after DATA."""
        sender = email.utils.parseaddr(
            email.message_from_bytes(message, policy=email.policy.default)["From"])[1]
        host, port = self.proc.listen.rsplit(":", 1)
        _, replies = lmtp_deliver(int(port), sender, recipients, message, host=host)
        assert len(replies) == len(recipients), (replies, self.proc.log()[-3000:])
        return replies

    def quarantine(self, recipients: list[str], message: bytes) -> str:
        """Send `message` through the filter; the ID it was quarantined under."""
        replies = self.send(recipients, message)
        ids = {m.group(1) for r in replies if (m := QUARANTINED.match(r))}
        assert len(ids) == 1, (replies, self.proc.log()[-3000:])
        return ids.pop()

    def deliver(self, recipients: list[str], message: bytes) -> None:
        replies = self.send(recipients, message)
        assert [r[:3] for r in replies] == ["250"] * len(recipients), replies

    def record(self, qid: str) -> tuple[str | None, str, str]:
        """(released_at, released_by, release_replies) of a quarantine row."""
        with sqlite3.connect(self.proc.workdir / "lmtpfilter.db") as db:
            row = db.execute("select released_at, released_by, release_replies from "
                             "quarantine where id = ?", (qid,)).fetchone()
        assert row is not None, qid
        return row[0], row[1], row[2]

    def stored(self, qid: str) -> list[Path]:
        return list((self.proc.workdir / "quarantine").rglob(f"{qid}.eml.gz"))

    def in_maildir(self, address: str, qid: str) -> list[bytes]:
        """The copies of quarantined message `qid` in the user's INBOX and Junk."""
        marker = f"X-Quarantine-ID: <{qid}>".encode()
        return [m for folder in ("INBOX", "Junk") for m in self.dovecot.messages(address, folder)
                if marker in m]

    def wait_in_maildir(self, address: str, qid: str, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while not (found := self.in_maildir(address, qid)):
            assert time.monotonic() < deadline, f"{qid} not in {address}'s Maildir"
            time.sleep(0.05)
        return found[0]

    def metric(self, name: str, **labels: str) -> float:
        """A counter of the page's /metrics ([web] metrics_listen); 0 if not counted yet."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            name_labels, _, value = line.rpartition(" ")
            if not name_labels.startswith(name + "{"):
                continue
            got = ",".join(sorted(name_labels[len(name) + 1:-1].split(",")))
            if got == wanted:
                return float(value)
        return 0.0

    def notice(self, qid: str, address: str, timeout: float = 20) -> str:
        """The text of the recipient notice about `qid` sent to `address`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for received in self.sink.messages:
                if address not in received.recipients:
                    continue
                notice = email.message_from_bytes(received.data, policy=email.policy.default)
                body = notice.get_body(("plain",))
                text = body.get_content() if body is not None else ""
                if f"Quarantine ID: {qid}" in text:
                    return str(text)
            time.sleep(0.1)
        raise AssertionError(f"no notice about {qid} to {address}")

    def link_for(self, qid: str, address: str) -> str:
        """The release link in that notice."""
        text = self.notice(qid, address)
        links = LINK.findall(text)
        assert len(links) == 1, text
        return str(links[0])


@pytest.fixture(scope="module")
def browser_ready() -> None:
    missing = browser_missing()
    if missing is None:
        return
    if os.environ.get("LMTPFILTER_REQUIRE_DAEMONS") == "1":
        pytest.fail(f"the browser tests need {missing}")
    pytest.skip(f"not installed: {missing}")


@pytest.fixture(scope="module")
def web(browser_ready: None, filter_process: type[FilterProcess], daemon_base: Path,
        clamd: Clamd, spamd: Spamd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    dovecot = start_dovecot(daemon_base / "web", [ALICE, BOB, CAROL, DAVE, ADMIN])
    sink = MailSink().start()
    page: subprocess.Popen[bytes] | None = None
    try:
        workdir = new_workdir(daemon_base, "web")
        # 0600 before a byte is in it: `lmtpfilter web` refuses a key others could read.
        key = workdir / "web.key"
        key.touch(mode=0o600)
        key.write_bytes(secrets.token_bytes(32))
        web_port, metrics_port = free_port(), free_port()
        url = f"http://127.0.0.1:{web_port}"
        listen = f"127.0.0.1:{free_port()}"
        text = filter_config(
            f"127.0.0.1:{dovecot.lmtp_port}", [listen],
            clamav=f'enabled = true\naddress = "unix:{clamd.socket_path}"',
            spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"',
            policy='recipient_delimiter = "+"',
            sieve=f'method = "directory"\ndirectory = "{dovecot.sieve_before_dir}"',
            notify=(f'smtp = "127.0.0.1:{sink.port}"\nadmin = ["{ADMIN}"]\n'
                    'from = "postmaster@example.org"\ninterval = "0.3s"'),
            # The same [web] for the filter (it puts release links in its notices) and the
            # page; plain HTTP because the browser talks to it directly, without a proxy.
            web=(f'listen = "127.0.0.1:{web_port}"\nbase_url = "{url}"\n'
                 f'secret_key_file = "{key}"\ndovecot_auth_socket = "{dovecot.auth_socket}"\n'
                 f'admins = ["{ADMIN}"]\nallow_plain_http = true\n'
                 f'metrics_listen = "127.0.0.1:{metrics_port}"'))
        # Policy changes (the settings page, `user set`) reach the filter at once.
        text = text.replace("[database]", '[database]\npolicy_cache_ttl = "0s"')
        proc = filter_process(workdir, text, listen).start()
        web_log = workdir / "web.log"
        with web_log.open("ab") as log:
            page = subprocess.Popen(
                [sys.executable, "-m", "lmtpfilter", "web", "-c", str(proc.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for_page(url, page, web_log)
        yield Web(dovecot, proc, sink, url, f"http://127.0.0.1:{metrics_port}/metrics",
                  web_log, tmp_path_factory.mktemp("screenshots"))
    finally:
        if page is not None:
            page.send_signal(signal.SIGTERM)
            try:
                page.wait(20)
            except subprocess.TimeoutExpired:
                page.kill()
                page.wait()
        sink.stop()
        dovecot.stop()


def wait_for_page(url: str, page: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if page.poll() is not None:
            raise RuntimeError(f"lmtpfilter web exited:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/login", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"lmtpfilter web not answering:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def chromium(browser_ready: None) -> Iterator[Browser]:
    with open_browser() as driver:
        yield driver


@pytest.fixture
def browser(chromium: Browser, web: Web) -> Browser:
    """The module's browser, logged out: each test starts without a session."""
    chromium.get(f"{web.url}/login")
    chromium.delete_all_cookies()
    return chromium


# --------------------------------------------------------------------------- the browser side


def wait_for(driver: Browser, css: str, timeout: float = 15) -> WebElement:
    """The element once the page that has it is shown."""
    found: list[WebElement] = WebDriverWait(driver, timeout).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, css))
    return found[0]


def wait_text(driver: Browser, css: str, text: str, timeout: float = 15) -> str:
    """The element's text once it holds `text` (the page before may have the same element)."""
    def found(d: Browser) -> str | bool:
        shown = " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, css))
        return shown if text in shown else False
    try:
        # The page may be replaced between finding an element and reading its text.
        return str(WebDriverWait(driver, timeout, ignored_exceptions=(
            StaleElementReferenceException,)).until(found))
    except TimeoutException:
        raise AssertionError(f"{css} never said {text!r}:\n{driver.page_source}") from None


def submit(form: WebElement, value: str | None = None) -> None:
    """Click the form's submit button (the one with `value`, if given), as a user does."""
    css = f'button[value="{value}"]' if value else "button, input[type=submit]"
    form.find_element(By.CSS_SELECTOR, css).click()


def visit(driver: Browser, web: Web, path: str) -> None:
    driver.get(f"{web.url}{path}")


def login(driver: Browser, web: Web, address: str, password: str = USER_PASSWORD) -> None:
    visit(driver, web, "/login")
    form = wait_for(driver, "form#login")
    form.find_element(By.NAME, "address").send_keys(address)
    form.find_element(By.NAME, "password").send_keys(password)
    submit(form)


def logged_in(driver: Browser, web: Web, address: str) -> None:
    login(driver, web, address)
    wait_for(driver, "table#quarantine")


def rows(driver: Browser) -> dict[str, str]:
    """The quarantine list shown: ID -> the row's text."""
    return {row.get_attribute("data-id") or "": row.text
            for row in driver.find_elements(By.CSS_SELECTOR, "table#quarantine tr.message")}


def error(driver: Browser) -> str:
    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, "p.error"))


def open_link(driver: Browser, link: str) -> None:
    """Open a release link and confirm it if the page asks to: what a user does with it."""
    driver.get(link)
    wait_for(driver, "form#confirm, p.error")
    if forms := driver.find_elements(By.CSS_SELECTOR, "form#confirm"):
        submit(forms[0])
        wait_for(driver, "#result, p.error")


# --------------------------------------------------------------------------- the tests


def test_login_with_the_mail_password_then_list_and_preview(browser: Browser, web: Web) -> None:
    subject = "Minutes of the board meeting"
    qid = web.quarantine([ALICE], spam(subject, "Dear Alice,\n\nthe minutes you asked for.\n"))
    bobs = web.quarantine([BOB], spam("For Bob only"))
    # Hers too: mail to her +extension, and a virus (listed, though only an admin releases it).
    extension = web.quarantine(["alice+lists@example.org"], spam("Weekly digest of the list"))
    virus = web.quarantine([ALICE], mail("Your parcel could not be delivered", "See label.\n",
                                         sender="parcel@courier.example.net",
                                         attachment=("label.com", EICAR)))
    failed = web.metric("lmtpfilter_web_logins_total", result="failed")
    ok = web.metric("lmtpfilter_web_logins_total", result="ok")
    # Not logged in: the list is not shown.
    visit(browser, web, "/")
    wait_for(browser, "form#login")
    assert not browser.find_elements(By.CSS_SELECTOR, "table#quarantine")
    save_screenshot(browser, "login", web.shots)
    # A wrong password: refused by Dovecot, no session.
    login(browser, web, ALICE, WRONG_PASSWORD)
    wait_for(browser, "p.error")
    assert browser.find_elements(By.CSS_SELECTOR, "form#login")
    visit(browser, web, "/")
    wait_for(browser, "form#login")
    # The right one (any case: the address is lower-cased).
    login(browser, web, ALICE.upper())
    wait_for(browser, "table#quarantine")
    listed = rows(browser)
    assert subject in listed[qid] and "spam" in listed[qid].lower()
    assert "Weekly digest of the list" in listed[extension]
    assert "Eicar-Test-Signature" in listed[virus]
    assert bobs not in listed  # only her own mail
    save_screenshot(browser, "quarantine", web.shots)
    # The session cookie: signed by the page, out of reach of scripts, never sent cross-site.
    cookies = browser.get_cookies()
    assert cookies and all(c["httpOnly"] and c.get("sameSite") == "Strict" for c in cookies)
    # The detail: headers and the text, as text.
    browser.find_element(By.CSS_SELECTOR, f'tr.message[data-id="{qid}"] a[href="/m/{qid}"]'
                         ).click()
    preview = wait_for(browser, "pre#preview").text
    assert "the minutes you asked for." in preview
    assert f"Subject: {subject}" in browser.find_element(By.ID, "headers").text
    assert browser.find_elements(By.CSS_SELECTOR, "form#release")
    save_screenshot(browser, "message", web.shots)
    assert web.metric("lmtpfilter_web_logins_total", result="failed") == failed + 1
    assert web.metric("lmtpfilter_web_logins_total", result="ok") == ok + 1
    assert WRONG_PASSWORD not in web.web_log.read_text(errors="replace")  # no secret in a log
    # Logging out ends the session.
    submit(browser.find_element(By.ID, "logout"))
    wait_for(browser, "form#login")
    visit(browser, web, "/")
    wait_for(browser, "form#login")


def test_html_mail_is_shown_as_text_never_rendered(browser: Browser, web: Web) -> None:
    html = ('<p>Your exclusive offer</p><script>document.title = "pwned"</script>'
            '<img src="/static/style.css" onerror="document.title = \'pwned\'">'
            f"<p>{GTUBE.decode()}</p>")
    qid = web.quarantine([ALICE], mail('<script>document.title = "pwned"</script>Offer', "",
                                       html=html))
    logged_in(browser, web, ALICE)
    assert "<script>" in rows(browser)[qid]  # the subject as text
    visit(browser, web, f"/m/{qid}")
    assert "Your exclusive offer" in wait_for(browser, "pre#preview").text
    assert browser.title != "pwned"
    assert not browser.find_elements(By.CSS_SELECTOR, "#preview *, img[onerror], main script")
    assert browser.execute_script("return document.scripts.length") == 0
    # And should a script get into a page after all, the browser would not run it.
    with urllib.request.urlopen(f"{web.url}/login", timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy


def test_release_from_the_page_delivers_and_shows_the_reply(browser: Browser,
                                                            web: Web) -> None:
    qid = web.quarantine([ALICE], spam("Your order 4711 has shipped"))
    logged_in(browser, web, ALICE)
    visit(browser, web, f"/m/{qid}")
    submit(wait_for(browser, "form#release"))
    result = wait_for(browser, "#result").text
    assert ALICE in result and "250 2.0.0" in result  # Dovecot's own reply
    stored = web.wait_in_maildir(ALICE, qid)
    assert b"Subject: " in stored and b"Your order 4711 has shipped" in stored
    released_at, released_by, replies = web.record(qid)
    assert released_at is not None and released_by == f"web {ALICE}"
    assert f"{ALICE}: 250 2.0.0" in replies  # the same audit record as `quarantine release`


def test_settings_choose_where_spam_goes(browser: Browser, web: Web) -> None:
    # Carol keeps all spam (kill level above GTUBE's 1000): it is tagged and delivered, and
    # her Sieve script files it. She starts with "discard", so each choice is a change.
    done = web.cli("user", "set", CAROL, "--kill-level", "2000", "--junk-destiny", "discard")
    assert done.returncode == 0, done.stderr
    logged_in(browser, web, CAROL)
    visit(browser, web, "/settings")
    form = wait_for(browser, "form#settings")
    assert Select(form.find_element(By.NAME, "junk_destiny")).first_selected_option \
        .get_attribute("value") == "discard"
    # Out of the admin's bounds ([web] tag2_min = 2): refused, nothing changed.
    level = form.find_element(By.NAME, "tag2_level")
    level.clear()
    level.send_keys("1")
    submit(form)
    wait_text(browser, "p.error", "between")
    # Junk folder.
    form = wait_for(browser, "form#settings")
    Select(form.find_element(By.NAME, "junk_destiny")).select_by_value("junk")
    level = form.find_element(By.NAME, "tag2_level")
    level.clear()
    level.send_keys("6.5")
    submit(form)
    wait_text(browser, "p#result", "your folder Junk")
    save_screenshot(browser, "settings", web.shots)
    junk_before = len(web.dovecot.messages(CAROL, "Junk"))
    web.deliver([CAROL], spam("Cheap watches"))
    filed = web.dovecot.wait_for_messages(CAROL, junk_before + 1, folder="Junk")[-1]
    assert b"X-Spam-Flag: YES" in filed and b"Cheap watches" in filed
    # Inbox.
    form = wait_for(browser, "form#settings")
    Select(form.find_element(By.NAME, "junk_destiny")).select_by_value("inbox")
    submit(form)
    wait_text(browser, "p#result", "stays in your inbox")
    inbox_before = len(web.dovecot.messages(CAROL))
    web.deliver([CAROL], spam("Cheaper watches"))
    kept = web.dovecot.wait_for_messages(CAROL, inbox_before + 1)[-1]
    assert b"X-Spam-Flag: YES" in kept and b"Cheaper watches" in kept
    assert len(web.dovecot.messages(CAROL, "Junk")) == junk_before + 1


def test_other_users_message_is_404_and_only_the_admin_releases_a_virus(
        browser: Browser, web: Web) -> None:
    bobs = web.quarantine([BOB], spam("Bob's private invoice"))
    virus = web.quarantine([ALICE], mail("Invoice attached", "See the attachment.\n",
                                         attachment=("invoice.com", EICAR)))
    logged_in(browser, web, ALICE)
    for path in (f"/m/{bobs}", "/m/not-a-quarantine-id", "/m/" + "A" * 22):
        visit(browser, web, path)
        assert status(browser) == 404, path
        assert "Bob's private invoice" not in browser.page_source
    # Her virus is listed, with no way to release it.
    visit(browser, web, "/")
    assert "virus" in rows(browser)[virus].lower()
    visit(browser, web, f"/m/{virus}")
    wait_for(browser, "pre#headers")
    assert not browser.find_elements(By.CSS_SELECTOR, "form#release")
    assert web.record(virus)[0] is None
    # Nor does her notice carry a release link: it tells her to ask the admin.
    notice = web.notice(virus, ALICE)
    assert not LINK.search(notice) and "ask your mail administrator" in notice
    # The admin sees everyone's mail, searches it, and releases the virus to its recipient.
    browser.delete_all_cookies()
    logged_in(browser, web, ADMIN)
    search = wait_for(browser, "form#search")
    search.find_element(By.NAME, "q").send_keys("Bob's private")
    submit(search)
    WebDriverWait(browser, 15).until(lambda d: "q=" in d.current_url)
    wait_for(browser, "table#quarantine")
    assert bobs in rows(browser) and virus not in rows(browser)
    visit(browser, web, f"/m/{virus}")
    submit(wait_for(browser, "form#release"))
    assert "250 2.0.0" in wait_for(browser, "#result").text
    web.wait_in_maildir(ALICE, virus)
    assert web.record(virus)[1] == f"web {ADMIN}"


def test_release_link_confirms_on_get_and_releases_once_on_post(browser: Browser,
                                                                 web: Web) -> None:
    qid = web.quarantine([ALICE], spam("Concert tickets for Saturday"))
    link = web.link_for(qid, ALICE)
    delivered = web.metric("lmtpfilter_web_releases_total", via="link", result="delivered")
    # Opening the link (as a mail scanner following links would) releases nothing.
    browser.get(link)
    confirm = wait_for(browser, "form#confirm")
    assert "Concert tickets for Saturday" in browser.page_source
    save_screenshot(browser, "release-link", web.shots)
    assert web.record(qid)[0] is None and web.in_maildir(ALICE, qid) == []
    # Confirming it does, without a login.
    submit(confirm)
    assert "250 2.0.0" in wait_for(browser, "#result").text
    web.wait_in_maildir(ALICE, qid)
    assert web.record(qid)[1] == f"link {ALICE}"
    assert web.metric("lmtpfilter_web_releases_total", via="link",
                      result="delivered") == delivered + 1
    # Once only: the page says the message was released already (409) when it was, and that
    # the link was used (403) when its release failed; either way nothing is delivered again.
    open_link(browser, link)
    assert (status(browser), error(browser)) in [
        (409, "This message was already released to you."), (403, "this link was already used")]
    assert not browser.find_elements(By.CSS_SELECTOR, "form#confirm")
    assert len(web.in_maildir(ALICE, qid)) == 1
    # A link to somebody else's mail made from hers: the signature no longer fits.
    other = web.quarantine([ALICE, BOB], spam("For Alice and Bob"))
    token = web.link_for(other, ALICE).rsplit("/", 1)[1]
    payload, mac = token.split(".")
    claim = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    forged = base64.urlsafe_b64encode(claim.replace(ALICE.encode(), BOB.encode()))
    open_link(browser, f"{web.url}/r/{forged.decode().rstrip('=')}.{mac}")
    assert status(browser) == 403 and "not a valid release link" in error(browser)
    assert web.record(other)[0] is None and web.in_maildir(BOB, other) == []


def test_form_without_csrf_token_is_refused(browser: Browser, web: Web) -> None:
    qid = web.quarantine([ALICE], spam("Meeting moved to 3 pm"))
    logged_in(browser, web, ALICE)
    visit(browser, web, f"/m/{qid}")
    form = wait_for(browser, "form#release")
    browser.execute_script("arguments[0].querySelector('input[name=csrf]').remove()", form)
    submit(form)
    wait_for(browser, "p.error")
    assert status(browser) == 403
    assert web.record(qid)[0] is None and web.in_maildir(ALICE, qid) == []
    # The link's confirmation form too.
    link = web.link_for(qid, ALICE)
    browser.get(link)
    confirm = wait_for(browser, "form#confirm")
    browser.execute_script("arguments[0].querySelector('input[name=csrf]').value = 'x'",
                           confirm)
    submit(confirm)
    wait_for(browser, "p.error")
    assert status(browser) == 403
    assert web.record(qid)[0] is None


def test_bulk_delete_removes_only_the_chosen_messages(browser: Browser, web: Web) -> None:
    chosen = [web.quarantine([ALICE], spam(f"Weekly deals {n}")) for n in (1, 2)]
    kept = web.quarantine([ALICE], spam("Weekly deals 3"))
    shared = web.quarantine([ALICE, BOB], spam("Weekly deals for two"))
    logged_in(browser, web, ALICE)
    form = browser.find_element(By.ID, "bulk")
    for qid in [*chosen, shared]:
        form.find_element(By.CSS_SELECTOR, f'input[name="id"][value="{qid}"]').click()
    submit(form, "delete")
    wait_for(browser, "#result")
    assert all(web.stored(qid) == [] for qid in chosen)
    # Bob's copy of the shared message is his: she may not delete it.
    assert web.stored(kept) and web.stored(shared)


def test_login_attempts_are_rate_limited(browser: Browser, web: Web) -> None:
    limited = web.metric("lmtpfilter_web_logins_total", result="limited")
    for _ in range(5):  # [web] login_attempts
        login(browser, web, DAVE, WRONG_PASSWORD)
        wait_for(browser, "p.error")
    login(browser, web, DAVE)  # now even the right password is turned away
    wait_text(browser, "p.error", "too many attempts")
    assert not browser.find_elements(By.CSS_SELECTOR, "table#quarantine")
    assert web.metric("lmtpfilter_web_logins_total", result="limited") == limited + 1
    # Another address from the same client is not locked out by Dave's attempts.
    logged_in(browser, web, BOB)
