"""Matching recipient addresses against lists of addresses and domains (pure functions).

Lists hold "user@example.org" (one address), "@example.org" (a domain) or, in local_domains,
"example.org". Comparison is case-insensitive, as mail administrators expect (RFC 5321 says
local parts may be case-sensitive, but no deployment relies on that for policy lists).
"""

from __future__ import annotations

from collections.abc import Iterable


def domain_of(address: str) -> str:
    """The domain part, lower-cased; "" for an address without one ("postmaster")."""
    _local, at, domain = address.rpartition("@")
    return domain.lower() if at else ""


def matches(address: str, entries: Iterable[str]) -> bool:
    """True if `address` is in the list itself or its domain is."""
    addr = address.lower()
    domain = domain_of(addr)
    if not domain:  # "postmaster" alone: entries are addresses or domains, never local parts
        return False
    wanted = {addr, domain, "@" + domain}
    return any(entry in wanted for entry in entries)
