"""The argument syntax of MAIL and RCPT: paths, mailboxes, ESMTP parameters, xtext. Pure functions.

Used by the LMTP server state machine (``lmtp_server.py``); nothing here knows about replies.
What is checked, and where it is lenient on purpose:

* a path is ``<mailbox>``, ``<>`` (MAIL only) or ``<Postmaster>`` (RCPT only, any case), with
  an optional source route ``@a,@b:`` that is dropped (RFC 5321 §4.1.1.3, §4.1.2);
* a mailbox is a dot-string or quoted-string local part, ``@``, and a domain or an address
  literal (RFC 5321 §4.1.2, §4.1.3). With SMTPUTF8 the atoms, quoted text and domain labels
  may also hold non-ASCII characters (RFC 6531 §3.3). Not checked: the 64-octet local part
  and 63-octet label limits (exceeded in practice); instead the whole path, brackets
  included, is bounded by :data:`MAX_PATH` (RFC 5321 §4.5.3.1.3 says 256);
* lenient like Postfix and aiosmtpd: ``FROM: <a@b>`` (a space after the colon), a path
  without brackets, underscores in domain labels, several spaces between parameters;
* the mailbox is returned exactly as written (quotes kept, case kept, no lower-casing);
* parameters are ``keyword[=value]`` (RFC 5321 §4.1.2), matched case-insensitively and kept
  verbatim in ``raw``. MAIL knows SIZE (RFC 1870), BODY (RFC 6152), and when announced
  SMTPUTF8 (RFC 6531) and RET/ENVID (RFC 3461); RCPT knows NOTIFY/ORCPT (RFC 3461) when
  DSN is announced. An unknown or repeated keyword raises :class:`UnsupportedParameter`
  (555, RFC 5321 §4.1.1.11), a bad value :class:`BadParameter` (501).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_PATH = 512  # octets, "<" and ">" included

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_UTF8 = "\u00a0-\U0010ffff"  # UTF8-non-ascii of RFC 6532, minus the C1 controls


def _mailbox_pattern(utf8: str) -> re.Pattern[str]:
    atom = f"[{_ATEXT}{utf8}]+"
    quoted = f'"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{utf8}]|\\\\[\\x20-\\x7e])*"'
    label = f"[A-Za-z0-9_{utf8}](?:[A-Za-z0-9_{utf8}-]*[A-Za-z0-9_{utf8}])?"
    domain = f"{label}(?:\\.{label})*"
    literal = r"\[[\x21-\x5a\x5e-\x7e]+\]"  # dcontent, RFC 5321 §4.1.3
    route = f"@{domain}(?:,@{domain})*:"  # RFC 5321 §4.1.2 A-d-l, dropped (§4.1.1.3)
    return re.compile(
        f"(?:{route})?(?:(?P<postmaster>[Pp][Oo][Ss][Tt][Mm][Aa][Ss][Tt][Ee][Rr])|"
        f"(?P<mailbox>(?:{atom}(?:\\.{atom})*|{quoted})@(?P<domain>{domain}|{literal})))")


_MAILBOX = {False: _mailbox_pattern(""), True: _mailbox_pattern(_UTF8)}
# "<" then anything up to the first ">" that is not inside a quoted string.
_BRACKETED = re.compile(r'<((?:"(?:[^"\\]|\\.)*"|[^">])*)>')
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = {False: re.compile(r"[\x21-\x3c\x3e-\x7e]+"),
          True: re.compile(f"[\\x21-\\x3c\\x3e-\\x7e{_UTF8}]+")}
_XTEXT = {False: re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})+"),
          True: re.compile(f"(?:[\\x21-\\x2a\\x2c-\\x3c\\x3e-\\x7e{_UTF8}]|\\+[0-9A-Fa-f]{{2}})+")}
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")
_PRINTABLE = re.compile(r"[\t\x20-\x7e]*")  # "graphic and white space" US-ASCII, RFC 3461
_ADDR_TYPE = re.compile(f"[{_ATEXT}]+")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


class SyntaxProblem(ValueError):
    """An argument that does not parse; the message is fit for a reply text."""


class BadCommand(SyntaxProblem):
    """The command's form is wrong (501 5.5.4): no path at all, junk after it."""


class BadPath(SyntaxProblem):
    """The path is there but is not a valid mailbox (553, RFC 5321 §4.1.1.2)."""


class PathTooLong(SyntaxProblem):
    """The path exceeds :data:`MAX_PATH` (501, RFC 5321 §4.5.3.1.10)."""


class BadParameter(SyntaxProblem):
    """A parameter with a bad value or bad syntax (501 5.5.4)."""


class UnsupportedParameter(SyntaxProblem):
    """A parameter not announced, or given twice (555 5.5.4, RFC 5321 §4.1.1.11)."""


@dataclass(frozen=True, slots=True)
class MailParams:
    """MAIL FROM parameters, typed; ``raw`` holds them as received, to pass on verbatim."""

    size: int | None = None  # RFC 1870: the client's estimate, in octets
    body: str | None = None  # "7BIT" or "8BITMIME" (RFC 6152), upper-cased
    smtputf8: bool = False  # RFC 6531
    ret: str | None = None  # "FULL" or "HDRS" (RFC 3461), upper-cased
    envid: str | None = None  # RFC 3461, xtext as received (see xtext_decode)
    raw: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RcptParams:
    """RCPT TO parameters, typed; ``raw`` holds them as received, to pass on verbatim."""

    notify: tuple[str, ...] = ()  # ("NEVER",) or some of SUCCESS, FAILURE, DELAY; upper-cased
    orcpt: str | None = None  # "addr-type;xtext" as received (RFC 3461 §4.2)
    raw: tuple[str, ...] = ()

    @property
    def orcpt_type(self) -> str | None:
        return None if self.orcpt is None else self.orcpt.partition(";")[0]

    @property
    def orcpt_address(self) -> str | None:
        """The original recipient, xtext-decoded."""
        return None if self.orcpt is None else xtext_decode(self.orcpt.partition(";")[2])


def parse_path(arg: str, *, utf8: bool, null: bool, postmaster: bool) -> tuple[str, str]:
    """Split ``<path> params`` into the mailbox (route dropped) and the rest of the line.

    `null` allows ``<>`` (returned as ""); `postmaster` allows a bare ``<Postmaster>``.
    """
    text = arg.lstrip(" ")
    m = _BRACKETED.match(text)
    if m:
        path, rest = m.group(1), text[m.end():]
        size = len(m.group(0).encode("utf-8"))
    elif text and not text.startswith("<"):
        path, _, rest = text.partition(" ")  # no brackets: lenient, like Postfix
        rest = " " + rest if rest else ""
        size = len(path.encode("utf-8")) + 2
    else:
        raise BadCommand("expected <address>")
    if rest and not rest.startswith(" "):
        raise BadCommand("junk after the address")
    if size > MAX_PATH:
        raise PathTooLong(f"path longer than {MAX_PATH} octets")
    if not path:
        if null and m:
            return "", rest
        raise BadPath("empty address")
    found = _MAILBOX[utf8].fullmatch(path)
    if found and found.group("postmaster") and postmaster:
        return found.group("postmaster"), rest
    if not found or not found.group("mailbox") or len(found.group("domain").encode()) > 255:
        raise BadPath("invalid address")
    return found.group("mailbox"), rest


def split_params(rest: str, *, utf8: bool) -> list[tuple[str, str | None, str]]:
    """``keyword[=value]`` items as (KEYWORD upper-cased, value or None, raw item)."""
    out = []
    for item in rest.split(" "):
        if not item:
            continue
        keyword, eq, value = item.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (eq and not _VALUE[utf8].fullmatch(value)):
            raise BadParameter(f"bad parameter syntax: {_show(item)}")
        out.append((keyword.upper(), value if eq else None, item))
    return out


def parse_mail_params(rest: str, *, smtputf8: bool, dsn: bool) -> MailParams:
    """MAIL FROM parameters; SMTPUTF8 and RET/ENVID only if those extensions were announced."""
    known = {"SIZE", "BODY"} | ({"SMTPUTF8"} if smtputf8 else set()) | (
        {"RET", "ENVID"} if dsn else set())
    split = split_params(rest, utf8=smtputf8)
    items = _check_known(split, known)
    size = body = ret = envid = None
    if "SMTPUTF8" in items and items["SMTPUTF8"] is not None:
        raise BadParameter("SMTPUTF8 takes no value")  # RFC 6531 §3.4
    if "SIZE" in items:
        value = items["SIZE"]
        if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
            raise BadParameter("bad SIZE value")  # RFC 1870: 1*20DIGIT
        size = int(value)
    if "BODY" in items:
        body = _one_of("BODY", items["BODY"], ("7BIT", "8BITMIME"))
    if "RET" in items:
        ret = _one_of("RET", items["RET"], ("FULL", "HDRS"))
    if "ENVID" in items:
        envid = _xtext("ENVID", items["ENVID"], utf8=False)
    return MailParams(size=size, body=body, smtputf8="SMTPUTF8" in items, ret=ret, envid=envid,
                      raw=tuple(raw for _, _, raw in split))


def parse_rcpt_params(rest: str, *, dsn: bool, utf8: bool) -> RcptParams:
    """RCPT TO parameters; NOTIFY and ORCPT only if DSN was announced."""
    split = split_params(rest, utf8=utf8)
    items = _check_known(split, {"NOTIFY", "ORCPT"} if dsn else set())
    notify: tuple[str, ...] = ()
    orcpt = None
    if "NOTIFY" in items:
        value = items["NOTIFY"] or ""
        notify = tuple(v.upper() for v in value.split(","))
        valid = notify == ("NEVER",) or (
            set(notify) <= _NOTIFY and len(set(notify)) == len(notify))
        if not valid:  # RFC 3461 §4.1: NEVER alone, or a list of the other three
            raise BadParameter(f"bad NOTIFY value: {_show(value)}")
    if "ORCPT" in items:
        value = items["ORCPT"] or ""
        addr_type, semi, address = value.partition(";")
        if not semi or not _ADDR_TYPE.fullmatch(addr_type):
            raise BadParameter("bad ORCPT value: expected addr-type;xtext")
        # RFC 6533 §3: a utf-8 original address may hold UTF-8 when SMTPUTF8 is in use.
        _xtext("ORCPT", address, utf8=utf8 and addr_type.lower() == "utf-8")
        orcpt = value
    return RcptParams(notify=notify, orcpt=orcpt, raw=tuple(raw for _, _, raw in split))


def xtext_decode(text: str) -> str:
    """RFC 3461 §4: "+XX" is the octet XX; everything else stands for itself."""
    return _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), text)


def _check_known(items: Sequence[tuple[str, str | None, str]], known: set[str]
                 ) -> dict[str, str | None]:
    seen: dict[str, str | None] = {}
    for keyword, value, _raw in items:
        if keyword not in known:
            raise UnsupportedParameter(f"unsupported parameter: {_show(keyword)}")
        if keyword in seen:
            raise UnsupportedParameter(f"duplicate parameter: {keyword}")
        seen[keyword] = value
    return seen


def _one_of(keyword: str, value: str | None, allowed: tuple[str, ...]) -> str:
    if value is None or value.upper() not in allowed:
        raise BadParameter(f"bad {keyword} value, expected {' or '.join(allowed)}")
    return value.upper()


def _xtext(keyword: str, value: str | None, *, utf8: bool) -> str:
    if value is None or not _XTEXT[utf8].fullmatch(value):
        raise BadParameter(f"bad {keyword} value: not xtext")
    decoded = xtext_decode(value)
    if not utf8 and not _PRINTABLE.fullmatch(decoded):
        # RFC 3461 §4.2, §4.4: printable US-ASCII once decoded.
        raise BadParameter(f"bad {keyword} value: not printable once decoded")
    return value


def _show(text: str) -> str:
    """A client-supplied token quoted in a reply: bounded, ASCII."""
    short = text if len(text) <= 40 else text[:37] + "..."
    return short.encode("ascii", "backslashreplace").decode("ascii")
