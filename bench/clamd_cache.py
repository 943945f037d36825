#!/usr/bin/env python3
"""clamd's CPU per scan, and how much of it its cache saves (issue 17 item 1).

clamd remembers the hash of every clean object it scanned and answers a repeat without
scanning it again. A benchmark that sends the same bytes again and again therefore measures
the cache, not the scan, and two filters that send clamd different things are not compared
alike. With smtp-source's load each message has its own Message-Id:
  - lmtpfilter and FuGlu stream the whole message (INSTREAM): every stream is new to clamd;
  - amavisd-new decodes the parts into files and asks clamd to scan that directory
    (CONTSCAN): the body part is the same in every smtp-source message, so after the first
    it is a cache hit;
  - scanners "driven alone" (bench/throughput.py) sent one captured message again and again
    until the copies were numbered: a cache hit too.

This script starts clamd (the test signature DB, as the other benches) and measures clamd's
CPU per INSTREAM scan, from /proc, for: the same message each time, a unique message each
time (the Message-Id only differs), the same again with a MIME attachment, and the bare body
(what a CONTSCAN of amavisd-new's parts directory gives clamd for smtp-source's messages).

    usage: python3 bench/clamd_cache.py [--scans 400] [--size 10240]
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.daemons import short_tmpdir  # noqa: E402
from tests.harness.scanners import clamd_instream, start_clamd  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kinds(size: int) -> dict[str, Callable[[int], bytes]]:
    text = "".join(random.Random(1).choice("abcdefghij klmnop\n") for _ in range(size))
    body = text.replace("\n", "\r\n").encode()

    def plain(n: int) -> bytes:
        return (f"From: a@example.net\r\nTo: b@example.org\r\nMessage-ID: <{n}@bench>\r\n"
                f"Subject: test\r\n\r\n").encode() + body

    def with_attachment(n: int) -> bytes:
        half = len(body) // 2
        return (f"From: a@example.net\r\nTo: b@example.org\r\nMessage-ID: <{n}@bench>\r\n"
                "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
                "--B\r\nContent-Type: text/plain\r\n\r\n").encode() + body[:half] + (
                b"\r\n--B\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n") + \
            base64.encodebytes(body[half:]) + b"\r\n--B--\r\n"

    return {"the same message each time": lambda n: plain(0),
            "a unique message each time": plain,
            "the same, with an attachment": lambda n: with_attachment(0),
            "unique, with an attachment": with_attachment,
            "the bare body, the same each time": lambda n: body}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=400)
    parser.add_argument("--size", type=int, default=10240, help="body bytes")
    args = parser.parse_args()
    base = short_tmpdir("lmtpf-clamc-")
    clamd = start_clamd(base)
    try:
        print("| what clamd is sent | clamd CPU ms/scan | wall ms/scan |\n|---|---|---|")
        for name, make in kinds(args.size).items():
            for n in range(20):  # the first of each kind fills the cache
                clamd_instream(clamd.socket_path, make(10**6 + n))
            cpu0, wall0 = cpu_seconds(clamd.pid), time.monotonic()
            for n in range(args.scans):
                reply = clamd_instream(clamd.socket_path, make(n))
                assert reply.endswith(b"OK\0"), reply
            cpu1, wall1 = cpu_seconds(clamd.pid), time.monotonic()
            print(f"| {name} | {1000 * (cpu1 - cpu0) / args.scans:.2f} | "
                  f"{1000 * (wall1 - wall0) / args.scans:.2f} |", flush=True)
    finally:
        clamd.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
