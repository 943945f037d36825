"""The filter stage: policies looked up, the message scanned once, a decision per recipient.

Only the scans some recipient needs are run (a recipient that bypasses virus checks does not
need clamd), and clamd, spamd and the content checks (banned parts, bad headers: content.py,
header_checks.py) run in parallel; the content walk runs in a thread when the message has
parts to walk, so that a hostile archive never stalls the other sessions. The sender lists
are looked up for every recipient at once (senderlists.py, cached). Each recipient then gets
:func:`~lmtpfilter.policy.decide`'s verdict: its copy's headers, or a final reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from . import metrics
from .content import inspect
from .header_checks import (
    AMAVIS_MINOR_CATEGORY,
    AMAVIS_OFF_BY_DEFAULT,
    BadHeader,
    check_headers,
)
from .headers import encode_tag, is_forgeable
from .message import Message
from .pipeline import Recipient, Transaction
from .policy import (
    Action,
    Decision,
    PolicySource,
    SenderVerdict,
    decide,
    settled_before_spam,
)
from .reply import Reply
from .scanresult import NOT_INSPECTED, ContentResult, ScanResult, SpamResult, Status, VirusResult

if TYPE_CHECKING:
    from .config import ContentConfig

log = logging.getLogger(__name__)

# spamd's result when its answer could no longer change anything (the log's spamd=skipped).
SPAM_NOT_NEEDED = "not asked: every recipient's fate was fixed by the virus or content check"


class VirusScanner(Protocol):
    async def scan(self, data: bytes) -> VirusResult: ...


class SpamScanner(Protocol):
    # The envelope sender ("" or "<>" for the null sender): SPF checks it, not the From
    # field (RFC 7208 §2.4), and so do SpamAssassin's rules on EnvelopeFrom.
    async def check(self, data: bytes, envelope_sender: str) -> SpamResult: ...


class SenderSource(Protocol):
    """senderlists.SenderLists: each recipient's matching sender-list entry, or None."""

    async def matches(self, sender: str, recipients: Iterable[str], delimiter: str = ""
                      ) -> Mapping[str, SenderVerdict | None]: ...


class FilterStage:
    def __init__(self, policies: PolicySource, clamd: VirusScanner | None,
                 spamd: SpamScanner | None, x_header_line: str,
                 content: ContentConfig | None = None,
                 senders: SenderSource | None = None) -> None:
        self.policies = policies
        self.clamd = clamd
        self.spamd = spamd
        self.x_header_line = x_header_line
        self.content = content if content is not None and content.enabled else None
        self.senders = senders

    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        recipients = [r for r in recipients if not r.settled]
        if not recipients:
            return
        policies = await self.policies.lookup(r.address for r in recipients)
        need_virus = any(not p.listed(p.bypass_virus_checks) for p in policies.values())
        need_content = any(not (p.listed(p.bypass_banned_checks)
                                and p.listed(p.bypass_header_checks))
                           for p in policies.values())
        senders: Mapping[str, SenderVerdict | None] = {}
        if self.senders is not None:
            delimiter = next(iter(policies.values())).recipient_delimiter
            senders = await self.senders.matches(tx.sender, [r.address for r in recipients],
                                                 delimiter)
        # SpamAssassin's CPU is the dear part: spent only if some recipient will read its
        # verdict (not a bypass list, not a sender-list "bypass", as amavisd-new skips it
        # for whitelisted senders). A "block" still asks: its score decides reject or not.
        need_spam = any(not policies[a].listed(policies[a].bypass_spam_checks)
                        and not _bypassed(senders.get(a)) for a in policies)
        if self.spamd is not None and not need_spam:
            metrics.SCANS_SPARED.labels("spamassassin", "bypassed").inc()

        def spam_unneeded(partial: ScanResult) -> bool:
            return all(settled_before_spam(partial, p) for p in policies.values())

        tx.scan = await self.scan(tx.message.data, tx.sender, need_virus, need_spam,
                                  tx.message if need_content else None,
                                  smtputf8(tx.mail_params), spam_unneeded)
        for name, status, seconds in (("clamav", tx.scan.virus.status, tx.scan.virus.seconds),
                                      ("spamassassin", tx.scan.spam.status,
                                       tx.scan.spam.seconds),
                                      ("content", tx.scan.content.status,
                                       tx.scan.content.seconds)):
            if status is Status.ERROR:
                metrics.SCAN_ERRORS.labels(name).inc()
            elif status not in (Status.DISABLED, Status.SKIPPED):
                metrics.SCAN_SECONDS.labels(name).observe(seconds)
        if Status.ERROR in (tx.scan.virus.status, tx.scan.spam.status, tx.scan.content.status):
            log.warning("tx=%s scanner failure: %s", tx.id,
                        "; ".join(e for e in (tx.scan.virus.error, tx.scan.spam.error,
                                              tx.scan.content.error) if e))
        # A sender must not be able to forge a verdict: our headers replace theirs.
        forged = forged_headers(tx.message)
        for r in recipients:
            r.policy = policies[r.address]
            r.decision = decide(tx.scan, r.policy, self.x_header_line, senders.get(r.address))
            self.apply(r, r.decision, forged, tx.scan)

    async def scan(self, data: bytes, sender: str, need_virus: bool, need_spam: bool,
                   message: Message | None = None, smtputf8: bool = False,
                   spam_unneeded: Callable[[ScanResult], bool] | None = None) -> ScanResult:
        """The scans in parallel; a scan nobody needs (or that is disabled) is not run. The
        content checks run when `message` is given (someone needs them). `spam_unneeded`
        says, from the results known so far, whether every recipient's fate is already
        fixed (policy.settled_before_spam): spamd's request is then dropped if it has not
        reached spamd yet (it waits for a connection when spamd is busy, which is when
        its CPU is dear), as amavisd-new does not ask SpamAssassin about a virus."""
        virus = self.clamd.scan(data) if self.clamd and need_virus else None
        spam = self.spamd.check(data, sender) if self.spamd and need_spam else None
        content = self.check_content(message, smtputf8) \
            if self.content is not None and message is not None else None
        if spam is not None and spam_unneeded is not None and (virus or content):
            return await self._scan_spam_while_deciding(virus, spam, content, spam_unneeded)
        results = await asyncio.gather(*(c for c in (virus, spam, content) if c is not None))
        found = iter(results)
        return ScanResult(next(found) if virus else VirusResult(Status.DISABLED),  # type: ignore[arg-type]
                          next(found) if spam else SpamResult(Status.DISABLED),  # type: ignore[arg-type]
                          next(found) if content else NOT_INSPECTED)  # type: ignore[arg-type]

    @staticmethod
    async def _scan_spam_while_deciding(
            virus: Coroutine[Any, Any, VirusResult] | None,
            spam: Coroutine[Any, Any, SpamResult],
            content: Coroutine[Any, Any, ContentResult] | None,
            spam_unneeded: Callable[[ScanResult], bool]) -> ScanResult:
        """All three started together; each time clamd or the content check answers before
        spamd, ask whether spamd's answer can still change anything. If not, its request is
        cancelled: one still waiting for a connection never reaches spamd, one already sent
        runs on to its answer in the spamd client (which keeps its connection slot until
        then), and nobody waits for it here."""
        virus_task = asyncio.ensure_future(virus) if virus else None
        content_task = asyncio.ensure_future(content) if content else None
        spam_task = asyncio.ensure_future(spam)
        try:
            return await FilterStage._collect(virus_task, spam_task, content_task,
                                              spam_unneeded)
        except BaseException:  # cancelled (shutdown, a timeout): so are the scans, as gather's
            for task in (virus_task, spam_task, content_task):
                if task is not None:
                    task.cancel()
            raise

    @staticmethod
    async def _collect(virus_task: asyncio.Future[VirusResult] | None,
                       spam_task: asyncio.Future[SpamResult],
                       content_task: asyncio.Future[ContentResult] | None,
                       spam_unneeded: Callable[[ScanResult], bool]) -> ScanResult:
        others: set[asyncio.Future[Any]] = {t for t in (virus_task, content_task) if t}
        spam_result: SpamResult | None = None
        while others and spam_result is None:
            done, _ = await asyncio.wait({*others, spam_task},
                                         return_when=asyncio.FIRST_COMPLETED)
            others -= done
            if spam_task in done:
                spam_result = spam_task.result()
                break
            partial = ScanResult(
                virus_task.result() if virus_task and virus_task.done()
                else VirusResult(Status.DISABLED),
                SpamResult(Status.DISABLED),
                content_task.result() if content_task and content_task.done()
                else NOT_INSPECTED)
            if spam_unneeded(partial):
                spam_task.cancel()
                spam_result = SpamResult(Status.SKIPPED, error=SPAM_NOT_NEEDED)
                metrics.SCANS_SPARED.labels("spamassassin", "settled").inc()
        if spam_result is None:
            spam_result = await spam_task
        return ScanResult(await virus_task if virus_task else VirusResult(Status.DISABLED),
                          spam_result,
                          await content_task if content_task else NOT_INSPECTED)

    async def check_content(self, message: Message, smtputf8: bool) -> ContentResult:
        """Banned parts and bad headers. A message with something to walk (parts, a body
        that may be an archive) is walked in a thread; a plain text one is cheap and done
        here."""
        assert self.content is not None
        if not _is_plain_text(message):
            return await asyncio.to_thread(content_checks, message, self.content, smtputf8)
        return content_checks(message, self.content, smtputf8)

    @staticmethod
    def apply(r: Recipient, decision: Decision, forged: frozenset[str], scan: ScanResult
              ) -> None:
        if decision.action is Action.DELIVER:
            r.variant = r.variant.adding(*decision.add_headers).removing(*forged)
            if decision.subject_tag:
                r.variant = replace(r.variant, subject_tag=encode_tag(decision.subject_tag))
        elif decision.action is Action.DISCARD:
            # Not delivered; the 250 comes from the quarantine stage once the copy is
            # durable. Without one, the recipient stays deferred: never a 250 for nothing.
            r.reply = DISCARD_PENDING
        else:
            r.reply = decision.reply


def smtputf8(mail_params: Sequence[str]) -> bool:
    """Did the client say SMTPUTF8 in MAIL FROM (RFC 6531)? UTF-8 headers are legal then."""
    return any(p.upper() == "SMTPUTF8" for p in mail_params)


def _is_plain_text(message: Message) -> bool:
    """A single text body (RFC 2045 §5.2: no Content-Type is text/plain)."""
    content_type = message.header_text("content-type").strip().lower()
    return content_type == "" or content_type.startswith("text/")


def content_checks(message: Message, config: ContentConfig, smtputf8: bool) -> ContentResult:
    """The content facts the policy needs, as texts (scanresult.ContentResult). An exception
    here is a bug, never the input (hostile input becomes facts): it fails closed, as a
    scanner that is down does."""
    started = time.perf_counter()
    try:
        facts = inspect(message, config)
        found = check_headers(message, smtputf8)
    except Exception as exc:
        log.exception("content check failed")
        return ContentResult(Status.ERROR, error=f"content check failed: {exc!r}"[:200],
                             seconds=time.perf_counter() - started)
    # amavis's default leaves UTF-8 headers without SMTPUTF8 alone ($allowed_header_tests).
    bad = [b for b in found if b.kind not in AMAVIS_OFF_BY_DEFAULT]
    bad += [BadHeader("mime", f"MIME error: {p.detail}")
            for p in facts.problems if p.kind == "mime-error"]
    banned = facts.banned
    return ContentResult(Status.CLEAN, banned.reason if banned else "",
                         banned.rule if banned else "", tuple(b.detail for b in bad),
                         seconds=time.perf_counter() - started,
                         bad_header_minor=AMAVIS_MINOR_CATEGORY[bad[0].kind] if bad else 0,
                         banned_part=banned.part_path if banned else "")


def _bypassed(sender: SenderVerdict | None) -> bool:
    return sender is not None and sender.action == "bypass"


_FORGEABLE_HINTS = (b"x-spam-", b"x-virus-", b"x-quarantine-id", b"x-amavis-alert")


def forged_headers(message: Message) -> frozenset[str]:
    """Names of the verdict headers the sender wrote (cheap when there are none)."""
    block = message.header_block.lower()
    if not any(hint in block for hint in _FORGEABLE_HINTS):
        return frozenset()
    return frozenset(f.key for f in message.fields if is_forgeable(f.key))


DISCARD_PENDING = Reply(451, "4.3.0", "Quarantine not completed, please try again later")
