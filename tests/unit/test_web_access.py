"""Who may see, release and delete what on the web page: the rules as a table
(tests/data/web_access_cases.toml), then the same rules through the application (a real
SQLite store and quarantine directory, a fake downstream LMTP server, a fake password
check; the real IMAP check is in tests/integration/test_web.py)."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmtpfilter import store as st
from lmtpfilter.config import Config, from_mapping
from lmtpfilter.quarantine import new_id, open_quarantine
from lmtpfilter.web import access
from lmtpfilter.web.app import create_app
from lmtpfilter.web.links import ReleaseLinks
from tests.lmtp_tools import FakeDownstream

CASES: list[dict[str, Any]] = tomllib.loads(
    (Path(__file__).parent.parent / "data" / "web_access_cases.toml").read_text())["case"]

ALICE, BOB, ADMIN = "alice@example.org", "bob@example.org", "admin@example.org"
PASSWORD = "right horse battery"
KEY = b"k" * 32


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_access_rules(case: dict[str, Any]) -> None:
    who = access.Viewer(case["viewer"], case.get("admin", False))
    recipients, delimiter = case["recipients"], case.get("delimiter", "+")
    assert access.may_see(who, recipients, delimiter) is case["see"]
    if not case["see"]:
        return
    release = access.release_decision(
        who, case.get("reason", "spam"), recipients, delimiter,
        access.delivered_recipients(case.get("replies", "")))
    if "release" in case:
        assert release.allowed and list(release.targets) == case["release"]
    else:
        assert not release.allowed and release.targets == ()
        assert case["release_refused"] in release.refused
    assert access.delete_decision(who, recipients, delimiter).allowed is case["delete"]


@pytest.mark.parametrize(("replies", "delivered"), [
    ("", set()),
    ("2024-05-01 10:00:00 by cli: Alice@Example.org: 250 2.0.0 Ok", {"alice@example.org"}),
    ("2024-05-01 10:00:00 by web a@x: a@x: 550 5.1.1 No such user", set()),
    ("2024-05-01 10:00:00 by link a@x: a@x: 250 2.0.0 Ok: queued as 12:34\n"
     "2024-05-02 10:00:00 by cli: b@x: 250 2.0.0 Ok", {"a@x", "b@x"}),
    ("garbage without the form\nby: x: 250", set()),
], ids=["none", "delivered, any case", "refused", "two lines", "not audit lines"])
def test_delivered_recipients(replies: str, delivered: set[str]) -> None:
    assert access.delivered_recipients(replies) == delivered


def test_admins_are_matched_in_any_case() -> None:
    assert access.viewer("Admin@Example.ORG", ["admin@example.org"]) == access.Viewer(ADMIN,
                                                                                      True)
    assert access.viewer(ALICE, ["admin@example.org"]).admin is False


# ---- the application ------------------------------------------------------------------------

def message(subject: str, body: str = "Hello,\r\nthe text.\r\n",
            ctype: str = "text/plain; charset=utf-8") -> bytes:
    return (f"From: sender@example.net\r\nTo: someone@example.org\r\nSubject: {subject}\r\n"
            f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n{body}").encode()


@dataclass
class Site:
    """A page on a real store and quarantine; add() puts a message in the quarantine."""

    config: Config
    store: st.Store
    downstream: FakeDownstream
    now: list[float] = field(default_factory=lambda: [1_000_000.0])
    wall: list[float] = field(default_factory=lambda: [1_700_000_000.0])
    checked: list[tuple[str, str]] = field(default_factory=list)

    def add(self, recipients: list[str], subject: str = "a message", reason: str = "spam",
            data: bytes | None = None, age: float = 0.0) -> str:
        qid = new_id()
        created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
        stored = open_quarantine(self.config.quarantine, self.store).write(
            qid, created, [data if data is not None else message(subject)])
        record = st.QuarantineRecord(
            id=qid, message_id=f"tx{qid[:10]}", path=stored.path, size=stored.size,
            sha256=stored.sha256, reason=reason,
            detail="Eicar-Test-Signature" if reason == "virus" else "27.5",
            sender="sender@example.net", recipients="\n".join(recipients), subject=subject,
            created_at=created, released_to="", release_replies="")
        self.store.transaction(lambda s: s.add(record))
        return qid

    def record(self, qid: str) -> st.QuarantineRecord:
        row = self.store.transaction(lambda s: s.get(st.QuarantineRecord, qid))
        assert row is not None
        return row

    async def check(self, address: str, password: str) -> bool:
        self.checked.append((address, password))
        return password == PASSWORD

    apps: dict[int, Any] = field(default_factory=dict)

    def app(self, config: Config | None = None) -> Any:
        """The page for `config` (the site's unless given): one per config, so that clients
        share its rate limiter and locks, as browsers share a server."""
        config = config or self.config
        if id(config) not in self.apps:
            self.apps[id(config)] = create_app(
                config, self.store, password_check=self.check, key=KEY,
                clock=lambda: self.now[0], wall_clock=lambda: self.wall[0])
        return self.apps[id(config)]

    def client(self, https: bool = False, config: Config | None = None,
               ip: str = "192.0.2.10") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app(config), client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, follow_redirects=False,
                                 base_url="https://web.test" if https else "http://web.test")


def make_config(tmp: Path, downstream: str, store: str = "files", **web: Any) -> Config:
    return from_mapping({
        "database": {"url": f"sqlite:///{tmp}/db.sqlite"},
        "quarantine": {"directory": str(tmp / "quarantine"), "store": store},
        "downstream": {"address": downstream, "timeout": "5s"},
        "policy": {"recipient_delimiter": "+"},
        "sieve": {"method": "none"},  # the settings page's scripts: tests/integration
        "web": {"admins": [ADMIN], "allow_plain_http": True, **web},
    })


@contextmanager
def open_site(tmp: Path, downstream: FakeDownstream, kept_in: str = "files", **web: Any
              ) -> Iterator[Site]:
    config = make_config(tmp, downstream.address, kept_in, **web)
    st.upgrade(config.database.url)
    store = st.Store(config.database.url)
    try:
        yield Site(config, store, downstream)
    finally:
        store.close()


@pytest.fixture(params=["files", "sql"])  # [quarantine] store (sql: on SQLite here)
def site(request: pytest.FixtureRequest, tmp_path: Path, fake: FakeDownstream
         ) -> Iterator[Site]:
    with open_site(tmp_path, fake, request.param) as opened:
        yield opened


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html[:2000]
    return found.group(1)


async def log_in(client: httpx.AsyncClient, address: str, password: str = PASSWORD
                 ) -> httpx.Response:
    page = await client.get("/login")
    return await client.post("/login", data={"address": address, "password": password,
                                             "csrf": csrf_of(page.text)})


def listed(html: str) -> list[str]:
    return re.findall(r'<tr class="message[^"]*" data-id="([^"]+)"', html)


async def test_a_user_lists_her_own_messages_only(site: Site) -> None:
    mine = site.add([ALICE], "for alice", age=30)
    extension = site.add(["Alice+News@example.org"], "for alice+news", age=20)
    shared = site.add([BOB, ALICE], "for both", age=10)
    bobs = site.add([BOB], "for bob")
    expired = site.add([ALICE], "expired")
    site.store.transaction(lambda s: setattr(s.get(st.QuarantineRecord, expired),
                                             "expired_at", dt.datetime.now(dt.UTC)))
    async with site.client() as alice:
        assert (await log_in(alice, ALICE)).status_code == 303
        page = await alice.get("/")
        assert page.status_code == 200
        assert listed(page.text) == [shared, extension, mine]  # newest first
        assert bobs not in page.text and "for bob" not in page.text
        assert 'id="search"' not in page.text  # search is the admins'
        assert 'action="/bulk"' in page.text and f'name="id" value="{mine}"' in page.text
    async with site.client() as admin:
        await log_in(admin, ADMIN)
        assert listed((await admin.get("/")).text) == [bobs, shared, extension, mine]
        searched = await admin.get("/", params={"q": "FOR BOB"})
        assert listed(searched.text) == [bobs] and 'id="search"' in searched.text
        assert listed((await admin.get("/", params={"q": "news@"})).text) == [extension]
        assert listed((await admin.get("/", params={"q": mine})).text) == [mine]
        assert listed((await admin.get("/", params={"q": "100%_"})).text) == []


async def test_the_list_pages(site: Site) -> None:
    made = [site.add([ALICE], f"number {n}", age=1000 - n) for n in range(53)]
    site.add([BOB], "in between", age=500)  # not hers: not counted in her pages
    async with site.client() as alice:
        await log_in(alice, ALICE)
        first = await alice.get("/")
        assert listed(first.text) == made[::-1][:50] and 'rel="next"' in first.text
        second = await alice.get("/", params={"page": "2"})
        assert listed(second.text) == made[::-1][50:] and 'rel="next"' not in second.text
        assert listed((await alice.get("/", params={"page": "x"})).text) == made[::-1][:50]


@pytest.mark.parametrize("path", ["/m/{bobs}", "/m/{unknown}", "/m/..%2F..%2Fetc%2Fpasswd",
                                  "/m/short", "/m/{expired}"])
async def test_what_is_not_hers_is_not_found(site: Site, path: str) -> None:
    bobs = site.add([BOB], "for bob")
    expired = site.add([ALICE], "gone")
    site.store.transaction(lambda s: setattr(s.get(st.QuarantineRecord, expired),
                                             "expired_at", dt.datetime.now(dt.UTC)))
    async with site.client() as alice:
        await log_in(alice, ALICE)
        url = path.format(bobs=bobs, unknown=new_id(), expired=expired)
        page = await alice.get(url)
        assert page.status_code == 404
        assert "for bob" not in page.text and "Traceback" not in page.text
        assert "no such message" in page.text
        csrf = csrf_of(page.text)
        for action in ("release", "delete"):
            posted = await alice.post(f"{url}/{action}", data={"csrf": csrf})
            assert posted.status_code == 404, action
    assert site.downstream.transactions == []
    assert site.record(bobs).expired_at is None


async def test_release_to_her_own_address_once(site: Site) -> None:
    qid = site.add([BOB, "alice+shop@example.org"], "shared")
    async with site.client() as alice:
        await log_in(alice, ALICE)
        detail = await alice.get(f"/m/{qid}")
        assert 'id="release"' in detail.text and 'id="delete"' not in detail.text
        assert BOB not in detail.text.split('<pre id="headers">')[0]  # maybe a Bcc
        released = await alice.post(f"/m/{qid}/release", data={"csrf": csrf_of(detail.text)})
        assert released.status_code == 200
        assert 'id="result"' in released.text
        assert "alice+shop@example.org: <code>250 2.0.0" in released.text
        again = await alice.post(f"/m/{qid}/release", data={"csrf": csrf_of(detail.text)})
        assert again.status_code == 409 and "already released to you" in again.text
        refused = await alice.post(f"/m/{qid}/delete", data={"csrf": csrf_of(detail.text)})
        assert refused.status_code == 403  # bob's copy is the same file
    assert [t.recipients for t in site.downstream.transactions] == [
        ["alice+shop@example.org"]]
    row = site.record(qid)
    assert row.released_by == "web alice@example.org" and row.expired_at is None
    # Bob may still have his.
    async with site.client() as bob:
        await log_in(bob, BOB)
        page = await bob.get(f"/m/{qid}")
        done = await bob.post(f"/m/{qid}/release", data={"csrf": csrf_of(page.text)})
        assert done.status_code == 200
    assert [t.recipients for t in site.downstream.transactions][-1] == [BOB]


async def test_a_virus_is_released_by_an_admin_only(site: Site) -> None:
    qid = site.add([ALICE], "invoice", reason="virus")
    async with site.client() as alice:
        await log_in(alice, ALICE)
        detail = await alice.get(f"/m/{qid}")
        assert detail.status_code == 200 and 'id="release"' not in detail.text
        assert "administrator" in detail.text
        refused = await alice.post(f"/m/{qid}/release", data={"csrf": csrf_of(detail.text)})
        assert refused.status_code == 403 and "administrator" in refused.text
        bulk = await alice.post("/bulk", data={"csrf": csrf_of(detail.text), "id": [qid],
                                               "action": "release"})
        assert "administrator" in bulk.text
    assert site.downstream.transactions == [] and site.record(qid).released_at is None
    async with site.client() as admin:
        await log_in(admin, ADMIN)
        page = await admin.get(f"/m/{qid}")
        done = await admin.post(f"/m/{qid}/release", data={"csrf": csrf_of(page.text)})
        assert done.status_code == 200
    assert [t.recipients for t in site.downstream.transactions] == [[ALICE]]
    row = site.record(qid)
    assert row.released_by == "web admin@example.org" and row.released_host
    async with site.client() as admin:  # the audit says who and from which host
        await log_in(admin, ADMIN)
        shown = (await admin.get(f"/m/{qid}")).text
        assert f"(by web admin@example.org on {row.released_host})" in shown


async def test_a_refused_delivery_is_shown(site: Site) -> None:
    site.downstream.delivery_reply = lambda rcpt, i: "452 4.2.2 Mailbox full"
    qid = site.add([ALICE], "big")
    async with site.client() as alice:
        await log_in(alice, ALICE)
        page = await alice.get(f"/m/{qid}")
        result = await alice.post(f"/m/{qid}/release", data={"csrf": csrf_of(page.text)})
        assert result.status_code == 502
        assert "452 4.2.2 Mailbox full" in result.text and 'class="error"' in result.text
    assert site.record(qid).released_at is None


async def test_delete_and_bulk(site: Site) -> None:
    own = site.add([ALICE], "own")
    other = site.add([ALICE], "other")
    shared = site.add([ALICE, BOB], "shared")
    bobs = site.add([BOB], "bobs")
    files = open_quarantine(site.config.quarantine, site.store)
    async with site.client() as alice:
        await log_in(alice, ALICE)
        page = await alice.get(f"/m/{own}")
        deleted = await alice.post(f"/m/{own}/delete", data={"csrf": csrf_of(page.text)})
        assert deleted.status_code == 200 and "Deleted." in deleted.text
        assert site.record(own).expired_at is not None
        assert not files.has_file(own, site.record(own).path)
        assert (await alice.get(f"/m/{own}")).status_code == 404
        bulk = await alice.post("/bulk", data={"csrf": csrf_of(page.text), "action": "delete",
                                               "id": [other, shared, bobs, "bad id"]})
        assert bulk.status_code == 200
        sections = dict(re.findall(r'<section class="outcome" data-id="([^"]+)">(.*?)</section>',
                                   bulk.text, re.S))
        assert "Deleted." in sections[other]
        assert "administrator" in sections[shared]
        assert "no such message" in sections[bobs] and "bobs" not in sections[bobs]
        assert "no such message" in sections["bad id"]
        none = await alice.post("/bulk", data={"csrf": csrf_of(page.text), "action": "delete"})
        assert none.status_code == 400
    assert site.record(shared).expired_at is None and site.record(bobs).expired_at is None


async def test_the_preview_never_renders_html(site: Site) -> None:
    html = ('<html><body><p>Dear <b>customer</b>,</p><script>alert(1)</script>'
            '<img src="https://tracker.test/x.png"><a href="https://evil.test">click</a>'
            '</body></html>')
    qid = site.add([ALICE], "<b>bold</b> subject", data=message(
        "<b>bold</b> subject", html, "text/html; charset=utf-8"))
    async with site.client() as alice:
        await log_in(alice, ALICE)
        page = await alice.get(f"/m/{qid}")
    assert page.status_code == 200
    preview = page.text.split('<pre id="preview">')[1].split("</pre>")[0]
    assert "Dear customer," in preview and "click" in preview
    assert "alert" not in preview and "<" not in preview
    assert "<b>bold</b>" not in page.text and "&lt;b&gt;bold&lt;/b&gt; subject" in page.text
    assert "tracker.test" not in page.text.split('<pre id="headers">')[0]
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]


async def test_a_missing_file_is_a_page_not_an_error(site: Site) -> None:
    qid = site.add([ALICE], "lost")
    open_quarantine(site.config.quarantine, site.store).remove(site.record(qid))
    async with site.client() as alice:
        await log_in(alice, ALICE)
        page = await alice.get(f"/m/{qid}")
    assert page.status_code == 200 and "is gone" in page.text


# ---- release links and settings ---------------------------------------------------------------

async def test_a_release_link(tmp_path: Path, fake: FakeDownstream) -> None:
    with open_site(tmp_path, fake, base_url="http://web.test/") as site:
        qid = site.add([BOB, "alice+shop@example.org"], "held for alice")
        virus = site.add([ALICE], "a virus", reason="virus")
        links = ReleaseLinks(KEY, "http://web.test", 3600)
        path = links.make(qid, "alice+shop@example.org", now=site.wall[0]).removeprefix(
            "http://web.test")
        async with site.client() as scanner:  # a mail scanner following the link: no login
            page = await scanner.get(path)
            assert page.status_code == 200 and "set-cookie" not in page.headers
            assert f'<form id="confirm" method="post" action="{path}">' in page.text
            assert "held for alice" in page.text
        assert fake.transactions == []  # a GET never releases
        token = path.removeprefix("/r/")
        async with site.client() as alice:
            check = csrf_of(page.text)
            for csrf in (None, "", check[:-1] + ("1" if check.endswith("0") else "0")):
                refused = await alice.post(path, data={} if csrf is None else {"csrf": csrf})
                assert refused.status_code == 403 and '<p class="error">' in refused.text
            done = await alice.post(path, data={"csrf": links.form_check(token)})
            assert done.status_code == 200 and 'id="result"' in done.text
            assert "alice+shop@example.org: <code>250 2.0.0" in done.text
            replay = await alice.post(path, data={"csrf": links.form_check(token)})
            assert replay.status_code == 403 and "already used" in replay.text
            assert (await alice.get(path)).status_code == 403
            tampered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
            for bad in (tampered, "/r/nonsense", "/r/" + "a" * 2000):
                answer = await alice.get(bad)
                assert answer.status_code == 403 and "not a valid release link" in answer.text
            virus_path = links.make(virus, ALICE, now=site.wall[0]).removeprefix(
                "http://web.test")
            refused = await alice.post(virus_path, data={
                "csrf": links.form_check(virus_path.removeprefix("/r/"))})
            assert refused.status_code == 403 and "administrator" in refused.text
            old = links.make(qid, BOB, now=site.wall[0] - 7200).removeprefix("http://web.test")
            assert "expired" in (await alice.get(old)).text
        assert [t.recipients for t in fake.transactions] == [["alice+shop@example.org"]]
        assert site.record(qid).released_by == "link alice+shop@example.org"


async def test_no_links_without_a_base_url(site: Site) -> None:
    qid = site.add([ALICE], "mine")
    path = ReleaseLinks(KEY, "http://web.test", 3600).make(qid, ALICE).removeprefix(
        "http://web.test")
    async with site.client() as client:
        assert (await client.get(path)).status_code == 404


async def test_settings(site: Site) -> None:
    async with site.client() as alice:
        await log_in(alice, ALICE)
        page = await alice.get("/settings")
        assert page.status_code == 200 and '<form id="settings"' in page.text
        assert '<option value="junk" selected>' in page.text
        saved = await alice.post("/settings", data={
            "csrf": csrf_of(page.text), "junk_destiny": "inbox", "tag2_level": "6.5"})
        assert saved.status_code == 200 and '<p id="result">' in saved.text
        assert "6.5" in saved.text and '<option value="inbox" selected>' in saved.text
        refused = await alice.post("/settings", data={
            "csrf": csrf_of(page.text), "junk_destiny": "inbox", "tag2_level": "99"})
        assert refused.status_code == 400 and '<p class="error">' in refused.text
        assert 'value="6.5"' in refused.text  # unchanged


async def test_under_a_path_prefix(site: Site) -> None:
    """Behind a proxy at https://host/quarantine/ (uvicorn's root_path, from [web] base_url):
    every link, form action and redirect carries the prefix."""
    qid = site.add([ALICE], "prefixed")
    transport = httpx.ASGITransport(app=site.app(), root_path="/quarantine")
    async with httpx.AsyncClient(transport=transport, base_url="http://web.test") as alice:
        form = await alice.get("/quarantine/login")
        assert 'action="/quarantine/login"' in form.text
        assert 'href="/quarantine/static/style.css"' in form.text
        done = await alice.post("/quarantine/login", data={
            "address": ALICE, "password": PASSWORD, "csrf": csrf_of(form.text)})
        assert done.headers["location"] == "/quarantine/"
        page = await alice.get("/quarantine/")
        assert f'href="/quarantine/m/{qid}"' in page.text
        assert 'action="/quarantine/bulk"' in page.text
        detail = await alice.get(f"/quarantine/m/{qid}")
        assert f'action="/quarantine/m/{qid}/release"' in detail.text
        assert (await alice.get("/quarantine/static/style.css")).status_code == 200
