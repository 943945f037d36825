#!/usr/bin/env python3
"""Throughput of lmtpfilter, and the limit it can approach, on this machine.

    smtp-source -L (2 recipients/message) --> lmtpfilter --> smtp-sink -L

Modes:
  none      no checks: the filter as a pure LMTP proxy; the limit is smtp-sink fed directly
  clamav    ClamAV only; the limit is clamd driven directly (INSTREAM) at the same concurrency
  full      ClamAV + SpamAssassin; the limit is clamd and spamd driven directly, both per
            message in parallel, as the filter does, at the same concurrency

For each mode, 1 and 16 concurrent sessions, 10 KB and 100 KB messages: messages/s through
the filter, the limit, their ratio, and the filter's peak RSS. Daemons are started on loopback
in a temporary directory (clamd with the test signature DB, spamd without network tests).

    usage: python3 bench/throughput.py [--modes none,clamav,full] [--messages 2000]
Run from the repository (it uses tests/harness to start the daemons); needs the packages of
scripts/run-tests.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmtpfilter.clamav import ClamdScanner  # noqa: E402
from lmtpfilter.config import Config, from_mapping  # noqa: E402
from lmtpfilter.scanresult import SpamResult, VirusResult  # noqa: E402
from lmtpfilter.spamd import SpamdScanner  # noqa: E402
from tests.harness.daemons import free_port, short_tmpdir, start_smtp_sink  # noqa: E402
from tests.harness.scanners import start_clamd, start_spamd  # noqa: E402

SIZES = (10240, 102400)
SESSIONS = (1, 16)


def smtp_source_message(size: int) -> bytes:
    """The message smtp-source sends with `-l size`, captured from smtp-source itself, so that
    scanners driven directly see what the filters see (SpamAssassin's work depends on the
    exact headers: a look-alike cost spamd 10% less CPU)."""
    import socket

    content = b""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        proc = subprocess.Popen(["smtp-source", "-L", "-m", "1", "-l", str(size),
                                 "-f", "sender@example.net", "-t", "rcpt@example.org",
                                 f"127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server.settimeout(10)
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as peer:
            peer.write(b"220 capture\r\n")
            peer.flush()
            while line := peer.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    peer.write(b"354 go\r\n")
                    peer.flush()
                    while (line := peer.readline()) not in (b".\r\n", b""):
                        content += line[1:] if line.startswith(b"..") else line
                elif verb == b"QUIT":
                    peer.write(b"221 bye\r\n")
                    peer.flush()
                    break
                peer.write(b"250 ok\r\n")  # also the one reply after DATA (one recipient)
                peer.flush()
        proc.wait(10)
    return content


def smtp_source(port: int, sessions: int, size: int, count: int) -> float:
    started = time.monotonic()
    subprocess.run(["smtp-source", "-L", "-d", "-s", str(sessions), "-m", str(count),
                    "-l", str(size), "-r", "2", "-f", "sender@example.net",
                    "-t", "rcpt@example.org", f"127.0.0.1:{port}"],
                   check=True, capture_output=True, timeout=1800)
    return count / (time.monotonic() - started)


MESSAGE_ID = re.compile(rb"^Message-Id: <([^@>]*)@", re.M | re.I)


def numbered(message: bytes, n: int) -> bytes:
    """The message with a Message-Id unique to `n`, of the same length, as smtp-source gives
    each of its messages. Sending one message again and again would measure clamd's cache:
    clamd keeps the hash of every clean stream it scanned and answers a repeat at about 40%
    of the CPU of a scan (bench/clamd_cache.py)."""
    found = MESSAGE_ID.search(message)
    assert found, "smtp-source's message has a Message-Id"
    width = len(found.group(1))
    unique = f"{n:x}".rjust(width, "0")[-width:].encode()
    return message[:found.start(1)] + unique + message[found.end(1):]


async def drive_scanners(conf: Config, clamav: bool, spamassassin: bool,
                         sessions: int, size: int, count: int) -> float:
    """Messages/s when the scanners are fed directly, `sessions` at a time. The clients are
    made here, in the running loop: the spamd client's connection slots belong to one loop,
    and each asyncio.run is a new one."""
    clamd = ClamdScanner(conf.clamav) if clamav else None
    spamd = SpamdScanner(conf.spamassassin) if spamassassin else None
    template = smtp_source_message(size)
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            data = numbered(template, n)
            jobs: list[Coroutine[Any, Any, VirusResult | SpamResult]] = []
            if clamd:
                jobs.append(clamd.scan(data))
            if spamd:
                jobs.append(spamd.check(data, "sender@example.net"))
            for result in await asyncio.gather(*jobs):
                assert result.status.value in ("clean", "scored"), result

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(sessions)))
    return count / (time.monotonic() - started)


def peak_rss_mb(pid: int) -> float:
    """The largest peak RSS among the process and its children (the workers)."""
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)],
                                                  capture_output=True, text=True).stdout.split()]
    peak = 0.0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def wait_banner(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="none,clamav,full")
    parser.add_argument("--workers", type=int, default=1, help="[server].workers")
    parser.add_argument("--messages", type=int, default=2000,
                        help="messages per run at 16 sessions and 10 KB (others scale down)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    base = short_tmpdir("lmtpf-bench-")
    daemons: list[object] = []
    try:
        sink = start_smtp_sink(base, lmtp=True)
        daemons.append(sink)
        clamd = start_clamd(base) if {"clamav", "full"} & set(modes) else None
        if clamd:
            daemons.append(clamd)
        spamd = start_spamd(base, children=os.cpu_count() or 2) if "full" in modes else None
        if spamd:
            daemons.append(spamd)
        print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, 2 recipients/message")
        print(f"{'mode':<7} {'sessions':>8} {'size':>6} {'filter msg/s':>13} "
              f"{'limit msg/s':>12} {'ratio':>6} {'filter RSS':>11}")
        for mode in modes:
            run_mode(mode, base, sink.port, clamd, spamd, args.messages, args.workers)
    finally:
        for d in reversed(daemons):
            d.stop()  # type: ignore[attr-defined]
        shutil.rmtree(base, ignore_errors=True)
    return 0


def run_mode(mode: str, base: Path, sink_port: int, clamd: object, spamd: object,
             messages: int, workers: int = 1) -> None:
    port = free_port()
    config: dict[str, dict[str, object]] = {
        "server": {"listen": [f"127.0.0.1:{port}"], "hostname": "bench.example",
                   "workers": workers,
                   # smtp-source takes a retiring worker's 421 as fatal (Postfix retries);
                   # recycling is for long runs, not for a measurement
                   "worker_max_messages": 0},
        "downstream": {"address": f"127.0.0.1:{sink_port}", "max_idle_connections": 32},
        "clamav": {"enabled": mode in ("clamav", "full")},
        "spamassassin": {"enabled": mode == "full"},
        "policy": {"spam_destiny": "pass"},
        "database": {"url": f"sqlite:///{base}/bench-{mode}.db"},
        "quarantine": {"directory": f"{base}/quarantine"},
    }
    if clamd is not None:
        config["clamav"]["address"] = f"unix:{clamd.socket_path}"  # type: ignore[attr-defined]
    if spamd is not None:
        config["spamassassin"]["address"] = f"127.0.0.1:{spamd.port}"  # type: ignore[attr-defined]
        config["spamassassin"]["max_size"] = "1M"
    conf = from_mapping(config)
    toml = base / f"bench-{mode}.toml"
    toml.write_text(render_toml(config))
    subprocess.run([sys.executable, "-m", "lmtpfilter", "db", "upgrade", "-c", str(toml)],
                   check=True, capture_output=True)
    log = (base / f"bench-{mode}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "lmtpfilter", "serve", "-c", str(toml),
                             "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_banner(port)
        for size in SIZES:
            for sessions in SESSIONS:
                count = messages if sessions == 16 else messages // 4
                count = count // 2 if size > 10240 else count
                if mode == "full":
                    count = max(40, count // 20)
                smtp_source(port, sessions, size, min(50, count))  # warm-up
                filtered = smtp_source(port, sessions, size, count)
                if mode == "none":
                    limit = smtp_source(sink_port, sessions, size, count)
                else:
                    limit = asyncio.run(drive_scanners(conf, mode != "none", mode == "full",
                                                       sessions, size, count))
                print(f"{mode:<7} {sessions:>8} {size // 1024:>4}KB {filtered:>13.0f} "
                      f"{limit:>12.0f} {filtered / limit:>6.2f} "
                      f"{peak_rss_mb(proc.pid):>8.1f} MB", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
        errors = [line for line in (base / f"bench-{mode}.log").read_text().splitlines()
                  if "ERROR" in line or "Traceback" in line]
        if errors:
            print(f"  lmtpfilter logged errors in mode {mode}: {errors[:3]}")


def render_toml(config: dict[str, dict[str, object]]) -> str:
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, int):
            return str(v)
        return '"' + str(v) + '"'

    return "".join(f"[{section}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())
                   for section, keys in config.items())


if __name__ == "__main__":
    raise SystemExit(main())
