"""lmtpfilter.policy.decide as a table (tests/data/policy_cases.toml)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter.addresses import AddressList
from lmtpfilter.config import PolicyConfig, from_mapping
from lmtpfilter.options import declared
from lmtpfilter.policy import Action, Category, RecipientPolicy, decide, settled_before_spam
from lmtpfilter.scanresult import (
    NOT_INSPECTED,
    ContentResult,
    ScanResult,
    SpamResult,
    Status,
    VirusResult,
)
from lmtpfilter.userpolicy import validate_override

CASES = tomllib.loads(
    (Path(__file__).parent.parent / "data" / "policy_cases.toml").read_text())["case"]


def virus(spec: str) -> VirusResult:
    kind, _, names = spec.partition(":")
    status = {"clean": Status.CLEAN, "infected": Status.INFECTED, "error": Status.ERROR,
              "disabled": Status.DISABLED}[kind]
    return VirusResult(status, tuple(names.split(",")) if names else ())


def spam(spec: str) -> SpamResult:
    kind, _, score = spec.partition(":")
    if kind == "scored":
        s = float(score)
        return SpamResult(Status.SCORED, s, 5.0, (("GTUBE", s), ("NO_RECEIVED", -0.001)))
    return SpamResult({"error": Status.ERROR, "skipped": Status.SKIPPED,
                       "disabled": Status.DISABLED}[kind])


def content(spec: dict[str, Any]) -> ContentResult:
    if not spec:
        return NOT_INSPECTED
    return ContentResult(Status.ERROR if spec.get("error") else Status.CLEAN,
                         spec.get("banned", ""), spec.get("banned_rule", ""),
                         tuple(spec.get("bad_headers", ())),
                         banned_part=spec.get("banned_part", ""))


@dataclass(frozen=True)
class SenderEntry:  # what senderlists.py hands the policy
    action: str
    score: float = 0.0
    entry: str = ""


def sender(spec: dict[str, Any] | None) -> SenderEntry | None:
    return None if spec is None else SenderEntry(**spec)


def unfold(field: bytes) -> str:
    return re.sub(r"\r\n[ \t]+", " ", field.decode())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_decide(case: dict[str, Any]) -> None:
    # The case's [policy] section as a config file gives it, then its per-user overrides
    # through the keys' own validators, for the case's recipient.
    section = from_mapping({"policy": case.get("config", {})}).policy
    policy = RecipientPolicy.of(section, case.get("recipient", "rcpt@example.org")).overridden(
        {k: validate_override(k, v) for k, v in case.get("policy", {}).items()})
    decision = decide(ScanResult(virus(case["virus"]), spam(case["spam"]),
                                 content(case.get("content", {}))), policy,
                      "lmtpfilter at mx.test", sender(case.get("sender")))
    expect = case["expect"]
    assert decision.action is Action(expect["action"])
    assert decision.category is Category(expect["category"])
    if "rule" in expect:
        assert decision.rule == expect["rule"]
    if "reply" in expect:
        assert decision.reply is not None and decision.reply.line().startswith(expect["reply"])
    elif decision.action is Action.DELIVER:
        assert decision.reply is None
    if "headers" in expect:
        assert [unfold(f) for f in decision.add_headers] == expect["headers"]
    if "subject_tag" in expect:
        assert decision.subject_tag == expect["subject_tag"]
    if "quarantine" in expect:
        assert decision.quarantine is expect["quarantine"]
    if decision.action is not Action.DELIVER:
        assert decision.add_headers == () and decision.subject_tag == ""


SPAM_ANSWERS = [spam(s) for s in ("scored:-5", "scored:3", "scored:6", "scored:30",
                                    "scored:1000", "error", "skipped", "disabled")]


def case_policy(case: dict[str, Any]) -> RecipientPolicy:
    section = from_mapping({"policy": case.get("config", {})}).policy
    return RecipientPolicy.of(section, case.get("recipient", "rcpt@example.org")).overridden(
        {k: validate_override(k, v) for k, v in case.get("policy", {}).items()})


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_settled_before_spam_means_no_spam_answer_changes_the_decision(
        case: dict[str, Any]) -> None:
    """The filter drops spamd's request when settled_before_spam holds for every recipient:
    for each case of the table, it must hold only if every answer spamd could give leads to
    the same decision, and it must hold for every virus or banned reject or discard and
    every virus or content tempfail."""
    policy, found = case_policy(case), sender(case.get("sender"))
    scan = ScanResult(virus(case["virus"]), spam(case["spam"]), content(case.get("content", {})))
    outcomes = {(d.action, d.category, d.reply, d.add_headers, d.subject_tag)
                for d in (decide(ScanResult(scan.virus, answer, scan.content), policy, "x",
                                 found) for answer in SPAM_ANSWERS)}
    settled = settled_before_spam(scan, policy)
    if settled:
        assert len(outcomes) == 1
    decision = decide(scan, policy, "x", found)
    if (decision.action is not Action.DELIVER and decision.category in (
            Category.VIRUS, Category.BANNED)) or (
            decision.action is Action.TEMPFAIL and scan.spam.status is not Status.ERROR):
        assert settled


def test_folded_status_lines_stay_short() -> None:
    rules = tuple((f"RULE_NUMBER_{i}", 0.5) for i in range(30))
    decision = decide(ScanResult(VirusResult(Status.CLEAN), SpamResult(Status.SCORED, 15, 5,
                                                                        rules)),
                      RecipientPolicy(), "x")
    status = next(f for f in decision.add_headers if f.startswith(b"X-Spam-Status"))
    assert all(len(line) <= 78 for line in status.split(b"\r\n"))
    assert status.count(b"\r\n\t") >= 5


def test_recipient_policy_resolves_bypass_lists() -> None:
    cfg = PolicyConfig(bypass_spam_checks=AddressList(["@example.org"]),
                       bypass_virus_checks=AddressList(["abuse@example.net"]))
    a = RecipientPolicy.of(cfg, "Someone@Example.org")
    b = RecipientPolicy.of(cfg, "abuse@example.net")
    assert (a.listed(a.bypass_spam_checks), a.listed(a.bypass_virus_checks)) == (True, False)
    assert (b.listed(b.bypass_spam_checks), b.listed(b.bypass_virus_checks)) == (False, True)


def test_a_membership_override_wins_over_the_list() -> None:
    cfg = PolicyConfig(bypass_spam_checks=AddressList(["@example.org"]))
    out = RecipientPolicy.of(cfg, "Boss@Example.org").overridden({"bypass_spam_checks": False})
    into = RecipientPolicy.of(cfg, "x@other.net").overridden({"bypass_spam_checks": True})
    assert not out.listed(out.bypass_spam_checks)
    assert into.listed(into.bypass_spam_checks)
    # The override is the recipient's own: its neighbour keeps the config's list.
    neighbour = RecipientPolicy.of(cfg, "y@other.net")
    assert not neighbour.listed(neighbour.bypass_spam_checks)


def test_every_policy_key_is_part_of_the_recipient_policy() -> None:
    policy = RecipientPolicy.of(PolicyConfig(kill_level=12.0), "a@b.example")
    for f in declared(PolicyConfig):
        assert getattr(policy, f.name) == getattr(PolicyConfig(kill_level=12.0), f.name)
