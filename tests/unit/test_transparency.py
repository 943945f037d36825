"""Messages pass through unaltered except for our one Received: header (corpus-driven).

Every file in tests/data/messages/ is sent through the filter to a fake downstream server that
records the exact bytes it received. MANIFEST.toml says what each file is; a new case is a
new file there (see _generate.py), not new code here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.lmtp_tools import FakeDownstream, lmtp_session, make_config, running_filter

CORPUS = Path(__file__).parent.parent / "data" / "messages"
MANIFEST: dict[str, dict[str, Any]] = tomllib.loads((CORPUS / "MANIFEST.toml").read_text())


def as_sent(original: bytes) -> bytes:
    """The message as the filter receives it: an SMTP client ends the last line with CRLF."""
    return original if original.endswith(b"\r\n") or not original else original + b"\r\n"


def split_received(data: bytes, expected: bytes) -> tuple[bytes, bytes]:
    """Our Received: field (with its folded lines) and everything after it."""
    assert data.endswith(expected)
    received = data[: len(data) - len(expected)]
    assert received.startswith(b"Received: ") and received.endswith(b"\r\n"), received
    # One field: every line after the first is a continuation line.
    assert all(line[:1] in (b" ", b"\t") for line in received.split(b"\r\n")[1:-1])
    return received, data[len(received):]


@pytest.mark.parametrize("name", sorted(MANIFEST))
async def test_corpus_message(name: str) -> None:
    case = MANIFEST[name]
    original = (CORPUS / name).read_bytes()
    fake = FakeDownstream()
    await fake.start()
    try:
        async with running_filter(make_config(fake.address)) as (address, _, _):
            result = await lmtp_session(address, "s@example.net",
                                        ["a@example.org", "b@example.org"], original)
    finally:
        await fake.stop()
    assert result.final.startswith("221")
    if case["expect"] == "reject-line-too-long":
        assert [r[:9] for r in result.data_replies] == ["554 5.6.0"] * 2
        assert fake.transactions == []
        return
    assert [r[:3] for r in result.data_replies] == ["250", "250"]
    assert len(fake.transactions) == 1
    expected = as_sent(original)
    if case.get("bare_lf"):
        # The one change besides our header: bare LF becomes CRLF on the wire (RFC 5321 §2.3.8).
        expected = re.sub(rb"(?<!\r)\n", b"\r\n", expected)
    received, rest = split_received(fake.transactions[0].data, expected)
    unfolded = re.sub(rb"\r\n[ \t]+", b" ", received)
    assert b"by filter.test (lmtpfilter) with LMTP id " in unfolded
    assert rest == expected
