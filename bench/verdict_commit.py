#!/usr/bin/env python3
"""The CPU one commit of verdict rows costs, per message (issue 17: bench/layers.py showed the
verdict record as a worker's largest layer).

verdicts.Recorder writes each finished message's rows (one `messages` row, one
`recipient_verdicts` row per recipient) through store.BulkInserter, in its own thread, and
groups only the messages that finish while a commit is running: below saturation that is one
message per commit, so the per-commit cost is what a busy filter pays per message. This script
makes a fresh SQLite verdict store (the real schema, by the migrations) in a temporary
directory, inserts --messages messages with 2 recipients each, one commit per --batch
messages, through the same BulkInserter, and prints the process's CPU (and wall) time per
message. No daemon is needed; the machine should be idle.

    usage: python3 bench/verdict_commit.py [--messages 6000] [--batch 1,8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmtpfilter import store  # noqa: E402
from lmtpfilter.verdicts import MESSAGES, VERDICTS, Rows  # noqa: E402

WARM_UP = 200


def rows(n: int) -> Rows:
    """Rows shaped as Recorder.rows makes them for a clean 10 KB message to 2 recipients."""
    tx_id = secrets.token_hex(12).upper()
    message: dict[str, object] = dict(
        id=tx_id, received_at=dt.datetime.now(dt.UTC), host="bench.example",
        message_id=f"<{n}@bench.example>", sender="sender@example.net", size=10240,
        sha256=hashlib.sha256(tx_id.encode()).hexdigest(), subject=f"message {n}",
        virus_status="clean", virus_names="", virus_seconds=0.001, spam_status="disabled",
        spam_score=None, spam_rules="", spam_seconds=0.0, scanner_errors="")
    verdicts: list[dict[str, object]] = [dict(
        message_id=tx_id, position=p, address=f"rcpt{p}@example.org", action="deliver",
        category="clean", reply_code=250, reply_text=f"250 2.0.0 <rcpt{p}@example.org> Ok",
        downstream_reply=f"250 2.0.0 <rcpt{p}@example.org> Ok", quarantine_id=None, rule="")
        for p in range(2)]
    return message, verdicts


async def insert(bulk: store.BulkInserter, batch: list[Rows]) -> None:
    await bulk.insert([(MESSAGES, [m for m, _ in batch]),
                       (VERDICTS, [v for _, vs in batch for v in vs])])


async def measure(messages: int, batch: int) -> tuple[float, float]:
    """CPU and wall microseconds per message, after a warm-up."""
    with tempfile.TemporaryDirectory(prefix="lmtpf-commit-") as tmp:
        url = f"sqlite:///{tmp}/verdicts.db"
        store.upgrade(url)
        s = store.Store(url)
        try:
            prepared = [rows(n) for n in range(WARM_UP + messages)]
            await insert(s.bulk, prepared[:WARM_UP])
            cpu0, wall0 = time.process_time(), time.monotonic()
            for start in range(WARM_UP, WARM_UP + messages, batch):
                await insert(s.bulk, prepared[start:start + batch])
            cpu1, wall1 = time.process_time(), time.monotonic()
        finally:
            s.close()
    return 1e6 * (cpu1 - cpu0) / messages, 1e6 * (wall1 - wall0) / messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--batch", default="1,8", help="messages per commit")
    parser.add_argument("--repeat", type=int, default=3, help="runs per batch size (median)")
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, SQLite, {args.messages} messages, "
          f"2 recipients, median of {args.repeat}")
    print("| messages per commit | CPU us per message | wall us per message |")
    print("|---|---|---|")
    for batch in (int(b) for b in args.batch.split(",")):
        runs = [asyncio.run(measure(args.messages, batch)) for _ in range(args.repeat)]
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        print(f"| {batch} | {cpu:.0f} | {wall:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
