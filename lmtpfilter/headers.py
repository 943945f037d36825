"""The header fields lmtpfilter writes, in amavisd-new's formats (pure functions).

Sieve rules and habits of amavisd-new users depend on these exact forms (docs/design.md §4):
    X-Spam-Flag: YES
    X-Spam-Score: 7.214
    X-Spam-Level: *******
    X-Spam-Status: Yes, score=7.214 tagged_above=2 required=6.2 tests=[GTUBE=1000, ...]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.header import Header

from .message import fold

# Incoming fields with these names (or prefixes) are removed from every delivered copy, so
# that a sender cannot forge a verdict (docs/design.md §4).
FORGEABLE_PREFIXES = ("x-spam-", "x-virus-")
FORGEABLE_NAMES = frozenset({"x-quarantine-id", "x-amavis-alert"})


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


# What the alert may quote from the message (a header excerpt, a file name) is shown as
# amavis's check_header_validity shows it: each octet outside printable ASCII as \x{HH}. So
# no 8-bit byte, control character or line break of the sender's ever gets into our header.
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_ALERT_MAX = 900  # characters of text: every folded line stays far below 998 (RFC 5322 §2.1.1)


def amavis_alert(text: str) -> bytes:
    """An "X-Amavis-Alert:" field as amavisd-new writes it, folded, e.g.
    X-Amavis-Alert: BAD HEADER SECTION, Duplicate header field: "Subject"
    X-Amavis-Alert: BANNED, message contains invoice.pdf.exe
    """
    try:  # a name decoded with surrogateescape shows its original bytes
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    octets = _NOT_PRINTABLE.sub(lambda m: b"\\x{%02X}" % m[0][0], raw)
    shown = octets.decode("ascii")
    if len(shown) > _ALERT_MAX:
        shown = shown[: _ALERT_MAX - 5]
        escape = shown.rfind("\\x{", len(shown) - 5)
        if escape >= 0 and "}" not in shown[escape:]:  # not half an escape
            shown = shown[:escape]
        shown += "[...]"
    return fold("X-Amavis-Alert", shown)


def encode_tag(tag: str) -> bytes:
    """The subject tag as it goes in front of the Subject: ASCII as is, else RFC 2047."""
    if tag.isascii():
        return tag.encode("ascii")
    encoded = Header(tag.rstrip(" "), "utf-8").encode()
    return encoded.encode("ascii") + (b" " if tag.endswith(" ") else b"")
