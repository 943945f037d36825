"""Address lists with amavis's meaning, as a table (tests/data/address_list_cases.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter.addresses import AddressList, InvalidEntry, base_address, only
from lmtpfilter.config import ConfigError, from_mapping

CASES = tomllib.loads(
    (Path(__file__).parent.parent / "data" / "address_list_cases.toml").read_text())
LISTS, BAD = CASES["list"], CASES["bad"]


@pytest.mark.parametrize("case", LISTS, ids=[c["name"] for c in LISTS])
def test_list(case: dict[str, Any]) -> None:
    listed = AddressList(case["entries"])
    delimiter = case.get("delimiter", "")
    for address in case["match"]:
        assert listed.matches(address, delimiter), f"{address!r} should match"
    for address in case["no_match"]:
        assert not listed.matches(address, delimiter), f"{address!r} should not match"


@pytest.mark.parametrize("case", BAD, ids=[repr(c["entry"]) for c in BAD])
def test_an_entry_that_can_never_match_is_refused(case: dict[str, Any]) -> None:
    with pytest.raises(InvalidEntry, match="can never match") as caught:
        AddressList(["example.org", case["entry"]])
    assert case["error"] in str(caught.value)


@pytest.mark.parametrize("key", ["local_domains", "bypass_spam_checks", "bypass_virus_checks"])
def test_the_config_names_the_key_and_the_entry(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping({"policy": {key: [".example.org", "user@@example.org"]}}, "t.toml")
    message = str(caught.value)
    assert message.startswith(f"t.toml: [policy] {key}: 'user@@example.org' can never match")
    assert "\n" not in message


def test_a_list_shows_its_entries_as_written_lower_cased() -> None:
    assert AddressList(["Example.ORG", "!Boss@x.test"]) == ("example.org", "!boss@x.test")


def test_only_matches_exactly_one_address() -> None:
    assert only("Alice+Lists@Example.org").matches("alice+lists@example.org", "+")
    assert not only("alice@example.org").matches("bob@example.org")
    assert only("postmaster").matches("Postmaster")  # an address without a domain too


@pytest.mark.parametrize(("address", "delimiter", "base"), [
    ("alice+lists@example.org", "+", "alice@example.org"),
    ("alice+lists@example.org", "", "alice+lists@example.org"),
    ("alice-a+b@example.org", "+-", "alice@example.org"),
    ("+alice@example.org", "+", "+alice@example.org"),  # no local part before it: kept
    ("postmaster", "+", "postmaster"),
])
def test_base_address(address: str, delimiter: str, base: str) -> None:
    assert base_address(address, delimiter) == base
