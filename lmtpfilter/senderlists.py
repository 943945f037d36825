"""Per-recipient sender lists: allow, bypass and block, as amavisd-new's wblist (pure + cache).

An entry says what a recipient key thinks of a sender key (table ``sender_lists``, managed
with ``lmtpfilter senders``, lmtpfilter/senders_admin.py):

=============  ===============================================================================
``allow``      the spam score is shifted by the entry's score, or by ``[senders] allow_shift``
               (default -3) when it has none: amavis's soft-whitelisting
               (``@score_sender_maps``). The shifted score then meets the recipient's levels
               as any score does (tag, tag2, kill, dsn cutoff).
``bypass``     the spam verdict is not applied for this recipient: delivered as not spam, no
               spam tag or subject tag, never killed for spam (amavis's whitelist_sender).
               Viruses, banned parts and bad headers are still decided as usual.
``block``      treated as spam at the recipient's kill level whatever the score (amavis's
               blacklist_sender): its spam_destiny and dsn_cutoff_level apply.
=============  ===============================================================================

Keys (stored normalised by :func:`recipient_key` and :func:`sender_key`: lower-case, domains
in their ASCII ``xn--`` form; a Unicode domain is accepted and matches both forms):

- recipient: ``user@example.org``, ``@example.org`` (that domain), ``.example.org`` (that
  domain and its subdomains) or ``.`` (everyone);
- sender: ``a@b.example``, ``@b.example`` (that domain), ``.b.example`` (that domain and its
  subdomains) or ``<>`` (the null sender, which matches nothing else).

Matching one (recipient, sender), :meth:`SenderIndex.match`, as amavis's lookups go: the
recipient's keys from the most specific (the address; its base address with
``[policy] recipient_delimiter``, alice+x@ -> alice@; ``@domain``; ``.domain``, ``.parent``
... from the longest; ``.``); **the first key that has an entry matching the sender decides**,
and a key whose entries do not match the sender gives way to the next. Within that key the
most specific sender entry wins: the address, the address without its extension (VERP
bounces: list+bounce-x@ matches list@, as amavis strips the delimiter from senders too),
``@domain``, then ``.domain``, ``.parent``, ... from the longest. At equal specificity (two
rows that normalise to the same key, written by hand) bypass and allow win over block: a
whitelisted sender is not blacklisted. Everything is case-insensitive.

The policy function receives a :class:`SenderMatch` or None per recipient. The cache,
:class:`SenderLists`, reloads the whole table at most every ``[database] policy_cache_ttl``;
like userpolicy.DbPolicies it serves what it has within the TTL, and when a reload fails
(database down) the error propagates, so that the filter answers 451 4.3.0 as it does for a
failed policy lookup (docs/design.md §3, §5). The hot path never queries per message.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .addresses import EntryKind, InvalidEntry, base_local_part, parse_entry

log = logging.getLogger(__name__)

NULL_SENDER = "<>"
EVERYONE = "."
MAX_KEY_LENGTH = 512  # the columns' size
DEFAULT_ALLOW_SHIFT = -3.0  # [senders] allow_shift's default (config.SendersConfig)


class SenderAction(enum.StrEnum):
    ALLOW = "allow"
    BYPASS = "bypass"
    BLOCK = "block"


# At equal specificity (amavis: a whitelisted sender is not blacklisted): lower wins.
_PRECEDENCE = {SenderAction.BYPASS: 0, SenderAction.ALLOW: 1, SenderAction.BLOCK: 2}


@dataclass(frozen=True, slots=True)
class SenderMatch:
    """What the sender lists say for one recipient: the input of the policy function."""

    action: SenderAction
    score: float  # allow: the shift to add to the spam score (resolved); 0.0 otherwise
    entry: str  # the deciding entry, e.g. "allow <@b.example> for <user@example.org>"


class InvalidKey(ValueError):
    """A recipient or sender key that cannot be stored (one line, naming the argument)."""


# ---- keys -------------------------------------------------------------------------------------

def _ascii_form(domains: tuple[str, ...]) -> str:
    """The domain's ASCII (xn--) form among parse_entry's forms; else the form given."""
    return next((d for d in domains if d.isascii()), domains[0])


def _parse(text: str, what: str) -> tuple[EntryKind, str, str]:
    """(kind, local part, ASCII domain) of a key in addresses.py's forms, or InvalidKey."""
    if not isinstance(text, str):
        raise InvalidKey(f"{what}: expected a string, got {text!r}")
    value = text.strip()
    if len(value) > 2 and value[0] == "<" and value[-1] == ">":
        value = value[1:-1]
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidKey(f"{what}: longer than {MAX_KEY_LENGTH} characters")
    if value.startswith("!"):
        raise InvalidKey(f"{what}: {text!r}: a sender list entry cannot be negated")
    try:
        entry = parse_entry(value)
    except InvalidEntry as exc:
        raise InvalidKey(f"{what}: {exc}") from None
    if entry.kind is EntryKind.LOCAL_PART:
        raise InvalidKey(f"{what}: {text!r}: a local part alone is not a key; write "
                         "user@domain, @domain or .domain")
    domain = _ascii_form(entry.domains) if entry.domains else ""
    if entry.kind is EntryKind.SUBDOMAINS and domain.startswith("["):
        raise InvalidKey(f"{what}: {text!r} can never match: an address literal has no "
                         "subdomains")
    return entry.kind, entry.local, domain


def _key(kind: EntryKind, local: str, domain: str) -> str:
    if kind is EntryKind.EVERYONE:
        return EVERYONE
    if kind is EntryKind.ADDRESS:
        return f"{local}@{domain}"
    return ("@" if kind is EntryKind.DOMAIN else ".") + domain


def recipient_key(text: str) -> str:
    """"user@dom", "@dom" (or "dom"), ".dom" (and subdomains) or "." (everyone), normalised."""
    return _key(*_parse(text, "recipient"))


def sender_key(text: str) -> str:
    """"a@dom", "@dom" (or "dom"), ".dom" (and subdomains) or "<>" (null sender), normalised."""
    if isinstance(text, str) and text.strip() == NULL_SENDER:
        return NULL_SENDER
    kind, local, domain = _parse(text, "sender")
    if kind is EntryKind.EVERYONE:
        raise InvalidKey(f"sender: {text!r}: an entry for every sender is not a sender list; "
                         "name an address, @domain or .domain")
    return _key(kind, local, domain)


def describe(action: str, recipient: str, sender: str) -> str:
    """An entry as text: "allow <@b.example> for <user@example.org>"."""
    shown = sender if sender == NULL_SENDER else f"<{sender}>"
    return f"{action} {shown} for <{recipient}>"


# ---- matching (pure) --------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _idna(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:  # hostile or over-long labels: compared as given, never raised
        return domain


def _split(address: str) -> tuple[str, str]:
    """(lower-cased local part, ASCII domain); ("", "") for the null sender."""
    a = address.strip()
    if len(a) >= 2 and a[0] == "<" and a[-1] == ">":
        a = a[1:-1]
    local, at, domain = a.lower().rpartition("@")
    if not at:
        return domain, ""
    if not domain.isascii():
        domain = _idna(domain)
    return local, domain.rstrip(".")


def _domain_keys(domain: str) -> list[str]:
    """"@sub.example.org", ".sub.example.org", ".example.org", ".org"."""
    if domain.startswith("["):  # an address literal has no parents
        return ["@" + domain]
    labels = domain.split(".")
    return ["@" + domain] + ["." + ".".join(labels[i:]) for i in range(len(labels))]


def _address_keys(local: str, domain: str, delimiter: str) -> list[str]:
    if not domain:
        return [local]
    base = base_local_part(local, delimiter) if delimiter else local
    if base == local:
        return [f"{local}@{domain}"]
    return [f"{local}@{domain}", f"{base}@{domain}"]


# Recipients and senders repeat (local users, mailing lists): their keys are made once.
@functools.lru_cache(maxsize=8192)
def recipient_keys(recipient: str, delimiter: str = "") -> tuple[str, ...]:
    """The keys that apply to a recipient, most specific first."""
    local, domain = _split(recipient)
    if not domain:
        return (*_address_keys(local, domain, delimiter), EVERYONE)
    return (*_address_keys(local, domain, delimiter), *_domain_keys(domain), EVERYONE)


@functools.lru_cache(maxsize=8192)
def sender_keys(sender: str, delimiter: str = "") -> tuple[str, ...]:
    """The keys a sender matches, most specific first; the null sender only "<>"."""
    local, domain = _split(sender)
    if not local and not domain:
        return (NULL_SENDER,)
    if not domain:
        return tuple(_address_keys(local, domain, delimiter))
    return (*_address_keys(local, domain, delimiter), *_domain_keys(domain))


class SenderIndex:
    """The whole table, by recipient key then sender key; built once per reload."""

    def __init__(self, entries: Mapping[str, Mapping[str, SenderMatch]]) -> None:
        self._entries = entries

    @classmethod
    def build(cls, rows: Iterable[tuple[str, str, str, float | None]],
              allow_shift: float = DEFAULT_ALLOW_SHIFT) -> SenderIndex:
        """From (recipient, sender, action, score) rows. A row that cannot match (written by
        hand in the database) is skipped with an error in the log, as userpolicy skips a bad
        override; two rows with the same normalised keys keep the one that wins (bypass,
        allow, block)."""
        entries: dict[str, dict[str, SenderMatch]] = {}
        for recipient, sender, action, score in rows:
            try:
                found = _match_of(recipient, sender, action, score, allow_shift)
            except (InvalidKey, ValueError, TypeError) as exc:
                log.error("sender list entry ignored: %r %r %r: %s",
                          recipient, sender, action, exc)
                continue
            by_sender = entries.setdefault(found[0], {})
            old = by_sender.get(found[1])
            if old is None or _PRECEDENCE[found[2].action] < _PRECEDENCE[old.action]:
                by_sender[found[1]] = found[2]
        return cls(entries)

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def __bool__(self) -> bool:
        return bool(self._entries)

    def match(self, recipient: str, sender: str, delimiter: str = "") -> SenderMatch | None:
        """The entry that decides for this (recipient, sender), or None (module docstring)."""
        return self.match_all(sender, (recipient,), delimiter)[recipient]

    def match_all(self, sender: str, recipients: Iterable[str], delimiter: str = ""
                  ) -> dict[str, SenderMatch | None]:
        """match() for each recipient of one message: the sender's keys are made once, and
        only if some recipient key has entries."""
        result: dict[str, SenderMatch | None] = {}
        keys: tuple[str, ...] | None = None
        for recipient in recipients:
            result[recipient] = None
            if not self._entries:
                continue
            for rkey in recipient_keys(recipient, delimiter):
                by_sender = self._entries.get(rkey)
                if by_sender is None:
                    continue
                if keys is None:
                    keys = sender_keys(sender, delimiter)
                found = next((m for m in map(by_sender.get, keys) if m is not None), None)
                if found is not None:
                    result[recipient] = found
                    break
        return result


EMPTY_INDEX = SenderIndex({})


# Keys as `lmtpfilter senders` stores them (ASCII, lower-case, no address literal): taken as
# they are when the table is read: five times faster than normalising them again.
_LABELS = r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*"
_STORED_ADDRESS = rf"[a-z0-9#$%&'*+/=?^_`{{|}}~.-][a-z0-9!#$%&'*+/=?^_`{{|}}~.-]*@{_LABELS}"
_STORED_RECIPIENT = re.compile(rf"\.|[@.]{_LABELS}|{_STORED_ADDRESS}")
_STORED_SENDER = re.compile(rf"<>|[@.]{_LABELS}|{_STORED_ADDRESS}")


def _stored_recipient(text: str) -> str:
    return text if _STORED_RECIPIENT.fullmatch(text) else recipient_key(text)


def _stored_sender(text: str) -> str:
    return text if _STORED_SENDER.fullmatch(text) else sender_key(text)


def _match_of(recipient: str, sender: str, action: str, score: float | None,
              allow_shift: float) -> tuple[str, str, SenderMatch]:
    rkey, skey = _stored_recipient(recipient), _stored_sender(sender)
    act = SenderAction(action)
    shift = 0.0
    if act is SenderAction.ALLOW:
        shift = allow_shift if score is None else float(score)
        if not math.isfinite(shift):
            raise ValueError(f"score {score!r} is not a finite number")
    return rkey, skey, SenderMatch(act, shift, describe(act, rkey, skey))


# ---- the cache (the filter's side) ------------------------------------------------------------

class SenderLists:
    """The sender lists as the filter sees them: the whole table, reloaded at most every
    `ttl` seconds, one query per reload however many transactions wait for it."""

    def __init__(self, store: Any, ttl: float, allow_shift: float = DEFAULT_ALLOW_SHIFT,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock  # tests give their own
        self.ttl = ttl
        self.allow_shift = allow_shift
        self.enabled = enabled
        self._index = EMPTY_INDEX
        self._loaded_at = -math.inf
        self._loading: asyncio.Future[SenderIndex] | None = None

    @classmethod
    def from_config(cls, store: Any, config: Any) -> SenderLists:
        """From a config.Config: [senders] and [database] policy_cache_ttl."""
        return cls(store, config.database.policy_cache_ttl, config.senders.allow_shift,
                   config.senders.enabled)

    async def matches(self, sender: str, recipients: Iterable[str], delimiter: str = ""
                      ) -> dict[str, SenderMatch | None]:
        """Each recipient's SenderMatch, or None. Raises what the database raises when the
        cached table is older than the TTL and cannot be reloaded."""
        if not self.enabled:
            return {r: None for r in recipients}
        index = await self.index()
        if not index:  # the usual case: nothing listed, nothing to compute
            return {r: None for r in recipients}
        return index.match_all(sender, recipients, delimiter)

    async def index(self) -> SenderIndex:
        if self.clock() - self._loaded_at < self.ttl:
            return self._index
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._reload())
            self._loading.add_done_callback(self._reloaded)
        # Shielded: a transaction that goes away does not cancel the others' reload.
        return await asyncio.shield(self._loading)

    async def _reload(self) -> SenderIndex:
        started = self.clock()  # the data is as old as the query, not as its end
        # Read and built in the database thread: a big table does not stall the event loop.
        self._index = await self.store.run(functools.partial(load_index, self.allow_shift),
                                           durable=False)
        self._loaded_at = started
        return self._index

    def _reloaded(self, future: asyncio.Future[SenderIndex]) -> None:
        self._loading = None
        if not future.cancelled():
            future.exception()  # retrieved: every waiter gets it; the next call retries


def load_index(allow_shift: float, session: Any) -> SenderIndex:
    return SenderIndex.build(load_rows(session), allow_shift)


def load_rows(session: Any) -> list[tuple[str, str, str, float | None]]:
    """The whole table as plain tuples (no ORM objects: the table is read whole)."""
    from sqlalchemy import select

    from .store import SenderListEntry as E

    result = session.execute(select(E.recipient, E.sender, E.action, E.score).order_by(E.id))
    return [tuple(row) for row in result]
