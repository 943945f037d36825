"""`lmtpfilter senders add|remove|list`: the per-recipient sender lists (senderlists.py).

Every argument goes through senderlists.recipient_key / sender_key, so what is stored is what
the filter matches; a bad one is a usage error (exit 2) in one line naming it. `add` on an
existing (recipient, sender) replaces the entry and says what it was; `remove` of a missing
entry is exit 1. The filter sees a change within [database] policy_cache_ttl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .senderlists import (
    NULL_SENDER,
    SenderAction,
    describe,
    recipient_key,
    sender_key,
)

if TYPE_CHECKING:  # the CLI builds its parser without importing SQLAlchemy
    from sqlalchemy.orm import Session

    from .store import SenderListEntry

MAX_NOTE_LENGTH = 500


class NoSuchEntry(LookupError):
    """`remove` of an entry that is not there (exit 1)."""


class ConcurrentChange(RuntimeError):
    """Another command added the same entry at the same moment (exit 1; try again)."""


@dataclass(frozen=True)
class Listed:
    """One entry as the commands show it, detached from the session."""

    recipient: str
    sender: str
    action: str
    score: float | None
    created_at: dt.datetime
    note: str

    @classmethod
    def of(cls, row: SenderListEntry) -> Listed:
        return cls(row.recipient, row.sender, row.action, row.score, row.created_at, row.note)

    def text(self, allow_shift: float) -> str:
        """"allow <@b.example> for <user@example.org> score -3 (default)" and the note."""
        out = describe(self.action, self.recipient, self.sender)
        if self.action == SenderAction.ALLOW:
            out += (f" score {allow_shift:g} (default)" if self.score is None
                    else f" score {self.score:g}")
        return out + (f"  # {self.note}" if self.note else "")


def validate_note(note: str) -> str:
    if len(note) > MAX_NOTE_LENGTH:
        raise ValueError(f"--note: longer than {MAX_NOTE_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in note):
        raise ValueError("--note: control characters are not allowed")
    return note


def validate_score(action: str, score: float | None) -> float | None:
    if score is None:
        return None
    if action != SenderAction.ALLOW:
        raise ValueError(f"--score: only an allow entry has a score, not {action}")
    if not math.isfinite(score):
        raise ValueError(f"--score: expected a finite number, got {score!r}")
    return score


def add_entry(session: Session, recipient: str, sender: str, action: str,
              score: float | None = None, note: str = "") -> tuple[Listed, Listed | None]:
    """Create or replace the entry of (recipient, sender); returns it and the one it
    replaced. Arguments are validated first: a refusal changes nothing."""
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from .store import SenderListEntry, utcnow

    rkey, skey = recipient_key(recipient), sender_key(sender)
    act = SenderAction(action)
    score, note = validate_score(act, score), validate_note(note)
    row = session.scalars(select(SenderListEntry).where(
        SenderListEntry.recipient == rkey, SenderListEntry.sender == skey)
        .with_for_update()).one_or_none()
    previous = Listed.of(row) if row is not None else None
    if row is None:
        row = SenderListEntry(recipient=rkey, sender=skey)
        session.add(row)
    row.action, row.score, row.note, row.created_at = act.value, score, note, utcnow()
    try:
        session.flush()
    except IntegrityError:  # PostgreSQL: the same new entry added at the same moment
        raise ConcurrentChange(f"{describe(act, rkey, skey)} was added by another command "
                               "at the same moment; try again") from None
    return Listed.of(row), previous


def remove_entry(session: Session, recipient: str, sender: str) -> Listed:
    from sqlalchemy import select

    from .store import SenderListEntry

    rkey, skey = recipient_key(recipient), sender_key(sender)
    row = session.scalars(select(SenderListEntry).where(
        SenderListEntry.recipient == rkey, SenderListEntry.sender == skey)).one_or_none()
    if row is None:
        shown = skey if skey == NULL_SENDER else f"<{skey}>"
        raise NoSuchEntry(f"no sender list entry for {shown} and <{rkey}>")
    removed = Listed.of(row)
    session.delete(row)
    return removed


def list_entries(session: Session, recipient: str | None = None,
                 sender: str | None = None) -> list[Listed]:
    """The entries, by recipient then sender; each filter is the stored key, exactly."""
    from sqlalchemy import select

    from .store import SenderListEntry

    query = select(SenderListEntry).order_by(SenderListEntry.recipient, SenderListEntry.sender)
    if recipient is not None:
        query = query.where(SenderListEntry.recipient == recipient_key(recipient))
    if sender is not None:
        query = query.where(SenderListEntry.sender == sender_key(sender))
    return [Listed.of(row) for row in session.scalars(query)]


# ---- the command line -------------------------------------------------------------------------

_KEYS = ("RECIPIENT: user@domain, @domain, .domain (and subdomains) or . (everyone); "
         "SENDER: a@domain, @domain, .domain (and subdomains) or <> (the null sender)")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    senders = sub.add_parser(
        "senders", help="per-recipient sender lists: allow, bypass, block (amavis's wblist)",
        description=_KEYS).add_subparsers(dest="action", required=True,
                                          parser_class=type(common))
    add = senders.add_parser(
        "add", parents=[common], help="add or replace the entry of RECIPIENT for SENDER",
        description=f"{_KEYS}. allow: the spam score is shifted by --score, or by [senders] "
                    "allow_shift; bypass: never treated as spam; block: treated as spam at "
                    "the recipient's kill level.")
    add.add_argument("recipient", metavar="RECIPIENT")
    add.add_argument("sender", metavar="SENDER")
    add.add_argument("list_action", metavar="{allow,bypass,block}",
                     choices=[a.value for a in SenderAction])
    add.add_argument("--score", type=float, metavar="N",
                     help="allow only: the shift added to the spam score, e.g. -5")
    add.add_argument("--note", default="", metavar="TEXT", help="a remark kept with the entry")
    remove = senders.add_parser("remove", parents=[common],
                                help="remove the entry of RECIPIENT for SENDER")
    remove.add_argument("recipient", metavar="RECIPIENT")
    remove.add_argument("sender", metavar="SENDER")
    listing = senders.add_parser("list", parents=[common], help="the entries, by recipient")
    listing.add_argument("--recipient", metavar="R", help="only the entries keyed R")
    listing.add_argument("--sender", metavar="S", help="only the entries for sender key S")


def command(config: Any, store: Any, args: argparse.Namespace) -> int:
    """Runs one `senders` command; ValueError is a usage error, NoSuchEntry and
    ConcurrentChange runtime failures (cli.py maps them to exit 2 and 1)."""
    shift = config.senders.allow_shift
    if args.action == "add":
        entry, previous = store.transaction(lambda s: add_entry(
            s, args.recipient, args.sender, args.list_action, args.score, args.note))
        if previous is None:
            print(f"added: {entry.text(shift)}")
        else:
            print(f"replaced: {entry.text(shift)} (was: {previous.text(shift)})")
    elif args.action == "remove":
        removed = store.transaction(lambda s: remove_entry(s, args.recipient, args.sender))
        print(f"removed: {removed.text(shift)}")
    else:
        rows = store.transaction(lambda s: list_entries(s, args.recipient, args.sender))
        for row in rows:
            print(f"{row.created_at:%Y-%m-%d %H:%M}  {row.text(shift)}")
    if not config.senders.enabled and args.action != "list":
        print("lmtpfilter: note: [senders] enabled = false: the filter ignores the sender "
              "lists", file=sys.stderr)
    return 0
