"""What a part is by its bytes (libmagic), and what an archive holds (libarchive).

Part of the content inventory (mime_walk.py). Archives are read in memory with libarchive
(through libarchive-c's thin ctypes layer) and their members streamed block by block: only
the first block of a member is kept (for libmagic); the rest is counted and dropped, so the
memory a zip bomb costs is one block, whatever it expands to. An archive inside an archive
is read from its parent's stream through a read callback, never buffered whole.

Every limit (ContentLimits) is charged to one Tally per message; a limit hit stops the walk
and becomes an "incomplete" Problem, and anything libarchive refuses becomes an
"unreadable-archive" or "encrypted-archive" Problem: hostile input is a fact, not an error.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import libarchive.ffi as ffi
import magic
from libarchive.entry import ArchiveEntry
from libarchive.exception import ArchiveError

BLOCK = 64 * 1024
SAMPLE = 8192  # what libmagic sees of a part or member: enough for every type a rule names


@dataclass(frozen=True, slots=True)
class ContentLimits:
    """How far the walk goes. The defaults are amavis's Debian defaults ($MAXLEVELS,
    $MAXFILES, $MAX_EXPANSION_QUOTA), so that a site moving from amavis keeps its bounds;
    config.ContentConfig declares the same values."""

    max_depth: int = 14  # MIME nesting + archive nesting
    max_parts: int = 1500  # MIME entities + archive members, in total
    max_expanded: int = 300 * 1024 * 1024  # bytes decompressed from archives, in total
    time_limit: float = 10.0  # seconds, checked between parts, members and blocks


@dataclass(frozen=True, slots=True)
class Part:
    """One MIME leaf part or archive member, as an admin's rule sees it."""

    path: str  # "invoice.zip/inner.zip/evil.exe", or "part 2.1" for a part without a name
    name: str  # the declared file name (decoded), or the member's path inside its archive
    declared_type: str  # lower-case Content-Type, "" if none (archive members: "")
    detected_type: str  # libmagic's MIME type, "" if not examined
    depth: int
    in_archive: bool = False
    encrypted: bool = False


@dataclass(frozen=True, slots=True)
class Problem:
    """Something that kept the walk from seeing everything.

    kind: "unreadable-archive" | "encrypted-archive" | "incomplete" | "mime-error".
    """

    kind: str
    path: str
    detail: str


class Tally:
    """The walk's state for one message: what was found and what the limits have left."""

    def __init__(self, limits: ContentLimits) -> None:
        self.limits = limits
        self.parts: list[Part] = []
        self.problems: list[Problem] = []
        self.entities = 0
        self.expanded = 0
        self.stopped = False  # a limit ended the walk: later archive errors are its echo
        self._deadline = time.monotonic() + limits.time_limit

    def problem(self, kind: str, path: str, detail: str) -> None:
        self.problems.append(Problem(kind, path, detail))

    def _stop(self, path: str, detail: str) -> bool:
        if not self.stopped:
            self.stopped = True
            self.problem("incomplete", path, detail)
        return False

    def go_on(self, path: str) -> bool:
        """False once the walk must stop (a limit hit now or before)."""
        if self.stopped:
            return False
        if time.monotonic() > self._deadline:
            return self._stop(path, f"time_limit ({self.limits.time_limit:g}s) reached")
        return True

    def charge_entity(self, path: str) -> bool:
        """Count one more MIME entity or archive member; False if over max_parts."""
        if not self.go_on(path):
            return False
        self.entities += 1
        if self.entities > self.limits.max_parts:
            return self._stop(path, f"max_parts ({self.limits.max_parts}) reached")
        return True

    def charge_bytes(self, count: int, path: str) -> bool:
        self.expanded += count
        if self.expanded > self.limits.max_expanded:
            return self._stop(path, f"max_expanded ({self.limits.max_expanded} bytes) reached")
        return self.go_on(path)

    def deeper_than_allowed(self, depth: int, path: str) -> bool:
        """A subtree past max_depth is skipped (the rest of the walk goes on)."""
        if depth <= self.limits.max_depth:
            return False
        self.problem("incomplete", path, f"max_depth ({self.limits.max_depth}) reached")
        return True


# --------------------------------------------------------------------------------------------
# Detected types
# --------------------------------------------------------------------------------------------

# libmagic handles are not thread-safe, and inspect() may run in a thread pool: one handle
# per process (loading the database costs milliseconds and megabytes), used under a lock.
_magic_lock = threading.Lock()
_magic: magic.Magic | None = None

# Bytes that plain text does not contain (NUL and the C0 controls but TAB, LF, FF, CR, ESC).
_NOT_TEXT = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])


def looks_like_text(sample: bytes) -> bool:
    """Plain text, ASCII or UTF-8, by a cheap check. libmagic needs about 1 ms per text
    sample (its text, CSV and JSON classifiers) and a text is not what a banned-type rule
    looks for: executables and archives are binary."""
    if len(sample.translate(None, _NOT_TEXT)) != len(sample):  # C speed, unlike a regex
        return False
    if sample.isascii():
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut at the sample's end is still text
        return exc.start >= len(sample) - 3 and exc.reason == "unexpected end of data"
    return True


def detect(sample: bytes) -> str:
    """The MIME type of content that starts with `sample`: "text/plain" for plain text
    (looks_like_text), else libmagic's; "" if libmagic fails."""
    if not sample:
        return "application/x-empty"
    if looks_like_text(sample):
        return "text/plain"
    global _magic
    with _magic_lock:
        try:
            if _magic is None:
                _magic = magic.Magic(mime=True)
            found = str(_magic.from_buffer(sample)).lower()
        except (magic.MagicException, OSError, ValueError):
            found = ""
    if found in ("", "application/octet-stream"):
        return _archive_signature(sample) or found
    return found


# The leading bytes of the archive formats, for where libmagic does not name them: libmagic
# 5.46 (Debian 13) calls some plain zips "application/octet-stream" where 5.44 (Debian 12)
# says "application/zip"; an archive must be opened whatever the libmagic in use.
_ARCHIVE_SIGNATURES = (
    (0, b"PK\x03\x04", "application/zip"), (0, b"PK\x05\x06", "application/zip"),
    (0, b"\x1f\x8b", "application/gzip"), (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"Rar!\x1a\x07", "application/x-rar"), (257, b"ustar", "application/x-tar"),
)


def _archive_signature(sample: bytes) -> str:
    for offset, signature, mime_type in _ARCHIVE_SIGNATURES:
        if sample.startswith(signature, offset):
            return mime_type
    return ""


# What libarchive reads (zip, tar, gzip, bzip2, xz, 7z, rar, cab, cpio, iso, ar, lha), by
# libmagic's name for it. Office documents and jars are zips too: their members (macros,
# embedded executables) are walked like any zip's.
ARCHIVE_TYPES = frozenset({
    "application/zip", "application/x-zip-compressed", "application/java-archive",
    "application/x-tar", "application/gzip", "application/x-gzip", "application/x-bzip2",
    "application/x-xz", "application/x-lzma", "application/zstd", "application/x-lzip",
    "application/x-7z-compressed", "application/x-rar", "application/vnd.rar",
    "application/x-rar-compressed", "application/vnd.ms-cab-compressed", "application/x-cpio",
    "application/x-archive", "application/x-iso9660-image", "application/x-lha",
    "application/x-lzh-compressed", "application/x-compress", "application/x-xar",
})
_ARCHIVE_PREFIXES = ("application/vnd.openxmlformats-officedocument.",
                     "application/vnd.oasis.opendocument.", "application/vnd.ms-excel.",
                     "application/vnd.ms-word.", "application/vnd.ms-powerpoint.")
# A name is only a hint, used where libmagic does not know the bytes: a damaged archive
# named .zip is then tried, and reported unreadable, instead of passing unseen.
_ARCHIVE_NAME = re.compile(
    r"\.(zip|rar|7z|tar|tgz|tbz2?|txz|gz|bz2|xz|cab|cpio|iso|lzh|lha|jar|zst)$", re.I)
_COMPRESSION_SUFFIX = re.compile(r"\.(gz|bz2|xz|lzma|z|zst|lz)$", re.I)


def is_archive(detected_type: str, name: str) -> bool:
    if detected_type in ARCHIVE_TYPES or detected_type.startswith(_ARCHIVE_PREFIXES):
        return True
    return detected_type == "application/octet-stream" and bool(_ARCHIVE_NAME.search(name))


# --------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------

_entry_is_encrypted = ffi.libarchive.archive_entry_is_encrypted
_entry_is_encrypted.argtypes = [ctypes.c_void_p]
_entry_is_encrypted.restype = ctypes.c_int


@contextmanager
def _reader(open_archive: object, *args: object) -> Iterator[ctypes.c_void_p]:
    """A libarchive reader with every filter and format, "raw" last so that a lone
    compressed file (report.pdf.gz) is read as one member."""
    archive_p = ffi.read_new()
    try:
        ffi.read_support_filter_all(archive_p)
        ffi.read_support_format_all(archive_p)
        ffi.get_read_format_function("raw")(archive_p)
        open_archive(archive_p, *args)  # type: ignore[operator]
        yield archive_p
    finally:
        ffi.read_free(archive_p)


def walk_archive(data: bytes, path: str, name: str, depth: int, tally: Tally) -> None:
    """Add the members of the archive `data` (a decoded MIME part) to the tally."""
    try:
        with _reader(ffi.read_open_memory, data, len(data)) as archive_p:
            _members(archive_p, path, name, depth, tally)
    except ArchiveError as exc:
        _unreadable(tally, path, exc)


def _unreadable(tally: Tally, path: str, exc: ArchiveError) -> None:
    if not tally.stopped:  # after a limit, a reader cut short says "truncated": not news
        message = getattr(exc, "msg", None) or exc
        tally.problem("unreadable-archive", path, str(message))


def _entry_name(entry: ArchiveEntry, archive_p: ctypes.c_void_p, parent_name: str) -> str:
    if ffi.format_name(archive_p) == b"raw":  # a lone compressed file: name it as gunzip would
        return _COMPRESSION_SUFFIX.sub("", parent_name.rsplit("/", 1)[-1]) or "data"
    name = entry.pathname
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return str(name or "")


def _members(archive_p: ctypes.c_void_p, path: str, name: str, depth: int,
             tally: Tally) -> None:
    told_encrypted = False
    for entry in _entries(archive_p):
        member = _entry_name(entry, archive_p, name)
        member_path = f"{path}/{member}"
        if not tally.charge_entity(member_path):
            return
        if entry.isdir:
            continue
        if _entry_is_encrypted(entry._entry_p):
            if not told_encrypted:
                tally.problem("encrypted-archive", path, f"{member} is encrypted")
                told_encrypted = True
            tally.parts.append(Part(member_path, member, "", "", depth, True, True))
            continue
        stream = _MemberStream(archive_p, tally, member_path)
        first = stream.read()
        detected = detect(stream.buf.raw[: min(first, SAMPLE)])
        tally.parts.append(Part(member_path, member, "", detected, depth, True))
        if (first and is_archive(detected, member) and not tally.stopped
                and not tally.deeper_than_allowed(depth + 1, member_path)):
            stream.walk_nested(first, member, depth + 1)
        stream.drain()


def _entries(archive_p: ctypes.c_void_p) -> Iterator[ArchiveEntry]:
    while True:
        entry = ArchiveEntry(archive_p)
        if ffi.read_next_header2(archive_p, entry._entry_p) == ffi.ARCHIVE_EOF:
            return
        yield entry


class _MemberStream:
    """One member's data, one block at a time, each block charged to the tally."""

    def __init__(self, archive_p: ctypes.c_void_p, tally: Tally, path: str) -> None:
        self._archive_p = archive_p
        self._tally = tally
        self._path = path
        self.buf = ctypes.create_string_buffer(BLOCK)
        self._done = False

    def read(self) -> int:
        """The next block into self.buf: its length, 0 at the end or once a limit stops."""
        if self._done or self._tally.stopped:
            return 0
        count = int(ffi.read_data(self._archive_p, self.buf, BLOCK))
        if count == 0 or not self._tally.charge_bytes(count, self._path):
            self._done = True
            return 0
        return count

    def drain(self) -> None:
        while self.read():
            pass

    def walk_nested(self, first: int, name: str, depth: int) -> None:
        """Walk this member as an archive, fed from the stream (its first block, already
        in self.buf, then the following ones): nothing is buffered whole."""
        pending = [first]
        parent_error: list[ArchiveError] = []
        address = ctypes.addressof(self.buf)

        def read_callback(_archive: object, _context: object, pointer: Any) -> int:
            try:
                count = pending.pop() if pending else self.read()
            except ArchiveError as exc:  # the parent's own data is damaged
                parent_error.append(exc)
                return -1
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_void_p))[0] = address
            return count

        callback = ffi.READ_CALLBACK(read_callback)
        try:
            with _reader(ffi.read_open, None, ffi.NO_OPEN_CB, callback,
                         ffi.NO_CLOSE_CB) as archive_p:
                _members(archive_p, self._path, name, depth, self._tally)
        except ArchiveError as exc:
            _unreadable(self._tally, self._path, parent_error[0] if parent_error else exc)
            if parent_error:
                self._done = True
