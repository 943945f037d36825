"""What happens to a received message: the stages decide per recipient, then delivery.

The LMTP server (``server.py``) only speaks the protocol; once DATA is complete it hands a
:class:`Transaction` to :meth:`Pipeline.process` and gets back exactly one :class:`Reply` per
recipient, in RCPT order. In between:

1. each :class:`Stage` (the filter stage: scanners and per-recipient policy, ``filtering.py``;
   then the quarantine stage, ``verdicts.py``) looks at the transaction and, per recipient,
   either settles it with a final reply (reject, quarantined, tempfail) or adjusts the
   :class:`Variant` of the copy that recipient gets (headers to add or remove);
2. recipients whose variants are equal form one group, and each group is delivered to the
   downstream LMTP server in one transaction (groups run concurrently);
3. downstream's per-recipient replies are mapped back in RCPT order;
4. the :class:`Recorder` keeps the verdicts, then the replies go back.

Whatever goes wrong, each recipient still gets a reply: unsettled ones get 451 4.3.0. A 2xx is
only ever the downstream server's own 2xx, or the quarantine stage's once the copy is durably
kept (file fsynced, row committed).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Protocol

from . import metrics
from .downstream import Downstream
from .lmtp_protocol import Envelope, Piece, WireReady
from .message import Message, fold
from .reply import INTERNAL_ERROR, Reply
from .scanresult import ScanResult

if TYPE_CHECKING:
    from .policy import Decision, RecipientPolicy

log = logging.getLogger(__name__)

UNIX_PEER = "unix"  # Transaction.peer of a client on a unix socket (it has no address)


@dataclass
class Transaction:
    """One LMTP transaction after the final dot."""

    id: str
    # The client's IP address, without the port (what our Received: field names, RFC 5321
    # §4.4), or UNIX_PEER for a client on a unix socket.
    peer: str
    helo: str
    sender: str
    mail_params: list[str]
    recipients: list[str]
    message: Message
    received_at: float = field(default_factory=time.time)
    scan: ScanResult | None = None  # set by the filter stage: the message is scanned once
    quarantine_id: str | None = None  # set by the quarantine stage when a copy was kept
    # Each recipient's RCPT parameters as received (NOTIFY=, ORCPT=), in RCPT order; passed
    # on to the downstream transaction that carries that recipient.
    rcpt_params: list[list[str]] = field(default_factory=list)


@dataclass(frozen=True)
class Variant:
    """How one recipient's copy differs from the received message. Hashable: equal variants
    are delivered in one downstream transaction."""

    add_headers: tuple[bytes, ...] = ()  # raw fields, in order, placed after our Received:
    remove_headers: frozenset[str] = frozenset()  # lower-case names
    subject_tag: bytes = b""  # put in front of the Subject (already RFC 2047-encoded)

    def adding(self, *fields: bytes) -> Variant:
        return replace(self, add_headers=self.add_headers + fields)

    def removing(self, *names: str) -> Variant:
        return replace(self, remove_headers=self.remove_headers | {n.lower() for n in names})


@dataclass
class Recipient:
    """A recipient as the stages see it: its copy, or its final reply once settled."""

    address: str
    index: int
    variant: Variant = field(default_factory=Variant)
    reply: Reply | None = None  # set by a stage that settles the recipient without delivery
    policy: RecipientPolicy | None = None  # the policy that applied (for records)
    decision: Decision | None = None  # what the filter decided (for records)

    @property
    def settled(self) -> bool:
        return self.reply is not None


class Stage(Protocol):
    """One step between "message received" and "deliver these variants to these groups".

    A stage sees every recipient, in RCPT order, and leaves alone those it has no business
    with (for instance the ones an earlier stage settled).
    """

    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None: ...


class Recorder(Protocol):
    """Keeps the verdicts; called after delivery, before the replies go back."""

    async def record(self, tx: Transaction, recipients: Sequence[Recipient],
                     replies: Sequence[Reply]) -> None: ...


# The per-message log: the lines logged once the replies are settled (`[log] format`:
# key_value_summary, or amavis_log.AmavisSummary), chosen once when the pipeline is built.
Summary = Callable[["Transaction", Sequence["Recipient"], Sequence[Reply]], Sequence[str]]


class Pipeline:
    def __init__(self, downstream: Downstream, hostname: str,
                 stages: Sequence[Stage] = (), recorder: Recorder | None = None,
                 summary: Summary | None = None) -> None:
        self.downstream = downstream
        self.hostname = hostname
        self.stages = list(stages)
        self.recorder = recorder
        self.summary: Summary = summary or key_value_summary

    async def process(self, tx: Transaction) -> list[Reply]:
        """One reply per recipient, in RCPT order; never raises (except cancellation).

        The in-flight gauge goes back down on every path, cancellation included. The message
        and reply counters move for every message answered, whatever failed on the way; a
        cancelled one (shutdown) is not answered, so it is not counted: the client retries it.
        """
        recipients = [Recipient(a, i) for i, a in enumerate(tx.recipients)]
        metrics.INFLIGHT.inc()
        try:
            replies = await self._settle(tx, recipients)
        finally:
            metrics.INFLIGHT.dec()
        try:
            count(recipients, replies)
            for line in self.summary(tx, recipients, replies):
                log.info("%s", line)
        except Exception:  # a metric or a log line is never worth losing the replies over
            log.exception("tx=%s could not count or log the message", tx.id)
        return replies

    async def _settle(self, tx: Transaction, recipients: Sequence[Recipient]) -> list[Reply]:
        """Stages, delivery and record; the replies, 451 4.3.0 for whoever is left unsettled.
        Raises nothing but cancellation."""
        try:
            for stage in self.stages:
                await stage(tx, recipients)
            await self._deliver(tx, recipients)
        except Exception:
            log.exception("tx=%s internal error; unsettled recipients get 451", tx.id)
        replies = [r.reply or INTERNAL_ERROR for r in recipients]
        if self.recorder is not None:
            try:
                await self.recorder.record(tx, recipients, replies)
            except Exception:
                # The mail itself is settled (delivered, quarantined or refused); answering
                # 4xx now would deliver it twice on retry. The record is what is missing.
                log.exception("tx=%s could not record the verdicts", tx.id)
        return replies

    async def _deliver(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        groups: dict[Variant, list[Recipient]] = {}
        for r in recipients:
            if not r.settled:
                groups.setdefault(r.variant, []).append(r)
        if not groups:
            return
        received = self.received_header(tx)
        if len(groups) == 1:  # the common case: everyone gets the same copy
            [(variant, members)] = groups.items()
            await self._deliver_group(tx, received, variant, members)
            return
        # Wait for every group even if one fails: a group still delivering must not turn
        # into a 2xx after its recipients were already answered 451.
        outcomes = await asyncio.gather(*(
            self._deliver_group(tx, received, variant, members)
            for variant, members in groups.items()
        ), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.error("tx=%s delivery of a group failed", tx.id, exc_info=outcome)

    async def _deliver_group(self, tx: Transaction, received: bytes, variant: Variant,
                             members: list[Recipient]) -> None:
        body: list[Piece] = list(tx.message.copy_with(
            (received, *variant.add_headers), variant.remove_headers, variant.subject_tag))
        if tx.message.body_wire_ready and isinstance(body[-1], memoryview):
            body[-1] = WireReady(body[-1])  # the big part goes out as received: no copy
        envelope = Envelope(tx.sender, [m.address for m in members], _downstream_params(tx),
                            [tx.rcpt_params[m.index] if tx.rcpt_params else []
                             for m in members])
        replies = await self.downstream.deliver(envelope, body)
        for member, reply in zip(members, replies, strict=True):
            member.reply = reply
            metrics.DOWNSTREAM.labels(f"{reply.code // 100}xx").inc()

    def received_header(self, tx: Transaction) -> bytes:
        return received_header(tx, self.hostname)


def summary_line(tx: Transaction, recipients: Sequence[Recipient],
                 replies: Sequence[Reply]) -> str:
    """One key=value line per message; tx is also the messages row's id and is in our
    Received: header, so the three can be joined."""
    scan = tx.scan
    fields = [f"tx={tx.id}", f"from=<{tx.sender}>", f"size={len(tx.message.data)}",
              f"ms={(time.time() - tx.received_at) * 1000:.0f}"]
    if scan is not None:
        if scan.spam.status.value == "scored":
            fields.append(f"score={scan.spam.score:g}")
        if scan.virus.names:
            fields.append("virus=" + ",".join(scan.virus.names))
        fields += [f"clamav={scan.virus.status.value}", f"spamd={scan.spam.status.value}"]
    if tx.quarantine_id:
        fields.append(f"quarantine={tx.quarantine_id}")
    for r, reply in zip(recipients, replies, strict=True):
        action = r.decision.action.value if r.decision else "deliver"
        fields.append(f"rcpt=<{r.address}>:{action}:{reply.code}:{reply.enhanced or '-'}")
    return " ".join(fields)


def key_value_summary(tx: Transaction, recipients: Sequence[Recipient],
                      replies: Sequence[Reply]) -> tuple[str]:
    """`[log] format = "lmtpfilter"`: the one summary_line."""
    return (summary_line(tx, recipients, replies),)


def count(recipients: Sequence[Recipient], replies: Sequence[Reply]) -> None:
    metrics.MESSAGES.inc()
    for r, reply in zip(recipients, replies, strict=True):
        d = r.decision
        action = "error" if reply is not r.reply else d.action.value if d else "deliver"
        metrics.RECIPIENTS.labels(action, d.category.value if d else "clean").inc()
        metrics.REPLIES.labels(f"{reply.code // 100}xx").inc()


_last_date: tuple[int, str] = (-1, "")


def rfc5322_date(timestamp: float) -> str:
    """The date-time of a trace field, in local time; one formatting per second (it costs
    more than the rest of the Received field)."""
    global _last_date
    second = int(timestamp)
    if _last_date[0] != second:
        _last_date = (second, format_datetime(datetime.fromtimestamp(second, UTC).astimezone()))
    return _last_date[1]


@functools.lru_cache(maxsize=256)  # a handful of clients (the Postfix hosts); parsing costs µs
def address_literal(ip: str) -> str:
    """The RFC 5321 §4.1.3 form of a client's IP: "[192.0.2.1]", "[IPv6:2001:db8::1]".

    An IPv4 client of a dual-stack listener (bound to "::") is seen as ::ffff:192.0.2.1: it is
    named as the IPv4 client it is. A link-local zone ("%eth0") has no place in the literal."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:  # not an IP address: shown as it is, still bracketed
        return f"[{ip}]"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"[{address.ipv4_mapped}]"
        return f"[IPv6:{address}]"
    return f"[{address}]"


def received_header(tx: Transaction, hostname: str) -> bytes:
    """Our trace field (RFC 5321 §4.4); "for" only with a single recipient (privacy).

    The client is named by its HELO name and IP address; a unix-socket client has no address,
    so it is "(unix)"."""
    when = rfc5322_date(tx.received_at)
    peer = tx.peer if tx.peer == UNIX_PEER else address_literal(tx.peer)
    parts = [f"from {tx.helo or 'unknown'} ({peer})", f"by {hostname} (lmtpfilter)",
             f"with LMTP id {tx.id}"]
    if len(tx.recipients) == 1:
        parts.append(f"for <{tx.recipients[0]}>")
    return fold("Received", " ".join(parts) + f"; {when}")


def _downstream_params(tx: Transaction) -> list[str]:
    """The client's MAIL FROM parameters, but SIZE= (our copy has another size: the protocol
    computes its own). The protocol drops what the downstream server did not announce."""
    return [p for p in tx.mail_params if not p.upper().startswith("SIZE=")]
