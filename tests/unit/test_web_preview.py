"""The detail view's headers, preview and attachment list (lmtpfilter/web/preview.py): the
cases of tests/data/web_preview_cases.toml, each also opened through the page."""

from __future__ import annotations

import random
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter.web import preview as pv
from tests import hostile_mail
from tests.lmtp_tools import FakeDownstream
from tests.unit.test_web_access import ALICE, Site, log_in, open_site

CASES: list[dict[str, Any]] = tomllib.loads(
    (Path(__file__).parent.parent / "data" / "web_preview_cases.toml").read_text())["case"]


def nested(levels: int) -> bytes:
    """`levels` multiparts, each holding the next, and a text at the bottom."""
    head = b"From: a@example.net\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (n, n)
                       for n in range(levels))
    closing = b"".join(b"\r\n--b%d--" % n for n in reversed(range(levels)))
    return head + opening + b"Content-Type: text/plain\r\n\r\nthe bottom" + closing + b"\r\n"


GENERATORS: dict[str, Callable[[], bytes]] = {
    "garbage": lambda: random.Random(19).randbytes(20_000),
    "huge_header": lambda: (b"Subject: long\r\nX-Long: " + b"x" * 70_000
                            + b"\r\n\r\nafter the long header\r\n"),
    "long_text": lambda: b"Content-Type: text/plain\r\n\r\n" + b"0123456789" * 12_000,
    "nested_3000": lambda: nested(3000),
    "nested_150": lambda: nested(150),
}


def data_of(case: dict[str, Any]) -> bytes:
    if "generator" in case:
        name = case["generator"]
        make = GENERATORS.get(name) or hostile_mail.GENERATORS[name]
        return make()
    text: str = case["message"]
    return text.replace("\n", "\r\n").encode(case.get("encoding", "utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_preview(case: dict[str, Any]) -> None:
    shown = pv.preview(data_of(case))
    if "source" in case:
        assert shown.text_source == case["source"]
    for words in case.get("text", []):
        assert words in shown.text
    for words in case.get("not_text", []):
        assert words not in shown.text
    if "attachments" in case:
        assert [[a.filename, a.content_type] for a in shown.attachments] == case["attachments"]
    notes = " ".join(shown.notes)
    for words in case.get("notes", []):
        assert words in notes
    for words in case.get("headers", []):
        assert words in shown.headers
    assert shown.headers_cut is case.get("headers_cut", False)
    assert shown.text_cut is case.get("text_cut", False)
    # Whatever came in, what goes out is printable text of bounded size.
    for text in (shown.text, shown.headers, *(a.filename for a in shown.attachments)):
        text.encode("utf-8")  # no lone surrogate
        assert not any(ord(c) < 32 and c not in "\t\n" for c in text)
    assert len(shown.text) <= pv.PREVIEW_LIMIT and len(shown.headers) <= pv.HEADER_LIMIT


def test_html_to_text_keeps_blocks_on_lines() -> None:
    html = "<h1>Title</h1><ul><li>one</li><li>two</li></ul><table><tr><td>a</td><td>b</td>"
    assert pv.html_to_text(html) == "Title\n\none\n\ntwo\n\na b"


@pytest.mark.parametrize(("name", "shown"), [
    ("report.pdf", "report.pdf"),
    ("a\u202etxt.exe", "a[U+202E]txt.exe"),
    ("two\nlines\r\n", "two lines"),
    ("\udcff.bin", "\ufffd.bin"),
    ("x" * 300, "x" * 255),
])
def test_file_names(name: str, shown: str) -> None:
    assert pv.file_name(name) == shown


@pytest.fixture
def site(tmp_path: Path, fake: FakeDownstream) -> Iterator[Site]:
    with open_site(tmp_path, fake) as opened:
        yield opened


async def test_every_case_is_a_page(site: Site) -> None:
    ids = {case["name"]: site.add([ALICE], case["name"], data=data_of(case)) for case in CASES}
    async with site.client() as alice:
        await log_in(alice, ALICE)
        for name, qid in ids.items():
            page = await alice.get(f"/m/{qid}")
            assert page.status_code == 200, name
            assert 'id="preview"' in page.text and 'id="headers"' in page.text, name
