"""Address lists with amavisd-new's meaning, and matching recipients against them (pure).

Every address list of the config (local_domains, bypass_*_checks) is an :class:`AddressList`.
Its entries are written as an amavis administrator writes them (amavisd-new's README.lookups,
"ACL lookups"; Debian's ``@local_domains_acl = ( ".$mydomain" )``):

==========================  ==============================================================
``example.org``             that domain (``@example.org`` is the same)
``.example.org``            the domain and all its subdomains (``@.example.org`` too)
``.``                       every domain: everyone
``user@example.org``        that address
``user@``                   that local part, in any domain
``!entry``                  not: the first entry that matches decides, so a ``!`` entry
                            carves an exception out of a later, wider one
==========================  ==============================================================

Matching is case-insensitive (local parts too, as amavis and every deployment do). With a
recipient delimiter (``[policy] recipient_delimiter``, Postfix's parameter of the same name),
``alice+lists@example.org`` is matched as itself and as ``alice@example.org``. A domain is
matched in both its Unicode and its ASCII (``xn--``) form. An entry that can never match a
recipient is refused when the config is loaded, naming the entry.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass


def domain_of(address: str) -> str:
    """The domain part, lower-cased; "" for an address without one ("postmaster")."""
    _local, at, domain = address.rpartition("@")
    return domain.lower() if at else ""


def base_local_part(local: str, delimiter: str) -> str:
    """The local part without its extension: "alice+lists" -> "alice" with delimiter "+".
    Several delimiter characters may be given; the first one found cuts (Postfix's rule)."""
    if not delimiter:
        return local
    cut = min((i for i in (local.find(c) for c in delimiter) if i > 0), default=-1)
    return local[:cut] if cut > 0 else local


def base_address(address: str, delimiter: str) -> str:
    """The address without the extension of its local part (itself if it has none)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    return f"{base_local_part(local, delimiter)}@{domain}"


class EntryKind(enum.Enum):
    EVERYONE = "."
    DOMAIN = "domain"
    SUBDOMAINS = ".domain"
    ADDRESS = "user@domain"
    LOCAL_PART = "user@"


@dataclass(frozen=True, slots=True)
class Entry:
    kind: EntryKind
    local: str = ""
    domains: tuple[str, ...] = ()  # the domain in its Unicode and ASCII forms
    negated: bool = False

    def matches(self, local: str, base: str, domain: str) -> bool:
        if self.kind is EntryKind.EVERYONE:
            return True
        if self.kind is EntryKind.LOCAL_PART:
            return self.local in (local, base)
        if self.kind is EntryKind.ADDRESS:
            return self.local in (local, base) and domain in self.domains
        if self.kind is EntryKind.DOMAIN:
            return domain in self.domains
        return any(domain == d or domain.endswith("." + d) for d in self.domains)


class InvalidEntry(ValueError):
    """An entry that can never match a recipient."""


_LABEL = re.compile(r"[^\W_]([\w-]*[^\W_])?|_[\w-]*")  # letters and digits in any script
_ADDRESS_LITERAL = re.compile(r"\[[0-9A-Fa-f:.]+\]|\[IPv6:[0-9A-Fa-f:.]+\]", re.IGNORECASE)
_BAD_LOCAL = re.compile(r"[\s<>@\x00-\x1f\x7f]")


def _domain_forms(domain: str, entry: str) -> tuple[str, ...]:
    if _ADDRESS_LITERAL.fullmatch(domain):
        return (domain,)
    labels = domain.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or len(domain) > 255:
        raise InvalidEntry(f"{entry!r} can never match: {domain!r} is not a domain name")
    forms = [domain]
    try:
        ascii_form = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        ascii_form = domain
    if ascii_form != domain:
        forms.append(ascii_form)
    elif "xn--" in domain:
        with contextlib.suppress(UnicodeError):
            forms.append(domain.encode("ascii").decode("idna").lower())
    return tuple(forms)


def parse_entry(text: str) -> Entry:
    """One list entry, in any of the module's forms; InvalidEntry if it can never match."""
    if not isinstance(text, str) or not text:
        raise InvalidEntry(f"{text!r} can never match: an entry must be a non-empty string")
    entry = text.lower()
    negated = entry.startswith("!")
    body = entry[1:] if negated else entry
    if body in (".", "@."):
        return Entry(EntryKind.EVERYONE, negated=negated)
    local, at, domain = body.rpartition("@")
    if at and local:
        if _BAD_LOCAL.search(local):
            raise InvalidEntry(f"{text!r} can never match: its local part has a space, an "
                               "@, a control character or an angle bracket")
        if not domain:
            return Entry(EntryKind.LOCAL_PART, local=local, negated=negated)
        if domain.startswith("."):
            raise InvalidEntry(f"{text!r} can never match: write 'user@domain', or "
                               "'.domain' for a domain and its subdomains")
        return Entry(EntryKind.ADDRESS, local, _domain_forms(domain, text), negated)
    if at and not domain:
        raise InvalidEntry(f"{text!r} can never match: '@' alone names nothing")
    if domain.startswith(".") and domain != ".":
        return Entry(EntryKind.SUBDOMAINS, domains=_domain_forms(domain[1:], text),
                     negated=negated)
    return Entry(EntryKind.DOMAIN, domains=_domain_forms(domain, text), negated=negated)


class AddressList(tuple[str, ...]):
    """The entries as written (lower-cased), with their meaning compiled once.

    A tuple, so that the config's rendering and comparisons see the entries themselves.
    """

    _entries: tuple[Entry, ...]

    def __new__(cls, entries: Iterable[str] = ()) -> AddressList:
        texts = tuple(entries)
        parsed = tuple(parse_entry(t) for t in texts)
        self = super().__new__(cls, (t.lower() for t in texts))
        self._entries = parsed
        return self

    def matches(self, address: str, delimiter: str = "") -> bool:
        """Is `address` (or, with a delimiter, its address without extension) listed?"""
        if not self._entries:
            return False
        local, at, domain = address.lower().rpartition("@")
        if not at:
            local, domain = address.lower(), ""
        base = base_local_part(local, delimiter)
        for entry in self._entries:
            if entry.matches(local, base, domain):
                return not entry.negated
        return False


NOBODY = AddressList()


def only(address: str) -> AddressList:
    """The list that holds exactly this address (a per-user "listed" override)."""
    return _Only(address)


class _Only(AddressList):
    """One address, matched exactly (with or without a delimiter: the address as given)."""

    def __new__(cls, address: str) -> _Only:
        self = tuple.__new__(cls, (address.lower(),))
        self._entries = ()
        return self

    def matches(self, address: str, delimiter: str = "") -> bool:
        return address.lower() == self[0]


def matches(address: str, entries: Iterable[str]) -> bool:
    """True if `address` is in the list (entries in any form of the module docstring)."""
    listed = entries if isinstance(entries, AddressList) else AddressList(entries)
    return listed.matches(address)
