"""Releasing a quarantined message: re-delivery through the downstream LMTP server.

The stored copy is delivered as it was kept (not re-scanned), to its original recipients or to
the addresses given, and the downstream server's real reply for each recipient is recorded.
A message is released once; again only with force.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from .config import Config
from .downstream import Downstream
from .lmtp_protocol import Envelope
from .quarantine import (
    LOCK_TIMEOUT,
    NotInQuarantine,
    QuarantineBusy,
    find,
    open_quarantine,
)
from .reply import Reply
from .smtp_syntax import SyntaxProblem, parse_path
from .store import QuarantineRecord, Store


class ReleaseError(Exception):
    pass


@dataclass
class Released:
    record: QuarantineRecord
    results: list[tuple[str, Reply]]


def checked_address(address: str) -> str:
    """A --to address as RCPT TO will carry it: one mailbox with a domain (or the bare
    Postmaster RFC 5321 allows, which the filter may have received), nothing else (no CR LF,
    no closing bracket and parameters), or ReleaseError before anything is sent."""
    try:
        mailbox, rest = parse_path(f"<{address}>", utf8=True, null=False, postmaster=True)
    except SyntaxProblem as exc:
        raise ReleaseError(f"not a mail address: {address!r} ({exc})") from None
    if rest or mailbox != address or ("@" not in mailbox and mailbox.lower() != "postmaster"):
        raise ReleaseError(f"not a mail address: {address!r}")
    return mailbox


def load(session: Session, qid: str, lock: bool = False) -> QuarantineRecord:
    try:
        return find(session, qid, for_update=lock)
    except NotInQuarantine as exc:
        raise ReleaseError(str(exc)) from None


async def release(config: Config, store: Store, qid: str, to: Sequence[str] = (),
                  force: bool = False, by: str = "cli") -> Released:
    """Deliver the stored copy to `to` (default: its recipients) and record each reply.
    by: who asked, for the audit record ("cli", "web <address>", "link <address>"); the
    row's released_host records where ([server] hostname): with several filter hosts on one
    PostgreSQL, any of them releases what another quarantined."""
    quarantine = open_quarantine(config.quarantine, store)
    record = await store.run(lambda s: load(s, qid))
    if record.expired_at is not None:
        raise ReleaseError(f"{qid} has expired; its file was removed")
    if record.released_at is not None and not force:
        raise ReleaseError(f"{qid} was already released on {record.released_at:%Y-%m-%d %H:%M} "
                           f"to {record.released_to}; use --force to release it again")
    recipients = [checked_address(a) for a in to] or record.recipient_list
    # Shared lock: the janitor (exclusive) cannot expire the file while it is released.
    try:
        async with quarantine.lock(exclusive=False, timeout=LOCK_TIMEOUT):
            try:  # in pieces: the message in memory once, however it is stored
                data = await asyncio.to_thread(lambda: list(quarantine.read_chunks(record)))
            except FileNotFoundError:
                raise ReleaseError(f"{qid}: the file is gone (expired by the janitor?)") from None
            downstream = Downstream(config.downstream, config.hostname)
            try:
                replies = await downstream.deliver(Envelope(record.sender, recipients), data)
            finally:
                await downstream.close()
    except QuarantineBusy as exc:  # only acquiring raises it
        raise ReleaseError(str(exc)) from None
    results = list(zip(recipients, replies, strict=True))

    def save(session: Session) -> QuarantineRecord:
        row = load(session, qid, lock=True)  # two releases at once must not lose a reply
        now = dt.datetime.now(dt.UTC)
        log = "\n".join(f"{now:%Y-%m-%d %H:%M:%S} by {by}: {rcpt}: {reply.line()}"
                        for rcpt, reply in results)
        row.release_replies = (row.release_replies + "\n" + log).strip()
        delivered = [rcpt for rcpt, reply in results if reply.is_success]
        if delivered:
            row.released_at = now
            row.released_to = ", ".join(delivered)
            row.released_by = by
            row.released_host = config.hostname
        return row

    return Released(await store.run(save), results)
