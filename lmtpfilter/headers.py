"""The header fields lmtpfilter writes, in amavisd-new's formats (pure functions).

Sieve rules and habits of amavisd-new users depend on these exact forms (docs/design.md §4):
    X-Spam-Flag: YES
    X-Spam-Score: 7.214
    X-Spam-Level: *******
    X-Spam-Status: Yes, score=7.214 tagged_above=2 required=6.2 tests=[GTUBE=1000, ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from email.header import Header

from .message import fold

# Incoming fields with these names (or prefixes) are removed from every delivered copy, so
# that a sender cannot forge a verdict (docs/design.md §4).
FORGEABLE_PREFIXES = ("x-spam-", "x-virus-")
FORGEABLE_NAMES = frozenset({"x-quarantine-id"})


def is_forgeable(name: str) -> bool:
    return name in FORGEABLE_NAMES or name.startswith(FORGEABLE_PREFIXES)


def number(value: float) -> str:
    """amavis-style short number: at most 3 decimals, no trailing zeros ("2", "6.2")."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def spam_level(score: float) -> str:
    """One "*" per whole point; none below 1; at most 64."""
    return "*" * min(64, int(score)) if score >= 1 else ""


def spam_status(is_spam: bool, score: float, tag_level: float, tag2_level: float,
                rules: Sequence[tuple[str, float]]) -> str:
    tests = ", ".join(f"{name}={number(points)}" for name, points in rules)
    return (f"{'Yes' if is_spam else 'No'}, score={number(score)} "
            f"tagged_above={number(tag_level)} required={number(tag2_level)} tests=[{tests}]")


def spam_fields(is_spam: bool, score: float, tag_level: float, tag2_level: float,
                rules: Sequence[tuple[str, float]]) -> tuple[bytes, ...]:
    return (
        fold("X-Spam-Flag", "YES" if is_spam else "NO"),
        fold("X-Spam-Score", f"{score:.3f}"),
        b"X-Spam-Level: " + spam_level(score).encode(),
        fold("X-Spam-Status", spam_status(is_spam, score, tag_level, tag2_level, rules)),
    )


def skipped_fields(why: str) -> tuple[bytes, ...]:
    return (fold("X-Spam-Flag", "NO"), fold("X-Spam-Status", f"No, skipped ({why})"))


def virus_scanned(line: str) -> bytes:
    return fold("X-Virus-Scanned", line)


def virus_status(names: Sequence[str]) -> bytes:
    return fold("X-Virus-Status", f"Infected ({', '.join(names)})")


def quarantine_id(qid: str) -> bytes:
    return fold("X-Quarantine-ID", f"<{qid}>")


def encode_tag(tag: str) -> bytes:
    """The subject tag as it goes in front of the Subject: ASCII as is, else RFC 2047."""
    if tag.isascii():
        return tag.encode("ascii")
    encoded = Header(tag.rstrip(" "), "utf-8").encode()
    return encoded.encode("ascii") + (b" " if tag.endswith(" ") else b"")
