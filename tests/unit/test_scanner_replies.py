"""Parsing of clamd and spamd replies (tests/data/scanner_replies.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter.clamav import parse_reply
from lmtpfilter.scanresult import Status
from lmtpfilter.spamd import parse_response

DATA = tomllib.loads((Path(__file__).parent.parent / "data" / "scanner_replies.toml").read_text())


@pytest.mark.parametrize("case", DATA["clamd"], ids=lambda c: c.get("name", c["raw"][:40]))
def test_clamd_reply(case: dict[str, Any]) -> None:
    result = parse_reply(case["raw"].encode())
    assert result.status is Status(case["status"])
    assert list(result.names) == case.get("names", [])
    assert case.get("error", "") in result.error


@pytest.mark.parametrize("case", DATA["spamd"], ids=lambda c: c.get("name", c["raw"][:40]))
def test_spamd_reply(case: dict[str, Any]) -> None:
    result = parse_response(case["raw"].encode())
    assert result.status is Status(case["status"])
    assert case.get("error", "") in result.error
    if result.status is Status.SCORED:
        assert (result.score, result.required) == (case["score"], case["required"])
        assert [list(r) for r in result.rules] == case["rules"]
