"""Pipeline.process on its failure paths: still one reply per recipient, and the metrics right.

The in-flight gauge must come back down whatever happens (a gauge that only goes up reads as
a stuck filter), and a message that was answered is counted like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import pytest
from prometheus_client import REGISTRY

from lmtpfilter.downstream import Downstream
from lmtpfilter.lmtp_protocol import Envelope, Piece
from lmtpfilter.message import Message
from lmtpfilter.pipeline import Pipeline, Recipient, Stage, Transaction
from lmtpfilter.policy import Action, Category, Decision
from lmtpfilter.reply import INTERNAL_ERROR, Reply

RCPTS = ["a@example.org", "b@example.org", "c@example.org"]
SAVED = Reply(250, "2.0.0", "Saved")


class StubDownstream:
    """Accepts every recipient, or raises what it is told to."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.delivered: list[list[str]] = []

    async def deliver(self, envelope: Envelope, body: Sequence[Piece]) -> list[Reply]:
        if self.error is not None:
            raise self.error
        self.delivered.append(list(envelope.recipients))
        return [SAVED] * len(envelope.recipients)


class FailingStage:
    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        raise RuntimeError("stage failed")


class TwoVariants:
    """Even-indexed recipients get one copy, odd ones another: two downstream transactions."""

    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        for r in recipients:
            r.variant = r.variant.adding(b"X-Copy: " + (b"A" if r.index % 2 == 0 else b"B"))


class BogusDecision:
    """Leaves a decision the bookkeeping cannot read (a bug elsewhere, simulated)."""

    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        for r in recipients:
            r.decision = cast(Decision, object())


class HangingStage:
    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        self.entered.set()
        await asyncio.Event().wait()


class FailingRecorder:
    def __init__(self) -> None:
        self.calls = 0

    async def record(self, tx: Transaction, recipients: Sequence[Recipient],
                     replies: Sequence[Reply]) -> None:
        self.calls += 1
        raise RuntimeError("database gone")


def transaction() -> Transaction:
    return Transaction(id="TEST", peer="192.0.2.1", helo="client.example", sender="s@x.net",
                       mail_params=[], recipients=list(RCPTS),
                       message=Message.parse(b"Subject: hi\r\n\r\nbody\r\n"))


def pipeline(downstream: StubDownstream, stages: Sequence[object] = (),
             recorder: FailingRecorder | None = None) -> Pipeline:
    return Pipeline(cast(Downstream, downstream), "filter.test",
                    stages=cast(Sequence[Stage], stages), recorder=recorder)


@dataclass
class Snapshot:
    """The metrics process() moves, read through the public registry."""

    inflight: float
    messages: float
    replies: dict[str, float]
    errors: float

    @staticmethod
    def take() -> Snapshot:
        def value(name: str, **labels: str) -> float:
            return REGISTRY.get_sample_value(name, labels) or 0.0

        return Snapshot(
            inflight=value("lmtpfilter_inflight_transactions"),
            messages=value("lmtpfilter_messages_total"),
            replies={c: value("lmtpfilter_replies_total", code_class=c)
                     for c in ("2xx", "4xx", "5xx")},
            errors=value("lmtpfilter_recipients_total", action="error", category="clean"),
        )

    def moved_since(self, before: Snapshot) -> Snapshot:
        return Snapshot(self.inflight - before.inflight, self.messages - before.messages,
                        {c: n - before.replies[c] for c, n in self.replies.items()},
                        self.errors - before.errors)


def replies_of(code_class: str = "", n: float = 0.0) -> dict[str, float]:
    """How the reply counters move: n replies of one class, none of the others."""
    return {c: n if c == code_class else 0.0 for c in ("2xx", "4xx", "5xx")}


async def test_a_failing_stage_answers_451_and_keeps_the_metrics_right() -> None:
    downstream = StubDownstream()
    before = Snapshot.take()
    replies = await pipeline(downstream, [FailingStage()]).process(transaction())
    assert replies == [INTERNAL_ERROR] * 3
    assert INTERNAL_ERROR.code == 451 and INTERNAL_ERROR.enhanced == "4.3.0"
    assert downstream.delivered == []
    assert Snapshot.take().moved_since(before) == Snapshot(0.0, 1.0, replies_of("4xx", 3),
                                                           3.0)


async def test_a_failing_recorder_keeps_the_delivery_replies_and_the_metrics_right() -> None:
    # Delivered mail keeps its 250: a 4xx now would have Postfix deliver it a second time.
    downstream, recorder = StubDownstream(), FailingRecorder()
    before = Snapshot.take()
    replies = await pipeline(downstream, recorder=recorder).process(transaction())
    assert replies == [SAVED] * 3
    assert recorder.calls == 1 and downstream.delivered == [RCPTS]
    assert Snapshot.take().moved_since(before) == Snapshot(0.0, 1.0, replies_of("2xx", 3),
                                                           0.0)


async def test_a_failing_stage_and_a_failing_recorder_answer_451() -> None:
    recorder = FailingRecorder()
    before = Snapshot.take()
    replies = await pipeline(StubDownstream(), [FailingStage()], recorder).process(
        transaction())
    assert replies == [INTERNAL_ERROR] * 3
    assert recorder.calls == 1
    assert Snapshot.take().moved_since(before) == Snapshot(0.0, 1.0, replies_of("4xx", 3),
                                                           3.0)


@pytest.mark.parametrize("stages", [[], [TwoVariants()]], ids=["one group", "two groups"])
async def test_a_downstream_raising_answers_451_and_keeps_the_metrics_right(
        stages: list[object]) -> None:
    before = Snapshot.take()
    replies = await pipeline(StubDownstream(ValueError("unexpected")), stages).process(
        transaction())
    assert replies == [INTERNAL_ERROR] * 3
    assert Snapshot.take().moved_since(before) == Snapshot(0.0, 1.0, replies_of("4xx", 3),
                                                           3.0)


async def test_bookkeeping_that_fails_still_returns_the_replies() -> None:
    before = Snapshot.take()
    replies = await pipeline(StubDownstream(), [BogusDecision()]).process(transaction())
    assert replies == [SAVED] * 3
    assert Snapshot.take().inflight == before.inflight


async def test_cancelled_process_puts_the_gauge_back_and_counts_nothing() -> None:
    stage = HangingStage()
    before = Snapshot.take()
    task = asyncio.create_task(pipeline(StubDownstream(), [stage]).process(transaction()))
    await asyncio.wait_for(stage.entered.wait(), 5)
    assert Snapshot.take().inflight == before.inflight + 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Not answered (the session gets 421 at shutdown and Postfix retries): not counted.
    assert Snapshot.take().moved_since(before) == Snapshot(0.0, 0.0, replies_of(), 0.0)


class Decides:
    """Gives each recipient the decision it is told to (the filter stage's part)."""

    def __init__(self, *decisions: Decision) -> None:
        self.decisions = decisions

    async def __call__(self, tx: Transaction, recipients: Sequence[Recipient]) -> None:
        for r, decision in zip(recipients, self.decisions, strict=True):
            r.decision = decision
            if decision.action is not Action.DELIVER:
                r.reply = decision.reply or Reply(250, "2.7.0", "Ok, discarded")


async def test_the_content_categories_are_counted() -> None:
    """Issue 15: the metrics count recipients by category, banned and bad-header too."""
    def count(action: str, category: str) -> float:
        return REGISTRY.get_sample_value(
            "lmtpfilter_recipients_total", {"action": action, "category": category}) or 0.0

    wanted = [("discard", "banned"), ("deliver", "bad-header"), ("reject", "banned")]
    before = [count(a, c) for a, c in wanted]
    stage = Decides(Decision(Action.DISCARD, Category.BANNED),
                    Decision(Action.DELIVER, Category.BAD_HEADER),
                    Decision(Action.REJECT, Category.BANNED, Reply(550, "5.7.1", "banned")))
    await pipeline(StubDownstream(), [stage]).process(transaction())
    assert [count(a, c) - b for (a, c), b in zip(wanted, before, strict=True)] == [1.0] * 3
