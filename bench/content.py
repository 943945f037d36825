#!/usr/bin/env python3
"""What the content checks (banned parts, bad headers) add per message, beside clamd.

Measures, for a 10 KB plain text message and a 100 KB message with a zip attachment
(tests/hostile_mail.py's plain_10k and zip_100k):

  checks  the CPU time of filtering.content_checks (the MIME walk, libmagic, libarchive, the
          rules, the header check): what the filter stage adds per message, in its process;
  clamd   the CPU time clamd spends scanning the same message (INSTREAM), read from
          /proc/PID/stat around the scans: the cost of "ClamAV mode" for that message.

Targets (issue 15): under 0.3 ms per plain message, and under 10% of clamd's cost for the
attachment. Run as root on Debian (it starts a throwaway clamd, as the tests do):

    .venv/bin/python bench/content.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmtpfilter.config import ContentConfig
from lmtpfilter.filtering import content_checks
from lmtpfilter.message import Message
from tests import hostile_mail
from tests.harness.daemons import short_tmpdir
from tests.harness.scanners import clamd_instream, start_clamd

TICKS = os.sysconf("SC_CLK_TCK")


def checks_cpu_ms(data: bytes, rounds: int) -> float:
    """Median CPU time of one content check, in ms (the message parsed once, as the
    filter does before its stages)."""
    message = Message.parse(data)
    config = ContentConfig()
    content_checks(message, config, False)  # warm: libmagic's database, imports
    samples = []
    for _ in range(rounds):
        started = time.process_time_ns()
        content_checks(message, config, False)
        samples.append((time.process_time_ns() - started) / 1e6)
    return statistics.median(samples)


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def clamd_cpu_ms(data: bytes, rounds: int) -> float:
    """clamd's mean CPU time per INSTREAM scan of `data`, in ms."""
    base = short_tmpdir("lmtpf-bench-content-")
    clamd = start_clamd(base)
    try:
        clamd_instream(clamd.socket_path, data)  # warm
        before = process_cpu_s(clamd.pid)
        for _ in range(rounds):
            clamd_instream(clamd.socket_path, data)
        return (process_cpu_s(clamd.pid) - before) * 1000 / rounds
    finally:
        clamd.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    plain, attached = hostile_mail.plain_10k(), hostile_mail.zip_100k()
    plain_ms = checks_cpu_ms(plain, args.rounds)
    zip_ms = checks_cpu_ms(attached, args.rounds)
    clamd_ms = clamd_cpu_ms(attached, args.rounds)
    print("| message | content checks, CPU per message | clamd, CPU per message | checks / clamd |")
    print("|---|---|---|---|")
    print(f"| 10 KB plain | {plain_ms:.3f} ms | - | - |")
    print(f"| 100 KB with a zip ({len(attached) // 1024} KB) | {zip_ms:.3f} ms | "
          f"{clamd_ms:.2f} ms | {zip_ms / clamd_ms:.0%} |")
    ok = plain_ms < 0.3 and zip_ms < 0.1 * clamd_ms
    print(f"targets (< 0.3 ms plain, < 10% of clamd with the zip): {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
