"""The filter stage in the running server, with stub scanners and a fake downstream."""

from __future__ import annotations

import asyncio
import email
import email.header
import email.policy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import pytest

from lmtpfilter.filtering import FilterStage
from lmtpfilter.policy import RecipientPolicy, SenderVerdict
from lmtpfilter.scanresult import SpamResult, Status, VirusResult
from tests.lmtp_tools import (
    FakeDownstream,
    SessionResult,
    lmtp_session,
    make_config,
    running_filter,
)

CORPUS = Path(__file__).parent.parent / "data" / "messages"
HAM = b"From: a@example.net\r\nSubject: hello\r\n\r\nBody\r\n"


class Virus:
    def __init__(self, result: VirusResult) -> None:
        self.result = result
        self.calls = 0

    async def scan(self, data: bytes) -> VirusResult:
        self.calls += 1
        return self.result


class Spam:
    def __init__(self, result: SpamResult) -> None:
        self.result = result
        self.calls = 0

    async def check(self, data: bytes, envelope_sender: str) -> SpamResult:
        self.calls += 1
        return self.result


def bypassing(virus: bool = False, spam: bool = False) -> RecipientPolicy:
    """A policy whose recipient bypasses these checks, as a per-user override makes it."""
    return RecipientPolicy(address="rcpt@example.org").overridden(
        {"bypass_virus_checks": virus, "bypass_spam_checks": spam})


class Policies:
    def __init__(self, **per_address: RecipientPolicy) -> None:
        self.per_address = per_address

    async def lookup(self, addresses: Iterable[str]) -> dict[str, RecipientPolicy]:
        return {a: self.per_address.get(a.split("@")[0], RecipientPolicy()) for a in addresses}


CLEAN = VirusResult(Status.CLEAN)


def scored(score: float) -> SpamResult:
    return SpamResult(Status.SCORED, score, 5.0, (("TEST_RULE", score),))


async def send(fake: FakeDownstream, stage: FilterStage, rcpts: list[str],
               message: bytes = HAM) -> SessionResult:
    async with running_filter(make_config(fake.address), [stage]) as (address, _, _):
        result = await lmtp_session(address, "s@example.net", rcpts, message)
    assert result.final.startswith("221")
    return result


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def stage(virus: VirusResult = CLEAN, spam: SpamResult | None = None,
          policies: Policies | None = None) -> FilterStage:
    return FilterStage(policies or Policies(), Virus(virus), Spam(spam or scored(0.0)),
                       "lmtpfilter at filter.test")


async def test_three_policies_three_header_sets(fake: FakeDownstream) -> None:
    policies = Policies(
        lover=bypassing(spam=True),
        strict=RecipientPolicy(tag2_level=3.0, spam_subject_tag="***SPAM*** "),
    )
    rcpts = ["normal@example.org", "lover@example.org", "strict@example.org"]
    result = await send(fake, stage(spam=scored(4.0), policies=policies), rcpts)
    assert [r[:3] for r in result.data_replies] == ["250"] * 3
    assert len(fake.transactions) == 3
    by_rcpt = {t.recipients[0]: header_block(t.data) for t in fake.transactions}
    normal = by_rcpt["normal@example.org"]
    assert b"X-Spam-Flag: NO" in normal and b"Subject: hello" in normal
    lover = by_rcpt["lover@example.org"]
    assert b"X-Spam-" not in lover and b"X-Virus-Scanned: lmtpfilter at filter.test" in lover
    strict = by_rcpt["strict@example.org"]
    assert b"X-Spam-Flag: YES" in strict and b"Subject: ***SPAM*** hello" in strict


async def test_same_headers_share_one_transaction(fake: FakeDownstream) -> None:
    virus, spam = Virus(CLEAN), Spam(scored(1.0))
    st = FilterStage(Policies(), virus, spam, "x")
    await send(fake, st, ["a@example.org", "b@example.org", "c@example.org"])
    assert len(fake.transactions) == 1 and len(fake.transactions[0].recipients) == 3
    assert (virus.calls, spam.calls) == (1, 1)  # scanned once for all recipients


async def test_forged_verdict_headers_are_stripped(fake: FakeDownstream) -> None:
    forged = (CORPUS / "020-forged-spam-headers.eml").read_bytes()
    await send(fake, stage(spam=scored(0.5)), ["a@example.org"], forged)
    headers = header_block(fake.transactions[0].data)
    names = [m.lower() for m in re.findall(rb"^([A-Za-z-]+):", headers, re.M)]
    assert names.count(b"x-spam-flag") == 1 and names.count(b"x-virus-scanned") == 1
    assert b"x-quarantine-id" not in names and b"x-spam-report" not in names
    assert b"X-Spam-Flag: NO" in headers and b"X-Spam-Score: 0.500" in headers
    # The body is untouched, even where it mentions those headers.
    assert fake.transactions[0].data.endswith(forged.split(b"\r\n\r\n", 1)[1])


async def test_subject_tag_keeps_rfc2047_subject_valid(fake: FakeDownstream) -> None:
    original = (CORPUS / "005-8bit-utf8-rfc2047.eml").read_bytes()
    await send(fake, stage(spam=scored(8.0)), ["a@example.org"], original)
    parsed = email.message_from_bytes(fake.transactions[0].data, policy=email.policy.default)
    before = email.message_from_bytes(original, policy=email.policy.default)
    assert str(parsed["Subject"]) == "[SPAM] " + str(before["Subject"])


async def test_non_ascii_tag_is_encoded(fake: FakeDownstream) -> None:
    policies = Policies(a=RecipientPolicy(spam_subject_tag="[Pourriel] é "))
    await send(fake, stage(spam=scored(8.0), policies=policies), ["a@example.org"])
    subject = re.search(rb"^Subject: (.*)$", fake.transactions[0].data, re.M)
    assert subject is not None and subject.group(1).isascii()
    decoded = str(email.header.make_header(email.header.decode_header(subject.group(1).decode())))
    assert decoded == "[Pourriel] é hello"


async def test_missing_subject_gets_one(fake: FakeDownstream) -> None:
    await send(fake, stage(spam=scored(8.0)), ["a@example.org"], b"From: x@y\r\n\r\nhi\r\n")
    assert b"\r\nSubject: [SPAM]\r\n" in header_block(fake.transactions[0].data)


@pytest.mark.parametrize("failing", ["virus", "spam"])
async def test_scanner_error_fails_closed(fake: FakeDownstream, failing: str) -> None:
    st = stage(virus=VirusResult(Status.ERROR, error="down") if failing == "virus" else CLEAN,
               spam=SpamResult(Status.ERROR, error="down") if failing == "spam" else None)
    result = await send(fake, st, ["a@example.org", "b@example.org"])
    assert [r[:9] for r in result.data_replies] == ["451 4.7.1"] * 2
    assert fake.transactions == []


async def test_scanner_error_only_for_recipients_that_depend_on_it(
        fake: FakeDownstream) -> None:
    policies = Policies(free=bypassing(virus=True))
    st = stage(virus=VirusResult(Status.ERROR, error="down"), policies=policies)
    result = await send(fake, st, ["a@example.org", "free@example.org"])
    assert [r[:9] for r in result.data_replies] == ["451 4.7.1", "250 2.0.0"]
    assert fake.transactions[0].recipients == ["free@example.org"]


async def test_discard_without_a_quarantine_stage_is_deferred_never_acknowledged(
        fake: FakeDownstream) -> None:
    st = stage(virus=VirusResult(Status.INFECTED, ("Eicar-Test-Signature.UNOFFICIAL",)))
    result = await send(fake, st, ["a@example.org"])
    assert [r[:9] for r in result.data_replies] == ["451 4.3.0"]
    assert fake.transactions == []


async def test_bypass_everything_scans_nothing(fake: FakeDownstream) -> None:
    everyone = bypassing(virus=True, spam=True)
    virus, spam = Virus(CLEAN), Spam(scored(0))
    st = FilterStage(Policies(a=everyone), virus, spam, "x")
    await send(fake, st, ["a@example.org"])
    assert (virus.calls, spam.calls) == (0, 0)


class SenderBypass:
    """A sender list whose entry says "bypass" for the listed recipients only."""
    action, score, entry = "bypass", 0.0, "bypass newsletter@example.net"

    def __init__(self, *recipients: str) -> None:
        self.recipients = recipients

    async def matches(self, sender: str, recipients: Iterable[str], delimiter: str = ""
                      ) -> dict[str, SenderVerdict | None]:
        return {r: self if r in self.recipients else None for r in recipients}


@pytest.mark.parametrize(("bypassed", "spamd_calls"), [
    (["a@example.org", "b@example.org"], 0), (["a@example.org"], 1)])
async def test_spamd_is_asked_only_if_a_recipient_reads_its_verdict(
        fake: FakeDownstream, bypassed: list[str], spamd_calls: int) -> None:
    virus, spam = Virus(CLEAN), Spam(scored(3.0))
    st = FilterStage(Policies(), virus, spam, "x", senders=SenderBypass(*bypassed))
    result = await send(fake, st, ["a@example.org", "b@example.org"])
    assert (virus.calls, spam.calls) == (1, spamd_calls)
    assert [r[:3] for r in result.data_replies] == ["250", "250"]
    copy_of = {r: t.data for t in fake.transactions for r in t.recipients}
    assert b"X-Spam-Score" not in copy_of["a@example.org"]
    assert (b"X-Spam-Score: 3" in copy_of["b@example.org"]) == bool(spamd_calls)


class NeverAnswers:
    """A scanner (clamd's `scan` or spamd's `check`) whose request waits until cancelled, as
    one waiting for a connection to a busy daemon does."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0

    async def scan(self, data: bytes) -> VirusResult:
        return await self._hang()

    async def check(self, data: bytes, envelope_sender: str) -> SpamResult:
        return await self._hang()

    async def _hang(self) -> NoReturn:
        self.calls += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


INFECTED = VirusResult(Status.INFECTED, ("Eicar-Signature",))


@pytest.mark.parametrize("destiny", ["discard", "reject"])
async def test_spamd_is_not_waited_for_once_the_virus_settles_every_recipient(
        fake: FakeDownstream, destiny: str, caplog: pytest.LogCaptureFixture) -> None:
    """As amavisd-new does not ask SpamAssassin about a virus: clamd's answer fixes every
    recipient's fate, so the spamd request still waiting for a connection is dropped."""
    spam = NeverAnswers()
    policy = RecipientPolicy().overridden({"virus_destiny": destiny})
    stage = FilterStage(Policies(a=policy, b=policy), Virus(INFECTED), spam, "x")
    caplog.set_level("INFO")
    result = await asyncio.wait_for(send(fake, stage, ["a@example.org", "b@example.org"]), 10)
    code = "550" if destiny == "reject" else "451"  # no quarantine stage here: deferred
    assert [r[:3] for r in result.data_replies] == [code, code]
    assert (spam.calls, spam.cancelled) == (1, 1)
    assert fake.transactions == []
    assert "spamd=skipped" in caplog.text


@pytest.mark.parametrize("lover", ["bypass_virus_checks", "virus_destiny"])
async def test_spamd_is_waited_for_when_one_recipient_still_needs_its_score(
        fake: FakeDownstream, lover: str) -> None:
    """One recipient takes viruses (bypasses the check, or a virus destiny of pass): the
    spam score still decides its copy's headers, so spamd's answer is awaited."""
    spam = Spam(scored(7.0))
    taker = RecipientPolicy().overridden(
        {"bypass_virus_checks": True} if lover == "bypass_virus_checks"
        else {"virus_destiny": "pass"})
    stage = FilterStage(Policies(a=taker, b=RecipientPolicy().overridden(
        {"virus_destiny": "reject"})), Virus(INFECTED), spam, "x")
    result = await send(fake, stage, ["a@example.org", "b@example.org"])
    assert [r[:3] for r in result.data_replies] == ["250", "550"]
    assert spam.calls == 1
    [delivered] = fake.transactions
    assert b"X-Spam-Flag: YES" in header_block(delivered.data)


async def test_database_unavailable_means_4xx_and_nothing_delivered(
        fake: FakeDownstream) -> None:
    from lmtpfilter.config import PolicyConfig
    from lmtpfilter.store import Store
    from lmtpfilter.userpolicy import DbPolicies
    from tests.harness.daemons import free_port

    store = Store(f"postgresql+psycopg://x:y@127.0.0.1:{free_port()}/none")  # nothing there
    try:
        st = FilterStage(DbPolicies(store, PolicyConfig(), ttl=60), Virus(CLEAN),
                         Spam(scored(0)), "x")
        result = await send(fake, st, ["a@example.org", "b@example.org"])
    finally:
        store.close()
    assert [r[:9] for r in result.data_replies] == ["451 4.3.0"] * 2
    assert fake.transactions == []


async def test_a_cancelled_scan_cancels_the_scanners_it_started() -> None:
    """A transaction cut short (shutdown, its timeout) leaves no scan running, as gather did
    before spamd's answer could be dropped."""
    clamd, spamd = NeverAnswers(), NeverAnswers()
    stage = FilterStage(Policies(), clamd, spamd, "x")
    scan = asyncio.ensure_future(stage.scan(HAM, "s@example.net", True, True,
                                            spam_unneeded=lambda _partial: False))
    await asyncio.sleep(0.05)
    scan.cancel()
    with pytest.raises(asyncio.CancelledError):
        await scan
    await asyncio.sleep(0)
    assert (clamd.cancelled, spamd.cancelled) == (1, 1)
