#!/usr/bin/env python3
"""Generate the raw-message test corpus in this directory.

Every ``NNN-name.eml`` file holds the exact bytes of a message as they appear in the SMTP DATA
phase after dot-unstuffing (normally CRLF line endings). ``MANIFEST.toml`` describes each file.

Usage::

    python tests/data/messages/_generate.py          # (re)write all files
    python tests/data/messages/_generate.py --check  # verify files on disk, write nothing

The output is deterministic: no clock, no ``random`` module, no zlib compression (PNG data uses
stored deflate blocks), no dependence on hash ordering. Re-running rewrites identical bytes.

To add a case, write a function returning ``bytes`` and decorate it with ``@case(...)``. The
declared ``expect`` / ``bare_lf`` / ``needs_final_crlf`` values are verified against the bytes.
Stdlib only.
"""

import argparse
import base64
import datetime
import hashlib
import json
import struct
import sys
import textwrap
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
CRLF = b"\r\n"
MAX_LINE = 998  # RFC 5321 4.5.3.1.6: 1000 octets including CRLF
MAX_FILE = 200 * 1024

T = TypeVar("T")
Line = str | bytes

# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    build: Callable[[], bytes]
    expect: str = "pass"
    bare_lf: bool = False
    needs_final_crlf: bool = False


CASES: list[Case] = []
EXPECT_VALUES = ("pass", "reject-line-too-long")


def case(
    name: str,
    description: str,
    *,
    expect: str = "pass",
    bare_lf: bool = False,
    needs_final_crlf: bool = False,
) -> Callable[[Callable[[], bytes]], Callable[[], bytes]]:
    def register(fn: Callable[[], bytes]) -> Callable[[], bytes]:
        CASES.append(Case(name, description, fn, expect, bare_lf, needs_final_crlf))
        return fn

    return register


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


class Prng:
    """Tiny deterministic byte source (SHA-256 in counter mode); stable across Python versions."""

    def __init__(self, seed: str) -> None:
        self._seed = seed.encode("utf-8")
        self._counter = 0
        self._buf = b""

    def raw(self, n: int) -> bytes:
        while len(self._buf) < n:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._buf += block
            self._counter += 1
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def below(self, n: int) -> int:
        return int.from_bytes(self.raw(4), "big") % n

    def between(self, lo: int, hi: int) -> int:
        return lo + self.below(hi - lo + 1)

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.below(len(seq))]

    def sample(self, seq: Sequence[T], k: int) -> list[T]:
        pool = list(seq)
        return [pool.pop(self.below(len(pool))) for _ in range(k)]

    def b64(self, n: int) -> str:
        return base64.b64encode(self.raw(n)).decode("ascii")

    def hex(self, n: int) -> str:
        return self.raw(n).hex()

    def alnum(self, n: int) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        return "".join(alphabet[b % len(alphabet)] for b in self.raw(n))


def enc(line: Line, charset: str = "utf-8") -> bytes:
    return line if isinstance(line, bytes) else line.encode(charset)


def join(items: Iterable[Line], eol: bytes = CRLF, charset: str = "utf-8") -> bytes:
    """Encode every item and terminate each with ``eol``."""
    return b"".join(enc(item, charset) + eol for item in items)


def message(
    headers: Sequence[Line], body: Sequence[Line], charset: str = "utf-8", eol: bytes = CRLF
) -> bytes:
    return join(headers, eol, charset) + eol + join(body, eol, charset)


def part(headers: Sequence[Line], body: Sequence[Line]) -> list[Line]:
    return [*headers, "", *body]


def multipart(
    boundary: str,
    parts: Sequence[Sequence[Line]],
    preamble: Sequence[Line] = (),
    epilogue: Sequence[Line] = (),
    close: bool = True,
) -> list[Line]:
    out: list[Line] = [*preamble]
    for p in parts:
        out.append(f"--{boundary}")
        out.extend(p)
    if close:
        out.append(f"--{boundary}--")
    out.extend(epilogue)
    return out


def b64_lines(data: bytes, width: int = 76) -> list[str]:
    text = base64.b64encode(data).decode("ascii")
    return [text[i : i + width] for i in range(0, len(text), width)]


def qp_lines(text: str, charset: str = "utf-8") -> list[str]:
    """Quoted-printable encode ``text`` (lines separated by ``\\n``) with 76-column soft breaks."""
    out: list[str] = []
    for line in text.split("\n"):
        raw = line.encode(charset)
        tokens: list[str] = []
        for i, b in enumerate(raw):
            last = i == len(raw) - 1
            if (33 <= b <= 126 and b != 61) or (b in (9, 32) and not last):
                tokens.append(chr(b))
            else:
                tokens.append(f"={b:02X}")
        cur = ""
        for tok in tokens:
            if len(cur) + len(tok) > 75:
                out.append(cur + "=")
                cur = ""
            cur += tok
        out.append(cur)
    return out


def ew_b(text: str, charset: str = "UTF-8", max_len: int = 66) -> list[str]:
    """RFC 2047 B-encoded words, split on character boundaries, each at most ``max_len``."""
    codec = charset.lower()

    def word(s: str) -> str:
        return f"=?{charset}?B?{base64.b64encode(s.encode(codec)).decode('ascii')}?="

    words: list[str] = []
    cur = ""
    for ch in text:
        if cur and len(word(cur + ch)) > max_len:
            words.append(word(cur))
            cur = ch
        else:
            cur += ch
    if cur:
        words.append(word(cur))
    return words


def ew_q(text: str, charset: str = "UTF-8") -> str:
    """A single RFC 2047 Q-encoded word (phrase-safe character set)."""
    out: list[str] = []
    for b in text.encode(charset.lower()):
        c = chr(b)
        if b == 32:
            out.append("_")
        elif b < 128 and (c.isalnum() or c in "!*+-/"):
            out.append(c)
        else:
            out.append(f"={b:02X}")
    return f"=?{charset}?Q?{''.join(out)}?="


def fold_list(field: str, items: Sequence[str], width: int = 78, ws: str = " ") -> list[str]:
    """Fold a comma separated header over several lines, continuation lines start with ``ws``."""
    lines: list[str] = []
    cur = f"{field}:"
    for i, item in enumerate(items):
        tok = item + ("," if i < len(items) - 1 else "")
        if cur != f"{field}:" and len(cur) + 1 + len(tok) > width:
            lines.append(cur)
            cur = ws + tok
        else:
            cur += " " + tok
    lines.append(cur)
    return lines


def wrap(text: str, width: int = 72, prefix: str = "") -> list[str]:
    return [prefix + ln for ln in textwrap.wrap(text, width - len(prefix))]


def dkim_signature(rng: Prng, domain: str, selector: str, t: int, signed: str) -> list[str]:
    b = rng.b64(256)  # 2048-bit RSA signature
    return [
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain};",
        f"\ts={selector}; t={t};",
        f"\tbh={rng.b64(32)};",
        f"\th={signed};",
        f"\tb={b[:70]}",
        f"\t {b[70:140]}",
        f"\t {b[140:210]}",
        f"\t {b[210:280]}",
        f"\t {b[280:]}",
    ]


def stored_zlib(data: bytes) -> bytes:
    """zlib stream made of uncompressed deflate blocks: byte-stable on every zlib version."""
    out = bytearray(b"\x78\x01")
    step = 0xFFFF
    for i in range(0, max(len(data), 1), step):
        block = data[i : i + step]
        final = 1 if i + step >= len(data) else 0
        out += bytes([final]) + struct.pack("<HH", len(block), len(block) ^ 0xFFFF) + block
    out += struct.pack(">I", zlib.adler32(data))
    return bytes(out)


def png(
    width: int, height: int, pixel: Callable[[int, int], tuple[int, int, int]], text: str
) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data)
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    rows = []
    for y in range(height):
        row = bytearray(b"\x00")
        for x in range(width):
            row += bytes(pixel(x, y))
        rows.append(bytes(row))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", b"Software\x00" + text.encode("latin-1"))
        + chunk(b"IDAT", stored_zlib(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def chart_png() -> bytes:
    """A 120x55 bar chart, about 20 KB (stored, not compressed)."""
    rng = Prng("chart")
    bars = [rng.between(10, 45) for _ in range(12)]
    noise = rng.raw(120 * 55)

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        n = noise[y * 120 + x] % 6
        if x == 6 or y == 50:
            return (60, 60, 60)
        idx = (x - 8) // 9
        if x >= 8 and 0 <= idx < 12 and (x - 8) % 9 < 7 and 50 - y <= bars[idx]:
            return (31 + n, 119 + idx * 6, 180 - n)
        return (250 - n, 250 - n, 252)

    return png(120, 55, pixel, "throughput-q2 chart generator 2.3")


def logo_png() -> bytes:
    def pixel(x: int, y: int) -> tuple[int, int, int]:
        dx, dy = x - 15.5, y - 15.5
        if dx * dx + dy * dy < 14 * 14:
            return (200, 40 + y * 4, 60) if (x + y) % 8 < 5 else (240, 240, 240)
        return (255, 255, 255)

    return png(32, 32, pixel, "Northwind logo")


def pdf(lines: Sequence[str]) -> bytes:
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 11 Tf", "72 770 Td", "15 TL"]
    ops += [f"({esc(s)}) Tj T*" for s in lines]
    ops.append("ET")
    content = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Producer (Northwind Billing 4.2) /Title (Invoice INV-2024-0612) >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{off:010d} 00000 n \n".encode() for off in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 6 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


def pad_to(prefix: str, suffix: str, length: int, filler: str) -> str:
    """``prefix`` + repeated ``filler`` + ``suffix``, exactly ``length`` characters long."""
    need = length - len(prefix) - len(suffix)
    if need < 0:
        raise ValueError("prefix and suffix already too long")
    fill = (filler * (need // len(filler) + 1))[:need]
    return prefix + fill + suffix


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------


@case(
    "001-plain-ascii.eml",
    "Plain 7-bit ASCII CI notification: three-hop Received chain, Authentication-Results, "
    "DKIM-Signature folded over 9 lines with tabs, Message-ID, Date, MIME-Version, "
    "Auto-Submitted. Body has one line starting with '.'.",
)
def plain_ascii() -> bytes:
    rng = Prng("001")
    headers = [
        "Received: from mail-out-3.ops.example.com (mail-out-3.ops.example.com [198.51.100.23])",
        "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
        "\t key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256)",
        "\t(No client certificate requested)",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4VdT7L2Zb9z9sWK",
        "\tfor <dana.whitfield@example.net>; Tue, 14 May 2024 09:12:44 +0200 (CEST)",
        "Authentication-Results: mx1.example.net;",
        "\tdkim=pass (2048-bit key; unprotected) header.d=ops.example.com"
        " header.i=@ops.example.com header.b=Qm7xK2pL;",
        "\tdkim-atps=neutral",
        "Received: from build-runner-07.internal.ops.example.com"
        " (build-runner-07.internal.ops.example.com [10.20.3.7])",
        "\tby mail-out-3.ops.example.com (Postfix) with ESMTP id 6F1A2C0042",
        "\tfor <dana.whitfield@example.net>; Tue, 14 May 2024 07:12:43 +0000 (UTC)",
        "Received: by build-runner-07.internal.ops.example.com (Postfix, from userid 1001)",
        "\tid 3B7E5A1F2; Tue, 14 May 2024 07:12:43 +0000 (UTC)",
        *dkim_signature(
            rng,
            "ops.example.com",
            "mail2024",
            1715670763,
            "Date:From:To:Subject:Message-ID:MIME-Version:Content-Type",
        ),
        "Date: Tue, 14 May 2024 07:12:43 +0000",
        "From: Build Pipeline <alerts@ops.example.com>",
        "To: Dana Whitfield <dana.whitfield@example.net>",
        "Subject: [nightly] release-2024.05 build #1187 finished: 3 tests failed",
        "Message-ID: <20240514071243.3B7E5A1F2@build-runner-07.internal.ops.example.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "Auto-Submitted: auto-generated",
        "X-Jenkins-Job: release-2024.05",
    ]
    body = [
        "Build #1187 of release-2024.05 finished at 07:12:41 UTC.",
        "",
        "Result:   UNSTABLE (3 of 1,412 tests failed)",
        "Duration: 41 min 07 s",
        'Commit:   9c1e4f2 "storage: retry fsync on EINTR" (Marek Novak)',
        "Runner:   build-runner-07 (x86_64, 16 vCPU)",
        "",
        "Failed tests",
        "------------",
        "  tests/integration/test_quota.py::test_over_quota_bounce          FAILED",
        "  tests/integration/test_quota.py::test_quota_warning_threshold    FAILED",
        "  tests/unit/test_scheduler.py::test_dst_transition[Europe/Berlin] FAILED",
        "",
        "First failure",
        "-------------",
        "  AssertionError: expected SMTP reply 552, got 451",
        "    at tests/integration/test_quota.py:88",
        "",
        "Artifacts (kept for 14 days):",
        "  https://ci.ops.example.com/job/release-2024.05/1187/artifact/",
        "",
        'To stop receiving these notifications, edit the "notify" list in',
        '.ci/pipeline.yml or reply to this message with "unsubscribe nightly".',
        "",
        "-- ",
        "Build Pipeline - ops.example.com",
    ]
    return message(headers, body)


@case(
    "002-alternative-qp.eml",
    "multipart/alternative text/plain + text/html, both UTF-8 quoted-printable with soft line "
    "breaks (=CRLF), =3D in HTML attributes, encoded trailing space (=20), a body line "
    "starting with 'From '. Preamble present.",
)
def alternative_qp() -> bytes:
    rng = Prng("002")
    boundary = "b1_7QmZr4kTfPq0xW3nLs8yHc2VdG"
    text = (
        "Hi Léa,\n"
        "\n"
        "Thanks for registering for “Mail Infrastructure Day 2024” — we’re glad you’ll join us "
        "in Lyon on Thursday 19 September.\n"
        "\n"
        "Your ticket:  MID24-0457 (early bird, €89.00 incl. VAT)\n"
        "Venue:        Hôtel de la Région, 1 esplanade François Mitterrand, 69002 Lyon\n"
        "Doors open:   08:45\n"
        "\n"
        "From the programme:\n"
        "  09:30  Keynote — “Twenty years of SPF, and what we’d do differently”\n"
        "  11:00  Workshop: running Postfix with LMTP content filters (bring a laptop)\n"
        "  14:00  Panel: DMARC aggregate reports nobody reads\n"
        "  16:30  Lightning talks — sign up at the registration desk\n"
        "\n"
        "If you can’t attend, reply to this e-mail before 1 September and we’ll refund the "
        "ticket in full. After that date tickets can be transferred to a colleague but not "
        "refunded. \n"
        "\n"
        "See you in Lyon!\n"
        "Camille Roux — MID24 organising team\n"
        "https://mid24.example.org/"
    )
    html = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"><title>Your ticket for MID24</title></head>\n'
        '<body style="margin:0;padding:0;background-color:#f4f4f7;font-family:Helvetica,Arial,'
        'sans-serif;">\n'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">'
        '<tr><td align="center" style="padding:24px 0;">\n'
        '<table role="presentation" width="600" cellpadding="0" cellspacing="0" '
        'style="background:#ffffff;border-radius:6px;">\n'
        '<tr><td style="padding:32px 40px;color:#222222;font-size:15px;line-height:22px;">\n'
        "<p>Hi Léa,</p>\n"
        "<p>Thanks for registering for <strong>“Mail Infrastructure Day 2024”</strong> — "
        "we’re glad you’ll join us in Lyon on Thursday 19&nbsp;September.</p>\n"
        '<table cellpadding="4" cellspacing="0" style="font-size:14px;">\n'
        "<tr><td><b>Your ticket</b></td><td>MID24-0457 (early bird, €89.00 incl. VAT)</td></tr>\n"
        "<tr><td><b>Venue</b></td><td>Hôtel de la Région, 1 esplanade François Mitterrand, "
        "69002 Lyon</td></tr>\n"
        "<tr><td><b>Doors open</b></td><td>08:45</td></tr>\n"
        "</table>\n"
        '<p style="margin-top:24px;"><a href="https://mid24.example.org/tickets/MID24-0457?'
        'utm_source=email&amp;utm_medium=confirmation" style="background:#2b6cb0;color:#ffffff;'
        'padding:10px 18px;border-radius:4px;text-decoration:none;">View your ticket</a></p>\n'
        "<p>If you can’t attend, reply before 1&nbsp;September and we’ll refund the ticket in "
        "full.</p>\n"
        "<p>See you in Lyon!<br>Camille Roux — MID24 organising team</p>\n"
        "</td></tr></table>\n"
        "</td></tr></table>\n"
        "</body></html>"
    )
    headers = [
        "Received: from smtp-relay.mid24.example.org (smtp-relay.mid24.example.org [203.0.113.45])",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4VfK1b0Jq2z9sTm",
        "\tfor <lea.martin@example.net>; Wed, 22 May 2024 16:03:10 +0200 (CEST)",
        *dkim_signature(
            rng,
            "mid24.example.org",
            "s1",
            1716386589,
            "From:To:Subject:Date:Message-ID:MIME-Version:Content-Type",
        ),
        "From: MID24 Registration <tickets@mid24.example.org>",
        "To: =?UTF-8?Q?L=C3=A9a_Martin?= <lea.martin@example.net>",
        "Subject: Your ticket for Mail Infrastructure Day 2024 (MID24-0457)",
        "Date: Wed, 22 May 2024 14:03:09 +0000",
        "Message-ID: <reg.MID24-0457.1716386589@mid24.example.org>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
        "List-Unsubscribe: <mailto:unsubscribe@mid24.example.org?subject=MID24-0457>",
    ]
    body = multipart(
        boundary,
        [
            part(
                [
                    "Content-Type: text/plain; charset=UTF-8",
                    "Content-Transfer-Encoding: quoted-printable",
                ],
                qp_lines(text),
            ),
            part(
                [
                    "Content-Type: text/html; charset=UTF-8",
                    "Content-Transfer-Encoding: quoted-printable",
                ],
                qp_lines(html),
            ),
        ],
        preamble=["This is a multi-part message in MIME format.", ""],
    )
    return message(headers, body)


@case(
    "003-mixed-base64-png.eml",
    "multipart/mixed: text/plain + ~20 KB image/png attachment in base64 (76-column lines). "
    "The PNG is valid and uses stored deflate blocks.",
)
def mixed_png() -> bytes:
    rng = Prng("003")
    boundary = "------------Xb2KqL9pVtR0mZ4sW7cN1fHe"
    headers = [
        "Received: from [192.168.1.34] (dsl-203-0-113-77.isp.example.com [203.0.113.77])",
        "\t(Authenticated sender: m.okafor@example.com)",
        "\tby smtp.example.com (Postfix) with ESMTPSA id 1C2D3E4F5A",
        "\tfor <analytics@example.com>; Mon, 1 Jul 2024 10:41:27 +0100 (BST)",
        *dkim_signature(rng, "example.com", "default", 1719826887, "From:To:Subject:Date"),
        "Message-ID: <5a1f9d3e-2c47-4b8e-9f0a-77d1c2e4b6a9@example.com>",
        "Date: Mon, 1 Jul 2024 10:41:26 +0100",
        "MIME-Version: 1.0",
        "User-Agent: Mozilla Thunderbird",
        "Content-Language: en-GB",
        "To: Analytics <analytics@example.com>",
        "From: Michael Okafor <m.okafor@example.com>",
        "Subject: Q2 throughput chart for the ops review",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    ]
    text = [
        "Hi all,",
        "",
        "attached is the Q2 throughput chart for Thursday's ops review. Each bar is",
        "one week, messages accepted per second at the 95th percentile, measured on",
        "the inbound MX pair.",
        "",
        "The dip in week 7 is the clamd signature reload problem we fixed on 29 May;",
        "everything after that is with the new per-recipient scan cache.",
        "",
        "Raw numbers are in the usual spreadsheet.",
        "",
        "Michael",
    ]
    body = multipart(
        boundary,
        [
            part(
                [
                    "Content-Type: text/plain; charset=UTF-8; format=flowed",
                    "Content-Transfer-Encoding: 7bit",
                ],
                text,
            ),
            part(
                [
                    'Content-Type: image/png; name="throughput-q2.png"',
                    'Content-Disposition: attachment; filename="throughput-q2.png"',
                    "Content-Transfer-Encoding: base64",
                ],
                b64_lines(chart_png()),
            ),
        ],
        preamble=["This is a multi-part message in MIME format."],
    )
    return message(headers, body)


@case(
    "004-nested-multipart-rfc822.eml",
    "Nested MIME: multipart/mixed > multipart/alternative > multipart/related (HTML + inline "
    "image/png via cid:), plus a message/rfc822 attachment that itself is multipart/mixed "
    "with a base64 application/pdf. Preambles and an epilogue.",
)
def nested() -> bytes:
    rng = Prng("004")
    b_mix = "=_mix_3f8a1c2e9d7b4056"
    b_alt = "=_alt_6b2e0f4d8c1a9375"
    b_rel = "=_rel_9c4d7e1f2a3b5068"
    b_inner = "----=_Part_44812_1029384756.1717596000123"
    cid = "logo.4f2a9c@northwind.example"

    inner_headers: list[Line] = [
        "Received: from billing-app-2.northwind.example (billing-app-2.northwind.example"
        " [192.0.2.61])",
        "\tby smtp.northwind.example (Postfix) with ESMTP id 8E7D6C5B4A",
        "\tfor <accounts@fabrikam.example>; Wed, 5 Jun 2024 14:00:00 +0000 (UTC)",
        "Date: Wed, 5 Jun 2024 14:00:00 +0000 (UTC)",
        "From: Northwind Billing <billing@northwind.example>",
        "To: accounts@fabrikam.example",
        "Message-ID: <1029384756.44812.1717596000123@billing-app-2.northwind.example>",
        "Subject: Invoice INV-2024-0612",
        "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; ",
        f'\tboundary="{b_inner}"',
    ]
    invoice = pdf(
        [
            "Northwind Traders Ltd - Invoice INV-2024-0612",
            "Date: 5 June 2024        Due: 5 July 2024",
            "Bill to: Fabrikam Inc., Accounts Payable",
            "",
            "Managed mail filtering, May 2024 (1,250 mailboxes)     2,500.00 EUR",
            "Quarantine storage add-on (200 GB)                       180.00 EUR",
            "Onboarding workshop (1 day)                              950.00 EUR",
            "",
            "Total excl. VAT                                        3,630.00 EUR",
            "VAT 20%                                                  726.00 EUR",
            "Total                                                  4,356.00 EUR",
        ]
    )
    inner_body = multipart(
        b_inner,
        [
            part(
                ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"],
                [
                    "Dear customer,",
                    "",
                    "please find attached invoice INV-2024-0612 for May 2024.",
                    "Amount due: EUR 4,356.00, payable within 30 days.",
                    "",
                    "Northwind Billing",
                ],
            ),
            part(
                [
                    'Content-Type: application/pdf; name="INV-2024-0612.pdf"',
                    "Content-Transfer-Encoding: base64",
                    'Content-Disposition: attachment; filename="INV-2024-0612.pdf"',
                ],
                b64_lines(invoice),
            ),
        ],
    )
    forwarded = [*inner_headers, "", *inner_body]

    text = (
        "Hi Sven,\n"
        "\n"
        "Forwarding the invoice from Northwind as an attachment. The workshop line (950 EUR) "
        "was supposed to be included in the onboarding package, so please put the payment on "
        "hold until they send a corrected invoice.\n"
        "\n"
        "Thanks,\n"
        "Anja\n"
        "\n"
        "-- \n"
        "Anja Lindqvist | Procurement | Fabrikam Inc."
    )
    html = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
        "</head><body>\n"
        "<div>Hi Sven,</div><div><br></div>\n"
        "<div>Forwarding the invoice from Northwind as an attachment. The workshop line "
        "(950&nbsp;EUR) was supposed to be included in the onboarding package, so please put "
        "the payment <b>on hold</b> until they send a corrected invoice.</div><div><br></div>\n"
        "<div>Thanks,<br>Anja</div><div><br></div>\n"
        '<table style="border-top:1px solid #cccccc;padding-top:8px;"><tr>\n'
        f'<td><img src="cid:{cid}" width="32" height="32" alt="Fabrikam"></td>\n'
        '<td style="font-size:12px;color:#555555;">Anja Lindqvist | Procurement | '
        "Fabrikam Inc.</td>\n"
        "</tr></table>\n"
        "</body></html>"
    )
    related = multipart(
        b_rel,
        [
            part(
                [
                    "Content-Type: text/html; charset=utf-8",
                    "Content-Transfer-Encoding: quoted-printable",
                ],
                qp_lines(html),
            ),
            part(
                [
                    'Content-Type: image/png; name="logo.png"',
                    "Content-Transfer-Encoding: base64",
                    f"Content-ID: <{cid}>",
                    'Content-Disposition: inline; filename="logo.png"',
                ],
                b64_lines(logo_png()),
            ),
        ],
    )
    alternative = multipart(
        b_alt,
        [
            part(
                [
                    "Content-Type: text/plain; charset=utf-8",
                    "Content-Transfer-Encoding: quoted-printable",
                ],
                qp_lines(text),
            ),
            part(
                [f'Content-Type: multipart/related; boundary="{b_rel}"; type="text/html"'], related
            ),
        ],
    )
    body = multipart(
        b_mix,
        [
            part([f'Content-Type: multipart/alternative; boundary="{b_alt}"'], alternative),
            part(
                [
                    'Content-Type: message/rfc822; name="Invoice INV-2024-0612.eml"',
                    "Content-Transfer-Encoding: 7bit",
                    'Content-Disposition: attachment; filename="Invoice INV-2024-0612.eml"',
                ],
                forwarded,
            ),
        ],
        preamble=["This is a multipart message in MIME format.", ""],
        epilogue=["", "(end of message)"],
    )
    headers = [
        "Received: from mail.fabrikam.example (mail.fabrikam.example [198.51.100.80])",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4VvXq5R1Ntz9sPc",
        "\tfor <sven.berg@example.net>; Thu, 6 Jun 2024 09:15:33 +0200 (CEST)",
        *dkim_signature(
            rng, "fabrikam.example", "sel1", 1717658131, "From:To:Subject:Date:Message-ID"
        ),
        "From: Anja Lindqvist <anja.lindqvist@fabrikam.example>",
        "To: Sven Berg <sven.berg@example.net>",
        "Subject: Fwd: Invoice INV-2024-0612 (please hold payment)",
        "Date: Thu, 6 Jun 2024 09:15:31 +0200",
        "Message-ID: <CAJx7vG2kP0q@mail.fabrikam.example>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{b_mix}"',
    ]
    return message(headers, body)


@case(
    "005-8bit-utf8-rfc2047.eml",
    "Content-Transfer-Encoding: 8bit UTF-8 body in French, German and Japanese; Subject as "
    "folded RFC 2047 UTF-8 B-words, From as UTF-8 Q-word, To as ISO-2022-JP B-word, Cc as "
    "ISO-8859-1 Q-word. Headers themselves are pure ASCII.",
)
def eightbit_rfc2047() -> bytes:
    subject = "Réunion du comité / Protokoll der Sitzung / 会議の議事録（5月28日）"
    subject_words = ew_b(subject)
    headers = [
        "Received: from mail.example.fr (mail.example.fr [192.0.2.17])",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4VtRr2H8Ksz9sQb",
        "\tfor <k.sato@example.jp>; Wed, 29 May 2024 11:20:05 +0200 (CEST)",
        "From: " + ew_q("Françoise Müller-Tanaka") + " <f.mueller-tanaka@example.fr>",
        "To: " + ew_b("佐藤 健一", "ISO-2022-JP")[0] + " <k.sato@example.jp>,",
        " " + ew_q("Jürgen Weiß", "ISO-8859-1") + " <j.weiss@example.de>",
        "Cc: " + ew_q("Élodie Dubois", "ISO-8859-1") + " <elodie.dubois@example.fr>",
        "Subject: " + subject_words[0],
        *[" " + w for w in subject_words[1:]],
        "Date: Wed, 29 May 2024 11:20:03 +0200",
        "Message-ID: <f2b8e1c0-9a7d-4e3b-8c5f-1d6a2b9e7c44@example.fr>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
        "Content-Language: fr, de, ja",
    ]
    body = [
        "Bonjour à tous,",
        "",
        *wrap(
            "Voici le compte rendu de la réunion du comité de pilotage du 28 mai. Les décisions "
            "prises : la migration des boîtes aux lettres commencera le 17 juin ; l’équipe "
            "réseau s’occupe des enregistrements MX ; le filtre antispam reste en mode "
            "« observation » pendant deux semaines avant d’être activé."
        ),
        "",
        "Prochaine réunion : mercredi 12 juin à 14 h (heure de Paris), salle Œillet.",
        "",
        "-----",
        "",
        "Hallo zusammen,",
        "",
        *wrap(
            "die Migration der Mailserver auf die neue Plattform ist für Ende Juni geplant. "
            "Bitte prüft bis Freitag, ob eure Weiterleitungsregeln übernommen wurden. Größere "
            "Änderungen müssen über das Änderungsformular beantragt werden; die Frist dafür "
            "endet am 7. Juni um 12 Uhr."
        ),
        "",
        "Grüße aus Straßburg",
        "",
        "-----",
        "",
        "佐藤さん",
        "",
        "お疲れ様です。ミュラー＝田中です。",
        "先日の会議の議事録を送ります。",
        "メールサーバーの移行は6月17日に開始します。",
        "次回の会議は6月12日（水）14時から、大阪オフィスの第3会議室で行います。",
        "ご確認のほど、よろしくお願いいたします。",
        "",
        "-- ",
        "Françoise Müller-Tanaka",
        "Cheffe de projet messagerie · Projektleiterin E-Mail · メール移行プロジェクト",
    ]
    return message(headers, body)


@case(
    "006-raw-8bit-headers.eml",
    "Raw (unencoded) 8-bit bytes in headers: UTF-8 Subject and To display name, ISO-8859-1 "
    "From display name and Organization. Body is undeclared-CTE Latin-1 text. Illegal but "
    "common.",
)
def raw_8bit_headers() -> bytes:
    headers: list[Line] = [
        "Received: from webmail.example.es (webmail.example.es [203.0.113.9])",
        "\tby mx1.example.net (Postfix) with ESMTP id 4W0aB3cD4ez9sRr",
        "\tfor <zoe.angstrom@example.net>; Fri, 7 Jun 2024 18:44:02 +0200 (CEST)",
        b'From: "' + "José Muñoz Peña".encode("latin-1") + b'" <jose.munoz@example.es>',
        "To: Zoë Ångström <zoe.angstrom@example.net>".encode(),
        "Subject: Überweisung bestätigt – Rechnung Nr. 2024-0815 für Café Zürich".encode(),
        b"Organization: " + "Compañía Ibérica de Señales S.L.".encode("latin-1"),
        "Date: Fri, 7 Jun 2024 18:43:59 +0200",
        "Message-ID: <20240607164359.GA18842@webmail.example.es>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=iso-8859-1",
        "X-Mailer: SquirrelMail/1.4.22",
    ]
    body = [
        "Hola Zoë,",
        "",
        "te confirmo que la transferencia de 1.280,00 EUR se realizó ayer a las 17:30.",
        "El número de referencia es ES-TRF-88213. ¿Puedes enviarme el recibo firmado?",
        "",
        "Muchas gracias y saludos desde Sevilla,",
        "José",
    ]
    return message(headers, body, charset="latin-1")


FIRST_NAMES = [
    "Aisha", "Bruno", "Chen", "Dorota", "Emeka", "Fatima", "Gustavo", "Hana", "Ivan", "Jana",
    "Kofi", "Lucia", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sanjay", "Tomasz",
]  # fmt: skip
LAST_NAMES = [
    "Abara", "Becker", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Horvat", "Ito",
    "Jansen", "Kowalski", "Larsen", "Moreau", "Nakamura", "Okonkwo", "Petrov", "Rossi",
    "Schmidt", "Tanaka", "Varga",
]  # fmt: skip


@case(
    "007-long-to-references.eml",
    "Very long headers: To: with 300 addresses (mixed forms: name-addr, quoted 'Last, First', "
    "bare addr-spec) folded over ~140 lines, and a References: header of ~8 KB with one "
    "Message-ID per folded line.",
)
def long_headers() -> bytes:
    rng = Prng("007")
    people = [(f, ln) for ln in LAST_NAMES for f in FIRST_NAMES]
    chosen = rng.sample(people, 300)
    addrs: list[str] = []
    for i, (first, last) in enumerate(chosen):
        mail = f"{first.lower()}.{last.lower()}@corp.example.com"
        if i % 7 == 3:
            addrs.append(mail)
        elif i % 5 == 1:
            addrs.append(f'"{last}, {first}" <{mail}>')
        else:
            addrs.append(f"{first} {last} <{mail}>")
    refs: list[str] = []
    total = len("References:")
    while total < 8100:
        kind = len(refs) % 3
        if kind == 0:
            mid = f"<CA+{rng.alnum(38)}@mail.example.com>"
        elif kind == 1:
            uuid = f"{rng.hex(4)}-{rng.hex(2)}-{rng.hex(2)}-{rng.hex(2)}-{rng.hex(6)}"
            mid = f"<{uuid}@corp.example.com>"
        else:
            mid = (
                f"<AM9PR07MB{rng.between(1000, 9999)}{rng.alnum(20).upper()}@eurprd07.example.com>"
            )
        refs.append(mid)
        total += len(mid) + 3
    headers = [
        "Received: from mail.corp.example.com (mail.corp.example.com [198.51.100.2])",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4W2hJ7kL9mz9sVv",
        "\tfor <facilities-archive@example.net>; Mon, 10 Jun 2024 08:02:11 +0200 (CEST)",
        "From: Facilities Desk <facilities@corp.example.com>",
        *fold_list("To", addrs),
        "Cc: facilities-archive@example.net",
        "Subject: Re: [all-staff] Access cards will be replaced on 3 June",
        "Date: Mon, 10 Jun 2024 08:02:09 +0200",
        f"Message-ID: <{rng.hex(8)}.facilities@corp.example.com>",
        f"In-Reply-To: {refs[-1]}",
        "References: " + refs[0],
        *[" " + r for r in refs[1:]],
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
    ]
    body = [
        "Hello everyone,",
        "",
        "a short follow-up to the thread below: the new access cards are ready.",
        "If you have not collected yours yet, please come to the reception desk on",
        "the ground floor between 09:00 and 16:00. Old cards stop working on",
        "Friday 14 June at 18:00.",
        "",
        "Please do not reply-all to this message.",
        "",
        "Facilities Desk",
    ]
    return message(headers, body)


@case(
    "008-line-998-octets.eml",
    "Boundary case at the RFC 5321 limit: one unfolded header line of exactly 998 octets, and "
    "four body lines of exactly 998 octets (CSV, JSON, HTML, and the final body line), each "
    "followed by CRLF. Must pass.",
)
def line_998() -> bytes:
    rng = Prng("008")
    token = rng.b64(800).replace("+", "-").replace("/", "_").rstrip("=")
    header = pad_to("X-Campaign-Tracking: v=2; id=cmp-7781; t=", "", MAX_LINE, token)
    csv = pad_to(
        "2024-06-11T00:00:00Z,mx1,inbound,accepted,",
        ",end",
        MAX_LINE,
        "1382;1417;1290;1501;1466;1399;1521;1488;",
    )
    json_line = pad_to(
        '{"report":"hourly","host":"mx2.example.net","rcpt_per_hour":[',
        '0],"truncated":false}',
        MAX_LINE,
        "1204,1187,1322,1290,1401,1377,1265,1199,",
    )
    html = pad_to(
        '<p style="margin:0;font-family:Arial,sans-serif;font-size:13px;">',
        "</p>",
        MAX_LINE,
        "Quarterly figures attached, see table below for per-region breakdown. ",
    )
    last = pad_to("Footer: ", ".", MAX_LINE, "-=")
    lines = [header, csv, json_line, html, last]
    assert all(len(ln) == MAX_LINE for ln in lines)
    headers = [
        "Received: from reports.example.net (reports.example.net [192.0.2.90])",
        "\tby mx1.example.net (Postfix) with ESMTP id 4W3mN8pQ2rz9sXx",
        "\tfor <noc@example.net>; Tue, 11 Jun 2024 01:00:04 +0200 (CEST)",
        "From: Reports <reports@example.net>",
        "To: NOC <noc@example.net>",
        "Subject: Hourly export (long lines, not folded)",
        "Date: Tue, 11 Jun 2024 01:00:03 +0200",
        "Message-ID: <export-20240611T0000@reports.example.net>",
        header,
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
    ]
    body = [
        "Export for 2024-06-11 00:00 UTC. Lines are deliberately not wrapped.",
        "",
        csv,
        json_line,
        "",
        html,
        "",
        last,
    ]
    return message(headers, body)


@case(
    "009-dot-lines.eml",
    "Dot-stuffing: body has lone '.' lines (including the very last line of the message, so "
    "the wire form ends '..CRLF.CRLF'), lines starting with '.', '..', '...', a line that is "
    "exactly '.<TAB>' and '.<TAB>text'.",
)
def dot_lines() -> bytes:
    headers = [
        "Received: from laptop.example.org (unknown [198.51.100.140])",
        "\tby mx1.example.net (Postfix) with ESMTPSA id 4W4pR1sT3uz9sYy",
        "\tfor <priya.nair@example.net>; Wed, 12 Jun 2024 15:31:08 +0200 (CEST)",
        "From: Tomasz Kowalski <tomasz@example.org>",
        "To: Priya Nair <priya.nair@example.net>",
        "Subject: SMTP transcript + the weird dotfiles listing",
        "Date: Wed, 12 Jun 2024 15:31:05 +0200",
        "Message-ID: <87h6b2k1x9.fsf@laptop.example.org>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
    ]
    body = [
        "Hi Priya,",
        "",
        "here is the transcript you asked for. Note how the client ends DATA:",
        "",
        "  C: DATA",
        "  S: 354 End data with <CR><LF>.<CR><LF>",
        "  C: Subject: test",
        "  C:",
        "  C: hello",
        "  C: .",
        "  S: 250 2.0.0 Ok: queued as 4F2A11C3",
        "",
        "And here are the lines from the broken listing, unindented, exactly as",
        "they came out of the script:",
        ".",
        ".bashrc",
        ".config/",
        "..",
        "../shared/.htaccess",
        "...and that is where it stopped.",
        ".\t",
        ".\tindented after a dot and a tab",
        ". ",
        "",
        "The last line of this mail is a single dot, on purpose.",
        "",
        "Tomasz",
        ".",
    ]
    return message(headers, body)


@case(
    "010-dot-text-in-mime.eml",
    "Dot-like text inside a text/plain MIME part: the part body starts with a '.' line, "
    "contains '. ', '...', '..', '.', a literal '\\r\\n.\\r\\n' written as escaped text, and "
    "a '.' line right before the next boundary; the second part is base64.",
)
def dot_mime() -> bytes:
    boundary = "===============5829041736619423011=="
    snippet = (
        b'import smtplib\n\nwith smtplib.SMTP("localhost", 24) as s:\n'
        b'    s.docmd("DATA")\n    s.send(b"Subject: x\\r\\n\\r\\nbody\\r\\n.\\r\\n")\n'
    )
    text = [
        ".",
        "(the line above is a lone dot, it is the first line of this part)",
        "",
        "Notes from the LMTP interop session:",
        "",
        ". ",
        "...",
        "..",
        ".",
        "",
        'A test that sends "\\r\\n.\\r\\n" inside a header value must not end the DATA',
        "phase early; only a line consisting of a single dot does that, and the",
        "client must double every leading dot, so that",
        "..",
        "arrives as a line with two dots and",
        ".",
        "arrives as a line with one dot. See the attached reproducer.",
        ".",
    ]
    headers = [
        "Received: from ci.example.org (ci.example.org [192.0.2.200])",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4W5sT4uV6wz9sZz",
        "\tfor <interop@example.net>; Thu, 13 Jun 2024 10:05:55 +0200 (CEST)",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "MIME-Version: 1.0",
        "From: Interop Bot <interop-bot@example.org>",
        "To: interop@example.net",
        "Subject: Interop notes: dots at the start of lines",
        "Date: Thu, 13 Jun 2024 08:05:54 -0000",
        "Message-ID: <171826595412.8812.1504471108273311@ci.example.org>",
    ]
    body = multipart(
        boundary,
        [
            part(
                [
                    'Content-Type: text/plain; charset="us-ascii"',
                    "MIME-Version: 1.0",
                    "Content-Transfer-Encoding: 7bit",
                ],
                text,
            ),
            part(
                [
                    'Content-Type: text/x-python; charset="us-ascii"',
                    "MIME-Version: 1.0",
                    "Content-Transfer-Encoding: base64",
                    'Content-Disposition: attachment; filename="repro_dot.py"',
                ],
                b64_lines(snippet),
            ),
        ],
    )
    return message(headers, body)


@case(
    "011-headers-only-no-blank-line.eml",
    "Header section only: the last header ends with CRLF and there is no empty line and no "
    "body at all (RFC 5322 allows omitting the body).",
)
def headers_only() -> bytes:
    headers = [
        "Received: from monitor.example.net (monitor.example.net [192.0.2.5])",
        "\tby mx1.example.net (Postfix) with ESMTP id 4W6vW7xY8az9sAa",
        "\tfor <probe-sink@example.net>; Fri, 14 Jun 2024 12:00:00 +0200 (CEST)",
        "Date: Fri, 14 Jun 2024 12:00:00 +0200",
        "From: Mail Probe <probe@monitor.example.net>",
        "To: probe-sink@example.net",
        "Subject: probe mx1 1718359200",
        "Message-ID: <probe-1718359200-mx1@monitor.example.net>",
        "X-Probe-Sequence: 88213",
    ]
    return join(headers)


@case(
    "012-headers-empty-body.eml",
    "Headers followed by the empty separator line and an empty body (file ends CRLF CRLF).",
)
def headers_empty_body() -> bytes:
    headers = [
        "Received: from phone.example.org (unknown [203.0.113.201])",
        "\tby mx1.example.net (Postfix) with ESMTPSA id 4W7yZ0aB1cz9sBb",
        "\tfor <hana.ito@example.net>; Fri, 14 Jun 2024 19:47:21 +0200 (CEST)",
        "From: Oskar Larsen <oskar@example.org>",
        "To: Hana Ito <hana.ito@example.net>",
        "Subject: Landed, call me when you are out of the meeting",
        "Date: Fri, 14 Jun 2024 19:47:19 +0200",
        "Message-ID: <E1sIBm3-0004Qx-2P@phone.example.org>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    return message(headers, [])


@case(
    "013-no-final-crlf.eml",
    "The last body line ('Sent from my phone') has no terminating CRLF; an SMTP client must "
    "append CRLF before '.CRLF', so the delivered copy gains a final CRLF.",
    needs_final_crlf=True,
)
def no_final_crlf() -> bytes:
    headers = [
        "Received: from phone.example.org (unknown [203.0.113.202])",
        "\tby mx1.example.net (Postfix) with ESMTPSA id 4W8bC2dE3fz9sCc",
        "\tfor <rosa.costa@example.net>; Sat, 15 Jun 2024 08:12:40 +0200 (CEST)",
        "From: Bruno Becker <bruno@example.org>",
        "To: Rosa Costa <rosa.costa@example.net>",
        "Subject: Re: Saturday shift",
        "Date: Sat, 15 Jun 2024 08:12:38 +0200",
        "Message-ID: <3C9A1F2E-7B4D-4E6A-9F1C-2D8E5B7A0C13@example.org>",
        "In-Reply-To: <20240614201133.77A1@example.net>",
        "MIME-Version: 1.0 (1.0)",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
    ]
    body = [
        "Yes, I can take the Saturday shift. I'll be there at 7.",
        "",
        "Sent from my phone",
    ]
    return message(headers, body).removesuffix(CRLF)


@case(
    "014-bare-lf.eml",
    "Every line ends with a bare LF (no CR anywhere): a cron mail as written by a local "
    "sendmail(1) pipe. A receiver may normalise to CRLF.",
    bare_lf=True,
)
def bare_lf() -> bytes:
    headers = [
        "Received: by backup01.example.net (Postfix, from userid 0)",
        "\tid 5E4D3C2B1A; Sun, 16 Jun 2024 03:30:07 +0200 (CEST)",
        "From: root@backup01.example.net (Cron Daemon)",
        "To: root@backup01.example.net",
        "Subject: Cron <root@backup01> /usr/local/sbin/backup-mailstore --incremental",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
        "X-Cron-Env: <SHELL=/bin/sh>",
        "X-Cron-Env: <HOME=/root>",
        "X-Cron-Env: <PATH=/usr/bin:/bin>",
        "X-Cron-Env: <LOGNAME=root>",
        "Message-Id: <20240616013007.5E4D3C2B1A@backup01.example.net>",
        "Date: Sun, 16 Jun 2024 03:30:07 +0200 (CEST)",
    ]
    body = [
        "backup-mailstore 2.4.1 starting incremental run",
        "source:      /var/vmail",
        "destination: s3://backups-example/vmail/2024-06-16",
        "",
        "scanned     412,883 files",
        "changed       3,112 files (1.9 GiB)",
        "uploaded      3,112 files in 6m41s",
        "WARNING: skipped /var/vmail/example.net/tmp/.lock (permission denied)",
        "",
        "done, exit status 0",
    ]
    return message(headers, body, eol=b"\n")


@case(
    "015-mixed-line-endings.eml",
    "Mostly CRLF, but one header line (X-Mailer) and three body lines end in bare LF, one body "
    "line contains bare CRs in the middle (terminal progress output), and one line ends in "
    "CR CR LF (a stray CR before the CRLF).",
    bare_lf=True,
)
def mixed_endings() -> bytes:
    head = join(
        [
            "Received: from fs02.example.net (fs02.example.net [192.0.2.12])",
            "\tby mx1.example.net (Postfix) with ESMTP id 4W9eF5gH6iz9sDd",
            "\tfor <it-reports@example.net>; Mon, 17 Jun 2024 02:15:44 +0200 (CEST)",
            "From: fs02 sync <sync@fs02.example.net>",
            "To: it-reports@example.net",
            "Subject: Nightly sync report for fs02",
            "Date: Mon, 17 Jun 2024 02:15:43 +0200",
            "Message-ID: <sync-20240617021543@fs02.example.net>",
        ]
    )
    head += b"X-Mailer: sync-notify.sh 1.4\n"
    head += join(["MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii"])
    body = (
        CRLF
        + b"Nightly sync report for fs02\r\n"
        + b"\r\n"
        + b"rsync output (pasted as-is):\r\n"
        + b"sending incremental file list\n"
        + b"projects/2024/budget.xlsx\n"
        + b"projects/2024/minutes-0611.docx\n"
        + b"\r\n"
        + b"Progress: 12%\r 48%\r 97%\r100% done\r\n"
        + b"Checksum verification: OK\r\r\n"
        + b"Total transferred: 14.2 MiB in 00:01:52\r\n"
    )
    return head + body


@case(
    "016-nul-bytes.eml",
    "NUL (0x00) bytes in the body of a text/plain part declared 8bit: a UTF-16LE fragment "
    "pasted into the text and records ending in NUL; second part is ordinary text.",
)
def nul_bytes() -> bytes:
    boundary = "nul-test-8d1f0c2b7a"
    utf16 = "ID,Subject,Status".encode("utf-16-le")
    headers = [
        "Received: from helpdesk.example.org (helpdesk.example.org [198.51.100.66])",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4WBhI8jK9lz9sEe",
        "\tfor <tom.jansen@example.net>; Mon, 17 Jun 2024 11:02:19 +0200 (CEST)",
        "From: Nadia Petrov <nadia.petrov@example.org>",
        "To: Tom Jansen <tom.jansen@example.net>",
        "Subject: Ticket export still has the encoding problem",
        "Date: Mon, 17 Jun 2024 11:02:17 +0200",
        "Message-ID: <d41d8cd98f00b204@helpdesk.example.org>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    ]
    body = multipart(
        boundary,
        [
            part(
                ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"],
                [
                    "Hi Tom,",
                    "",
                    "the export from the old ticketing system still has the encoding problem.",
                    "This is what the first line of tickets.csv looks like when I paste it:",
                    "",
                    utf16,
                    "",
                    "and every record has a trailing NUL:",
                    b"4711;Printer on 3rd floor jams;closed\x00",
                    b"4712;VPN drops every 30 minutes;open\x00",
                    b"4713;Shared mailbox \x00\x00 not visible;open\x00",
                    "",
                    "Nadia",
                ],
            ),
            part(
                ["Content-Type: text/plain; charset=us-ascii"],
                ["(second part, no NUL bytes here)"],
            ),
        ],
    )
    return message(headers, body)


@case(
    "017-malformed-mime-unclosed.eml",
    "Malformed MIME: the outer multipart/mixed boundary is never closed (message truncated in "
    "the middle of a base64 attachment), and a nested part declares multipart/alternative "
    "without any boundary parameter.",
)
def malformed_unclosed() -> bytes:
    rng = Prng("017")
    boundary = "----=_Part_118_2093847561.1718620000000"
    data = rng.raw(1500)
    body = multipart(
        boundary,
        [
            part(
                ["Content-Type: text/plain; charset=UTF-8", "Content-Transfer-Encoding: 7bit"],
                [
                    "Dear Sir/Madam,",
                    "",
                    "Please see the attached documents regarding your shipment 7731-0093.",
                    "Kindly confirm the delivery address by return mail.",
                ],
            ),
            part(
                ["Content-Type: multipart/alternative"],
                [
                    "Content-Type: text/plain",
                    "",
                    "This nested part has no boundary parameter, so it cannot be split.",
                ],
            ),
            part(
                [
                    'Content-Type: application/zip; name="shipment_7731-0093.zip"',
                    "Content-Transfer-Encoding: base64",
                    'Content-Disposition: attachment; filename="shipment_7731-0093.zip"',
                ],
                b64_lines(b"PK\x03\x04" + data)[:-3],
            ),
        ],
        close=False,
    )
    headers = [
        "Received: from unknown (HELO mail.example.biz) (203.0.113.250)",
        "\tby mx1.example.net with SMTP; Mon, 17 Jun 2024 12:26:40 +0200",
        "From: Logistics Dept <logistics@example.biz>",
        "To: <receiving@example.net>",
        "Subject: Shipment 7731-0093 documents",
        "Date: Mon, 17 Jun 2024 12:26:40 +0200",
        "Message-ID: <1718620000000.118.mail@example.biz>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    ]
    return message(headers, body)


@case(
    "018-malformed-headers.eml",
    "Malformed header block: two conflicting Content-Type headers (text/plain then text/html), "
    "two Content-Transfer-Encoding headers, and a line without a colon ('X-Priority 3 "
    "(Normal)') in the middle of the header block, followed by more headers (Subject, "
    "Message-ID).",
)
def malformed_headers() -> bytes:
    headers = [
        "Received: from www-data by shop.example.com with local (Exim 4.96)",
        "\t(envelope-from <www-data@shop.example.com>)",
        "\tid 1sJ9kQ-0003Zx-1F; Mon, 17 Jun 2024 14:08:31 +0000",
        "Received: from shop.example.com ([198.51.100.150])",
        "\tby mx1.example.net (Postfix) with ESMTP id 4WCkL1mN2oz9sFf",
        "\tfor <g.rossi@example.net>; Mon, 17 Jun 2024 16:08:32 +0200 (CEST)",
        "To: g.rossi@example.net",
        "From: Example Shop <no-reply@shop.example.com>",
        "Content-Type: text/plain; charset=utf-8",
        "MIME-Version: 1.0",
        "X-Priority 3 (Normal)",
        "Subject: Your order #100482 has shipped",
        "Content-Type: text/html; charset=iso-8859-1",
        "Content-Transfer-Encoding: 7bit",
        "Content-Transfer-Encoding: quoted-printable",
        "Message-ID: <b3c2a1d0e9f8a7b6c5d4e3f2a1b0c9d8@shop.example.com>",
        "Date: Mon, 17 Jun 2024 14:08:31 +0000",
    ]
    body = [
        "<html><body>",
        "<p>Hello Giulia,</p>",
        "<p>Your order #100482 has shipped and should arrive within 3-5 working days.</p>",
        '<p>Tracking: <a href=3D"https://track.example.com/?n=3DJD014600003">JD014600003</a></p>',
        "</body></html>",
    ]
    return message(headers, body)


@case(
    "019-leading-continuation.eml",
    "The very first line is a header continuation (starts with TAB) before any field: the "
    "first line of a Received: header was lost by a broken relay.",
)
def leading_continuation() -> bytes:
    headers = [
        "\tby relay2.example.biz (8.15.2/8.15.2) with ESMTP id 45HE1aQ7012345",
        "\tfor <ivan.horvat@example.net>; Mon, 17 Jun 2024 14:01:36 GMT",
        "Received: from relay2.example.biz (relay2.example.biz [203.0.113.88])",
        "\tby mx1.example.net (Postfix) with ESMTP id 4WDnO3pQ4rz9sGg",
        "\tfor <ivan.horvat@example.net>; Mon, 17 Jun 2024 16:01:37 +0200 (CEST)",
        "From: Lucia Garcia <lucia.garcia@example.biz>",
        "To: Ivan Horvat <ivan.horvat@example.net>",
        "Subject: Contract draft v3",
        "Date: Mon, 17 Jun 2024 16:01:30 +0200",
        "Message-ID: <45HE1aQ7012345@relay2.example.biz>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    body = [
        "Ivan,",
        "",
        "the third draft of the contract is on the shared drive under",
        "Legal/2024/Horvat. Clause 7.2 (liability cap) is the only change.",
        "",
        "Lucia",
    ]
    return message(headers, body)


@case(
    "020-forged-spam-headers.eml",
    "Pre-existing forged filter headers at the top level, in several positions and spellings: "
    "X-Spam-Flag: YES, x-spam-flag: NO, X-Spam-Flag:YES (no space), X-Spam-Score (tab "
    "value), X-SPAM-LEVEL, X-Spam-Status (folded over 3 lines), X-Spam-Checker-Version, "
    "X-Virus-Scanned, x-virus-scanned, X-Quarantine-ID, X-Spam-Report (folded). The same "
    "names also appear in a MIME part header and in body text, where they must NOT be touched.",
)
def forged_headers() -> bytes:
    boundary = "_----------=_171863040512345"
    headers = [
        "X-Spam-Flag: YES",
        "Received: from mail.example.info (mail.example.info [203.0.113.99])",
        "\tby mx1.example.net (Postfix) with ESMTP id 4WEqR5sT6uz9sHh",
        "\tfor <kofi.abara@example.net>; Mon, 17 Jun 2024 15:20:06 +0200 (CEST)",
        "x-spam-flag: NO",
        "X-Spam-Score:\t-3.2",
        "X-SPAM-LEVEL: ",
        "X-Spam-Status: No, score=-3.2 required=5.0 tests=ALL_TRUSTED,BAYES_00,",
        "\tDKIM_SIGNED,DKIM_VALID,DKIM_VALID_AU,SPF_PASS autolearn=ham",
        "\tautolearn_force=no version=3.4.6",
        "X-Spam-Checker-Version: SpamAssassin 3.4.6 (2021-04-09) on mx1.example.net",
        "X-Virus-Scanned: Debian amavisd-new at mx1.example.net",
        "Received: from [10.0.0.5] (unknown [203.0.113.99])",
        "\tby mail.example.info (Postfix) with ESMTPSA id 9F8E7D6C5B",
        "\tfor <kofi.abara@example.net>; Mon, 17 Jun 2024 13:20:05 +0000 (UTC)",
        'From: "IT Service Desk" <helpdesk@example.info>',
        "To: kofi.abara@example.net",
        "Subject: Action required: mailbox quota exceeded",
        "Date: Mon, 17 Jun 2024 13:20:05 +0000",
        "Message-ID: <20240617132005.9F8E7D6C5B@mail.example.info>",
        "x-virus-scanned: clamav-milter 1.0.5 at mx1.example.net",
        "X-Quarantine-ID: <Zx9k3PqL2mTa>",
        "X-Spam-Flag:YES",
        "X-Spam-Report: ",
        "\t*  -1.0 ALL_TRUSTED Passed through trusted hosts only via SMTP",
        "\t* -1.9 BAYES_00 BODY: Bayes spam probability is 0 to 1%",
        "\t*      [score: 0.0000]",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    ]
    body = multipart(
        boundary,
        [
            part(
                [
                    "Content-Type: text/plain; charset=us-ascii",
                    "Content-Transfer-Encoding: 7bit",
                    "X-Spam-Flag: YES",
                    "X-Virus-Scanned: part-level header, must be kept",
                ],
                [
                    "Dear user,",
                    "",
                    "your mailbox has exceeded its quota. To avoid losing messages, verify",
                    "your account within 24 hours at the link below.",
                    "",
                    "  https://mailbox-verify.example.info/login",
                    "",
                    "Our filter already checked this message:",
                    "X-Spam-Flag: NO",
                    "X-Spam-Score: -3.2",
                    "",
                    "IT Service Desk",
                ],
            ),
        ],
    )
    return message(headers, body)


@case(
    "021-body-line-999.eml",
    "One body line of 999 octets (one over the RFC 5321 limit): a minified single-line HTML "
    "newsletter. An RFC 5321 receiver refuses it.",
    expect="reject-line-too-long",
)
def body_999() -> bytes:
    html = pad_to(
        '<html><body><table width="100%"><tr><td style="font-family:Arial;font-size:14px;">'
        "<h1>Summer sale</h1><p>",
        "</p></td></tr></table></body></html>",
        MAX_LINE + 1,
        "Up to 40% off garden furniture, barbecues and outdoor lighting until 30 June. ",
    )
    headers = [
        "Received: from esp.example.com (esp.example.com [198.51.100.210])",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4WFtU7vW8xz9sIi",
        "\tfor <jana.varga@example.net>; Tue, 18 Jun 2024 07:00:12 +0200 (CEST)",
        "From: Garden Store <news@esp.example.com>",
        "To: jana.varga@example.net",
        "Subject: Summer sale: up to 40% off",
        "Date: Tue, 18 Jun 2024 05:00:11 +0000",
        "Message-ID: <nl-2024-06-18.88213@esp.example.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/html; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
    ]
    return message(headers, [html])


@case(
    "022-header-line-5000.eml",
    "One unfolded References: header line of 5000 octets (excluding CRLF), written by a client "
    "that never folds. An RFC 5321 receiver refuses it.",
    expect="reject-line-too-long",
)
def header_5000() -> bytes:
    rng = Prng("022")
    line = "References:"
    while len(line) < 5000 - 80:
        line += f" <{rng.hex(6)}.{rng.between(1000, 99999)}@lists.example.org>"
    line = pad_to(line + " <", "@lists.example.org>", 5000, rng.hex(40))
    headers = [
        "Received: from lists.example.org (lists.example.org [192.0.2.150])",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4WGwX9yZ0az9sJj",
        "\tfor <quentin.moreau@example.net>; Tue, 18 Jun 2024 09:33:50 +0200 (CEST)",
        "From: Sanjay Ito <sanjay@example.org>",
        "To: discuss@lists.example.org",
        "Subject: Re: Re: Re: Re: Re: proposal to move the meetup to Thursdays",
        "Date: Tue, 18 Jun 2024 09:33:48 +0200",
        "Message-ID: <final.0618@lists.example.org>",
        line,
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    body = ["+1 for Thursdays.", "", "Sanjay"]
    return message(headers, body)


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
DIGEST_SUBJECTS = [
    "Postfix queue grows when clamd restarts",
    "Sieve redirect loses the original envelope sender",
    "Dovecot LMTP: 452 4.2.2 over quota handling",
    "SpamAssassin Bayes database locking under load",
    "DKIM signing for multiple domains",
    "Greylisting and large senders",
    "Per-recipient scanning: worth the CPU?",
    "Where do you keep quarantined mail?",
    "TLS-RPT reports: anyone parsing them?",
    "MTA-STS policy caching",
    "Stripping X-Spam-* headers from inbound mail",
    "Moving from Cyrus to Dovecot, mailbox conversion",
]
DIGEST_PEOPLE = [
    ("Aisha Okonkwo", "aisha@okonkwo.example"),
    ("Bruno Fischer", "bfischer@example.de"),
    ("Chen Wei", "chen.wei@example.cn"),
    ("Dorota Kowalski", "dorota@example.pl"),
    ("Emeka Abara", "emeka@example.ng"),
    ("Gustavo Costa", "gcosta@example.com.br"),
    ("Jana Larsen", "jana@larsen.example"),
    ("Mateo Rossi", "mateo.rossi@example.it"),
    ("Priya Nair", "priya@example.in"),
    ("Tomasz Varga", "tvarga@example.hu"),
]
DIGEST_SENTENCES = [
    "We saw the same thing after upgrading to 3.8 last month.",
    "The active queue fills up within a couple of minutes once the milter stops answering.",
    "Setting milter_default_action to tempfail at least keeps the mail safe.",
    "Have you checked whether clamd is still reloading signatures when this happens?",
    "In our setup the content filter runs as an LMTP proxy in front of Dovecot.",
    "That way the per-recipient decision can be made after the Sieve rules are known.",
    "The downside is that every rejected recipient has to be bounced by us, not refused.",
    "I would not rely on headers added by anyone upstream of your own MX.",
    "Strip them at the border and add your own, otherwise users can be tricked easily.",
    "Our quarantine is a plain Maildir per domain, cleaned by a cron job after 30 days.",
    "It is boring, but restores are trivial and nobody needs a special tool.",
    "Bayes locking was our bottleneck until we moved the database to Redis.",
    "With the SQL backend we saw lock waits of several seconds during the morning peak.",
    "Greylisting still helps a bit, but the big senders retry from different addresses.",
    "We whitelist the published outbound ranges of the large providers.",
    "TLS-RPT reports arrive as gzip JSON; a short script turns them into a daily summary.",
    "Most failures we see are expired certificates on small hosting providers.",
    "MTA-STS policies are cached for max_age, so lowering it only takes effect slowly.",
    "Remember to bump the id in the TXT record when you change the policy file.",
    "OpenDKIM's KeyTable and SigningTable handle multiple domains without problems.",
    "Use refile: in the SigningTable if you want wildcard matching.",
    "For the Cyrus migration we used imapsync per user, which took about a week.",
    "The flags came across fine, but the seen state of shared folders did not.",
    "Make sure the LMTP socket permissions allow the postfix user to connect.",
    "Dovecot answers 452 for a full mailbox, and Postfix keeps retrying until it expires.",
    "If you want an immediate bounce instead, set quota_full_tempfail = no.",
    "We log the scan result per recipient so support can answer questions quickly.",
    "CPU usage went up by about 15 percent with per-recipient scanning enabled.",
    "Most of that was SpamAssassin, not ClamAV, because of the user preferences lookup.",
    "Caching the ClamAV result by body hash removed nearly all duplicate scans.",
    "Does anyone know whether this behaviour is documented anywhere?",
    "Thanks, that was exactly the missing piece.",
    "I will try this on the staging relay tomorrow and report back.",
    "Could you post the relevant part of postconf -n?",
    "Sieve's redirect uses the original envelope sender unless you enable SRS.",
    "Without SRS the forwarded mail fails SPF at the destination, which is what you see.",
]
DIGEST_CONFIG = [
    [
        "    smtpd_milters = inet:127.0.0.1:8891",
        "    non_smtpd_milters = $smtpd_milters",
        "    milter_default_action = tempfail",
    ],
    [
        "    virtual_transport = lmtp:unix:private/filter-lmtp",
        "    lmtp_destination_recipient_limit = 1",
    ],
    [
        "    plugin {",
        "      quota = count:User quota",
        "      quota_rule = *:storage=2G",
        "    }",
    ],
    [
        "    header_checks = regexp:/etc/postfix/header_checks",
        "    # /etc/postfix/header_checks",
        "    /^X-Spam-/        IGNORE",
    ],
]


@case(
    "023-digest-150k.eml",
    "Large pass case, ~150 KB: a Mailman-style plain-text digest (RFC 1153 layout) with many "
    "short lines, quoted replies, config snippets and 'Message: N' separators.",
)
def digest() -> bytes:
    rng = Prng("023")
    messages: list[tuple[str, str, list[str]]] = []
    size = 0
    n = 0
    clock = datetime.datetime(2024, 6, 9, 22, 14, 5)  # local time, +0200
    previous = ("Sun, 9 Jun 2024 22:14:05 +0200", "Mateo Rossi")
    while size < 146_000:
        n += 1
        topic = DIGEST_SUBJECTS[rng.below(len(DIGEST_SUBJECTS))]
        subject = ("Re: " if rng.below(4) else "") + topic
        name, addr = rng.choice(DIGEST_PEOPLE)
        clock += datetime.timedelta(seconds=rng.between(600, 6000))
        weekday = WEEKDAYS[clock.weekday()]
        date = f"{weekday}, {clock.day} Jun 2024 {clock:%H:%M:%S} +0200"
        lines = [
            f"Message: {n}",
            f"Date: {date}",
            f"From: {name} <{addr}>",
            "To: mailops@lists.example.org",
            f"Subject: [MailOps] {subject}",
            f"Message-ID: <{rng.hex(8)}@{addr.split('@')[1]}>",
            "Content-Type: text/plain; charset=us-ascii",
            "",
        ]
        if subject.startswith("Re: "):
            lines.append(f"On {previous[0]}, {previous[1]} wrote:")
            quoted = " ".join(rng.sample(DIGEST_SENTENCES, rng.between(2, 4)))
            lines += wrap(quoted, 72, "> ")
            lines.append("")
        for _ in range(rng.between(1, 3)):
            lines += wrap(" ".join(rng.sample(DIGEST_SENTENCES, rng.between(2, 5))))
            lines.append("")
        if rng.below(3) == 0:
            lines += [*rng.choice(DIGEST_CONFIG), ""]
        lines += ["Regards,", name.split()[0], "", "", "------------------------------", ""]
        messages.append((subject, name, lines))
        previous = (date, name)
        size += sum(len(ln) + 2 for ln in lines) + 60
    body = [
        "Send MailOps mailing list submissions to",
        "\tmailops@lists.example.org",
        "",
        "To subscribe or unsubscribe via the World Wide Web, visit",
        "\thttps://lists.example.org/mailman/listinfo/mailops",
        "or, via email, send a message with subject or body 'help' to",
        "\tmailops-request@lists.example.org",
        "",
        "You can reach the person managing the list at",
        "\tmailops-owner@lists.example.org",
        "",
        "When replying, please edit your Subject line so it is more specific",
        'than "Re: Contents of MailOps digest..."',
        "",
        "",
        "Today's Topics:",
        "",
        *[f"  {i:3d}. {s} ({who})" for i, (s, who, _) in enumerate(messages, 1)],
        "",
        "",
        "----------------------------------------------------------------------",
        "",
    ]
    for _, _, lines in messages:
        body += lines
    body += [
        "Subject: Digest Footer",
        "",
        "_______________________________________________",
        "MailOps mailing list",
        "mailops@lists.example.org",
        "https://lists.example.org/mailman/listinfo/mailops",
        "",
        "",
        "------------------------------",
        "",
        "End of MailOps Digest, Vol 38, Issue 112",
        "****************************************",
    ]
    headers = [
        "Received: from lists.example.org (lists.example.org [192.0.2.150])",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4WHzA1bC2dz9sKk",
        "\tfor <digest-reader@example.net>; Wed, 19 Jun 2024 12:00:03 +0200 (CEST)",
        "Received: from lists.example.org (localhost [127.0.0.1])",
        "\tby lists.example.org (Postfix) with ESMTP id 3C4D5E6F7A",
        "\tfor <digest-reader@example.net>; Wed, 19 Jun 2024 10:00:02 +0000 (UTC)",
        "Subject: MailOps Digest, Vol 38, Issue 112",
        "From: mailops-request@lists.example.org",
        "To: mailops@lists.example.org",
        "Reply-To: mailops@lists.example.org",
        "Date: Wed, 19 Jun 2024 10:00:02 +0000",
        "Message-ID: <mailman.2231.1718791202.1187.mailops@lists.example.org>",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="us-ascii"',
        "Content-Transfer-Encoding: 7bit",
        "X-BeenThere: mailops@lists.example.org",
        "X-Mailman-Version: 2.1.39",
        "Precedence: list",
        "List-Id: Mail operations discussion <mailops.lists.example.org>",
        "List-Unsubscribe: <https://lists.example.org/mailman/options/mailops>,",
        " <mailto:mailops-request@lists.example.org?subject=unsubscribe>",
        "List-Archive: <https://lists.example.org/pipermail/mailops/>",
        "List-Post: <mailto:mailops@lists.example.org>",
        "List-Help: <mailto:mailops-request@lists.example.org?subject=help>",
        "List-Subscribe: <https://lists.example.org/mailman/listinfo/mailops>,",
        " <mailto:mailops-request@lists.example.org?subject=subscribe>",
        "Errors-To: mailops-bounces@lists.example.org",
        'Sender: "MailOps" <mailops-bounces@lists.example.org>',
    ]
    return message(headers, body)


@case(
    "024-smtputf8-addresses.eml",
    "SMTPUTF8 / RFC 6532 message: raw UTF-8 in address local parts and IDN domains (Greek, "
    "Chinese, Cyrillic, German umlauts) in From/To/Cc/Reply-To and Received, raw UTF-8 "
    "Subject and display names, 8bit UTF-8 body.",
)
def smtputf8() -> bytes:
    headers = [
        "Received: from mail.παράδειγμα.δοκιμή (mail.xn--hxajbheg2az3al.xn--jxalpdlp"
        " [2001:db8:10::25])",
        "\tby mx1.example.net (Postfix) with UTF8SMTPS id 4WJcD3eF4gz9sLl",
        "\tfor <用户@例子.测试>; Wed, 19 Jun 2024 13:45:10 +0200 (CEST)",
        "From: Δημήτρης Παπαδόπουλος <δημήτρης@παράδειγμα.δοκιμή>",
        "To: 王芳 <用户@例子.测试>, Иван Петров <иван@пример.испытание>",
        "Cc: jörg.müller@bücher.example",
        "Reply-To: <δημήτρης@παράδειγμα.δοκιμή>",
        "Subject: Δοκιμή EAI: διεθνείς διευθύνσεις / 国际化邮件地址测试 / тест",
        "Date: Wed, 19 Jun 2024 14:45:08 +0300",
        "Message-ID: <eai-test-20240619-0001@xn--hxajbheg2az3al.xn--jxalpdlp>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    body = [
        "Γεια σας,",
        "",
        "αυτό είναι ένα δοκιμαστικό μήνυμα με διεθνοποιημένες διευθύνσεις (EAI).",
        "Ο διακομιστής πρέπει να υποστηρίζει την επέκταση SMTPUTF8.",
        "",
        "你好，这是一封测试邮件，收件人地址使用中文字符。",
        "Здравствуйте, это проверка адреса на кириллице.",
        "Hallo Jörg, bitte prüfe, ob die Nachricht an bücher.example zugestellt wurde.",
        "",
        "Δημήτρης",
    ]
    return message(headers, body)


@case(
    "025-outlook-cp1252-html.eml",
    "Outlook/Exchange-style windows-1252 multipart/alternative: plain and Word-generated HTML "
    "parts in quoted-printable with =CRLF soft breaks and =92/=96/=80 bytes, TABs inside "
    "the HTML, TAB-folded Received/Content-Type/Thread-Index headers, empty X-MS-Has-Attach "
    "header values, RFC 2047 windows-1252 Subject and From.",
)
def outlook() -> bytes:
    boundary = "_000_AM9PR07MB71234E8F0C1D2A3B4C5D6E7F8AAM9PR07MB7123eurp_"
    plain = (
        "Bonjour Monsieur Bernard,\n"
        "\n"
        "Suite à notre échange de mardi, vous trouverez ci-dessous notre offre révisée pour le "
        "contrat de maintenance 2024 – la remise de 8 % s’applique désormais à l’ensemble du "
        "parc.\n"
        "\n"
        "\tForfait annuel (120 postes)\t14 400,00 €\n"
        "\tRemise 8 %\t\t\t-1 152,00 €\n"
        "\tTotal HT\t\t\t13 248,00 €\n"
        "\n"
        "L’offre est valable jusqu’au 31 juillet. N’hésitez pas à me contacter pour toute "
        "question.\n"
        "\n"
        "Bien cordialement,\n"
        "\n"
        "Grégoire Lefèvre\n"
        "Responsable commercial – Contoso Services\n"
        "Tél. : +33 1 23 45 67 89\n"
    )
    html = (
        '<html xmlns:v="urn:schemas-microsoft-com:vml" '
        'xmlns:o="urn:schemas-microsoft-com:office:office" '
        'xmlns:w="urn:schemas-microsoft-com:office:word" '
        'xmlns:m="http://schemas.microsoft.com/office/2004/12/omml" '
        'xmlns="http://www.w3.org/TR/REC-html40">\n'
        "<head>\n"
        '<meta http-equiv="Content-Type" content="text/html; charset=Windows-1252">\n'
        '<meta name="Generator" content="Microsoft Word 15 (filtered medium)">\n'
        "<style><!--\n"
        "/* Font Definitions */\n"
        "@font-face\n"
        '\t{font-family:"Cambria Math";\n'
        "\tpanose-1:2 4 5 3 5 4 6 3 2 4;}\n"
        "@font-face\n"
        "\t{font-family:Calibri;\n"
        "\tpanose-1:2 15 5 2 2 2 4 3 2 4;}\n"
        "/* Style Definitions */\n"
        "p.MsoNormal, li.MsoNormal, div.MsoNormal\n"
        "\t{margin:0cm;\n"
        "\tfont-size:11.0pt;\n"
        '\tfont-family:"Calibri",sans-serif;\n'
        "\tmso-fareast-language:EN-US;}\n"
        "a:link, span.MsoHyperlink\n"
        "\t{mso-style-priority:99;\n"
        "\tcolor:#0563C1;\n"
        "\ttext-decoration:underline;}\n"
        "span.EmailStyle17\n"
        "\t{mso-style-type:personal-compose;\n"
        '\tfont-family:"Calibri",sans-serif;\n'
        "\tcolor:windowtext;}\n"
        ".MsoChpDefault\n"
        "\t{mso-style-type:export-only;\n"
        '\tfont-family:"Calibri",sans-serif;\n'
        "\tmso-fareast-language:EN-US;}\n"
        "@page WordSection1\n"
        "\t{size:612.0pt 792.0pt;\n"
        "\tmargin:72.0pt 72.0pt 72.0pt 72.0pt;}\n"
        "div.WordSection1\n"
        "\t{page:WordSection1;}\n"
        "--></style><!--[if gte mso 9]><xml>\n"
        '<o:shapedefaults v:ext="edit" spidmax="1026" />\n'
        "</xml><![endif]--><!--[if gte mso 9]><xml>\n"
        '<o:shapelayout v:ext="edit">\n'
        '<o:idmap v:ext="edit" data="1" />\n'
        "</o:shapelayout></xml><![endif]-->\n"
        "</head>\n"
        '<body lang="FR" link="#0563C1" vlink="#954F72" style="word-wrap:break-word">\n'
        '<div class="WordSection1">\n'
        '<p class="MsoNormal">Bonjour Monsieur Bernard,<o:p></o:p></p>\n'
        '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n'
        '<p class="MsoNormal">Suite à notre échange de mardi, vous trouverez ci-dessous notre '
        "offre révisée pour le contrat de maintenance 2024 – la remise de 8&nbsp;% "
        "s’applique désormais à l’ensemble du parc.<o:p></o:p></p>\n"
        '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n'
        '<table class="MsoTableGrid" border="1" cellspacing="0" cellpadding="0" '
        'style="border-collapse:collapse;border:none">\n'
        '<tr><td width="300" valign="top" style="width:225.0pt;border:solid windowtext 1.0pt;'
        'padding:0cm 5.4pt 0cm 5.4pt"><p class="MsoNormal">Forfait annuel (120 postes)'
        "<o:p></o:p></p></td>\n"
        '<td width="150" valign="top" style="width:112.5pt;border:solid windowtext 1.0pt;'
        'border-left:none;padding:0cm 5.4pt 0cm 5.4pt"><p class="MsoNormal" '
        'align="right" style="text-align:right">14&nbsp;400,00&nbsp;€<o:p></o:p></p></td></tr>\n'
        '<tr><td width="300" valign="top" style="width:225.0pt;border:solid windowtext 1.0pt;'
        'border-top:none;padding:0cm 5.4pt 0cm 5.4pt"><p class="MsoNormal">Remise 8&nbsp;%'
        "<o:p></o:p></p></td>\n"
        '<td width="150" valign="top" style="width:112.5pt;border-top:none;border-left:none;'
        "border-bottom:solid windowtext 1.0pt;border-right:solid windowtext 1.0pt;"
        'padding:0cm 5.4pt 0cm 5.4pt"><p class="MsoNormal" align="right" '
        'style="text-align:right">-1&nbsp;152,00&nbsp;€<o:p></o:p></p></td></tr>\n'
        "</table>\n"
        '<p class="MsoNormal"><b>Total HT&nbsp;: 13&nbsp;248,00&nbsp;€</b><o:p></o:p></p>\n'
        '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n'
        '<p class="MsoNormal">L’offre est valable jusqu’au 31&nbsp;juillet. N’hésitez pas à '
        "me contacter pour toute question.<o:p></o:p></p>\n"
        '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n'
        '<p class="MsoNormal">Bien cordialement,<o:p></o:p></p>\n'
        '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\n'
        '<p class="MsoNormal"><b><span style="color:#1F3864">Grégoire Lefèvre</span></b>'
        "<o:p></o:p></p>\n"
        '<p class="MsoNormal"><span style="font-size:9.0pt;color:#595959">Responsable '
        "commercial – Contoso Services<br>Tél.&nbsp;: +33&nbsp;1&nbsp;23&nbsp;45&nbsp;67"
        "&nbsp;89</span><o:p></o:p></p>\n"
        "</div>\n"
        "</body>\n"
        "</html>\n"
    )
    headers = [
        "Received: from EUR05-AM6-obe.outbound.protection.example.com (mail-am6eur05on2071."
        "outbound.protection.example.com [198.51.100.71])",
        "\tby mx1.example.net (Postfix) with ESMTPS id 4WKfG5hI6jz9sMm",
        "\tfor <p.bernard@example.net>; Thu, 20 Jun 2024 10:17:36 +0200 (CEST)",
        "Received: from AM9PR07MB7123.eurprd07.prod.example.com (2603:10a6:20b:3a1::14)",
        "\tby AM0PR07MB4417.eurprd07.prod.example.com (2603:10a6:208:c1::21) with",
        "\tMicrosoft SMTP Server (version=TLS1_2,",
        "\tcipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.7677.30; Thu, 20 Jun",
        "\t2024 08:17:34 +0000",
        "From: " + ew_q("Grégoire Lefèvre", "iso-8859-1") + " <g.lefevre@contoso.example>",
        "To: Philippe Bernard <p.bernard@example.net>",
        "Subject: " + ew_q("Offre révisée – contrat de maintenance 2024", "Windows-1252"),
        "Thread-Topic: " + ew_q("Offre révisée – contrat de maintenance 2024", "Windows-1252"),
        "Thread-Index: AdrC4mXqK7Rz0P1sTzWnO3q9VJm8Lw==",
        "Date: Thu, 20 Jun 2024 08:17:33 +0000",
        "Message-ID:",
        "\t<AM9PR07MB71234E8F0C1D2A3B4C5D6E7F8AAM9PR07MB7123eurp_@AM9PR07MB7123.eurprd07.prod"
        ".example.com>",
        "Accept-Language: fr-FR, en-US",
        "Content-Language: fr-FR",
        "X-MS-Has-Attach:",
        "X-MS-TNEF-Correlator:",
        "x-ms-publictraffictype: Email",
        "Content-Type: multipart/alternative;",
        f'\tboundary="{boundary}"',
        "MIME-Version: 1.0",
    ]
    body = multipart(
        boundary,
        [
            part(
                [
                    'Content-Type: text/plain; charset="Windows-1252"',
                    "Content-Transfer-Encoding: quoted-printable",
                ],
                qp_lines(plain, "cp1252"),
            ),
            part(
                [
                    'Content-Type: text/html; charset="Windows-1252"',
                    "Content-Transfer-Encoding: quoted-printable",
                ],
                qp_lines(html, "cp1252"),
            ),
        ],
    )
    return message(headers, body)


# --------------------------------------------------------------------------------------------
# validation, manifest, main
# --------------------------------------------------------------------------------------------


def max_line_length(data: bytes) -> int:
    return max(len(ln.removesuffix(b"\r")) for ln in data.split(b"\n"))


def has_bare_lf(data: bytes) -> bool:
    return any(i == 0 or data[i - 1] != 0x0D for i in range(len(data)) if data[i] == 0x0A)


def validate(c: Case, data: bytes) -> list[str]:
    errors: list[str] = []
    if c.expect not in EXPECT_VALUES:
        errors.append(f"unknown expect value {c.expect!r}")
    too_long = max_line_length(data) > MAX_LINE
    if too_long != (c.expect == "reject-line-too-long"):
        errors.append(f"expect={c.expect} but longest line is {max_line_length(data)} octets")
    if has_bare_lf(data) != c.bare_lf:
        errors.append(f"bare_lf declared {c.bare_lf} but is {has_bare_lf(data)}")
    if data.endswith(b"\n") == c.needs_final_crlf:
        errors.append(f"needs_final_crlf={c.needs_final_crlf} does not match the last bytes")
    if len(data) >= MAX_FILE:
        errors.append(f"file is {len(data)} bytes, limit {MAX_FILE}")
    return errors


def manifest(cases: Sequence[Case]) -> bytes:
    out = [
        "# Generated by _generate.py - do not edit by hand.",
        "# expect: 'pass' = must be delivered unchanged (plus one Received: header);",
        "#         'reject-line-too-long' = has a line over 998 octets excluding CRLF.",
        "# bare_lf: file contains LF not preceded by CR (a receiver may normalise to CRLF).",
        "# needs_final_crlf: file does not end with a line terminator; the SMTP client adds CRLF.",
    ]
    for c in cases:
        out += [
            "",
            f"[{json.dumps(c.name)}]",
            f"description = {json.dumps(c.description, ensure_ascii=False)}",
            f"expect = {json.dumps(c.expect)}",
            f"bare_lf = {str(c.bare_lf).lower()}",
        ]
        if c.needs_final_crlf:
            out.append("needs_final_crlf = true")
    return ("\n".join(out) + "\n").encode("utf-8")


def build_all() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    errors: list[str] = []
    for c in CASES:
        if c.name in files:
            errors.append(f"{c.name}: duplicate case name")
        data = c.build()
        errors += [f"{c.name}: {e}" for e in validate(c, data)]
        files[c.name] = data
    if errors:
        raise SystemExit("invalid corpus:\n  " + "\n  ".join(errors))
    files["MANIFEST.toml"] = manifest(CASES)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare with files on disk only")
    args = parser.parse_args(argv)
    files = build_all()
    stale = sorted(
        p.name for p in HERE.glob("*.eml") if p.name not in files
    )  # files not produced by any case
    if args.check:
        bad = [
            n for n, d in files.items() if not (HERE / n).exists() or (HERE / n).read_bytes() != d
        ]
        for name in bad + stale:
            print(f"out of date or unknown: {name}", file=sys.stderr)
        return 1 if bad or stale else 0
    for name, data in files.items():
        (HERE / name).write_bytes(data)
    for name in stale:
        print(f"warning: {name} is not produced by any case", file=sys.stderr)
    print(f"wrote {len(files)} files to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
