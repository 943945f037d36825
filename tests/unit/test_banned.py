"""The content inventory (mime_walk.py, archive_walk.py) and the banned rules (banned.py),
on the generated hostile messages of tests/hostile_mail.py and the cases of
tests/data/banned_cases.toml."""

from __future__ import annotations

import dataclasses
import resource
import tomllib
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmtpfilter import mime_walk
from lmtpfilter.archive_walk import ContentLimits, Part
from lmtpfilter.banned import DEFAULT_BANNED_RULES, evaluate, parse_banned_rules, parse_rule
from lmtpfilter.config import ConfigError, ContentConfig, from_mapping
from lmtpfilter.content import inspect
from lmtpfilter.message import Message
from lmtpfilter.mime_walk import inventory
from lmtpfilter.options import InvalidValue
from tests import hostile_mail

CASES = tomllib.loads(
    (Path(__file__).parent.parent / "data" / "banned_cases.toml").read_text("utf-8"))
DEFAULT = ContentConfig()


def _inspect(generator: str, config: ContentConfig = DEFAULT) -> Any:
    return inspect(Message.parse(hostile_mail.GENERATORS[generator]()), config)


def test_every_generator_has_a_case() -> None:
    assert {c["generator"] for c in CASES["case"]} == set(hostile_mail.GENERATORS)


@pytest.mark.parametrize("case", CASES["case"], ids=lambda c: c["generator"])
def test_case(case: dict[str, Any]) -> None:
    facts = _inspect(case["generator"])
    assert facts.checked
    assert (facts.banned is not None) == case["banned"], facts.banned
    if "rule" in case:
        assert facts.banned.rule == case["rule"]
        assert facts.banned.reason.startswith("BANNED, message contains ")
    if "part" in case:
        assert facts.banned.part_path == case["part"]
        assert case["part"] in facts.banned.reason
    if "problem" in case:
        found = [p for p in facts.problems if p.kind == case["problem"]]
        assert found, facts.problems
        assert case.get("detail", "") in found[0].detail
    else:
        assert facts.problems == ()
    assert facts.inventory is not None
    detected = {p.path: p.detected_type for p in facts.inventory.parts}
    for pair in case.get("types", []):
        path, _, expected = pair.partition(" = ")
        assert detected.get(path) in expected.split(" | "), detected


def test_zip_bomb_is_stopped_by_max_expanded_in_bounded_memory() -> None:
    data = hostile_mail.GENERATORS["zip_bomb"]()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    tracemalloc.start()
    try:
        facts = inspect(Message.parse(data), DEFAULT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert facts.inventory is not None
    # the member declares 1100 MiB: the walk read no more than the budget and a block
    assert DEFAULT.max_expanded < facts.inventory.expanded <= DEFAULT.max_expanded + 65536
    assert peak < 3 * len(data) + 1024 * 1024  # the message, its decoded zip, one block
    assert rss_after - rss_before < 50 * 1024


@pytest.mark.parametrize(("limits", "generator", "detail"), [
    (ContentLimits(max_parts=50), "ten_thousand_parts", "max_parts (50)"),
    (ContentLimits(max_depth=2), "exe_in_zip_in_zip", "max_depth (2)"),
    (ContentLimits(max_expanded=1000), "exe_in_zip_in_zip", "max_expanded (1000 bytes)"),
    (ContentLimits(time_limit=0.0), "ten_thousand_parts", "time_limit (0s)"),
], ids=["max_parts", "max_depth", "max_expanded", "time_limit"])
def test_each_limit_gives_incomplete(limits: ContentLimits, generator: str,
                                     detail: str) -> None:
    found = inventory(Message.parse(hostile_mail.GENERATORS[generator]()), limits)
    incomplete = [p for p in found.problems if p.kind == "incomplete"]
    assert incomplete and detail in incomplete[0].detail, found.problems
    assert evaluate(found, parse_banned_rules(list(DEFAULT_BANNED_RULES))) is not None


def test_a_plain_message_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libmagic(sample: bytes) -> str:
        raise AssertionError("libmagic called for a plain text message")

    monkeypatch.setattr(mime_walk, "detect", no_libmagic)
    found = inventory(Message.parse(hostile_mail.plain_10k()), ContentLimits())
    assert found.parts == (Part("part 1", "", "", "", 0),)  # no Content-Type: declared ""
    assert found.problems == ()


def test_disabled_checks_nothing() -> None:
    config = dataclasses.replace(DEFAULT, enabled=False)
    facts = _inspect("double_extension", config)
    assert not facts.checked and facts.banned is None


@pytest.mark.parametrize("case", CASES["rule"], ids=lambda c: c["text"])
def test_rule_grammar(case: dict[str, Any]) -> None:
    rule = parse_rule(case["text"])
    for name, declared, detected in case["matches"]:
        assert rule.matches_part(Part(name or "part 1", name, declared, detected, 1)), name
    for name, declared, detected in case["misses"]:
        assert not rule.matches_part(Part(name or "part 1", name, declared, detected, 1)), name


@pytest.mark.parametrize("case", CASES["bad_rule"], ids=lambda c: c["text"])
def test_bad_rules_are_refused_naming_the_rule(case: dict[str, Any]) -> None:
    with pytest.raises(InvalidValue) as error:
        parse_banned_rules(["ban name:*.scr", case["text"]])
    message = str(error.value).replace("rule 2", "rule 1")
    assert case["text"] in message
    for word in case["words"]:
        assert word in message


def test_config_section_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"\[content\] banned_rules: rule 1"):
        from_mapping({"content": {"banned_rules": ["drop name:*.exe"]}})
    config = from_mapping({"content": {"banned_rules": ["allow name:*.exe", "ban any"],
                                       "max_expanded": "1M"}})
    assert [r.text for r in config.content.banned_rules] == ["allow name:*.exe", "ban any"]
    assert config.content.max_expanded == 1024 * 1024


def test_first_matching_rule_decides_per_part() -> None:
    found = _inspect("double_extension").inventory
    rules = parse_banned_rules(["allow name:invoice.pdf.exe", "ban any"])
    match = evaluate(found, rules)
    assert match is not None and match.part_path == "part 1"  # the text body: "ban any"
    assert evaluate(found, parse_banned_rules(["allow any", "ban name:*.exe"])) is None


@pytest.mark.parametrize("case", CASES["name"], ids=lambda c: c["name"])
def test_declared_names_are_decoded(case: dict[str, Any]) -> None:
    fields = ""
    if "content_type" in case:
        fields += f"Content-Type: {case['content_type']}\r\n"
    if "disposition" in case:
        fields += f"Content-Disposition: {case['disposition']}\r\n"
    data = (f"From: a@example.org\r\n{fields}\r\n").encode() + b"%PDF-1.4\r\n"
    found = inventory(Message.parse(data), ContentLimits())
    assert [p.name for p in found.parts] == [case["name"]]


_MIME_PIECES = st.sampled_from([
    b"--b\r\n", b"--b--\r\n", b"\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: application/zip; name=x.zip\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Disposition: attachment; filename*0*=UTF-8''%E2%82; filename*1=x\r\n",
    b"UEsDBBQAAAAIAA==\r\n", b"Content-Type: message/rfc822\r\n", b"=?x?Q?=ZZ?=", b"\x00\xff",
    b"Content-Type: text/plain; name=\"=?UTF-8?B?!!?=\"\r\n", b"MZ\x90\x00",
])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_MIME_PIECES, max_size=40), st.binary(max_size=200))
def test_random_mime_structure_never_raises(pieces: list[bytes], tail: bytes) -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(pieces) + tail
    facts = inspect(Message.parse(data), DEFAULT)
    assert facts.checked and facts.parts >= 0
    assert all(p.kind in ("unreadable-archive", "encrypted-archive", "incomplete",
                          "mime-error") for p in facts.problems)
    assert not any("inventory failed" in p.detail for p in facts.problems)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    facts = inspect(Message.parse(data), DEFAULT)
    assert not any("inventory failed" in p.detail for p in facts.problems)


def test_an_archive_libmagic_does_not_name_is_still_opened(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """libmagic 5.46 (Debian 13) names some plain zips application/octet-stream: the
    archive's leading bytes open it anyway, whatever its name (here .dat, no name hint)."""
    from lmtpfilter import archive_walk

    class Unnamed:
        def from_buffer(self, sample: bytes) -> str:
            return "application/octet-stream"

    monkeypatch.setattr(archive_walk, "_magic", Unnamed())
    data = hostile_mail.message([hostile_mail.named(
        hostile_mail.zip_of({"setup.exe": b"not a PE, named like one"}), "photos.dat")])
    facts = inspect(Message.parse(data), DEFAULT)
    assert facts.banned is not None and facts.banned.part_path == "photos.dat/setup.exe"
