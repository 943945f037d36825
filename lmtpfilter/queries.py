"""The admin queries behind `lmtpfilter log` and `lmtpfilter quarantine list`.

Every filter is a WHERE clause, so it is applied by the database before the LIMIT: a filter
finds matching rows however old they are, and however many other rows are newer. Rows come
newest first. A :class:`Page` holds at most `limit` rows and the number of rows that matched,
so the caller can say when the limit cut the list; the count is queried only then.

Addresses match case-insensitively, in SQL on both sides (`lower()`), so that SQLite's and
PostgreSQL's own folding decide, never a mix with Python's. The quarantine keeps its
recipients newline-separated in one column; a recipient matches one whole line of it (a LIKE
on the newline-delimited text, with LIKE's wildcards escaped), never a part of an address.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    false,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from .store import MessageRecord, QuarantineRecord, RecipientVerdict

T = TypeVar("T")

STATES = ("held", "released", "expired")  # of a quarantined message, as the list shows it
LIVE_STATES = frozenset({"held", "released"})  # what `quarantine list` shows by default
_LIKE_ESCAPE = "/"


def address_arg(text: str, what: str = "address") -> str:
    """An address given on the command line, as stored: without <> or surrounding blanks.
    "<>" is the null sender. Raises ValueError (a usage error) for blanks or control
    characters inside, which no stored address holds."""
    value = text.strip()
    if len(value) >= 2 and value[0] == "<" and value[-1] == ">":
        value = value[1:-1]
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what}: {text!r} is not an address")
    return value


@dataclass(frozen=True)
class Filters:
    """What both lists filter on. None means "any"; times are aware datetimes."""

    recipient: str | None = None
    sender: str | None = None
    since: dt.datetime | None = None  # at or after
    until: dt.datetime | None = None  # before


@dataclass(frozen=True)
class LogFilters(Filters):
    action: str | None = None
    category: str | None = None


@dataclass(frozen=True)
class QuarantineFilters(Filters):
    reason: str | None = None
    states: frozenset[str] = LIVE_STATES


@dataclass(frozen=True)
class Page(Generic[T]):
    """The newest `limit` matching rows, and how many rows matched in all: `total`, or more
    than that when `more` (counting stops at COUNT_CAP rows)."""

    rows: list[T]
    total: int
    more: bool = False

    @property
    def cut(self) -> bool:
        return self.more or self.total > len(self.rows)


# Counting every match would cost a walk of the whole table for a plain `lmtpfilter log`;
# past this many, the count says "more than".
COUNT_CAP = 100_000
# All rows are newer than this. A range on received_at, even this one, makes SQLite's planner
# walk ix_messages_received_at newest first and stop at the limit; without one it sorts the
# whole join (0.5 s for 600,000 verdicts, against 1 ms).
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# --- log: one row per recipient verdict, with its message ------------------------------------


def _log_where(f: LogFilters) -> list[ColumnElement[bool]]:
    where = _common(f, MessageRecord.received_at, MessageRecord.sender)
    if f.since is None:
        where.append(MessageRecord.received_at >= _EPOCH)
    if f.recipient is not None:  # ix_recipient_verdicts_address_lower
        where.append(_same_address(RecipientVerdict.address, f.recipient))
    if f.action is not None:
        where.append(RecipientVerdict.action == f.action)
    if f.category is not None:
        where.append(RecipientVerdict.category == f.category)
    return where


def _log_select(f: LogFilters, *columns: Any) -> Select[Any]:
    return (select(*columns).select_from(MessageRecord)
            .join(RecipientVerdict, RecipientVerdict.message_id == MessageRecord.id)
            .where(*_log_where(f)))


def log_query(f: LogFilters) -> Select[Any]:
    """(message, verdict) rows: the newest message first, its recipients in RCPT order."""
    return (_log_select(f, MessageRecord, RecipientVerdict)
            .order_by(MessageRecord.received_at.desc(), MessageRecord.id.desc(),
                      RecipientVerdict.position))


def log_page(session: Session, f: LogFilters, limit: int | None
             ) -> Page[tuple[MessageRecord, RecipientVerdict]]:
    result = session.execute(log_query(f).limit(_fetch(limit)))
    rows = [(m, v) for m, v in result]
    return _page(session, rows, limit, _log_select(f, literal_column("1")))


# --- quarantine list ---------------------------------------------------------------------------


def _quarantine_where(f: QuarantineFilters) -> list[ColumnElement[bool]]:
    q = QuarantineRecord
    where = _common(f, q.created_at, q.sender)
    if f.recipient is not None:
        where.append(_has_line(q.recipients, f.recipient))
    if f.reason is not None:
        where.append(q.reason == f.reason)
    state = _state(f.states)
    if state is not None:
        where.append(state)
    return where


def _state(states: Iterable[str]) -> ColumnElement[bool] | None:
    """Rows in one of `states`; expired wins over released, as `quarantine list` shows it.
    The default, held or released, is `expired_at IS NULL`, which ix_quarantine_live serves
    in created_at order."""
    q = QuarantineRecord
    wanted = set(states)
    if unknown := wanted - set(STATES):
        raise ValueError(f"unknown quarantine state: {', '.join(sorted(unknown))}")
    if wanted == set(STATES):
        return None
    parts: list[ColumnElement[bool]] = []
    if wanted >= LIVE_STATES:
        parts.append(q.expired_at.is_(None))
    elif "held" in wanted:
        parts.append(and_(q.expired_at.is_(None), q.released_at.is_(None)))
    elif "released" in wanted:
        parts.append(and_(q.expired_at.is_(None), q.released_at.is_not(None)))
    if "expired" in wanted:
        parts.append(q.expired_at.is_not(None))
    return or_(false(), *parts)


def quarantine_query(f: QuarantineFilters) -> Select[tuple[QuarantineRecord]]:
    return (select(QuarantineRecord).where(*_quarantine_where(f))
            .order_by(QuarantineRecord.created_at.desc(), QuarantineRecord.id.desc()))


def quarantine_page(session: Session, f: QuarantineFilters, limit: int | None
                    ) -> Page[QuarantineRecord]:
    rows = list(session.scalars(quarantine_query(f).limit(_fetch(limit))))
    matching: Select[Any] = select(literal_column("1")).select_from(QuarantineRecord)
    return _page(session, rows, limit, matching.where(*_quarantine_where(f)))


# --- shared pieces -----------------------------------------------------------------------------


def _common(f: Filters, when: InstrumentedAttribute[dt.datetime],
            sender: InstrumentedAttribute[str]) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if f.since is not None:
        where.append(when >= f.since)
    if f.until is not None:
        where.append(when < f.until)
    if f.sender is not None:
        where.append(_same_address(sender, f.sender))
    return where


def _same_address(column: InstrumentedAttribute[str], address: str) -> ColumnElement[bool]:
    return func.lower(column) == func.lower(literal(address))


def like_escape(text: str) -> str:
    """`text` as a LIKE pattern that matches exactly itself (escape character "/")."""
    return (text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2).replace("%", _LIKE_ESCAPE + "%")
            .replace("_", _LIKE_ESCAPE + "_"))


def _has_line(column: InstrumentedAttribute[str], value: str) -> ColumnElement[bool]:
    """`value` is one whole line of the newline-separated `column`, ignoring case:
    '\\n' || lower(column) || '\\n' LIKE lower('%\\nVALUE\\n%')."""
    haystack = literal("\n") + func.lower(column) + literal("\n")
    return haystack.like(func.lower(literal(f"%\n{like_escape(value)}\n%")),
                         escape=_LIKE_ESCAPE)


def _fetch(limit: int | None) -> int | None:
    """One row more than shown: it tells whether the limit cut the list."""
    return None if limit is None else limit + 1


def _page(session: Session, rows: list[T], limit: int | None, matching: Select[Any]
          ) -> Page[T]:
    """`rows` (fetched with _fetch(limit)) cut to `limit`; only then does the database count
    the `matching` rows, up to COUNT_CAP."""
    if limit is None or len(rows) <= limit:
        return Page(rows, len(rows))
    cap = max(COUNT_CAP, limit + 1)
    counted = select(func.count()).select_from(matching.limit(cap + 1).subquery())
    total = int(session.scalar(counted) or 0)
    return Page(rows[:limit], min(total, cap), more=total > cap)
