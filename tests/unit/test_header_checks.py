"""The bad-header check (lmtpfilter/header_checks.py), driven by
tests/data/header_check_cases.toml and the message corpus, plus the X-Amavis-Alert field
(lmtpfilter/headers.py) and property tests: no input makes either raise.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter.filtering import forged_headers
from lmtpfilter.header_checks import AMAVIS_MINOR_CATEGORY, BadHeader, check_headers
from lmtpfilter.headers import amavis_alert, is_forgeable
from lmtpfilter.message import Message

DATA = Path(__file__).parent.parent / "data"
CORPUS = DATA / "messages"
CASES: dict[str, list[dict[str, Any]]] = tomllib.loads(
    (DATA / "header_check_cases.toml").read_text())
LISTED = {c["file"] for c in CASES["corpus"]}


def unescape(text: str) -> bytes:
    """A TOML literal string with Python bytes escapes, as bytes."""
    return text.encode("ascii").decode("unicode_escape").encode("latin-1")


def message_of(case: dict[str, Any]) -> bytes:
    raw = case["raw"].replace("@FILL@", "x" * case.get("fill", 0))
    return unescape(case.get("repeat", "")) * int(case.get("times", 0)) + unescape(raw)


def assert_findings(found: tuple[BadHeader, ...], case: dict[str, Any]) -> None:
    assert [f.kind for f in found] == case["kinds"], found
    if "details" in case:
        assert [f.detail for f in found] == case["details"]
    if "words" in case:
        for finding, word in zip(found, case["words"], strict=True):
            assert word in finding.detail, finding


@pytest.mark.parametrize("case", CASES["case"], ids=[c["name"] for c in CASES["case"]])
def test_case(case: dict[str, Any]) -> None:
    message = Message.parse(message_of(case))
    assert_findings(check_headers(message, case.get("smtputf8", False)), case)


@pytest.mark.parametrize("case", CASES["corpus"],
                         ids=[f"{c['file']}, smtputf8={c.get('smtputf8', False)}"
                              for c in CASES["corpus"]])
def test_corpus_message_with_a_bad_header(case: dict[str, Any]) -> None:
    message = Message.parse((CORPUS / case["file"]).read_bytes())
    assert_findings(check_headers(message, case.get("smtputf8", False)), case)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.eml")
                                        if p.name not in LISTED))
def test_corpus_message_is_clean(name: str) -> None:
    message = Message.parse((CORPUS / name).read_bytes())
    assert check_headers(message, False) == ()
    assert check_headers(message, True) == ()


def test_every_kind_is_covered_and_has_a_category() -> None:
    kinds = {k for c in CASES["case"] + CASES["corpus"] for k in c["kinds"]}
    assert kinds == set(AMAVIS_MINOR_CATEGORY)


def test_a_finding_in_a_header_copy() -> None:
    """What the lead puts in the delivered copy: amavis's first finding, one line here."""
    found = check_headers(Message.parse(unescape(CASES["case"][6]["raw"])), False)
    field = amavis_alert("BAD HEADER SECTION, " + found[0].detail)
    assert field.replace(b"\r\n\t", b" ") == (
        b"X-Amavis-Alert: BAD HEADER SECTION, Non-encoded non-ASCII data (and not UTF-8)"
        b" (char E9 hex): Subject: Caf\\x{E9}")
    assert b"\r\n\t" in field and all(len(line) <= 78 for line in field.split(b"\r\n"))


# ---- X-Amavis-Alert ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "field"), [
    ('BAD HEADER SECTION, Duplicate header field: "Subject"',
     b'X-Amavis-Alert: BAD HEADER SECTION, Duplicate header field: "Subject"'),
    ("BANNED, message contains r\u00e9sum\u00e9.exe",
     b"X-Amavis-Alert: BANNED, message contains r\\x{C3}\\x{A9}sum\\x{C3}\\x{A9}.exe"),
    ("BANNED, message contains a\r\nBcc: x@example.org\x00.exe",
     b"X-Amavis-Alert: BANNED, message contains a\\x{0D}\\x{0A}Bcc:\r\n\tx@example.org\\x{00}.exe"),
    ("BANNED, message contains \udce9.exe",  # an undecodable byte kept as surrogateescape
     b"X-Amavis-Alert: BANNED, message contains \\x{E9}.exe"),
    ("BANNED, message contains \ud800.exe",  # a lone surrogate from anywhere else
     b"X-Amavis-Alert: BANNED, message contains \\x{ED}\\x{A0}\\x{80}.exe"),
])
def test_amavis_alert(text: str, field: bytes) -> None:
    assert amavis_alert(text) == field


def test_amavis_alert_quotes_a_finding_unchanged() -> None:
    """A detail is printable ASCII already: the field shows it as it is (no double escape)."""
    detail = "Non-encoded non-ASCII data (and not UTF-8) (char E9 hex): Subject: Caf\\x{E9}"
    assert amavis_alert(detail).replace(b"\r\n\t", b" ").decode() == \
        f"X-Amavis-Alert: {detail}"


def test_amavis_alert_of_a_huge_text_stays_within_the_line_limit() -> None:
    field = amavis_alert("BANNED, message contains " + "\u00e9" * 100_000 + " " + "x" * 5000)
    assert len(field) < 1000
    assert re.search(rb"\\x\{[0-9A-F]{2}\}\[\.\.\.\]$", field)  # whole escapes only
    assert all(len(line) <= 998 for line in field.split(b"\r\n"))


def test_x_amavis_alert_of_the_sender_is_removed() -> None:
    assert is_forgeable("x-amavis-alert")
    message = Message.parse(b"From: a@example.org\r\nX-Amavis-Alert: BANNED, nothing\r\n"
                            b"X-Amavis-Modified: kept\r\n\r\nHello\r\n")
    assert forged_headers(message) == frozenset({"x-amavis-alert"})


# ---- properties (hypothesis) ----------------------------------------------------------------

def _property(check: Callable[..., None], *strategies: Any, examples: int = 300) -> None:
    h = pytest.importorskip("hypothesis")
    h.settings(max_examples=examples, deadline=None, database=None)(
        h.given(*strategies)(check))()


PIECES = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b"--", b"\xc3\xa9", b"\xe9",
          b"\xc2\x85", b"From: a@b\r\n", b"Date: x\r\n", b"Subject: s\r\n", b"\r\n\r\n",
          b"Content-Type: multipart/mixed", b"; boundary=", b'"', b"(", b")",
          b"Content-Transfer-Encoding: base64\r\n", b"x" * 1000]


def test_property_any_header_bytes() -> None:
    """Never an exception; known kinds, the first of each; details are printable ASCII that
    amavis_alert puts in a field unchanged."""
    h = pytest.importorskip("hypothesis")
    st = h.strategies
    data = st.lists(st.sampled_from(PIECES) | st.binary(max_size=30), max_size=40).map(
        b"".join)

    def check(raw: bytes, smtputf8: bool) -> None:
        found = check_headers(Message.parse(raw), smtputf8)
        kinds = [f.kind for f in found]
        assert len(kinds) == len(set(kinds)) and set(kinds) <= set(AMAVIS_MINOR_CATEGORY)
        for f in found:
            assert re.fullmatch(r"[\x20-\x7e]+", f.detail), f
            assert len(f.detail) < 800  # at most ~110 octets shown, each at most 6 characters
            # The field shows the detail as it is, but for folding and runs of spaces.
            shown = amavis_alert(f.detail).replace(b"\r\n\t", b" ").decode()
            assert shown == " ".join(f"X-Amavis-Alert: {f.detail}".split())

    _property(check, data, st.booleans())


def test_property_well_formed_headers_are_clean() -> None:
    """Fields with RFC 5322 names and printable values, From and Date once: no finding."""
    h = pytest.importorskip("hypothesis")
    st = h.strategies
    name_chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
    name = st.text(name_chars, min_size=1, max_size=20).map(lambda n: f"X-{n}")
    word = st.text("".join(map(chr, range(0x21, 0x7F))), min_size=1, max_size=30)
    value = st.lists(word, min_size=1, max_size=8).map(" ".join)
    folded = st.lists(value, min_size=1, max_size=3).map("\r\n\t".join)
    fields = st.lists(st.tuples(name, folded), max_size=30)

    def check(extra: list[tuple[str, str]], eol: str) -> None:
        lines = ["From: a@example.org", "Date: Mon, 1 Jan 2024 10:00:00 +0000"]
        lines += [f"{n}: {v}" for n, v in extra]
        raw = (eol.join(lines) + eol + eol + "Hello" + eol).replace("\r\n", eol)
        assert check_headers(Message.parse(raw.encode()), False) == ()

    _property(check, fields, st.sampled_from(["\r\n", "\n"]), examples=150)


def test_property_any_alert_text() -> None:
    h = pytest.importorskip("hypothesis")
    st = h.strategies

    def check(text: str) -> None:
        field = amavis_alert(text)
        assert re.fullmatch(rb"X-Amavis-Alert:[\x20-\x7e]*(\r\n\t[\x20-\x7e]+)*", field), field
        assert all(len(line) <= 998 for line in field.split(b"\r\n"))

    _property(check, st.text(max_size=3000))
