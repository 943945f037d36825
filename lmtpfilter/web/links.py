"""Signed, expiring, single-use release links for recipient notifications (issue 19).

A link is ``<base_url>/r/<token>``, the token ``<payload>.<mac>``, both base64url without
padding:

* payload: the UTF-8 text ``qid LF expires LF nonce LF recipient``; ``expires`` in unix
  seconds (decimal), ``nonce`` 16 random bytes in hex (the ``release_link_uses`` key), the
  recipient last because it is the only field of variable content (an address holds no LF);
* mac: HMAC-SHA256 with the ``[web] secret_key_file`` key over a domain-separation prefix
  and the payload, so the same key can sign session cookies and form checks without one
  value ever being valid as another.

The key signs; nothing is encrypted: the token shows its quarantine ID and recipient, which
the notification carrying it shows anyway. Opening a link only shows a confirmation page (a
GET never releases, so a mail scanner that follows links releases nothing); the POST checks
:meth:`ReleaseLinks.form_check`, then :meth:`ReleaseLinks.verify` and
:meth:`ReleaseLinks.consume`. A link works once: the nonce's row in ``release_link_uses``
is inserted in the caller's transaction, and of two requests at once the primary key lets
exactly one insert it.

This module imports nothing of the web framework: the filter imports it to put links in
notifications.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from ..quarantine import InvalidQuarantineId, validate_id
from ..store import ReleaseLinkUse

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ..config import WebConfig

KEY_BYTES = 32
MAX_TOKEN = 1000  # characters: far above any token we make, and all that is ever decoded
MAX_RECIPIENT = 254  # octets of UTF-8: a path is at most 256 with its <> (RFC 5321 §4.5.3.1.3)

# Different prefixes for different uses of the one key: a link's MAC can never pass as a form
# check, nor the other way round (and a later format gets a new version in its prefix).
_LINK_DOMAIN = b"lmtpfilter release link v1\0"
_FORM_DOMAIN = b"lmtpfilter release link form v1\0"

_B64 = re.compile(r"[A-Za-z0-9_-]+")
_EXPIRES = re.compile(r"[1-9][0-9]{0,11}")  # canonical: int() would also take " 1_0 "
_NONCE = re.compile(r"[0-9a-f]{32}")
# A mail address as the config's address lists take it, without control characters: the
# payload's separator can never be part of one.
_ADDRESS = re.compile(r"[^@\s<>\x00-\x1f\x7f]+@[^@\s<>\x00-\x1f\x7f]+")

NOT_VALID = "not a valid release link"
EXPIRED = "this link has expired"
USED = "this link was already used"


class InvalidLink(Exception):
    """A refused link; str(exc) is one of the fixed sentences above, safe to show."""


@dataclass(frozen=True)
class LinkClaim:
    """What a valid token says: release `qid` to `recipient`, once, before `expires`."""

    qid: str
    recipient: str
    nonce: str
    expires: int


def is_link_address(recipient: str) -> bool:
    """Can a link carry this recipient? (Any envelope recipient of ordinary form can.)"""
    if _ADDRESS.fullmatch(recipient) is None:
        return False
    try:
        return len(recipient.encode("utf-8")) <= MAX_RECIPIENT
    except UnicodeEncodeError:  # a lone surrogate (from a mis-decoded byte) is no address
        return False


class ReleaseLinks:
    def __init__(self, key: bytes, base_url: str, lifetime: float) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a release link key needs at least {KEY_BYTES} bytes")
        self._key = key
        self.base_url = base_url.rstrip("/")
        self.lifetime = lifetime

    @classmethod
    def from_config(cls, web: WebConfig) -> ReleaseLinks | None:
        """Links when [web] has both base_url and secret_key_file; a key file that is
        missing, short or readable by others raises ValueError (the caller fails at start)."""
        if not web.base_url or web.secret_key_file is None:
            return None
        return cls(load_key(web.secret_key_file), web.base_url, web.release_link_lifetime)

    def expiry(self, now: float | None = None) -> int:
        """When a link made at `now` stops working, in unix seconds."""
        return int((time.time() if now is None else now) + self.lifetime)

    def make(self, qid: str, recipient: str, now: float | None = None) -> str:
        """The link that releases `qid` to `recipient`; ValueError for an ID or an address
        that no link could carry (so no link is ever made that verify() would refuse)."""
        validate_id(qid)
        if not is_link_address(recipient):
            raise ValueError(f"no release link for the address {recipient[:80]!r}")
        payload = "\n".join(
            (qid, str(self.expiry(now)), secrets.token_hex(16), recipient)).encode("utf-8")
        return f"{self.base_url}/r/{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str, now: float | None = None) -> LinkClaim:
        """The claim of a token we made and that has not expired; InvalidLink otherwise.
        (Whether it was used already is consume()'s question: only the database knows.)"""
        if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 1:
            raise InvalidLink(NOT_VALID)
        encoded_payload, encoded_mac = token.split(".")
        payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidLink(NOT_VALID)
        claim = _parse(payload)  # signed by us; checked all the same, as a second line
        if (time.time() if now is None else now) >= claim.expires:
            raise InvalidLink(EXPIRED)
        return claim

    def form_check(self, token: str) -> str:
        """The value the confirmation form carries for this token, so that a POST to
        /r/TOKEN comes from the page we showed (a CSRF check that needs no session)."""
        data = token.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, _FORM_DOMAIN + data, hashlib.sha256).hexdigest()

    def consume(self, session: Session, claim: LinkClaim) -> None:
        """Mark the link used, in the caller's transaction; InvalidLink(USED) if it was.

        Two requests at once both get here: the primary key on the nonce lets one insert
        win, the other's flush fails (PostgreSQL waits for the first to commit; SQLite's
        BEGIN IMMEDIATE serialises them). The savepoint leaves the caller's session usable
        after the refusal. The caller commits this before it releases, so a second release
        can never start; a release that then fails has spent the link (the page says why,
        and the notification names the administrator)."""
        try:
            with session.begin_nested():
                session.add(ReleaseLinkUse(nonce=claim.nonce, quarantine_id=claim.qid,
                                           used_at=dt.datetime.now(dt.UTC)))
        except IntegrityError:
            raise InvalidLink(USED) from None

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _LINK_DOMAIN + payload, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict base64url without padding: only the canonical encoding of some bytes (another
    spelling of the same bytes, e.g. different unused bits in the last character, is a
    tampered token too)."""
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidLink(NOT_VALID)
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidLink(NOT_VALID) from None
    if _b64(data) != text:
        raise InvalidLink(NOT_VALID)
    return data


def _parse(payload: bytes) -> LinkClaim:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidLink(NOT_VALID) from None
    fields = text.split("\n")
    if len(fields) != 4:
        raise InvalidLink(NOT_VALID)
    qid, expires, nonce, recipient = fields
    try:
        validate_id(qid)
    except InvalidQuarantineId:
        raise InvalidLink(NOT_VALID) from None
    if not (_EXPIRES.fullmatch(expires) and _NONCE.fullmatch(nonce)
            and is_link_address(recipient)):
        raise InvalidLink(NOT_VALID)
    return LinkClaim(qid=qid, recipient=recipient, nonce=nonce, expires=int(expires))


def load_key(path: Path) -> bytes:
    """The key in `path`: at least 32 bytes, the file readable and writable by its owner only
    (whoever can read it can forge release links and sessions; whoever can write it, too).
    A final newline is dropped (a key typed or written by `echo`), unless it is one of the
    key's 32 bytes (32 random bytes end in a newline once in 256). ValueError otherwise,
    naming the file and how to make a good one."""
    advice = (f"create it with: head -c {KEY_BYTES} /dev/urandom > {path}; chmod 600 {path} "
              "(owned by the user lmtpfilter runs as)")
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ValueError(f"[web] secret_key_file {path}: not a regular file; {advice}")
            data = f.read(64 * 1024)
    except FileNotFoundError:
        raise ValueError(f"[web] secret_key_file {path} does not exist; {advice}") from None
    except OSError as exc:
        raise ValueError(f"[web] secret_key_file {path}: cannot read it "
                         f"({exc.strerror or exc.__class__.__name__}); {advice}") from None
    if stat.S_IMODE(mode) & 0o066:
        raise ValueError(f"[web] secret_key_file {path} is readable or writable by group or "
                         f"others (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}")
    if data.endswith(b"\n") and len(data) > KEY_BYTES:
        data = data[:-1]
    if len(data) < KEY_BYTES:
        raise ValueError(f"[web] secret_key_file {path} holds {len(data)} bytes, fewer than "
                         f"{KEY_BYTES}; {advice}")
    return data
