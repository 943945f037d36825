"""What the scanners found about one message: plain data, shared by scanners, policy, store."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

R = TypeVar("R")


class Status(enum.Enum):
    CLEAN = "clean"  # virus scan: nothing found
    INFECTED = "infected"  # virus scan: names found
    SCORED = "scored"  # spam scan: a score
    ERROR = "error"  # the scanner failed (down, timeout, refused, limit exceeded)
    SKIPPED = "skipped"  # not sent (over the size limit)
    DISABLED = "disabled"  # turned off in the config


@dataclass(frozen=True)
class VirusResult:
    status: Status
    names: tuple[str, ...] = ()
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class SpamResult:
    status: Status
    score: float = 0.0
    required: float = 0.0  # spamd's own threshold (informational; our levels decide)
    rules: tuple[tuple[str, float], ...] = ()  # (rule name, its score), in spamd's order
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class ContentResult:
    """The content checks (banned parts, bad headers), as the policy needs them: texts.

    `banned` is amavis's alert text ("BANNED, message contains x.exe") of the first part the
    [content] rules ban, with `banned_rule` the rule as written; `bad_headers` the details of
    what is wrong in the header section (and MIME syntax that hides parts), amavis's wording.
    """

    status: Status  # CLEAN (inspected), ERROR (inspection failed), DISABLED (not run)
    banned: str = ""
    banned_rule: str = ""
    bad_headers: tuple[str, ...] = ()
    error: str = ""
    seconds: float = 0.0
    bad_header_minor: int = 0  # amavis's BAD-HEADER-<n> of the first bad header (logs)
    banned_part: str = ""  # the banned part's path ("invoice.zip/evil.exe"), for replies


NOT_INSPECTED = ContentResult(Status.DISABLED)


@dataclass(frozen=True)
class ScanResult:
    virus: VirusResult
    spam: SpamResult
    content: ContentResult = NOT_INSPECTED


async def guarded(call: Awaitable[R], timeout: float, what: str,
                  failed: Callable[[str], R]) -> R:
    """Await a scanner call; a timeout or a socket error becomes `failed(reason)`, an ERROR
    result, never an exception (and never "clean")."""
    try:
        async with asyncio.timeout(timeout):
            return await call
    except TimeoutError:
        return failed(f"{what.split(' at ')[0]} timed out after {timeout:g}s")
    except OSError as exc:
        return failed(f"{what}: {exc.strerror or exc}")
