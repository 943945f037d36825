"""`lmtpfilter quarantine import-amavis DIR`: amavisd-new's file quarantine, imported.

amavis (Amavis/Out/Local.pm) keeps each quarantined message as one file named after its
quarantine method: ``virus-MAILID``, ``spam-MAILID.gz``, ``banned-MAILID``, ``badh-MAILID``
(and ``unchecked-MAILID``), plain or gzip, either flat in $QUARANTINEDIR or, with
``$quarantine_subdir_levels = 1`` (Debian's setting), in a sub-directory named after the first
character of the mail_id (``DIR/H/virus-HV8_NBRLoS-0``). ``clean-`` and ``archive-`` files are
copies of delivered mail, not a quarantine: they are skipped.

amavis prepends its own fields to the message: Return-Path, Delivered-To, X-Envelope-From,
X-Envelope-To, X-Envelope-To-Blocked, X-Quarantine-ID, X-Amavis-Alert, X-Spam-*. On release,
amavis (Notify.pm, msg_from_quarantine) reads the envelope from them and skips that leading
run of known fields; the original message starts at the first other field. We do the same:
the envelope, the reason and the detail come from those fields, and what is stored is the
message as amavis would release it, less the sender's own verdict headers (as our quarantine
stage stores a copy, docs/design.md §4), with our ``X-Quarantine-ID:`` on top. The file's
mtime is the quarantine time, and the stored copy is written with it (a file's mtime, a
chunk's stored_at: QuarantineStore.write's `created`), so that the janitor ages it from there,
on either store.

Each import's quarantine ID is derived from the source (its kind, mail_id and content), so a
second import finds the row and adds nothing. The amavis mail_id is kept in the row's
``message_id`` column as ``amavis:MAILID``: `quarantine show/release/delete` accept
``MAILID``, ``virus-MAILID`` or a file's path for an imported message (resolve_id).
Source files are only ever read.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from .config import Config
from .filtering import forged_headers
from .headers import number, quarantine_id
from .message import Message
from .quarantine import (
    ID_PATTERN,
    LOCK_TIMEOUT,
    InvalidQuarantineId,
    QuarantineBusy,
    QuarantineFull,
    QuarantineStore,
    open_quarantine,
)
from .store import QuarantineRecord, Store

# The file name's prefix -> our reason (QuarantineRecord.reason, at most 16 characters).
REASONS = {"virus": "virus", "spam": "spam", "banned": "banned", "badh": "bad-header",
           "unchecked": "unchecked"}
NOT_A_QUARANTINE = ("clean", "archive")  # amavis's copies of mail it delivered
# A mail_id is base64url, 12 characters by default ($mail_id_size_bits / 6, a multiple of 4);
# "amavis:" + 25 fits messages.id's 32 characters. Never 22 long: no clash with our IDs.
MAIL_ID = r"[A-Za-z0-9_-]{1,25}"
# What generate_mail_id makes: 12, 16, 20 or 24 characters, alphanumeric at both ends.
_GENERATED_MAIL_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{10}|[A-Za-z0-9_-]{14}"
                                r"|[A-Za-z0-9_-]{18}|[A-Za-z0-9_-]{22})[A-Za-z0-9]")
FILE_NAME = re.compile(rf"(?P<kind>[a-z]+)-(?P<mail_id>{MAIL_ID})(?P<gz>\.gz)?")
MESSAGE_ID_PREFIX = "amavis:"
GZIP_MAGIC = b"\x1f\x8b"

# The fields amavis puts on top of a quarantined message, and skips when it releases one.
_AMAVIS_FIELDS = frozenset({"delivered-to", "return-path", "x-envelope-from", "x-envelope-to",
                            "x-envelope-to-blocked", "x-quarantine-id"})
_AMAVIS_FIELD = re.compile(r"x-amavis-(hold|alert|modified|penpals|policybank|os-fingerprint)"
                           r"|x-spam-.+|x-crm114-.+")
# An address in angle brackets; a quoted local part may hold "<", ">" or ",".
_ANGLE_ADDRESS = re.compile(r'<((?:"(?:[^"\\]|\\.)*"|[^<>"])*)>')
_ALERT_DETAIL = {"virus": "INFECTED, message contains virus:",
                 "banned": "BANNED, message contains",
                 "bad-header": "BAD HEADER SECTION,"}
_SPAM_STATUS_SCORE = re.compile(r"\bscore=(-?[0-9]+(?:\.[0-9]+)?)")


class GarbledFile(ValueError):
    """A quarantine file that cannot be imported; the message says why."""


class SourceUnreadable(Exception):
    """DIR itself cannot be read; the message is one line for the admin. `bad_argument`:
    DIR is no directory at all (a usage error), rather than one the user may not read."""

    def __init__(self, message: str, *, bad_argument: bool) -> None:
        super().__init__(message)
        self.bad_argument = bad_argument


class ImportStopped(Exception):
    """The quarantine is full or the janitor holds its lock: the import stops there."""


@dataclass(frozen=True)
class AmavisMessage:
    """What one amavis quarantine file holds."""

    kind: str  # the file name's prefix: virus, spam, banned, badh, unchecked
    mail_id: str
    sender: str  # "" for the null sender
    recipients: list[str]  # the blocked ones: those who did not get it
    reason: str
    detail: str
    subject: str
    original: bytes  # the message as amavis would release it


def _fields_value(message: Message, name: str) -> list[str]:
    """Every value of a field, unfolded, in order."""
    return [f.raw[f.raw.index(b":") + 1:].decode("utf-8", "replace")
            .replace("\r", "").replace("\n", "").strip()
            for f in message.fields if f.key == name]


def parse_addresses(value: str) -> list[str]:
    """amavis's "<a@example.org>, <b@example.org>" (folded or not) -> the addresses as they
    go in MAIL FROM / RCPT TO, without the brackets ("" for "<>")."""
    found = _ANGLE_ADDRESS.findall(value)
    if found:
        return [a.strip() for a in found]
    return [a.strip() for a in value.split(",") if a.strip()]


def _is_amavis_field(key: str) -> bool:
    return key in _AMAVIS_FIELDS or _AMAVIS_FIELD.fullmatch(key) is not None


def _detail(reason: str, message: Message) -> str:
    if reason == "spam":
        for score in _fields_value(message, "x-spam-score"):
            try:
                return number(float(score))
            except ValueError:
                pass
        for status in _fields_value(message, "x-spam-status"):
            if m := _SPAM_STATUS_SCORE.search(status):
                return number(float(m.group(1)))
        return ""
    prefix = _ALERT_DETAIL.get(reason)
    if prefix is None:
        return ""
    for alert in _fields_value(message, "x-amavis-alert"):
        if alert.startswith(prefix):
            return alert[len(prefix):].strip()
    return ""


def parse_quarantine_file(data: bytes, kind: str, mail_id: str) -> AmavisMessage:
    """One file's content (uncompressed) -> AmavisMessage; GarbledFile if it is not one."""
    if kind not in REASONS:
        raise GarbledFile(f"{kind}-* is not a kind of amavis quarantine")
    message = Message.parse(data)
    if message.body_offset == 0 or not message.fields:
        raise GarbledFile("no header section")
    # The leading run of amavis's own fields, as msg_from_quarantine reads it.
    prefix_end = 0
    for f in message.fields:
        if not f.name or not _is_amavis_field(f.key):
            break
        prefix_end += len(f.raw)
    senders = (_fields_value(message, "x-envelope-from")
               or _fields_value(message, "return-path"))
    if not senders:
        raise GarbledFile("no X-Envelope-From or Return-Path field")
    sender_list = parse_addresses(senders[0])
    if len(sender_list) != 1:
        raise GarbledFile(f"X-Envelope-From: expected one address, got {senders[0]!r}")
    blocked = [a for v in _fields_value(message, "x-envelope-to-blocked")
               for a in parse_addresses(v)]
    recipients = blocked or [a for v in _fields_value(message, "x-envelope-to")
                             for a in parse_addresses(v)]
    if not recipients:
        raise GarbledFile("no X-Envelope-To field")
    stored_ids = [v.strip("<>") for v in _fields_value(message, "x-quarantine-id")]
    if stored_ids and stored_ids[0] != mail_id:
        raise GarbledFile(f"X-Quarantine-ID <{stored_ids[0]}> does not match the file name")
    if prefix_end >= message.body_offset:
        raise GarbledFile("no message after amavis's header fields")
    original = Message.parse(data[prefix_end:])
    reason = REASONS[kind]
    return AmavisMessage(
        kind=kind, mail_id=mail_id, sender=sender_list[0], recipients=recipients,
        reason=reason, detail=_detail(reason, message),
        subject=original.header_text("subject")[:998], original=original.data)


def derived_id(kind: str, mail_id: str, data: bytes) -> str:
    """The quarantine ID of an imported file: the same file gives the same ID (idempotent
    imports); 22 hex characters, of ID_PATTERN, never with a leading "-"."""
    digest = hashlib.sha256(b"amavis-quarantine\0" + f"{kind}\0{mail_id}\0".encode()
                            + hashlib.sha256(data).digest())
    return digest.hexdigest()[:22]


def stored_copy(qid: str, parsed: AmavisMessage) -> list[bytes | memoryview]:
    """What goes in our quarantine: our X-Quarantine-ID, then the original less the verdict
    headers a sender wrote (docs/design.md §4: a release must not carry a forged verdict)."""
    original = Message.parse(parsed.original)
    return original.copy_with((quarantine_id(qid),), remove=forged_headers(original))


# ---- the walk -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceFile:
    path: Path
    kind: str
    mail_id: str


def walk(source: Path, skip: Callable[[Path, str], None]) -> Iterator[SourceFile]:
    """The files of amavis's naming under `source`, flat or in sub-directories, in a stable
    order; never through a symlink. Others named like amavis's but not importable go to
    `skip` (path, why); anything else is not amavis's and is left alone silently."""
    def unreadable(exc: OSError) -> None:
        skip(Path(exc.filename or source), exc.strerror or str(exc))

    for top, dirs, names in os.walk(source, onerror=unreadable):
        dirs.sort()
        for name in sorted(names):
            match = FILE_NAME.fullmatch(name)
            if match is None:
                continue
            path = Path(top) / name
            kind = match.group("kind")
            if kind in NOT_A_QUARANTINE:
                skip(path, "an amavis archive copy of delivered mail, not a quarantine")
            elif kind in REASONS:
                yield SourceFile(path, kind, match.group("mail_id"))


def read_source(path: Path) -> bytes:
    """The file's content, gunzipped if it is gzip (by its magic, whatever its name)."""
    # O_NONBLOCK: a FIFO named like a quarantine file must not hang the import.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise GarbledFile("not a regular file")
        data = f.read()
    if data.startswith(GZIP_MAGIC):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise GarbledFile(f"bad gzip data: {exc}") from None
    return data


# ---- the import ---------------------------------------------------------------------------

@dataclass
class ImportSummary:
    imported: int = 0
    already: int = 0
    skipped: int = 0
    failed: int = 0  # of the skipped ones: unreadable or garbled (not archive copies)

    def line(self) -> str:
        return f"imported {self.imported}, already there {self.already}, skipped {self.skipped}"


def check_readable(source: Path) -> None:
    """SourceUnreadable, in one line saying what to do, if `source` cannot be listed."""
    try:
        with os.scandir(source):
            pass
    except FileNotFoundError:
        raise SourceUnreadable(f"{source}: no such directory", bad_argument=True) from None
    except NotADirectoryError:
        raise SourceUnreadable(f"{source}: not a directory", bad_argument=True) from None
    except PermissionError:
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        raise SourceUnreadable(
            f"cannot read {source}: Permission denied (running as {user}); amavis keeps its "
            f"quarantine for group amavis: add {user} to it (adduser {user} amavis) and run "
            "again", bad_argument=False) from None


def import_directory(config: Config, store: Store, source: Path,
                     skipped: Callable[[Path, str], None]) -> ImportSummary:
    """Import every amavis quarantine file under `source` (see the module's docstring).
    Each file that is not imported is named to `skipped` (path, why); the import goes on."""
    check_readable(source)
    quarantine = open_quarantine(config.quarantine, store)
    summary = ImportSummary()

    def skip(path: Path, why: str, failed: bool = True) -> None:
        summary.skipped += 1
        summary.failed += failed
        skipped(path, why)

    def skip_walk(path: Path, why: str) -> None:
        skip(path, why, failed=not why.startswith("an amavis archive copy"))

    for source_file in walk(source, skip_walk):
        try:
            mtime = os.lstat(source_file.path).st_mtime
            data = read_source(source_file.path)
            parsed = parse_quarantine_file(data, source_file.kind, source_file.mail_id)
        except GarbledFile as exc:
            skip(source_file.path, str(exc))
            continue
        except OSError as exc:
            skip(source_file.path, exc.strerror or str(exc))
            continue
        qid = derived_id(source_file.kind, source_file.mail_id, data)
        try:
            new = _store(quarantine, store, qid, parsed, mtime)
        except (QuarantineFull, QuarantineBusy) as exc:
            raise ImportStopped(f"import stopped at {source_file.path} ({summary.line()}): "
                                f"{exc}") from None
        if new:
            summary.imported += 1
        else:
            summary.already += 1
    return summary


def _store(quarantine: QuarantineStore, store: Store, qid: str, parsed: AmavisMessage,
           mtime: float) -> bool:
    """Store the copy, dated as amavis's file (the janitor ages it from there), and commit its
    row (False: the row was already there). Under the quarantine lock, held shared: a janitor
    pass would take a just-written copy, backdated and still without its row, for an old
    orphan."""
    with quarantine.lock(exclusive=False, timeout=LOCK_TIMEOUT):
        if store.transaction(lambda s: s.get(QuarantineRecord, qid), durable=False):
            return False
        chunks = stored_copy(qid, parsed)
        store.transaction(lambda s: quarantine.check_budget(s, sum(len(c) for c in chunks)),
                          durable=False)
        created = dt.datetime.fromtimestamp(mtime, dt.UTC)
        stored = quarantine.write(qid, created, chunks)
        record = QuarantineRecord(
            id=qid, message_id=MESSAGE_ID_PREFIX + parsed.mail_id, path=stored.path,
            size=stored.size, sha256=stored.sha256, reason=parsed.reason,
            detail=parsed.detail, sender=parsed.sender,
            recipients="\n".join(parsed.recipients), subject=parsed.subject,
            created_at=created, released_to="", release_replies="")
        try:
            store.transaction(lambda s: s.add(record))
        except BaseException:
            quarantine.remove(record)  # no row, no copy: nothing for the janitor to report
            raise
        return True


# ---- IDs on the command line --------------------------------------------------------------

def resolve_id(session: Session, text: str) -> str:
    """Our quarantine ID as given, or the one of the message imported from amavis as MAILID,
    KIND-MAILID[.gz] or a path to such a file. Anything else is returned unchanged, for
    validate_id to refuse."""
    if ID_PATTERN.fullmatch(text):
        return text
    match = FILE_NAME.fullmatch(text.rsplit("/", 1)[-1])
    if match and match.group("kind") in REASONS:
        mail_id = match.group("mail_id")
    elif "/" not in text:
        mail_id = text
    else:
        return text
    if not _GENERATED_MAIL_ID.fullmatch(mail_id):
        return text
    ids = list(session.scalars(select(QuarantineRecord.id).where(
        QuarantineRecord.message_id == MESSAGE_ID_PREFIX + mail_id)))
    if len(ids) != 1:
        raise InvalidQuarantineId(
            f"invalid quarantine ID {text!r}: no message imported from amavis has mail_id "
            f"{mail_id}" if not ids else f"amavis mail_id {mail_id} was imported as "
            f"{', '.join(ids)}: give one of these IDs")
    return ids[0]


# ---- the command --------------------------------------------------------------------------

def run_command(config: Config, store: Store, directory: str) -> int:
    """`lmtpfilter quarantine import-amavis DIR`: one stderr line per file skipped, then the
    summary on stdout. Exit 0, or 1 if some file could not be read or parsed."""
    import sys

    from .cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError

    def say_skipped(path: Path, why: str) -> None:
        print(f"lmtpfilter: skipped {path}: {why}", file=sys.stderr)

    source = Path(directory)
    try:
        summary = import_directory(config, store, source, say_skipped)
    except SourceUnreadable as exc:
        raise CliError(str(exc), EXIT_USAGE if exc.bad_argument else EXIT_FAILURE) from None
    except ImportStopped as exc:
        raise CliError(str(exc)) from None
    print(summary.line())
    return EXIT_FAILURE if summary.failed else EXIT_OK
