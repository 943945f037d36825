"""amavis's main log line (lmtpfilter/amavis_log.py), table-driven from
tests/data/amavis_log_cases.toml and compared with the lines a real amavisd-new wrote
(tests/data/amavis_log/reference.log), by structure and by how logwatch counts them."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter.amavis_log import LOGLINE_MAXLEN, chop, main_log_lines, score
from lmtpfilter.config import PolicyConfig
from lmtpfilter.message import Message
from lmtpfilter.options import parse_recipient_list
from lmtpfilter.pipeline import Recipient, Transaction
from lmtpfilter.policy import Action, Category, Decision, RecipientPolicy
from lmtpfilter.reply import Reply
from lmtpfilter.scanresult import ScanResult, SpamResult, Status, VirusResult
from tests.harness import logwatch

DATA = Path(__file__).parent.parent / "data"
CASES: list[dict[str, Any]] = tomllib.loads(
    (DATA / "amavis_log_cases.toml").read_text())["case"]


def reference_lines() -> list[str]:
    """The amavis lines of reference.log, without their syslog prefix, "(PID-NN) ..."."""
    text = (DATA / "amavis_log" / "reference.log").read_text()
    return [line.partition("]: ")[2] for line in text.splitlines()
            if line and not line.startswith("#")]


REFERENCE = reference_lines()


def build(case: dict[str, Any]) -> tuple[Transaction, list[Recipient], list[Reply]]:
    message = Message.parse(case["message"].replace("\n", "\r\n").encode())
    virus, spam = case["virus"], case["spam"]
    scan = ScanResult(
        VirusResult(Status(virus["status"]), tuple(virus.get("names", ()))),
        SpamResult(Status(spam["status"]), spam.get("score", 0.0)))
    section = PolicyConfig(local_domains=parse_recipient_list(case.get("local_domains", [])))
    tx = Transaction(id=case["tx_id"], peer=case["peer"], helo="mx", sender=case["sender"],
                     mail_params=[], recipients=[r["address"] for r in case["rcpt"]],
                     message=message, scan=scan, quarantine_id=case.get("quarantine_id"))
    recipients, replies = [], []
    for i, spec in enumerate(case["rcpt"]):
        code, _, text = spec["reply"].partition(" ")
        reply = Reply.parse_lines(int(code), [text])
        r = Recipient(spec["address"], i, reply=None if spec.get("internal_error") else reply,
                      policy=RecipientPolicy.of(section, spec["address"]))
        if "action" in spec:
            r.decision = Decision(Action(spec["action"]), Category(spec["category"]),
                                  subject_tag=spec.get("subject_tag", ""))
        recipients.append(r)
        replies.append(reply)
    return tx, recipients, replies


def lines_of(case: dict[str, Any]) -> list[str]:
    tx, recipients, replies = build(case)
    return main_log_lines(case["log_id"], tx, recipients, replies, case["elapsed_ms"])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case: dict[str, Any]) -> None:
    size = len(build(case)[0].message.data)
    assert lines_of(case) == [line.replace("{size}", str(size)) for line in case["expected"]]


_STRUCTURE = re.compile(r"^\(\S+\) (Passed|Blocked) ([A-Z-]+)")
_FIELD = re.compile(r", (quarantine|Message-ID|Resent-Message-ID|mail_id|Hits|size|queued_as):")
_XFORWARD_ONLY = ("Queue-ID",)  # amavis knows it from XFORWARD; lmtpfilter does not


def structure(line: str) -> tuple[str, ...]:
    """Passed/Blocked, the category's word and the labels of the fields, in order."""
    head = _STRUCTURE.match(line)
    assert head is not None, line
    return (*head.groups(), *_FIELD.findall(line), line.rsplit(", ", 1)[1].split()[1])


@pytest.mark.parametrize("case", [c for c in CASES if "reference" in c],
                         ids=[c["name"] for c in CASES if "reference" in c])
def test_structure_is_amavis(case: dict[str, Any]) -> None:
    ours = lines_of(case)
    theirs = references(case)
    assert len(theirs) == len(case["reference"])
    assert [structure(line) for line in ours] == [structure(line) for line in theirs]
    assert not any(field in line for field in _XFORWARD_ONLY for line in ours)


def references(case: dict[str, Any]) -> list[str]:
    """The reference lines of a case, in the order amavis wrote them."""
    return [line for line in REFERENCE
            if any(line.startswith(f"({log_id}) ") for log_id in set(case["reference"]))]


def test_reference_lines_all_parse() -> None:
    """The structure reader understands every line amavis wrote (no silent skip above)."""
    assert len(REFERENCE) == 11
    assert {structure(line)[0] for line in REFERENCE} == {"Passed", "Blocked"}


@pytest.mark.skipif(not logwatch.available() and os.environ.get(
    "LMTPFILTER_REQUIRE_DAEMONS") != "1", reason="logwatch is not installed")
def test_logwatch_counts_ours_as_amavis_lines() -> None:
    """logwatch's amavis service gives the same summary for our lines as for the lines
    amavis wrote in the same situations (bytes aside: the messages differ)."""
    cases = [c for c in CASES if "reference" in c]
    ours = [line for c in cases for line in lines_of(c)]
    theirs = [line for c in cases for line in references(c)]
    summary_ours = logwatch.amavis_summary(logwatch.syslog_line(x) for x in ours)
    summary_theirs = logwatch.amavis_summary(logwatch.syslog_line(x) for x in theirs)
    for summary in (summary_ours, summary_theirs):  # "504" or "9.392K": not compared
        summary.pop("Total bytes scanned", None)
    assert summary_ours["Total messages scanned"] == len(theirs) > 0
    assert summary_ours == summary_theirs


@pytest.mark.parametrize("value,expected", [
    (999.001, "999.001"), (8.0, "8"), (-1.0, "-1"), (-0.9994, "-0.999"), (10.5, "10.5"),
    (100.0, "100"), (0.0, "0"), (2.7374, "2.737")])
def test_score_as_amavis_prints_it(value: float, expected: str) -> None:
    assert score(value) == expected


@pytest.mark.parametrize("length", [10, LOGLINE_MAXLEN - 8, LOGLINE_MAXLEN * 3 + 17])
def test_long_lines_are_cut_as_amavis_cuts_them(length: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(length))
    pieces = list(chop("(1-01) ", text))
    assert all(len(p) <= LOGLINE_MAXLEN for p in pieces)
    assert all(p.startswith("(1-01) ") for p in pieces)
    assert all(p.endswith("...") for p in pieces[:-1])
    assert all(p.startswith("(1-01) ...") for p in pieces[1:])
    joined = pieces[0].removeprefix("(1-01) ").removesuffix("..." if len(pieces) > 1 else "")
    for p in pieces[1:]:
        joined += p.removeprefix("(1-01) ...").removesuffix("..." if p is not pieces[-1]
                                                           else "")
    assert joined == text
