"""After the decisions: the quarantine copy, the notifications, and the verdict records.

:class:`QuarantineStage` runs after the filter stage. For a message that some recipient's
decision says to keep (a virus, or kill-level spam when ``[quarantine].spam``), it stores ONE
copy, whatever the number of such recipients, and only once that copy is durable (file fsynced,
row committed) do the "discard" recipients get ``250 2.7.0``. Until then they hold a 451, so
any failure on the way leaves them deferred, never acknowledged. A recipient whose destiny is
"pass" still gets the message (a copy is kept as evidence, as amavis does); a failed copy does
not hold back its delivery.

:class:`Recorder` writes the message row and one row per recipient before the replies go
back to Postfix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Sequence

from sqlalchemy.orm import Session

from . import metrics
from .config import Config
from .filtering import DISCARD_PENDING, forged_headers
from .headers import number, quarantine_id
from .notify import Notifications
from .pipeline import Recipient, Transaction, received_header
from .policy import Action, Category
from .quarantine import QuarantineFull, QuarantineStore, StoredFile, new_id
from .reply import Reply
from .scanresult import ScanResult, Status
from .store import Base, QuarantineRecord, Store

log = logging.getLogger(__name__)

PENDING = DISCARD_PENDING
QUARANTINE_FULL = Reply(451, "4.3.1", "Quarantine is full, please try again later")


def quarantined(qid: str) -> Reply:
    return Reply(250, "2.7.0", f"Ok, discarded, quarantined as {qid}")


DISCARDED = Reply(250, "2.7.0", "Ok, discarded")


def reason_of(scan: ScanResult | None, category: Category) -> tuple[str, str]:
    """The quarantine row's reason and detail: ("virus", names), ("banned", what and the
    rule), ("bad-header", what), or ("spam", score)."""
    if category is Category.VIRUS and scan is not None:
        return "virus", ", ".join(scan.virus.names)
    if category is Category.BANNED and scan is not None:
        return "banned", f"{scan.content.banned} (rule: {scan.content.banned_rule})"
    if category is Category.BAD_HEADER and scan is not None:
        return "bad-header", "; ".join(scan.content.bad_headers)
    score = scan.spam.score if scan is not None and scan.spam.status is Status.SCORED else 0.0
    return "spam", number(score)


# The quarantine row's reason: the worst category of those kept (as amavis files it).
_KEPT_ORDER = (Category.VIRUS, Category.BANNED, Category.SPAM, Category.BAD_HEADER)


class QuarantineStage:
    def __init__(self, config: Config, store: Store, files: QuarantineStore,
                 notifications: Notifications) -> None:
        self.config = config
        self.store = store
        self.files = files
        self.notifications = notifications

    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        discard = [r for r in recipients if r.decision and r.decision.action is Action.DISCARD]
        keep = [r for r in recipients if r.decision and r.decision.quarantine
                and (r.decision.category is not Category.SPAM or self.config.quarantine.spam)]
        for r in discard:
            r.reply = PENDING  # until the copy is durable, or when no copy is wanted
        if not keep:
            for r in discard:  # explicit policy: kill-level spam discarded without a copy
                r.reply = DISCARDED
            return
        kept = {r.decision.category for r in keep if r.decision}
        worst = next(c for c in _KEPT_ORDER if c in kept)
        qid = new_id()
        try:
            await self._store(tx, qid, worst, keep)
        except QuarantineFull as exc:
            log.error("tx=%s quarantine full: %s", tx.id, exc)
            if self.config.quarantine.on_full == "discard-without-copy":
                for r in discard:
                    r.reply = DISCARDED
            else:
                for r in discard:
                    r.reply = QUARANTINE_FULL
            return
        except Exception:
            log.exception("tx=%s quarantine failed; discarded recipients deferred", tx.id)
            return
        tx.quarantine_id = qid
        metrics.QUARANTINED.labels(worst.value).inc()
        for r in discard:
            r.reply = quarantined(qid) if r in keep else DISCARDED
        log.info("tx=%s quarantined as %s (%s)", tx.id, qid, worst.value)

    async def _store(self, tx: Transaction, qid: str, category: Category,
                     keep: Sequence[Recipient]) -> None:
        created = dt.datetime.now(dt.UTC)
        received = self.received(tx)
        # Kept without the verdict headers the sender wrote, as a delivered copy would be:
        # a release must not bring a forged "X-Spam-Flag: NO" or Quarantine-ID to the user.
        chunks = tx.message.copy_with((received, quarantine_id(qid)),
                                      remove=forged_headers(tx.message))
        size_estimate = sum(len(c) for c in chunks)
        await self.store.run(lambda s: self.files.check_budget(s, size_estimate))
        stored: StoredFile = await asyncio.to_thread(self.files.write, qid, created, chunks)
        metrics.QUARANTINED_BYTES.inc(stored.size)
        reason, detail = reason_of(tx.scan, category)
        subject = tx.message.header_text("subject")
        record = QuarantineRecord(
            id=qid, message_id=tx.id, path=stored.path, size=stored.size, sha256=stored.sha256,
            reason=reason, detail=detail, sender=tx.sender,
            recipients="\n".join(r.address for r in keep), subject=subject[:998],
            created_at=created, released_to="", release_replies="")

        def commit(session: object) -> None:

            assert isinstance(session, Session)
            session.add(record)
            self.notifications.enqueue_quarantine(session, record, [
                r.address for r in keep if r.decision and r.decision.action is not Action.DELIVER])

        try:
            await self.store.run(commit)
        except BaseException:
            # No row, no 250: remove the file so that the janitor has no orphan to report.
            # Without the lock: a file with no row is nobody else's, and the janitor leaves
            # row-less files alone for a day. A removal that fails too (the filter's
            # database role may not delete chunks) is logged on its own line: the error
            # that explains the 4xx is the commit's, raised below.
            try:
                await asyncio.to_thread(self.files.remove, record)
            except Exception as cleanup:
                log.warning("quarantine %s: the copy without a row stays for the janitor "
                            "(removing it failed: %s)", qid,
                            (str(cleanup).splitlines() or [type(cleanup).__name__])[0])
            raise

    def received(self, tx: Transaction) -> bytes:
        return received_header(tx, self.config.hostname)


class Recorder:
    """One message row and a row per recipient, written before the replies go back.

    Writes are group-committed: while one transaction commits, the records of the messages
    finishing meanwhile queue up and go into the next one. Each message still waits for the
    commit that holds its rows, but a busy filter pays one fsync per batch, not per message.
    """

    def __init__(self, store: Store, hostname: str) -> None:
        self.store = store
        self.hostname = hostname
        self._queue: list[tuple[Rows, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, tx: Transaction, recipients: Sequence[Recipient],
                     replies: Sequence[Reply]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((self.rows(tx, recipients, replies), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        await done

    async def _write_batches(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            messages = [m for (m, _), _ in batch]
            verdicts = [v for (_, vs), _ in batch for v in vs]
            try:
                await self.store.bulk.insert([(MESSAGES, messages), (VERDICTS, verdicts)])
            except Exception:
                # One bad record must not cost the others theirs: retry one by one.
                for (message, rows), done in batch:
                    try:
                        await self.store.bulk.insert([(MESSAGES, [message]), (VERDICTS, rows)])
                    except Exception as exc:
                        if not done.done():
                            done.set_exception(exc)
                    else:
                        if not done.done():
                            done.set_result(None)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    def rows(self, tx: Transaction, recipients: Sequence[Recipient], replies: Sequence[Reply]
             ) -> Rows:
        scan = tx.scan
        virus, spam = (scan.virus, scan.spam) if scan else (None, None)
        message: dict[str, object] = dict(
            id=tx.id, received_at=dt.datetime.fromtimestamp(tx.received_at, dt.UTC),
            host=self.hostname, message_id=tx.message.header_text("message-id")[:998],
            sender=tx.sender, size=len(tx.message.data),
            sha256=hashlib.sha256(tx.message.data).hexdigest(),
            subject=tx.message.header_text("subject")[:998],
            virus_status=virus.status.value if virus else "disabled",
            virus_names=", ".join(virus.names) if virus else "",
            virus_seconds=virus.seconds if virus else 0.0,
            spam_status=spam.status.value if spam else "disabled",
            spam_score=spam.score if spam and spam.status is Status.SCORED else None,
            spam_rules=",".join(f"{n}={number(p)}" for n, p in spam.rules) if spam else "",
            spam_seconds=spam.seconds if spam else 0.0,
            scanner_errors="; ".join(e for e in (virus.error if virus else "",
                                                 spam.error if spam else "",
                                                 scan.content.error if scan else "") if e),
        )
        verdicts: list[dict[str, object]] = []
        for r, reply in zip(recipients, replies, strict=True):
            decision = r.decision
            action = decision.action.value if decision else "deliver"
            if reply is not r.reply:  # the pipeline's fallback: an internal error
                action = "error"
            verdicts.append(dict(
                message_id=tx.id, position=r.index, address=r.address, action=action,
                category=decision.category.value if decision else "clean",
                reply_code=reply.code, reply_text=reply.line(),
                downstream_reply=reply.line() if action == "deliver" else "",
                quarantine_id=tx.quarantine_id if decision and decision.quarantine else None,
                rule=decision.rule[:1000] if decision else "",
            ))
        return message, verdicts


Rows = tuple[dict[str, object], list[dict[str, object]]]
MESSAGES = Base.metadata.tables["messages"]
VERDICTS = Base.metadata.tables["recipient_verdicts"]
