"""What the scanners found about one message: plain data, shared by scanners, policy, store."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
class ScanResult:
    virus: VirusResult
    spam: SpamResult
