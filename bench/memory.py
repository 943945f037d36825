#!/usr/bin/env python3
"""Peak memory of lmtpfilter with big messages (real clamd scanning them, smtp-sink behind).

  * one 50 MB message: the target is peak RSS < 3 x 50 MB + 60 MB = 210 MB;
  * 16 concurrent 10 MB messages: reported (documented bound in the README);
  * a 60 MB message with max_message_size = 50M: refused (552 5.3.4) without being held in
    memory past the limit (peak below idle + 50 MB + a 10 MB margin for the read buffer).
Each case runs in a fresh filter process; peak RSS is its VmHWM.

    usage: python3 bench/memory.py
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.daemons import free_port, short_tmpdir, start_smtp_sink  # noqa: E402
from tests.harness.scanners import start_clamd  # noqa: E402
from tests.lmtp_tools import lmtp_session  # noqa: E402

MB = 1024 * 1024


def big_message(size: int) -> bytes:
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempo\r\n"
    head = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: big\r\n\r\n"
    return head + line * ((size - len(head)) // len(line))


def vmhwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_filter(base: Path, sink_port: int, clamd_sock: Path) -> tuple[subprocess.Popen[bytes],
                                                                          str]:
    port = free_port()
    work = Path(short_tmpdir("lmtpf-mem-"))
    config = work / "f.toml"
    config.write_text(f"""[server]
listen = ["127.0.0.1:{port}"]
max_message_size = "50M"
[downstream]
address = "127.0.0.1:{sink_port}"
timeout = "300s"
[clamav]
address = "unix:{clamd_sock}"
timeout = "300s"
[spamassassin]
enabled = false
[database]
url = "sqlite:///{work}/db.sqlite"
[quarantine]
directory = "{work}/q"
""")
    subprocess.run([sys.executable, "-m", "lmtpfilter", "db", "upgrade", "-c", str(config)],
                   check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "lmtpfilter", "serve", "-c", str(config),
                             "--log-level", "WARNING"], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            import socket

            with socket.create_connection(("127.0.0.1", port), 1) as s:
                if s.recv(10).startswith(b"220"):
                    break
        except OSError:
            time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


async def send(address: str, message: bytes, n: int = 1) -> list[str]:
    results = await asyncio.gather(*(lmtp_session(address, "s@example.net",
                                                  ["a@example.org", "b@example.org"], message,
                                                  timeout=600) for _ in range(n)))
    return [reply[:9] for r in results for reply in r.data_replies]


def case(base: Path, sink_port: int, clamd_sock: Path, title: str, size: int, n: int,
         bound: float | None) -> None:
    proc, address = start_filter(base, sink_port, clamd_sock)
    try:
        baseline = vmhwm(proc.pid)
        message = big_message(size)
        started = time.monotonic()
        replies = asyncio.run(send(address, message, n))
        seconds = time.monotonic() - started
        peak = vmhwm(proc.pid)
        if bound is not None and bound < 0:  # relative: this much above the idle process
            bound = baseline - bound
        verdict = "" if bound is None else (" (within the target)" if peak < bound else
                                            f" (OVER the target of {bound:.0f} MB)")
        print(f"{title}: replies {sorted(set(replies))}, {seconds:.1f} s, peak RSS "
              f"{peak:.0f} MB (idle {baseline:.0f} MB){verdict}", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> int:
    base = short_tmpdir("lmtpf-membench-")
    clamd = start_clamd(base, stream_max_length="60M")
    sink = start_smtp_sink(base, lmtp=True)
    try:
        case(base, sink.port, clamd.socket_path, "one 50 MB message", 50 * MB - 1024, 1,
             3 * 50 + 60)
        case(base, sink.port, clamd.socket_path, "16 concurrent 10 MB messages", 10 * MB, 16,
             None)
        # Refused without holding more than the limit (50 MB) plus a read buffer.
        case(base, sink.port, clamd.socket_path, "one 60 MB message over the 50 MB limit",
             60 * MB, 1, -(50 + 10))
    finally:
        sink.stop()
        clamd.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
