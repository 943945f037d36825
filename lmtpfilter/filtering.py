"""The filter stage: policies looked up, the message scanned once, a decision per recipient.

Only the scans some recipient needs are run (a recipient that bypasses virus checks does not
need clamd), and clamd and spamd run in parallel. Each recipient then gets
:func:`~lmtpfilter.policy.decide`'s verdict: its copy's headers, or a final reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from . import metrics
from .headers import encode_tag, is_forgeable
from .message import Message
from .pipeline import Recipient, Transaction
from .policy import Action, Decision, PolicySource, decide
from .reply import Reply
from .scanresult import ScanResult, SpamResult, Status, VirusResult

log = logging.getLogger(__name__)


class VirusScanner(Protocol):
    async def scan(self, data: bytes) -> VirusResult: ...


class SpamScanner(Protocol):
    # The envelope sender ("" or "<>" for the null sender): SPF checks it, not the From
    # field (RFC 7208 §2.4), and so do SpamAssassin's rules on EnvelopeFrom.
    async def check(self, data: bytes, envelope_sender: str) -> SpamResult: ...


class FilterStage:
    def __init__(self, policies: PolicySource, clamd: VirusScanner | None,
                 spamd: SpamScanner | None, x_header_line: str) -> None:
        self.policies = policies
        self.clamd = clamd
        self.spamd = spamd
        self.x_header_line = x_header_line

    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        recipients = [r for r in recipients if not r.settled]
        if not recipients:
            return
        policies = await self.policies.lookup(r.address for r in recipients)
        need_virus = any(not p.listed(p.bypass_virus_checks) for p in policies.values())
        need_spam = any(not p.listed(p.bypass_spam_checks) for p in policies.values())
        tx.scan = await self.scan(tx.message.data, tx.sender, need_virus, need_spam)
        for name, status, seconds in (("clamav", tx.scan.virus.status, tx.scan.virus.seconds),
                                      ("spamassassin", tx.scan.spam.status,
                                       tx.scan.spam.seconds)):
            if status is Status.ERROR:
                metrics.SCAN_ERRORS.labels(name).inc()
            elif status not in (Status.DISABLED, Status.SKIPPED):
                metrics.SCAN_SECONDS.labels(name).observe(seconds)
        if tx.scan.virus.status is Status.ERROR or tx.scan.spam.status is Status.ERROR:
            log.warning("tx=%s scanner failure: %s", tx.id,
                        "; ".join(e for e in (tx.scan.virus.error, tx.scan.spam.error) if e))
        # A sender must not be able to forge a verdict: our headers replace theirs.
        forged = forged_headers(tx.message)
        for r in recipients:
            r.policy = policies[r.address]
            r.decision = decide(tx.scan, r.policy, self.x_header_line)
            self.apply(r, r.decision, forged, tx.scan)

    async def scan(self, data: bytes, sender: str, need_virus: bool, need_spam: bool
                   ) -> ScanResult:
        """Both scans in parallel; a scan nobody needs (or that is disabled) is not run."""
        virus = self.clamd.scan(data) if self.clamd and need_virus else None
        spam = self.spamd.check(data, sender) if self.spamd and need_spam else None
        if virus and spam:
            v, s = await asyncio.gather(virus, spam)
            return ScanResult(v, s)
        return ScanResult(await virus if virus else VirusResult(Status.DISABLED),
                          await spam if spam else SpamResult(Status.DISABLED))

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


_FORGEABLE_HINTS = (b"x-spam-", b"x-virus-", b"x-quarantine-id")


def forged_headers(message: Message) -> frozenset[str]:
    """Names of the verdict headers the sender wrote (cheap when there are none)."""
    block = message.header_block.lower()
    if not any(hint in block for hint in _FORGEABLE_HINTS):
        return frozenset()
    return frozenset(f.key for f in message.fields if is_forgeable(f.key))


DISCARD_PENDING = Reply(451, "4.3.0", "Quarantine not completed, please try again later")
