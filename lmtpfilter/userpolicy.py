"""Per-user and per-domain overrides of [policy], from the database.

A recipient's policy is the config's [policy], overridden by its domain's row
(``@example.org``), overridden by its own row (``user@example.org``); NULL columns do not
override. Lookups are cached for a short time (``[database].policy_cache_ttl``) so that a busy
filter does not query the database for every message; ``lmtpfilter user set`` takes effect
within that time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .addresses import base_address, domain_of
from .config import PolicyConfig, per_user_options
from .options import InvalidValue, UserKind, key_of, parse_user_value, user_kind
from .policy import RecipientPolicy
from .store import Store, UserPolicy, utcnow

log = logging.getLogger(__name__)

# The overridable keys and their parsers, from the option table (config.PolicyConfig).
_PARSERS = {key_of(f): f.metadata["parse"] for f in per_user_options()}
OVERRIDABLE = tuple(_PARSERS)


class InvalidOverride(ValueError):
    """A per-user value, or the policy it makes, that the config file would refuse too."""


def validate_override(key: str, value: object) -> Any:
    """Check one override with the config's own parser; raises InvalidOverride naming the key."""
    if key not in _PARSERS:
        raise InvalidOverride(f"unknown policy key {key!r}")
    try:
        return parse_user_value(_PARSERS[key], value)
    except InvalidValue as exc:
        raise InvalidOverride(f"{key}: {exc}") from None


def apply(policy: RecipientPolicy, row: UserPolicy) -> RecipientPolicy:
    """`policy` with the row's overrides, each validated as the config file's values are, and
    the result held to the config's cross-key rules (tag <= tag2 <= kill)."""
    changes = overrides_of(row)
    overridden = policy.overridden({k: validate_override(k, v) for k, v in changes.items()})
    problem = overridden.inconsistency()
    if problem:
        raise InvalidOverride(f"with the overrides of {row.address}: {problem}")
    return overridden


def merge(config: PolicyConfig, address: str, rows: Mapping[str, UserPolicy],
          strict: bool = False) -> RecipientPolicy:
    """config < @domain row < address row (pure).

    A row that breaks a rule (written by hand in the database, or valid once and not after a
    config change) raises InvalidOverride when `strict`; otherwise it is skipped with an error
    in the log, and the recipient keeps the policy it would have without that row.
    """
    policy = RecipientPolicy.of(config, address)
    for key in reversed(keys_for(address, config.recipient_delimiter)):  # widest first
        row = rows.get(key)
        if row is None:
            continue
        try:
            policy = apply(policy, row)
        except InvalidOverride as exc:
            if strict:
                raise
            log.error("user policy %s ignored for %s: %s", key, address, exc)
    return policy


def keys_for(address: str, delimiter: str = "") -> list[str]:
    """The rows that apply to an address, most specific first: "alice+lists@dom", then
    "alice@dom" (with a recipient delimiter), then "@dom"; or to a domain: "@dom"."""
    a = address.lower()
    if a.startswith("@"):
        return [a]
    keys = [a, base_address(a, delimiter), "@" + domain_of(a)]
    return list(dict.fromkeys(keys))


def effective(config: PolicyConfig, key: str, rows: Mapping[str, UserPolicy],
              strict: bool = False) -> RecipientPolicy:
    """The policy of an address, or of any address of a domain when key is "@dom"."""
    return merge(config, "postmaster" + key if key.startswith("@") else key, rows, strict)


def rows_for(session: Session, key: str, delimiter: str = "") -> dict[str, UserPolicy]:
    return _rows(session, keys_for(key, delimiter))


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
            delimiter = self.config.recipient_delimiter
            keys = sorted({k for a in missing for k in keys_for(a, delimiter)})
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


def set_overrides(config: PolicyConfig, session: Session, address: str,
                  changes: Mapping[str, Any], unset: Iterable[str] = ()) -> UserPolicy:
    """Create or change the overrides of an address or a domain. Each value goes through its
    key's validator, and the policy it gives (for the domain and every user with overrides
    of its own below it) through the config's cross-key check; a refusal changes nothing."""
    key = normalise_key(address)
    row = session.get(UserPolicy, key)
    if row is None:
        row = UserPolicy(address=key, updated_at=utcnow())
        session.add(row)
    for k, v in changes.items():
        setattr(row, k, validate_override(k, v))
    for k in unset:
        if k not in _PARSERS:
            raise InvalidOverride(f"unknown policy key {k!r}")
        setattr(row, k, None)
    row.updated_at = utcnow()
    session.flush()
    # A domain's change also reaches every user of the domain that has overrides of its own.
    affected = [key]
    if key.startswith("@"):
        affected += session.scalars(select(UserPolicy.address).where(
            UserPolicy.address.endswith(key, autoescape=True),
            UserPolicy.address != key)).all()
    for target in affected:
        effective(config, target, rows_for(session, target, config.recipient_delimiter),
                  strict=True)
    return row


def per_user_values(policy: RecipientPolicy) -> dict[str, Any]:
    """The overridable keys of a recipient's policy, as `user set` takes them (an address
    list as "is this recipient listed")."""
    return {k: (policy.listed(getattr(policy, k)) if user_kind(_PARSERS[k]) is
                UserKind.MEMBERSHIP else getattr(policy, k))
            for k in OVERRIDABLE}


def overrides_of(row: UserPolicy) -> dict[str, Any]:
    return {k: getattr(row, k) for k in OVERRIDABLE if getattr(row, k) is not None}
