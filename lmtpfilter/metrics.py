"""Prometheus metrics (``[metrics].listen``), correct across worker processes.

prometheus-client runs in multiprocess mode for every process: each one writes its samples to
files in a private directory, and a scrape sums them (counters and histograms over all
processes, the in-flight gauge over live ones). The listening socket is bound once by the
parent; each worker answers ``GET /metrics`` on it from its own event loop, and whichever
worker the kernel picks returns the same totals. No thread is started (threads and fork()
do not mix).

`serve` sets ``PROMETHEUS_MULTIPROC_DIR`` before anything imports this module: the
multiprocess mode is chosen when prometheus-client is imported.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by `serve` (cli.py) before this module is imported

MESSAGES = Counter("lmtpfilter_messages_total", "Messages answered (after DATA)")
RECIPIENTS = Counter("lmtpfilter_recipients_total", "Recipients by what was done for them",
                     ["action", "category"])
REPLIES = Counter("lmtpfilter_replies_total", "Replies given to the client after DATA, by class",
                  ["code_class"])
DOWNSTREAM = Counter("lmtpfilter_downstream_replies_total",
                     "Per-recipient replies of the downstream server, by class", ["code_class"])
SCAN_SECONDS = Histogram("lmtpfilter_scanner_seconds", "Scan time by scanner", ["scanner"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                                  60))
SCAN_ERRORS = Counter("lmtpfilter_scanner_errors_total", "Scanner failures by scanner",
                      ["scanner"])
SCANS_SPARED = Counter("lmtpfilter_scans_spared_total",
                       "Scans not asked for because no recipient needed their answer",
                       ["scanner", "reason"])
QUARANTINED = Counter("lmtpfilter_quarantined_total", "Messages quarantined", ["reason"])
QUARANTINED_BYTES = Counter("lmtpfilter_quarantined_bytes_total",
                            "Bytes written to the quarantine (compressed)")
QUARANTINE_FILES = Gauge("lmtpfilter_quarantine_files", "Files in the quarantine (live rows)",
                         multiprocess_mode="max")
QUARANTINE_SIZE = Gauge("lmtpfilter_quarantine_bytes", "Bytes in the quarantine (live rows)",
                        multiprocess_mode="max")
INFLIGHT = Gauge("lmtpfilter_inflight_transactions", "Transactions being processed",
                 multiprocess_mode="livesum")
WORKER_RESTARTS = Counter("lmtpfilter_worker_restarts_total", "Workers restarted after dying")
WORKER_RETIREMENTS = Counter("lmtpfilter_worker_retirements_total",
                             "Workers replaced after worker_max_messages transactions")


def mark_process_dead(pid: int) -> None:
    if os.environ.get(_DIR_ENV):
        _mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def render() -> bytes:
    if not os.environ.get(_DIR_ENV):  # one process, in-memory samples (tests)
        return generate_latest()
    registry = CollectorRegistry()
    _mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  samples: Callable[[], bytes] = render) -> None:
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
        if path.split(b"?")[0] == b"/metrics":
            body = await asyncio.to_thread(samples)
            head = f"HTTP/1.0 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
        else:
            body = b"lmtpfilter: see /metrics\n"
            head = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
            ConnectionError, IndexError):
        pass
    finally:
        writer.close()


async def serve_http(sock: socket.socket, samples: Callable[[], bytes] = render) -> Any:
    """Answer /metrics on an already bound socket with `samples()` (the filter's, or the
    web page's own registry); returns the asyncio server."""
    return await asyncio.start_server(functools.partial(_answer, samples=samples), sock=sock,
                                      limit=16384)
