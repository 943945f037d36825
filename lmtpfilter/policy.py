"""Per-recipient decisions: a pure function of (scan results, recipient policy, the sender
list entry that matched).

No I/O, no clock, no database here: :func:`decide` is exhaustively tested with tables
(tests/data/policy_cases.toml). Precedence (docs/design.md §3), as amavis's contents
categories: virus > banned > spam at kill level > spam at tag2 > bad header > clean; the first
of them whose destiny does not pass decides. A scanner failure matters only to recipients whose
decision depends on it.
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
from .scanresult import ScanResult, SpamResult, Status


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
    BAD_HEADER = "bad-header"  # something wrong in the header section (or hidden MIME parts)
    SPAMMY = "spammy"  # at or above tag2
    SPAM = "spam"  # at or above kill, or a blocked sender
    BANNED = "banned"  # a part the [content] rules ban
    VIRUS = "virus"
    UNCHECKED = "unchecked"  # a scanner failed and policy let it through

    def __ge__(self, other: Category) -> bool:
        return _RANK[self] >= _RANK[other]


_RANK = {Category.CLEAN: 0, Category.BAD_HEADER: 1, Category.UNCHECKED: 2, Category.SPAMMY: 3,
         Category.SPAM: 4, Category.BANNED: 5, Category.VIRUS: 6}


class SenderVerdict(Protocol):
    """The sender-list entry that matched this recipient and sender (senderlists.py):
    "allow" shifts the score by `score`, "bypass" skips the spam verdict, "block" makes the
    message spam at the recipient's kill level."""

    @property
    def action(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def entry(self) -> str: ...


def _worst(a: Category, b: Category) -> Category:
    return a if a >= b else b


@dataclass(frozen=True)
class Decision:
    action: Action
    category: Category
    reply: Reply | None = None  # for REJECT and TEMPFAIL (DISCARD gets its reply once safe)
    add_headers: tuple[bytes, ...] = ()
    subject_tag: str = ""
    rule: str = ""  # what decided besides the scores: a [content] rule, a sender list entry

    @property
    def quarantine(self) -> bool:
        """A virus, banned content or kill-level spam keeps a copy, whatever its destiny: as
        in amavis, the destiny says whether the recipient gets the message, the quarantine
        keeps the evidence (a passed one too). A bad header only when it is not delivered:
        broken newsletters are common (docs/design.md §6)."""
        if self.action is Action.TEMPFAIL:
            return False
        return self.category in (Category.VIRUS, Category.BANNED, Category.SPAM) or (
            self.category is Category.BAD_HEADER and self.action is not Action.DELIVER)


VIRUS_TEMPFAIL = Reply(451, "4.7.1", "Virus scan failed, please try again later")
SPAM_TEMPFAIL = Reply(451, "4.7.1", "Spam scan failed, please try again later")
CONTENT_TEMPFAIL = Reply(451, "4.7.1", "Content check failed, please try again later")
SPAM_REJECT = Reply(550, "5.7.1", "Message rejected as spam")
BAD_HEADER_REJECT = Reply(550, "5.6.0", "Message rejected: bad header section")
SENDER_BLOCKED = "SENDER_LIST_BLOCK"  # the pseudo-rule of X-Spam-Status for a blocked sender
SENDER_ALLOWED = "SENDER_LIST_ALLOW"  # and for an allowed one's score shift


def virus_reject(names: Iterable[str]) -> Reply:
    return Reply(550, "5.7.1", f"virus found: {', '.join(names)}")


def banned_reject(part: str) -> Reply:
    """550 5.7.1 Message rejected: banned content: invoice.zip/evil.exe (ASCII only: the
    part's name may be anything)."""
    shown = part.encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(c if " " <= c <= "~" else "?" for c in shown)
    return Reply(550, "5.7.1", f"Message rejected: banned content: {shown}"[:400])


def settled_before_spam(scan: ScanResult, policy: RecipientPolicy) -> bool:
    """Is this recipient's fate fixed whatever spamd says? True when :func:`decide` returns
    at its virus or content step (a reject, a discard, a tempfail), so that a spamd request
    still waiting for a connection can be dropped. `scan` may be partial: a result not yet
    known is DISABLED or NOT_INSPECTED, which never ends decide early, so the answer errs
    towards asking spamd."""
    decision = decide(replace(scan, spam=_NOT_ASKED), policy, "")
    return decision.action is not Action.DELIVER and decision.category in _BEFORE_SPAM


_NOT_ASKED = SpamResult(Status.DISABLED)
# The categories decide() ends with before its spam step; a bad header comes after it.
_BEFORE_SPAM = frozenset({Category.VIRUS, Category.BANNED, Category.UNCHECKED})


def decide(scan: ScanResult, policy: RecipientPolicy, x_header_line: str,
           sender: SenderVerdict | None = None) -> Decision:
    """What happens to the message for one recipient, and the headers of its copy."""
    virus, content = scan.virus, scan.content
    fields: list[bytes] = []
    category = Category.CLEAN
    rule = ""

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

    # 2. Then banned contents (and a content check that could not run).
    check_banned = not policy.listed(policy.bypass_banned_checks)
    check_header = not policy.listed(policy.bypass_header_checks)
    if content.status is Status.ERROR and (check_banned or check_header):
        if policy.on_scanner_failure == "tempfail":
            return Decision(Action.TEMPFAIL, Category.UNCHECKED, CONTENT_TEMPFAIL)
        category = _worst(category, Category.UNCHECKED)
    if check_banned and content.banned:
        rule = content.banned_rule
        if policy.banned_destiny == "reject":
            return Decision(Action.REJECT, Category.BANNED,
                            banned_reject(content.banned_part or content.banned), rule=rule)
        if policy.banned_destiny == "discard":
            return Decision(Action.DISCARD, Category.BANNED, rule=rule)
        category = _worst(category, Category.BANNED)
        fields.append(h.amavis_alert(content.banned))

    # 3. Then spam, as the sender lists change it.
    spam = scan.spam
    subject_tag = ""
    local = policy.is_local  # amavis adds spam headers and tags for local recipients only
    if sender is not None and sender.action == "block":
        # A blocked sender is spam at this recipient's kill level, scored or not.
        spam = SpamResult(Status.SCORED, max(policy.kill_level, spam.score if
                                              spam.status is Status.SCORED else 0.0),
                          spam.required, (*spam.rules, (SENDER_BLOCKED, 0.0)))
        rule = rule or sender.entry
    elif sender is not None and sender.action == "allow" and spam.status is Status.SCORED:
        spam = replace(spam, score=spam.score + sender.score,
                       rules=(*spam.rules, (SENDER_ALLOWED, sender.score)))
        rule = rule or sender.entry
    bypass_spam = policy.listed(policy.bypass_spam_checks) or (
        sender is not None and sender.action == "bypass")
    if sender is not None and sender.action == "bypass":
        rule = rule or sender.entry
    if not bypass_spam:
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
                    return Decision(Action.REJECT, Category.SPAM, SPAM_REJECT, rule=rule)
                if policy.spam_destiny in ("reject", "discard"):
                    # "reject" of sure spam: its sender is forged, and a 5xx would bounce
                    # to that address.
                    return Decision(Action.DISCARD, Category.SPAM, rule=rule)
            if score >= policy.tag_level and local:
                fields += h.spam_fields(is_spam, score, policy.tag_level, policy.tag2_level,
                                        spam.rules)
            if is_spam:
                subject_tag = policy.spam_subject_tag if local else ""
                category = _worst(category, Category.SPAM if score >= policy.kill_level
                                  else Category.SPAMMY)

    # 4. Last, the header section.
    if check_header and content.bad_headers:
        alert = "BAD HEADER SECTION, " + content.bad_headers[0]
        if policy.bad_header_destiny == "reject":
            return Decision(Action.REJECT, Category.BAD_HEADER, BAD_HEADER_REJECT,
                            rule=content.bad_headers[0])
        if policy.bad_header_destiny == "discard":
            return Decision(Action.DISCARD, Category.BAD_HEADER, rule=content.bad_headers[0])
        fields.append(h.amavis_alert(alert))
        category = _worst(category, Category.BAD_HEADER)
        rule = rule or content.bad_headers[0]
    return Decision(Action.DELIVER, category, None, tuple(fields), subject_tag, rule)
