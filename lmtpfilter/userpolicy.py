"""Per-user and per-domain overrides of [policy], from the database.

A recipient's policy is the config's [policy], overridden by its domain's row
(``@example.org``), overridden by its own row (``user@example.org``); NULL columns do not
override. Lookups are cached for a short time (``[database].policy_cache_ttl``) so that a busy
filter does not query the database for every message; ``lmtpfilter user set`` takes effect
within that time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import fields, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .addresses import domain_of
from .config import PolicyConfig
from .policy import RecipientPolicy
from .store import Store, UserPolicy, utcnow

# The overridable keys, with their validators (the same as the config file's).
OVERRIDABLE = ("tag_level", "tag2_level", "kill_level", "spam_subject_tag", "spam_destiny",
               "virus_destiny", "junk_destiny", "junk_folder", "bypass_spam_checks",
               "bypass_virus_checks", "on_scanner_failure")


def validate_override(key: str, value: object) -> Any:
    """Check one override with the config's own parser; raises ValueError naming the key."""
    if key not in OVERRIDABLE:
        raise ValueError(f"unknown policy key {key!r}")
    if key in ("bypass_spam_checks", "bypass_virus_checks"):
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false")
        return value
    parse = next(f for f in fields(PolicyConfig) if f.name == key).metadata["parse"]
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def merge(config: PolicyConfig, address: str, rows: dict[str, UserPolicy]) -> RecipientPolicy:
    """config < @domain row < address row (pure)."""
    policy = RecipientPolicy.from_config(config, address)
    for key in ("@" + domain_of(address), address.lower()):
        row = rows.get(key)
        if row is None:
            continue
        changes = {k: getattr(row, k) for k in OVERRIDABLE if getattr(row, k) is not None}
        policy = replace(policy, **changes)
    return policy


def keys_for(address: str) -> list[str]:
    """The rows that apply to an address ("user@dom", "@dom") or to a domain ("@dom")."""
    a = address.lower()
    return [a] if a.startswith("@") else [a, "@" + domain_of(a)]


def effective(config: PolicyConfig, key: str, rows: dict[str, UserPolicy]) -> RecipientPolicy:
    """The policy of an address, or of any address of a domain when key is "@dom"."""
    return merge(config, "postmaster" + key if key.startswith("@") else key, rows)


def rows_for(session: Session, key: str) -> dict[str, UserPolicy]:
    return _rows(session, keys_for(key))


class DbPolicies:
    """A PolicySource backed by the user_policies table, with a TTL cache."""

    def __init__(self, store: Store, config: PolicyConfig, ttl: float) -> None:
        self.store = store
        self.config = config
        self.ttl = ttl
        self._cache: dict[str, tuple[float, RecipientPolicy]] = {}

    async def lookup(self, addresses: Iterable[str]) -> dict[str, RecipientPolicy]:
        now = time.monotonic()
        wanted = list(dict.fromkeys(addresses))
        result: dict[str, RecipientPolicy] = {}
        missing = []
        for a in wanted:
            hit = self._cache.get(a)
            if hit and now - hit[0] < self.ttl:
                result[a] = hit[1]
            else:
                missing.append(a)
        if missing:
            keys = sorted({k for a in missing for k in keys_for(a)})
            rows = await self.store.run(lambda s: _rows(s, keys), durable=False)
            for a in missing:
                result[a] = merge(self.config, a, rows)
                self._cache[a] = (now, result[a])
            if len(self._cache) > 100_000:  # bounded memory on a huge user base
                self._cache.clear()
        return result


def _rows(session: Session, keys: list[str]) -> dict[str, UserPolicy]:
    found = session.scalars(select(UserPolicy).where(UserPolicy.address.in_(keys)))
    return {row.address: row for row in found}


# ---- administration (the `lmtpfilter user` commands) -----------------------------------------

def normalise_key(address: str) -> str:
    """"user@dom" or "@dom", lower-cased; anything else is refused."""
    a = address.strip().lower()
    _local, at, domain = a.rpartition("@")
    if not at or not domain or "." not in domain or any(c in a for c in " <>\"\\\n\r\t"):
        raise ValueError(f"expected user@domain or @domain, got {address!r}")
    return a


def set_overrides(session: Session, address: str, changes: dict[str, Any],
                  unset: Iterable[str] = ()) -> UserPolicy:
    key = normalise_key(address)
    row = session.get(UserPolicy, key)
    if row is None:
        row = UserPolicy(address=key, updated_at=utcnow())
        session.add(row)
    for k, v in changes.items():
        setattr(row, k, validate_override(k, v))
    for k in unset:
        if k not in OVERRIDABLE:
            raise ValueError(f"unknown policy key {k!r}")
        setattr(row, k, None)
    row.updated_at = utcnow()
    return row


def overrides_of(row: UserPolicy) -> dict[str, Any]:
    return {k: getattr(row, k) for k in OVERRIDABLE if getattr(row, k) is not None}
