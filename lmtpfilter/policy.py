"""Per-recipient decisions: a pure function of (scan results, recipient policy).

No I/O, no clock, no database here: :func:`decide` is exhaustively tested with tables
(tests/data/policy_cases.toml). Precedence (docs/design.md §3): virus > spam at kill level >
spam at tag2 > clean. A scanner failure matters only to recipients whose decision depends on it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from . import headers as h
from .addresses import NOBODY, AddressList, only
from .config import PolicyConfig, per_user_options
from .options import UserKind, declared, user_kind
from .reply import Reply
from .scanresult import ScanResult, Status


@dataclass(frozen=True)
class RecipientPolicy(PolicyConfig):
    """[policy] as it applies to one recipient: the config's section with the overrides of
    the recipient's domain and then of the recipient applied (userpolicy.py).

    It is the same dataclass with the same validated values, so a key declared in
    PolicyConfig is part of it with nothing more to write. An address list (a MEMBERSHIP key
    such as bypass_spam_checks) stays a list here; overriding it for a user makes that user
    listed or not, and :meth:`listed` answers for this recipient.
    """

    address: str = ""

    @classmethod
    def of(cls, section: PolicyConfig, address: str) -> RecipientPolicy:
        values = {f.name: getattr(section, f.name) for f in declared(PolicyConfig)}
        return cls(address=address, **values)

    def overridden(self, overrides: Mapping[str, Any]) -> RecipientPolicy:
        """This policy with per-user values applied; each value must already have been
        validated (options.parse_user_value)."""
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            if _USER_KINDS[key] is UserKind.MEMBERSHIP:
                # Listed or not, whatever the config's list says about this address.
                value = only(self.address) if value else NOBODY
            changes[key] = value
        return replace(self, **changes)

    def listed(self, entries: AddressList) -> bool:
        """Is this recipient in one of its address lists (e.g. self.bypass_spam_checks)?"""
        return entries.matches(self.address, self.recipient_delimiter)

    @property
    def is_local(self) -> bool:
        """amavis's meaning: only local recipients get spam headers and the subject tag.
        An empty local_domains makes everyone local (an LMTP filter's usual case)."""
        return not self.local_domains or self.listed(self.local_domains)


_USER_KINDS = {f.name: user_kind(f.metadata["parse"]) for f in per_user_options()}


class PolicySource(Protocol):
    """Where recipient policies come from (userpolicy.DbPolicies: the config and the
    per-user overrides in the database)."""

    async def lookup(self, addresses: Iterable[str]) -> dict[str, RecipientPolicy]: ...


class Action(enum.Enum):
    DELIVER = "deliver"
    DISCARD = "discard"  # not delivered; quarantined; the recipient gets 250 2.7.0
    REJECT = "reject"  # not delivered; 5xx
    TEMPFAIL = "tempfail"  # not delivered; 4xx, Postfix retries


class Category(enum.Enum):
    """amavis's "contents category", for records and reports."""

    CLEAN = "clean"
    SPAMMY = "spammy"  # at or above tag2
    SPAM = "spam"  # at or above kill
    VIRUS = "virus"
    UNCHECKED = "unchecked"  # a scanner failed and policy let it through

    def __ge__(self, other: Category) -> bool:
        return _RANK[self] >= _RANK[other]


_RANK = {Category.CLEAN: 0, Category.UNCHECKED: 1, Category.SPAMMY: 2, Category.SPAM: 3,
         Category.VIRUS: 4}


def _worst(a: Category, b: Category) -> Category:
    return a if a >= b else b


@dataclass(frozen=True)
class Decision:
    action: Action
    category: Category
    reply: Reply | None = None  # for REJECT and TEMPFAIL (DISCARD gets its reply once safe)
    add_headers: tuple[bytes, ...] = ()
    subject_tag: str = ""

    @property
    def quarantine(self) -> bool:
        """Virus or kill-level spam keeps a copy, whatever its destiny: as in amavis, the
        destiny says whether the recipient gets the message, the quarantine keeps the
        evidence (a passed one too) (docs/design.md §6)."""
        return self.action is not Action.TEMPFAIL and self.category in (
            Category.VIRUS, Category.SPAM)


VIRUS_TEMPFAIL = Reply(451, "4.7.1", "Virus scan failed, please try again later")
SPAM_TEMPFAIL = Reply(451, "4.7.1", "Spam scan failed, please try again later")
SPAM_REJECT = Reply(550, "5.7.1", "Message rejected as spam")


def virus_reject(names: Iterable[str]) -> Reply:
    return Reply(550, "5.7.1", f"virus found: {', '.join(names)}")


def decide(scan: ScanResult, policy: RecipientPolicy, x_header_line: str) -> Decision:
    """What happens to the message for one recipient, and the headers of its copy."""
    virus, spam = scan.virus, scan.spam
    fields: list[bytes] = []
    category = Category.CLEAN

    # 1. Viruses first.
    if not policy.listed(policy.bypass_virus_checks):
        if virus.status is Status.ERROR:
            if policy.on_scanner_failure == "tempfail":
                return Decision(Action.TEMPFAIL, Category.UNCHECKED, VIRUS_TEMPFAIL)
            category = Category.UNCHECKED
        elif virus.status is Status.INFECTED:
            if policy.virus_destiny == "reject":
                return Decision(Action.REJECT, Category.VIRUS, virus_reject(virus.names))
            if policy.virus_destiny == "discard":
                return Decision(Action.DISCARD, Category.VIRUS)
            category = Category.VIRUS
            fields.append(h.virus_status(virus.names))
    if virus.status in (Status.CLEAN, Status.INFECTED):
        fields.insert(0, h.virus_scanned(x_header_line))

    # 2. Then spam.
    subject_tag = ""
    local = policy.is_local  # amavis adds spam headers and tags for local recipients only
    if not policy.listed(policy.bypass_spam_checks):
        if spam.status is Status.ERROR:
            if policy.on_scanner_failure == "tempfail":
                return Decision(Action.TEMPFAIL, Category.UNCHECKED, SPAM_TEMPFAIL)
            fields += h.skipped_fields("scanner unavailable") if local else ()
            category = _worst(category, Category.UNCHECKED)
        elif spam.status is Status.SKIPPED and local:
            fields += h.skipped_fields("message too large")
        elif spam.status is Status.SCORED:
            score = spam.score
            is_spam = score >= policy.tag2_level
            if score >= policy.kill_level:
                if policy.spam_destiny == "reject" and score < policy.dsn_cutoff_level:
                    return Decision(Action.REJECT, Category.SPAM, SPAM_REJECT)
                if policy.spam_destiny == "reject":
                    # Sure spam: its sender is forged, and a 5xx would bounce to that address.
                    return Decision(Action.DISCARD, Category.SPAM)
                if policy.spam_destiny == "discard":
                    return Decision(Action.DISCARD, Category.SPAM)
            if score >= policy.tag_level and local:
                fields += h.spam_fields(is_spam, score, policy.tag_level, policy.tag2_level,
                                        spam.rules)
            if is_spam:
                subject_tag = policy.spam_subject_tag if local else ""
                category = _worst(category, Category.SPAM if score >= policy.kill_level
                                  else Category.SPAMMY)
    return Decision(Action.DELIVER, category, None, tuple(fields), subject_tag)
