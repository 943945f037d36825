"""Release links (lmtpfilter/web/links.py): a link we made verifies to what it was made for,
anything else is refused with a sentence safe to show, each link works once (the database's
primary key decides, also for two requests at once), and the key file is refused unless it is
long enough and private."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from lmtpfilter.config import from_mapping
from lmtpfilter.quarantine import ID_PATTERN
from lmtpfilter.store import ReleaseLinkUse, Store, upgrade
from lmtpfilter.web import links as lk
from lmtpfilter.web.links import InvalidLink, LinkClaim, ReleaseLinks, load_key

KEY = bytes(range(32))
BASE = "https://mail.example.org/quarantine"
QID = "AbCdEfGhIjKlMnOpQrStUv"
NOW = 1_800_000_000.0
DAY = 86400.0
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def make_links(key: bytes = KEY) -> ReleaseLinks:
    return ReleaseLinks(key, BASE, 7 * DAY)


def token_of(url: str) -> str:
    assert url.startswith(BASE + "/r/")
    return url.removeprefix(BASE + "/r/")


def signed(payload: bytes, links: ReleaseLinks | None = None) -> str:
    """A token with a valid MAC over any payload: what a holder of the key could make, to
    show that the payload is checked too."""
    links = links or make_links()
    return f"{lk._b64(payload)}.{lk._b64(links._mac(payload))}"


def refused(links: ReleaseLinks, token: str, now: float = NOW) -> str:
    with pytest.raises(InvalidLink) as caught:
        links.verify(token, now)
    return str(caught.value)


# ---- make and verify ------------------------------------------------------------------------

def test_a_link_verifies_to_what_it_was_made_for() -> None:
    links = make_links()
    url = links.make(QID, "Alice+lists@Example.org", NOW)
    claim = links.verify(token_of(url), NOW + 1)
    assert (claim.qid, claim.recipient, claim.expires) == (QID, "Alice+lists@Example.org",
                                                           int(NOW + 7 * DAY))
    assert len(claim.nonce) == 32
    assert len(url) < 300  # fits a line of a notification and any browser's address bar


def test_two_links_for_the_same_message_differ() -> None:
    """Each has its own nonce: using one does not spend the other."""
    links = make_links()
    first, second = (links.verify(token_of(links.make(QID, "a@example.org", NOW)), NOW)
                     for _ in range(2))
    assert first.nonce != second.nonce


def test_expiry() -> None:
    links = make_links()
    token = token_of(links.make(QID, "a@example.org", NOW))
    assert links.verify(token, NOW + 7 * DAY - 1).qid == QID
    assert refused(links, token, NOW + 7 * DAY) == "this link has expired"


def test_another_keys_link_is_refused() -> None:
    token = token_of(make_links(b"k" * 32).make(QID, "a@example.org", NOW))
    assert refused(make_links(), token) == "not a valid release link"


def test_make_refuses_what_no_link_could_carry() -> None:
    links = make_links()
    for qid, recipient in [("short", "a@example.org"), (QID, "no-at-sign"),
                           (QID, '"a b"@example.org'), (QID, "a@b\nc"),
                           (QID, "a" * 250 + "@example.org")]:
        with pytest.raises(ValueError):
            links.make(qid, recipient, NOW)


MALFORMED = {
    "empty": "",
    "no dot": "abc",
    "two dots": "a.b.c",
    "only a dot": ".",
    "too long": "A" * 600 + "." + "A" * 401,
    "not base64": "ab$c.defg",
    "padding": "YWJj.YWJj=",
    "impossible length": "YWJjZ.YWJj",
    "non-ASCII": "YWJj.YWJjé",
    "space": "YWJj .YWJj",
}


def test_another_spelling_of_the_same_bytes_is_refused() -> None:
    """The last character of a base64 text may carry unused bits: changing only those gives
    the same bytes, and so the same MAC. Every other last character is refused."""
    links = make_links()
    token = token_of(links.make(QID, "a@example.org", NOW))
    payload, mac = token.split(".")
    for char in B64:
        for changed in (f"{payload[:-1]}{char}.{mac}", f"{payload}.{mac[:-1]}{char}"):
            if changed != token:
                assert refused(links, changed) == "not a valid release link", changed


@pytest.mark.parametrize("token", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_tokens_are_refused(token: str) -> None:
    assert refused(make_links(), token) == "not a valid release link"


GOOD_NONCE = "0123456789abcdef" * 2
BAD_PAYLOADS = {
    "three fields": f"{QID}\n1900000000\n{GOOD_NONCE}".encode(),
    "five fields": f"{QID}\n1900000000\n{GOOD_NONCE}\na@example.org\nx".encode(),
    "bad UTF-8": f"{QID}\n1900000000\n{GOOD_NONCE}\n".encode() + b"\xff@example.org",
    "bad qid": f"../etc/passwd/xxxxxxxxx\n1900000000\n{GOOD_NONCE}\na@example.org".encode(),
    "not an address": f"{QID}\n1900000000\n{GOOD_NONCE}\nnobody".encode(),
    "expiry with a sign": f"{QID}\n+1900000000\n{GOOD_NONCE}\na@example.org".encode(),
    "expiry with a leading zero": f"{QID}\n01900000000\n{GOOD_NONCE}\na@example.org".encode(),
    "short nonce": f"{QID}\n1900000000\nabc\na@example.org".encode(),
}


@pytest.mark.parametrize("payload", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_a_signed_payload_of_the_wrong_form_is_refused(payload: bytes) -> None:
    """Defence in depth: even with a valid MAC, only our own format is accepted."""
    assert refused(make_links(), signed(payload)) == "not a valid release link"


def test_a_signed_payload_of_the_right_form_is_accepted() -> None:
    """The counterpart of the table above: signed() makes tokens verify() takes."""
    payload = f"{QID}\n1900000000\n{GOOD_NONCE}\na@example.org".encode()
    assert make_links().verify(signed(payload), NOW) == LinkClaim(
        QID, "a@example.org", GOOD_NONCE, 1_900_000_000)


def test_form_check() -> None:
    links = make_links()
    token = token_of(links.make(QID, "a@example.org", NOW))
    check = links.form_check(token)
    assert check == links.form_check(token) and len(check) == 64
    assert check != links.form_check(token + "x")
    assert check != make_links(b"k" * 32).form_check(token)
    assert check not in token  # not the link's own MAC: one cannot stand for the other
    assert len(links.form_check("\udcff garbage")) == 64  # any path text, no exception


# ---- properties (hypothesis) -----------------------------------------------------------------

ids = st.from_regex(ID_PATTERN, fullmatch=True)
atom = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                             blacklist_characters="@<>\x85\x1c\x1d\x1e\x1f"),
               min_size=1, max_size=40)
addresses = st.builds(lambda local, domain: f"{local}@{domain}", atom, atom).filter(
    lk.is_link_address)


@settings(max_examples=300, deadline=None, database=None)
@given(ids, addresses, st.floats(0, 4e9))
def test_property_round_trip(qid: str, recipient: str, now: float) -> None:
    links = make_links()
    claim = links.verify(token_of(links.make(qid, recipient, now)), now)
    assert (claim.qid, claim.recipient) == (qid, recipient)


@st.composite
def tampered(draw: st.DrawFn) -> tuple[str, str]:
    """A valid token and a changed one: a character replaced, the token cut, or a
    character appended."""
    links = make_links()
    token = token_of(links.make(draw(ids), draw(addresses), NOW))
    how = draw(st.sampled_from(["flip", "cut", "append"]))
    i = draw(st.integers(0, len(token) - 1))
    other = st.sampled_from(B64 + ".=é\x00 ") | st.characters()
    if how == "flip":
        char = draw(other.filter(lambda c: c != token[i]))
        changed = token[:i] + char + token[i + 1:]
    elif how == "cut":
        changed = draw(st.sampled_from([token[:i], token[i + 1:]]))
    else:
        changed = token + draw(other)
    return token, changed


@settings(max_examples=500, deadline=None, database=None)
@given(tampered())
def test_property_any_tampering_is_refused(pair: tuple[str, str]) -> None:
    token, changed = pair
    links = make_links()
    assert links.verify(token, NOW).qid  # the original is good
    assert refused(links, changed) == "not a valid release link"


# ---- consume: each link once ---------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path}/links.db"
    upgrade(url)
    s = Store(url)
    yield s
    s.close()


def test_a_link_works_once(store: Store) -> None:
    links = make_links()
    claim = links.verify(token_of(links.make(QID, "a@example.org", NOW)), NOW)
    store.transaction(lambda s: links.consume(s, claim))

    def again(session: Session) -> str:
        with pytest.raises(InvalidLink) as caught:
            links.consume(session, claim)
        # The session stays usable after the refusal (a savepoint took the failed insert).
        row = session.get(ReleaseLinkUse, claim.nonce)
        assert row is not None and row.quarantine_id == QID
        return str(caught.value)

    assert store.transaction(again) == "this link was already used"


def test_two_requests_at_once_release_once(store: Store) -> None:
    """Both verify, both consume at the same moment: the primary key lets one through."""
    links = make_links()
    claim = links.verify(token_of(links.make(QID, "a@example.org", NOW)), NOW)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def request() -> None:
        barrier.wait()
        try:
            store.transaction(lambda s: links.consume(s, claim))
            outcomes.append("released")
        except InvalidLink as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=request) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["released", "this link was already used"]


# ---- the key -------------------------------------------------------------------------------

def write_key(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(("data", "key"), [
    (b"k" * 32, b"k" * 32),
    (b"k" * 64 + b"\n", b"k" * 64),  # a hex key written with echo
    (b"k" * 31 + b"\n", b"k" * 31 + b"\n"),  # 32 random bytes that end in a newline
    (b"k" * 32 + b"\n", b"k" * 32),
    (b"k" * 31 + b"\n\n", b"k" * 31 + b"\n"),  # only one newline is dropped
])
def test_a_good_key_file(tmp_path: Path, data: bytes, key: bytes) -> None:
    assert load_key(write_key(tmp_path / "key", data)) == key


@pytest.mark.parametrize(("data", "mode", "says"), [
    (b"k" * 31, 0o600, "holds 31 bytes, fewer than 32"),
    (b"k" * 16 + b"\n", 0o600, "holds 17 bytes"),
    (b"", 0o600, "holds 0 bytes"),
    (b"k" * 32, 0o640, "readable or writable by group or others (mode 0640)"),
    (b"k" * 32, 0o604, "readable or writable by group or others (mode 0604)"),
    (b"k" * 32, 0o620, "readable or writable by group or others (mode 0620)"),
])
def test_a_bad_key_file_is_refused(tmp_path: Path, data: bytes, mode: int, says: str) -> None:
    path = write_key(tmp_path / "key", data, mode)
    with pytest.raises(ValueError) as caught:
        load_key(path)
    assert str(caught.value).startswith(f"[web] secret_key_file {path}")
    assert says in str(caught.value) and "chmod 600" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        load_key(tmp_path / "nothing")
    assert str(caught.value) == (
        f"[web] secret_key_file {tmp_path}/nothing does not exist; create it with: "
        f"head -c 32 /dev/urandom > {tmp_path}/nothing; chmod 600 {tmp_path}/nothing "
        "(owned by the user lmtpfilter runs as)")


def test_a_directory_is_no_key_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="secret_key_file"):
        load_key(tmp_path)


def test_from_config(tmp_path: Path) -> None:
    key = write_key(tmp_path / "key", KEY)
    assert ReleaseLinks.from_config(from_mapping({}).web) is None
    assert ReleaseLinks.from_config(from_mapping({"web": {"base_url": BASE}}).web) is None
    assert ReleaseLinks.from_config(
        from_mapping({"web": {"secret_key_file": str(key)}}).web) is None
    web = from_mapping({"web": {"base_url": BASE + "/", "secret_key_file": str(key),
                                "release_link_lifetime": "2d"}}).web
    links = ReleaseLinks.from_config(web)
    assert links is not None
    claim = links.verify(token_of(links.make(QID, "a@example.org", NOW)), NOW)
    assert claim.expires == NOW + 2 * DAY
    os.chmod(key, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        ReleaseLinks.from_config(web)
