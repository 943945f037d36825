#!/usr/bin/env python3
"""Does glibc keep a worker's freed peaks? One lmtpfilter process with glibc's defaults
against one with a fixed mmap threshold, under the same load at the same time (issue 16).

The soak's workers grew for as long as they lived (gdb on the live workers: glibc held
59.7 MB from the system with 26.3 MB in use), after peaks of big messages and fan-outs.
glibc serves an allocation of 128 KB or more with mmap, and gives it back on free, but its
threshold is dynamic: after freeing such a block it raises the threshold to that block's
size (up to 32 MB), so that the next 3 MB message buffer comes from the heap, whose freed
space it keeps. MALLOC_MMAP_THRESHOLD_=131072 fixes the threshold (Dovecot 2.4.1 sets exactly
this for its processes); MALLOC_ARENA_MAX bounds the arenas the threads create.

    smtp-source -L  --> lmtpfilter A (glibc's defaults)  --> smtp-sink -L
    (same commands) --> lmtpfilter B (the variant)       --/

Both run `workers = 1` (the process that serves is the one measured), no scanners, the content
checks on. The load repeats a cycle: 10 KB messages at 16 sessions, a burst of 3 MB messages
at 12 sessions, 40-recipient fan-outs. RSS is sampled every 2 s. Reported per process: RSS
after the first cycle (warm-up), at the end, the peak, and the growth from warm-up to the end.

    usage: python3 bench/malloc_retention.py [--minutes 10] [--variant "NAME=VALUE ..."]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import machine, terminate  # noqa: E402
from layers import start_filter  # noqa: E402

from tests.harness.daemons import short_tmpdir, start_smtp_sink  # noqa: E402

CYCLE = (  # (sessions, messages, size, recipients)
    (16, 1500, 10_240, 2),
    (12, 24, 3_000_000, 2),
    (4, 60, 20_000, 40),
)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def send(port: int, sessions: int, messages: int, size: int, recipients: int) -> None:
    subprocess.run(["smtp-source", "-L", "-s", str(sessions), "-m", str(messages),
                    "-l", str(size), "-r", str(recipients), "-f", "s@example.net",
                    "-t", "rcpt@example.org", f"127.0.0.1:{port}"],
                   check=True, capture_output=True)


def start(base: Path, name: str, sink_port: int, env: dict[str, str]
          ) -> tuple[subprocess.Popen[bytes], int]:
    """One lmtpfilter process as bench/layers.py starts it (workers = 1, no scanners), with
    `env` added to its environment."""
    (base / name).mkdir()
    saved = dict(os.environ)
    os.environ.update(env)  # glibc reads its tunables when the process starts
    try:
        proc, port, _db, _log = start_filter(base / name, "none", sink_port, None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--variant", default="MALLOC_MMAP_THRESHOLD_=131072",
                        help="space-separated NAME=VALUE for process B")
    args = parser.parse_args()
    variant = dict(v.split("=", 1) for v in args.variant.split())
    base = short_tmpdir("lmtpf-malloc-")
    sink = start_smtp_sink(base / "sink", lmtp=True)
    procs = {"A (glibc's defaults)": start(base, "a", sink.port, {}),
             f"B ({args.variant})": start(base, "b", sink.port, variant)}
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in procs}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(2.0):
            for name, (proc, _port) in procs.items():
                samples[name].append((time.monotonic(), rss_kb(proc.pid)))
    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    warm_end = 0.0
    cycles = 0
    try:
        while time.monotonic() - started < args.minutes * 60:
            for sessions, messages, size, recipients in CYCLE:
                senders = [threading.Thread(target=send, args=(port, sessions, messages, size,
                                                               recipients))
                           for _proc, port in procs.values()]
                for t in senders:
                    t.start()
                for t in senders:
                    t.join()
            cycles += 1
            if cycles == 1:
                warm_end = time.monotonic()
            print(f"cycle {cycles} at {(time.monotonic() - started) / 60:.1f} min: " + ", ".join(
                f"{name} {rss_kb(proc.pid) / 1024:.1f} MB" for name, (proc, _p) in procs.items()),
                flush=True)
    finally:
        stop.set()
        sampler.join()
        for proc, _port in procs.values():
            terminate(proc)
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)
    end_from = time.monotonic() - 0.1 * (time.monotonic() - warm_end)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')} on {machine()}: {cycles} cycles in "
          f"{args.minutes:g} min; warm-up = the first cycle; RSS medians of 2 s samples.\n")
    print("| process | RSS after warm-up MB | RSS at the end (last 10%) MB | peak MB | growth |")
    print("|---|---|---|---|---|")
    for name, series in samples.items():
        warm = [kb for t, kb in series if warm_end - 20 <= t <= warm_end + 20]
        last = [kb for t, kb in series if t >= end_from]
        if not warm or not last:
            print(f"| {name} | too short a run to tell | | | |")
            continue
        w, e = statistics.median(warm) / 1024, statistics.median(last) / 1024
        peak = max(kb for _t, kb in series) / 1024
        print(f"| {name} | {w:.1f} | {e:.1f} | {peak:.1f} | {100 * (e - w) / w:+.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
