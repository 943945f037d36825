"""The per-message log line in amavisd-new 2.13's format, for `[log] format = "amavis"`.

amavis writes, per message, the expansion of its ``$log_short_templ`` (the first __DATA__
section of /usr/share/perl5/Amavis.pm), at log level 0:

    (PID-NN) Passed CLEAN {RelayedInbound}, [10.0.0.1] <a@example.net> -> <b@example.org>,
    Message-ID: <x@example.net>, mail_id: Vgodi3aEvaxv, Hits: -1, size: 330,
    queued_as: 250 2.0.0 <b@example.org> iOWZNDzbDmsueAAAg+zDdQ Saved, 356 ms

(one line). Tools amavis admins use read it: logwatch's amavis service, mailgraph,
amavis-logwatch. :func:`main_log_lines` is a pure function from what the pipeline knows once
the replies are settled to these lines, field for field as amavis writes them (the reference
lines of a real amavisd run are in tests/data/amavis_log/). How each field is filled:

* "Passed" lists the recipients that got a 2xx from the downstream server (amavis's %D);
  "Blocked" lists all the others (%O). A message whose recipients fared differently gets both
  lines, Passed first, with the same category and action list, as in amavis.
* The category is the blocking one when some recipient was blocked by content (discarded,
  rejected, or tempfailed because a scanner failed), else MTA-BLOCKED when the downstream
  server refused or failed someone, else the message's main category; amavis's order ranks
  INFECTED > UNCHECKED > SPAM > SPAMMY > CLEAN. ``INFECTED (names)`` lists the virus names.
* ``{...}`` is amavis's sorted status list: Relayed (RelayedUntagged), RelayedTagged,
  Discarded, Rejected, TempFailed, each with Inbound (local recipient) or OpenRelay, then
  Quarantined when a copy was kept.
* A scanner that failed: ``on_scanner_failure = "pass"`` gives "Passed UNCHECKED", which is
  what amavis writes when its scanners fail and $virus_scanners_failure_is_fatal is off.
  "tempfail" gives "Blocked UNCHECKED {TempFailedInbound}": amavis itself logs only
  "(!!)TROUBLE" lines and no main line in that case; this is the line it would have written
  (its category is UNCHECKED and its recipients are TempFailed), so that the tools count it.
* The client is the LMTP peer's IP, without a port: amavis shows that when the MTA sends no
  XFORWARD, and lmtpfilter implements no XFORWARD. For the same reason there is no Queue-ID
  (amavis omits the field when it does not know it). A unix-socket peer has no address: the
  field is left out, as amavis does.
* mail_id is our transaction ID; Hits the spam score ("-" when not scored; a virus has one
  too, as both scanners run at once, where amavis skips SpamAssassin and writes "-"); size
  the message as received; queued_as every distinct reply of the downstream server (the
  queue ID when the reply ends in "queued as ID", else the whole reply), joined by "/", on
  the Passed line only; the elapsed time since the message was received.

Lines longer than amavis's $logline_maxlen (980) are cut the way amavis cuts them for syslog
("..." at the end of a piece and the start of the next); logwatch joins them again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import time
from collections.abc import Iterable, Sequence

from .pipeline import UNIX_PEER, Recipient, Transaction
from .policy import Action, Category
from .reply import Reply
from .scanresult import Status

LOGLINE_MAXLEN = 980  # amavis's $logline_maxlen

# amavis's contents categories by rank (Amavis/Conf.pm, CC_*): a higher one wins.
CLEAN, MTA_BLOCKED, BAD_HEADER, SPAMMY, SPAM, UNCHECKED, BANNED, INFECTED = (
    "CLEAN", "MTA-BLOCKED", "BAD-HEADER", "SPAMMY", "SPAM", "UNCHECKED", "BANNED", "INFECTED")
_RANK = {CLEAN: 1, MTA_BLOCKED: 2, BAD_HEADER: 4, SPAMMY: 5, SPAM: 6, UNCHECKED: 7, BANNED: 8,
         INFECTED: 9}
_CCAT = {Category.CLEAN: CLEAN, Category.BAD_HEADER: BAD_HEADER, Category.SPAMMY: SPAMMY,
         Category.SPAM: SPAM, Category.UNCHECKED: UNCHECKED, Category.BANNED: BANNED,
         Category.VIRUS: INFECTED}

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)$")
_MESSAGE_ID = re.compile(r"<[^<>]*>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def main_log_lines(log_id: str, tx: Transaction, recipients: Sequence[Recipient],
                   replies: Sequence[Reply], elapsed_ms: float) -> list[str]:
    """amavis's main log line(s) for one message, each prefixed "(log_id) " and cut at 980
    characters; `replies` are the final ones, in RCPT order."""
    passed: list[str] = []
    blocked: list[str] = []
    statuses: set[str] = set()
    downstream: list[str] = []
    main = INFECTED if tx.scan is not None and tx.scan.virus.status is Status.INFECTED \
        else CLEAN
    content_block = ""
    mta_block = False
    for r, reply in zip(recipients, replies, strict=True):
        decision = r.decision
        ccat = _CCAT[decision.category] if decision else CLEAN
        main = _worse(main, ccat)
        fallback = reply is not r.reply  # the pipeline's 451 after an internal error
        relayed = not fallback and (decision is None or decision.action is Action.DELIVER)
        if relayed:
            downstream.append(reply.line())
        address = _address(r.address)
        if relayed and reply.is_success:
            passed.append(address)
            status = "RelayedTagged" if _tagged(r) else "RelayedUntagged"
        else:
            blocked.append(address)
            if reply.code >= 500:
                status = "Rejected"
            elif reply.code >= 400:
                status = "TempFailed"
            else:
                status = "Discarded"
            if relayed:
                mta_block = True
            elif decision is not None and not fallback:
                content_block = _worse(content_block, ccat)
        local = r.policy is None or r.policy.is_local
        statuses.add(status + ("Inbound" if local else "OpenRelay"))
    ccat = content_block or (MTA_BLOCKED if mta_block else main)
    if ccat == INFECTED and tx.scan is not None:
        ccat = f"INFECTED ({', '.join(dict.fromkeys(tx.scan.virus.names))})"
    elif ccat == BANNED and tx.scan is not None:  # amavis: BANNED (%F), what it found
        ccat = f"BANNED ({tx.scan.content.banned.partition('contains ')[2]})"
    elif ccat == BAD_HEADER and tx.scan is not None:  # amavis: BAD-HEADER-<minor>
        ccat = f"BAD-HEADER-{tx.scan.content.bad_header_minor}"
    actions = [s.replace("RelayedUntagged", "Relayed", 1) for s in sorted(statuses)]
    if tx.quarantine_id:
        actions.append("Quarantined")
    head = f"{ccat} {{{','.join(actions)}}},{_client(tx.peer)} {_address(tx.sender)} -> "
    fields = _fields(tx)
    tail = f", {round(elapsed_ms)} ms"
    lines = []
    if passed:
        queued_as = "/".join(_queued_as(line) for line in dict.fromkeys(downstream))
        lines.append(f"Passed {head}{','.join(passed)}{fields}"
                     + (f", queued_as: {queued_as}" if queued_as else "") + tail)
    if blocked:
        lines.append(f"Blocked {head}{','.join(blocked)}{fields}{tail}")
    return [piece for line in lines for piece in chop(f"({log_id}) ", _CONTROL.sub(" ", line))]


def _fields(tx: Transaction) -> str:
    """The fields between the recipients and queued_as, the same on both lines."""
    out = []
    if tx.quarantine_id:
        out.append(f"quarantine: {tx.quarantine_id}")
    for label, name in (("Message-ID", "message-id"), ("Resent-Message-ID", "resent-message-id")):
        message_id = message_id_of(tx.message.header_text(name))
        if message_id:
            out.append(f"{label}: {_address(message_id)}")
    out.append(f"mail_id: {tx.id}")
    scan = tx.scan
    out.append("Hits: " + (score(scan.spam.score) if scan is not None
                           and scan.spam.status is Status.SCORED else "-"))
    out.append(f"size: {len(tx.message.data)}")
    return "".join(", " + f for f in out)


def _worse(a: str, b: str) -> str:
    return b if _RANK.get(b, 0) > _RANK.get(a, 0) else a


def _tagged(r: Recipient) -> bool:
    """amavis's recip_tagged: the copy got X-Spam-Flag: YES (local recipients only), a
    subject tag, or a virus alert."""
    d = r.decision
    if d is None:
        return False
    local = r.policy is None or r.policy.is_local
    return bool(d.subject_tag) or d.category is Category.VIRUS or (
        local and d.category in (Category.SPAMMY, Category.SPAM))


def score(value: float) -> str:
    """amavis's Hits: three decimals, trailing zeros and point trimmed (999.001, 8, -0.5)."""
    return re.sub(r"\.?0*\Z", "", f"{value:.3f}", count=1)


def _client(peer: str) -> str:
    """' [ip]' for the LMTP client, '' for a unix-socket one (amavis: [?%a||[...]])."""
    if peer == UNIX_PEER or not peer:
        return ""
    try:
        ip = ipaddress.ip_address(peer.partition("%")[0])
    except ValueError:
        return f" [{peer}]"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f" [{ip}]"


def _address(address: str) -> str:
    """amavis's mail_addr_decode_octets of a path or Message-ID: in <>, an xn-- domain shown
    in Unicode, an all-ASCII domain lower-cased, the local part as it is."""
    inner = address[1:-1] if address.startswith("<") and address.endswith(">") else address
    local, at, domain = inner.rpartition("@")
    if at:
        if any(label.lower().startswith("xn--") for label in domain.split(".")):
            with contextlib.suppress(UnicodeError):  # not valid IDNA: shown as it is
                domain = domain.lower().encode("ascii").decode("idna")
        if domain.isascii():
            domain = domain.lower()
        inner = f"{local}@{domain}"
    return f"<{inner}>"


def message_id_of(value: str) -> str:
    """The first <...> of a Message-ID field; a field without one is sanitized into one, as
    amavis's parse_message_id does; "" when there is no field."""
    match = _MESSAGE_ID.search(value)
    if match:
        return match.group(0)
    value = value.strip()
    if not value:
        return ""
    return "<" + value.removeprefix("<").removesuffix(">").replace(">", "_") + ">"


def _queued_as(reply_line: str) -> str:
    match = _QUEUED_AS.search(reply_line)
    return match.group(1) if match else reply_line


def chop(prefix: str, text: str, maxlen: int = LOGLINE_MAXLEN) -> Iterable[str]:
    """amavis's write_log for syslog: pieces of at most maxlen characters, prefix included,
    each but the last ending in "..." and each but the first starting with "..."."""
    pre = ""
    while len(prefix) + len(pre) + len(text) > maxlen:
        avail = maxlen - len(prefix + pre + "...")
        yield prefix + pre + text[:avail] + "..."
        pre, text = "...", text[avail:]
    yield prefix + pre + text


class AmavisSummary:
    """The pipeline's per-message log for `[log] format = "amavis"`: numbers this process's
    messages as amavis numbers a child's tasks, "(PID-NN)". Built per process (in each worker,
    after the fork), so the PID is read once."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._count = 0

    def __call__(self, tx: Transaction, recipients: Sequence[Recipient],
                 replies: Sequence[Reply]) -> list[str]:
        self._count += 1
        elapsed_ms = (time.time() - tx.received_at) * 1000
        return main_log_lines(f"{self._pid}-{self._count:02d}", tx, recipients, replies,
                              elapsed_ms)
