#!/usr/bin/env python3
"""Scaling over filter hosts on one PostgreSQL (issue 18 item 5): msg/s of one lmtpfilter
instance against two, and what the database costs per message.

    asyncio LMTP client (N sessions, 10 KB, 2 recipients)
        --> lmtpfilter A [--> lmtpfilter B]    [quarantine] store = "sql"; no scanners
              |--> smtp-sink -L (one, shared)
              '--> PostgreSQL (one, shared; tests/harness/postgres.py)

With two instances the sessions are split between them (session i goes to instance i mod 2)
and take their messages from one shared queue, as Postfix spreads its connections over two
LMTP next hops. ClamAV and SpamAssassin are off, so that the filter and the database are
what is measured; the content checks stay on, and a share of the messages (--banned-share,
default 10%) carries a banned attachment ("invoice.pdf.exe"), so those are quarantined in the
database (rows and zlib chunks, committed before the 250). Every message is checked: a reply
other than 250, or a quarantine row count other than the banned messages sent, fails the run.

Runs alternate 1, 2, 1, 2, ... instances (--repeat each), each on a fresh database (migrated
by `lmtpfilter db upgrade`) with freshly started instances, so no run inherits the tables,
the caches or the pools of another. Per run, over the measured messages (after a warm-up):

  msg/s               messages over the wall time of the measured load
  filter CPU ms/msg   CPU of the lmtpfilter processes (workers included), from /proc
  postgres CPU ms/msg CPU of the postmaster and all its processes (backends, WAL writer,
                      checkpointer, autovacuum; exited backends through cutime/cstime)
  other CPU ms/msg    smtp-sink and this client (which shares the machine)
  busy %              the machine's busy CPU (/proc/stat) over the run, of all CPUs
and from the server's statistics for the run's database (pg_stat_database, after the
instances stopped, so that every backend has reported; divided by all messages the run's
instances handled, warm-up included, since the counters cover their whole life):

  DB active ms/msg    active_time: time backends spent executing statements (commit
                      waits for the WAL flush included): the database's time per message
  commits/msg         xact_commit (the filter writes the verdicts of several messages in
                      one transaction when they finish together; a quarantine commits its own)
  block I/O ms/msg    blk_read_time + blk_write_time (track_io_timing on)
  WAL KB/msg          pg_stat_wal.wal_bytes (the server holds only this run's database)
  WAL fsyncs/msg, WAL fsync ms/msg  pg_stat_wal.wal_sync, wal_sync_time (track_wal_io_timing)

The text under the table says where the database becomes the limit: the msg/s at which
PostgreSQL would need a whole CPU (1000 / postgres CPU ms per message), the share of the
busy CPU it took, how many statements ran at once on average (active ms/msg x msg/s), and
the share of the time the WAL was being fsynced (fsync ms/msg x msg/s): a commit waits for
its flush, so near 100% the disk, not the CPU, is the limit.

PostgreSQL's settings: the harness starts a throwaway server with fsync, synchronous_commit
and full_page_writes off; this script turns them back on (ALTER SYSTEM, reloaded) unless
--pg-unsafe, so that a commit waits for its WAL flush as on a real server. Where the data
directory lives (/tmp, here ext4 on the VM's disk) decides what a flush costs; the JSON
records the filesystem.

One machine stands in for several hosts: "two instances" are two lmtpfilter processes on the
same CPUs as PostgreSQL, the sink and the client. With --workers 1 (the default) one instance
is one process, so 1 against 2 instances is one process against two, sharing one database;
on 2 CPUs more processes than that only share the same cores.

    usage: python3 bench/cluster.py [--quick] [--instances 1,2] [--repeat 3]
                                    [--messages 10000] [--warmup 300] [--sessions 16]
                                    [--workers 1] [--banned-share 0.1] [--pg-unsafe]
                                    [--markdown FILE] [--json FILE] [--keep]

Needs root (PostgreSQL runs as the postgres user, smtp-sink as mail), the packages of
scripts/run-tests.sh and the test extra (psycopg); run from the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import cpu_seconds, machine, wait_up  # noqa: E402
from throughput import render_toml  # noqa: E402

from lmtpfilter.config import from_mapping  # noqa: E402
from tests.harness.daemons import SmtpSink, free_port, short_tmpdir, start_smtp_sink  # noqa: E402
from tests.harness.postgres import (  # noqa: E402
    PG_PASSWORD,
    PG_USER,
    Postgres,
    start_postgres,
)

LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SENDER = "sender@example.net"
RECIPIENTS = ("1rcpt@example.org", "2rcpt@example.org")
MESSAGE_SIZE = 10_240
INSTANCE_NAMES = ("a", "b", "c", "d")
REPLY_TIMEOUT = 120.0
"""Seconds one reply may take before the run fails: only a guard against a hang."""
BACKENDS_GONE_TIMEOUT = 30.0
WORDS = ("the", "quarterly", "report", "attached", "meeting", "agenda", "minutes", "budget",
         "please", "review", "thanks", "regards", "schedule", "update", "project", "delivery")


# ----------------------------------------------------------------------------- messages


def _text_lines(rng: random.Random, size: int) -> str:
    lines: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choices(WORDS, k=12))
        lines.append(line)
        length += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


class Messages:
    """The two bodies (clean, banned), about MESSAGE_SIZE bytes each, dot-stuffed and ended
    with the final dot; each message gets a Message-ID of its own in front. Which message is
    banned is spread evenly: message n is banned when n * share crosses an integer."""

    def __init__(self, banned_share: float, seed: int = 18) -> None:
        rng = random.Random(seed)
        self.banned_share = banned_share
        common = (f"From: Bench <{SENDER}>\r\nTo: {', '.join(RECIPIENTS)}\r\n"
                  "Date: Tue, 01 Dec 2026 23:00:00 +0000\r\nMIME-Version: 1.0\r\n")
        clean = (common + "Subject: cluster bench\r\nContent-Type: text/plain\r\n\r\n"
                 + _text_lines(rng, MESSAGE_SIZE - 300))
        # A fixed prefix: random bytes starting "MZ" would be a DOS executable to libmagic;
        # the name alone bans it (the default rules ban a double extension ending in .exe).
        attachment = b"BENCH-DATA\n" + rng.randbytes((MESSAGE_SIZE - 2_500) * 3 // 4)
        b64 = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
        banned = (common + "Subject: cluster bench, banned\r\n"
                  'Content-Type: multipart/mixed; boundary="b-bench"\r\n\r\n'
                  "--b-bench\r\nContent-Type: text/plain\r\n\r\n" + _text_lines(rng, 1_500)
                  + '--b-bench\r\nContent-Type: application/octet-stream; '
                  'name="invoice.pdf.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                  + b64 + "--b-bench--\r\n")
        # No line starts with ".", so nothing needs dot-stuffing.
        self.clean = clean.encode() + b".\r\n"
        self.banned = banned.encode() + b".\r\n"

    def is_banned(self, n: int) -> bool:
        return int((n + 1) * self.banned_share) > int(n * self.banned_share)

    def content(self, n: int) -> bytes:
        message_id = f"Message-ID: <cluster-{n}@bench.example.net>\r\n".encode()
        return message_id + (self.banned if self.is_banned(n) else self.clean)

    def banned_among(self, first: int, count: int) -> int:
        return sum(self.is_banned(n) for n in range(first, first + count))


# ----------------------------------------------------------------------------- the load


class RefusedError(RuntimeError):
    """A reply other than the one expected: the run is not a measurement of mail passed."""


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await asyncio.wait_for(reader.readline(), REPLY_TIMEOUT)
        if not line:
            raise ConnectionError("the filter closed the connection")
        if line[3:4] != b"-":
            return line


async def _session(port: int, jobs: Iterator[int], messages: Messages,
                   tally: Counter[str]) -> None:
    """One LMTP connection carrying messages until the shared queue is empty. MAIL, both
    RCPTs and DATA go in one write (the filter announces PIPELINING; Postfix pipelines)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    envelope = "".join([f"MAIL FROM:<{SENDER}>\r\n"]
                       + [f"RCPT TO:<{r}>\r\n" for r in RECIPIENTS] + ["DATA\r\n"]).encode()
    try:
        if not (await _reply(reader)).startswith(b"220"):
            raise RefusedError("no 220 banner")
        writer.write(b"LHLO bench.client\r\n")
        await _reply(reader)
        for n in jobs:
            writer.write(envelope)
            for want in (b"250", b"250", b"250", b"354"):
                got = await _reply(reader)
                if not got.startswith(want):
                    raise RefusedError(f"message {n}: wanted {want!r}, got {got!r}")
            writer.write(messages.content(n))
            for _ in RECIPIENTS:
                got = await _reply(reader)
                if not got.startswith(b"250"):
                    raise RefusedError(f"message {n}: {got!r}")
                if b"quarantined" in got:
                    tally["quarantined"] += 1
            tally[f"port {port}"] += 1
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()


def send(ports: list[int], sessions: int, messages: Messages, first: int, count: int
         ) -> tuple[float, Counter[str]]:
    """Messages first..first+count-1 over `sessions` sessions spread over `ports` (session i
    to ports[i % len(ports)]), taken from one queue. (seconds, tally): the tally counts the
    recipients answered "quarantined" and the messages each port took ("port N")."""
    jobs = iter(range(first, first + count))
    tally: Counter[str] = Counter()

    async def run() -> None:
        await asyncio.gather(*(_session(ports[i % len(ports)], jobs, messages, tally)
                               for i in range(sessions)))

    started = time.monotonic()
    asyncio.run(run())
    return time.monotonic() - started, tally


# ----------------------------------------------------------------------------- measuring


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / CLK_TCK, total / CLK_TCK


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class CpuSnapshot:
    filters: float
    postgres: float
    sink: float
    client: float
    machine_busy: float
    machine_total: float

    @classmethod
    def take(cls, filter_roots: list[int], pg: Postgres, sink: SmtpSink) -> CpuSnapshot:
        busy, total = machine_busy_seconds()
        return cls(cpu_seconds(filter_roots), cpu_seconds([pg.pid]), cpu_seconds([sink.pid]),
                   own_cpu_seconds(), busy, total)


DB_COUNTERS = ("xact_commit", "xact_rollback", "blks_read", "blks_hit", "tup_inserted",
               "tup_updated", "blk_read_time", "blk_write_time", "active_time")
WAL_COUNTERS = ("wal_records", "wal_bytes", "wal_sync", "wal_sync_time")


def _connect(pg: Postgres) -> psycopg.Connection[TupleRow]:
    # To the "postgres" database: a monitoring query in the run's database would count there.
    return psycopg.connect(host=LOOPBACK, port=pg.port, user=PG_USER, password=PG_PASSWORD,
                           dbname="postgres", autocommit=True, connect_timeout=10)


def db_counters(pg: Postgres, database: str) -> dict[str, float]:
    """pg_stat_database's counters of `database` and the server's pg_stat_wal."""
    with _connect(pg) as conn:
        row = conn.execute(f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database "
                           "WHERE datname = %s", (database,)).fetchone()
        wal = conn.execute(f"SELECT {', '.join(WAL_COUNTERS)} FROM pg_stat_wal").fetchone()
    if row is None or wal is None:
        raise RuntimeError(f"no statistics for database {database}")
    # wal_bytes is numeric (a Decimal), the times are double precision, the rest bigint.
    values = [float(v) if isinstance(v, int | float | Decimal) else 0.0 for v in (*row, *wal)]
    return dict(zip(DB_COUNTERS + WAL_COUNTERS, values, strict=True))


def wait_backends_gone(pg: Postgres, database: str) -> None:
    """Until no session is open on `database`: a backend reports its statistics when it ends,
    which is a moment after its client hung up."""
    deadline = time.monotonic() + BACKENDS_GONE_TIMEOUT
    with _connect(pg) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                               (database,)).fetchone()
            if row is not None and row[0] == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sessions on {database} still open after "
                                   f"{BACKENDS_GONE_TIMEOUT:.0f}s")
            time.sleep(0.1)


def quarantine_rows(pg: Postgres, database: str) -> tuple[int, int]:
    """(quarantine rows, chunk rows) in the run's database."""
    with psycopg.connect(host=LOOPBACK, port=pg.port, user=PG_USER, password=PG_PASSWORD,
                         dbname=database, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute("SELECT (SELECT count(*) FROM quarantine), "
                            "(SELECT count(*) FROM quarantine_chunks)").fetchone()
    assert rows is not None
    return int(rows[0]), int(rows[1])


# ----------------------------------------------------------------------------- instances


@dataclass
class Instance:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def errors(self) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]

    def stop(self) -> None:
        """SIGTERM to its process group (it and its workers), then SIGKILL after 30 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def instance_config(d: Path, name: str, port: int, sink: SmtpSink, database_url: str,
                    workers: int) -> dict[str, dict[str, object]]:
    return {
        "server": {"listen": [f"{LOOPBACK}:{port}"], "hostname": f"filter-{name}.bench",
                   "workers": workers,
                   # smtp-source takes a retiring worker's 421 as fatal (Postfix retries);
                   # recycling is for long runs, not for a measurement
                   "worker_max_messages": 0},
        "downstream": {"address": f"{LOOPBACK}:{sink.port}", "max_idle_connections": 32},
        "clamav": {"enabled": False},
        "spamassassin": {"enabled": False},
        "database": {"url": database_url},
        # store = "sql": the bytes in the database; the directory holds only a lock file.
        "quarantine": {"store": "sql", "directory": f"{d}/quarantine"},
        "sieve": {"method": "none"},
    }


@dataclass
class Planned:
    """An instance's config, written; not started yet."""

    name: str
    port: int
    toml: Path
    log: Path


def write_configs(base: Path, run: int, count: int, sink: SmtpSink, database_url: str,
                  workers: int) -> list[Planned]:
    planned: list[Planned] = []
    for name in INSTANCE_NAMES[:count]:
        d = base / f"run{run}-{name}"
        d.mkdir()
        port = free_port()
        config = instance_config(d, name, port, sink, database_url, workers)
        from_mapping(config)  # fails here, not in the child, if the table above is wrong
        toml = d / "lmtpfilter.toml"
        toml.write_text(render_toml(config))
        toml.chmod(0o600)  # it holds the database password
        planned.append(Planned(name, port, toml, d / "lmtpfilter.log"))
    return planned


def migrate(config: Planned) -> None:
    subprocess.run([sys.executable, "-m", "lmtpfilter", "db", "upgrade", "-c",
                    str(config.toml)], check=True, capture_output=True, timeout=300)


def start_instances(planned: list[Planned]) -> list[Instance]:
    started: list[Instance] = []
    try:
        for p in planned:
            with p.log.open("ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "lmtpfilter", "serve",
                                         "-c", str(p.toml), "--log-level", "WARNING"],
                                        stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            started.append(Instance(p.name, p.port, proc, p.log))
            wait_up(p.port, proc, p.log)
    except BaseException:
        for instance in started:
            instance.stop()
        raise
    return started


# ----------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    instances: int
    run: int
    messages: int
    seconds: float
    msg_per_s: float
    filter_cpu_ms: float
    postgres_cpu_ms: float
    sink_cpu_ms: float
    client_cpu_ms: float
    machine_busy_percent: float
    postgres_share_of_busy_percent: float
    db_messages: int
    """Messages the run's instances handled in all (warm-up included): the divisor of the
    pg_stat_* figures, which cover the instances' whole life."""
    db_active_ms: float
    commits: float
    blk_io_ms: float
    wal_kb: float
    wal_syncs: float
    wal_sync_ms: float
    quarantine_rows: int
    quarantine_chunks: int
    banned_sent: int
    messages_per_instance: list[int]
    """Measured messages each instance took from the shared queue."""
    filter_log_errors: list[str] = field(default_factory=list)


def one_run(base: Path, pg: Postgres, sink: SmtpSink, messages: Messages, run: int,
            instances: int, args: argparse.Namespace) -> RunResult:
    database = f"run{run}"
    url = pg.create_database(database)
    planned = write_configs(base, run, instances, sink, url, args.workers)
    migrate(planned[0])  # one schema, shared by the instances
    wait_backends_gone(pg, database)  # the migration's backend has reported its statistics
    before_db = db_counters(pg, database)
    started = start_instances(planned)
    ports = [i.port for i in started]
    try:
        send(ports, args.sessions, messages, 0, args.warmup)
        roots = [i.proc.pid for i in started]
        before = CpuSnapshot.take(roots, pg, sink)
        seconds, tally = send(ports, args.sessions, messages, args.warmup, args.messages)
        after = CpuSnapshot.take(roots, pg, sink)
    finally:
        for instance in started:
            instance.stop()
    wait_backends_gone(pg, database)
    after_db = db_counters(pg, database)
    handled = args.warmup + args.messages
    banned_sent = messages.banned_among(0, handled)
    rows, chunks = quarantine_rows(pg, database)
    expected_quarantined = messages.banned_among(args.warmup, args.messages) * len(RECIPIENTS)
    if tally["quarantined"] != expected_quarantined or rows != banned_sent:
        raise RuntimeError(f"run {run}: {tally['quarantined']} recipients answered "
                           f"'quarantined' "
                           f"(expected {expected_quarantined}); {rows} quarantine rows for "
                           f"{banned_sent} banned messages sent")
    n = args.messages
    delta = {k: after_db[k] - before_db[k] for k in after_db}
    busy = after.machine_busy - before.machine_busy
    postgres_cpu = after.postgres - before.postgres
    errors = [line for i in started for line in i.errors()]
    pg.drop_database(database)  # the next run starts from empty tables, as this one did
    return RunResult(
        instances=instances, run=run, messages=n, seconds=seconds, msg_per_s=n / seconds,
        filter_cpu_ms=1000 * (after.filters - before.filters) / n,
        postgres_cpu_ms=1000 * postgres_cpu / n,
        sink_cpu_ms=1000 * (after.sink - before.sink) / n,
        client_cpu_ms=1000 * (after.client - before.client) / n,
        machine_busy_percent=100 * busy / (after.machine_total - before.machine_total),
        postgres_share_of_busy_percent=100 * postgres_cpu / busy if busy else 0.0,
        db_messages=handled,
        db_active_ms=delta["active_time"] / handled,
        commits=delta["xact_commit"] / handled,
        blk_io_ms=(delta["blk_read_time"] + delta["blk_write_time"]) / handled,
        wal_kb=delta["wal_bytes"] / 1024 / handled,
        wal_syncs=delta["wal_sync"] / handled,
        wal_sync_ms=delta["wal_sync_time"] / handled,
        quarantine_rows=rows, quarantine_chunks=chunks, banned_sent=banned_sent,
        messages_per_instance=[tally[f"port {port}"] for port in ports],
        filter_log_errors=errors[:5],
    )


# ----------------------------------------------------------------------------- the server


def configure_postgres(pg: Postgres, durable: bool) -> dict[str, str]:
    """I/O timing on; fsync, synchronous_commit and full_page_writes back on when durable
    (the harness turns them off for speed). ALTER SYSTEM runs outside a transaction, so one
    statement per psql call; all of these take effect on reload."""
    settings = {"track_io_timing": "on", "track_wal_io_timing": "on"}
    if durable:
        settings |= {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    for name, value in settings.items():
        pg.psql("postgres", f"ALTER SYSTEM SET {name} = '{value}'")
    pg.psql("postgres", "SELECT pg_reload_conf()")
    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes",
             "track_io_timing", "track_wal_io_timing", "shared_buffers", "wal_level")
    deadline = time.monotonic() + 10
    while True:  # the reload is asynchronous: wait until a new session sees the settings
        shown: dict[str, str] = {}
        with _connect(pg) as conn:
            for name in names:
                row = conn.execute(f"SHOW {name}").fetchone()
                shown[name] = str(row[0]) if row else "?"
        if all(shown.get(k, v) == v for k, v in settings.items()):
            return shown
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not take {settings}: {shown}")
        time.sleep(0.1)


def filesystem_of(path: Path) -> str:
    done = subprocess.run(["df", "--output=fstype,source", str(path)], capture_output=True,
                          text=True, check=False)
    return " ".join(done.stdout.split()[2:]) or "?"


# ----------------------------------------------------------------------------- report


SUMMED = ("msg_per_s", "filter_cpu_ms", "postgres_cpu_ms", "sink_cpu_ms", "client_cpu_ms",
          "machine_busy_percent", "postgres_share_of_busy_percent", "db_active_ms", "commits",
          "blk_io_ms", "wal_kb", "wal_syncs", "wal_sync_ms")


def summarize(runs: list[RunResult]) -> dict[int, dict[str, float]]:
    """Per instance count, the median of each figure over its runs."""
    out: dict[int, dict[str, float]] = {}
    for count in sorted({r.instances for r in runs}):
        mine = [r for r in runs if r.instances == count]
        out[count] = {key: statistics.median(getattr(r, key) for r in mine) for key in SUMMED}
        out[count]["runs"] = len(mine)
    return out


def markdown(args: argparse.Namespace, heading: str, summary: dict[int, dict[str, float]],
             runs: list[RunResult]) -> str:
    lines = [
        heading + f" {args.messages} messages a run (after {args.warmup} of warm-up), "
        f"{args.sessions} sessions, 10 KB, 2 recipients, {100 * args.banned_share:g}% banned "
        f"(quarantined in the database), no scanners, {args.workers} worker(s) per instance. "
        f"Medians of {args.repeat} run(s) each, interleaved."
        + (" --quick: a check that the script works, not a measurement." if args.quick
           else ""),
        "",
        "| instances | msg/s | msg/s of each run | filter CPU ms/msg | postgres CPU ms/msg "
        "| sink + client CPU ms/msg | machine busy | postgres share of busy CPU "
        "| DB active ms/msg | commits/msg | block I/O ms/msg | WAL KB/msg "
        "| WAL fsyncs/msg | WAL fsync ms/msg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for count, s in summary.items():
        each = ", ".join(f"{r.msg_per_s:.0f}" for r in runs if r.instances == count)
        lines.append(
            f"| {count} | {s['msg_per_s']:.0f} | {each} | {s['filter_cpu_ms']:.2f} "
            f"| {s['postgres_cpu_ms']:.2f} | {s['sink_cpu_ms'] + s['client_cpu_ms']:.2f} "
            f"| {s['machine_busy_percent']:.0f}% | {s['postgres_share_of_busy_percent']:.0f}% "
            f"| {s['db_active_ms']:.2f} | {s['commits']:.2f} | {s['blk_io_ms']:.3f} "
            f"| {s['wal_kb']:.1f} | {s['wal_syncs']:.2f} | {s['wal_sync_ms']:.3f} |")
    lines.append("")
    if 1 in summary and 2 in summary:
        ratio = summary[2]["msg_per_s"] / summary[1]["msg_per_s"]
        lines += [f"Two instances pass {ratio:.2f} x the messages of one.", ""]
    for count, s in summary.items():
        if s["postgres_cpu_ms"] > 0:
            lines.append(
                f"- {count} instance(s): PostgreSQL spends {s['postgres_cpu_ms']:.2f} ms of CPU "
                f"per message, so one CPU of PostgreSQL is used up at "
                f"{1000 / s['postgres_cpu_ms']:.0f} msg/s; here it took "
                f"{s['postgres_share_of_busy_percent']:.0f}% of the busy CPU "
                f"({s['machine_busy_percent']:.0f}% of the machine busy). All processes "
                f"together: {per_message_cpu(s):.2f} ms of CPU per message, so "
                f"{1000 * CPUS / per_message_cpu(s):.0f} msg/s would fill the {CPUS} CPUs. "
                # Little's law: time per message x messages per second = how many at once.
                f"Statements were running {s['db_active_ms'] * s['msg_per_s'] / 1000:.2f} "
                f"at a time on average, and the WAL was being fsynced "
                f"{s['wal_sync_ms'] * s['msg_per_s'] / 10:.0f}% of the time (a commit waits "
                f"for its flush; near 100% the flushes, not the CPU, are the limit).")
    return "\n".join(lines) + "\n"


CPUS = os.cpu_count() or 1


def per_message_cpu(s: dict[str, float]) -> float:
    return s["filter_cpu_ms"] + s["postgres_cpu_ms"] + s["sink_cpu_ms"] + s["client_cpu_ms"]



# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a short run to check the script works: 1 run each, 300 messages")
    ap.add_argument("--instances", default="1,2", help="instance counts to compare")
    ap.add_argument("--repeat", type=int, default=3, help="runs per instance count")
    ap.add_argument("--messages", type=int, default=10000, help="measured messages per run")
    ap.add_argument("--warmup", type=int, default=300, help="messages before measuring")
    ap.add_argument("--sessions", type=int, default=16, help="concurrent LMTP sessions")
    ap.add_argument("--workers", type=int, default=1, help="[server] workers per instance")
    ap.add_argument("--banned-share", type=float, default=0.1,
                    help="share of messages with a banned attachment (quarantined)")
    ap.add_argument("--pg-unsafe", action="store_true",
                    help="keep the harness's fsync/synchronous_commit/full_page_writes off")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.messages, args.warmup = 1, 300, 50
    if not 0 < args.banned_share < 1:
        ap.error("--banned-share must be between 0 and 1")
    counts = [int(x) for x in args.instances.split(",")]
    if not counts or min(counts) < 1 or max(counts) > len(INSTANCE_NAMES):
        ap.error(f"--instances: from 1 to {len(INSTANCE_NAMES)}")
    args.counts = counts
    return args


def main() -> int:
    args = parse_args()
    messages = Messages(args.banned_share)
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    base = short_tmpdir("lmtpf-cl-")
    stops: list[object] = []
    runs: list[RunResult] = []
    try:
        pg = start_postgres(base)
        stops.append(pg)
        settings = configure_postgres(pg, durable=not args.pg_unsafe)
        sink = start_smtp_sink(base, lmtp=True)
        stops.append(sink)
        order = [count for _ in range(args.repeat) for count in args.counts]
        for run, count in enumerate(order, 1):
            r = one_run(base, pg, sink, messages, run, count, args)
            runs.append(r)
            print(f"run {run}/{len(order)}: {count} instance(s): {r.msg_per_s:.0f} msg/s, "
                  f"filter {r.filter_cpu_ms:.2f} ms CPU/msg, postgres {r.postgres_cpu_ms:.2f} "
                  f"ms CPU/msg, DB active {r.db_active_ms:.2f} ms/msg, "
                  f"{r.quarantine_rows} quarantined, messages per instance "
                  f"{r.messages_per_instance}", flush=True)
            for line in r.filter_log_errors:
                print(f"  filter log: {line}", flush=True)
    finally:
        for daemon in reversed(stops):
            with contextlib.suppress(Exception):
                daemon.stop()  # type: ignore[attr-defined]
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    summary = summarize(runs)
    filesystem = filesystem_of(Path("/tmp"))
    heading = (f"Run of {started_at} on {machine()}; PostgreSQL {settings['server_version']} "
               f"(fsync {settings['fsync']}, synchronous_commit "
               f"{settings['synchronous_commit']}, data on {filesystem}).")
    result: dict[str, object] = {
        "started": started_at, "machine": machine(), "postgres": settings,
        "postgres_filesystem": filesystem, "messages": args.messages,
        "warmup": args.warmup, "sessions": args.sessions, "workers": args.workers,
        "banned_share": args.banned_share, "repeat": args.repeat, "quick": args.quick,
        "summary": {str(k): v for k, v in summary.items()},
        "runs": [asdict(r) for r in runs],
    }
    text = markdown(args, heading, summary, runs)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
