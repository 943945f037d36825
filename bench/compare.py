#!/usr/bin/env python3
"""lmtpfilter beside amavisd-new and FuGlu: the same load, the same scanners, one table.

Started by bench/compare.sh, which installs amavisd-new (Debian) and FuGlu (PyPI, in a venv)
first. Everything runs on loopback in a temporary directory:

    smtp-source (2 recipients/message) --> FILTER --> smtp-sink
                                             |--> clamd (test signature DB, unix socket)
                                             '--> spamd (Debian's rules, local tests only)

FILTER is, in turn:
  lmtpfilter   LMTP in, LMTP out; [server].workers = CPUs; every verdict written to SQLite;
               on asyncio's event loop ("lmtpfilter") and on uvloop's ("lmtpfilter-uvloop")
  amavisd-new  LMTP in, LMTP out; $max_servers = CPUs, its own config file (written here);
               SpamAssassin runs inside amavisd (that is how amavisd uses it), with the same
               rules and site config as spamd
  FuGlu        SMTP in, SMTP out (it has no LMTP listener); backend "process"
and, as the limit, the scanners driven directly at the same concurrency (clamd INSTREAM and
spamd REPORT per message, in parallel, as lmtpfilter does).

Modes: none (no checks), clamav (ClamAV only), full (ClamAV + SpamAssassin).
Loads: 1 and 16 sessions, 10 KB and 100 KB messages (Postfix's smtp-source).

Per cell:
  msg/s       smtp-source's messages over its wall time, after a warm-up
  p50/p99     latency per message, from MAIL FROM to the last reply (from connect, for FuGlu's
              one message per connection), measured by a second, shorter pass of a small
              client with the same sessions (smtp-source prints no per-message times). A
              session waiting for amavisd's banner (all $max_servers children busy) counts
              only from its first MAIL FROM.
  CPU filter  CPU seconds of the filter's own processes per message (children included)
  CPU total   the same plus clamd and spamd, per message
  RSS         the largest peak RSS of one filter process, and the peak sum of all of them

    usage: python3 bench/compare.py [--products lmtpfilter,lmtpfilter-uvloop,amavisd,fuglu,direct]
                                    [--modes none,clamav,full] [--sessions 1,16]
                                    [--sizes 10,100] [--seconds 8] [--repeat 1]
                                    [--markdown FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import drive_scanners, render_toml, smtp_source_message, wait_banner  # noqa: E402

from lmtpfilter.config import from_mapping  # noqa: E402
from tests.harness.daemons import SmtpSink, free_port, short_tmpdir, start_smtp_sink  # noqa: E402
from tests.harness.scanners import Clamd, Spamd, start_clamd, start_spamd  # noqa: E402

CPUS = os.cpu_count() or 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MODES = ("none", "clamav", "full")
MODE_NAMES = {"none": "no checks", "clamav": "ClamAV", "full": "ClamAV + SpamAssassin"}
FUGLU_VENV = Path(os.environ.get("FUGLU_VENV", "/var/tmp/lmtpfilter-bench/fuglu-venv"))
SENDER = "sender@example.net"
RECIPIENTS = ("1rcpt@example.org", "2rcpt@example.org")


# ----------------------------------------------------------------------------- processes


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(root: int) -> list[int]:
    """root and all its descendants, now."""
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def cpu_seconds(roots: list[int]) -> float:
    """CPU of the process trees, reaped children included (they land in cutime/cstime)."""
    total = 0
    for root in roots:
        for pid in tree(root):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


class RssSampler:
    """Samples the filter's process tree every 50 ms: peak per process and peak sum."""

    def __init__(self, roots: list[int]) -> None:
        self.roots, self.peak_one, self.peak_sum = roots, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pids: list[int] = []
        for sample in itertools.count():
            if self._stop.wait(0.05):
                return
            if sample % 20 == 0:  # walking /proc for the tree costs more than the sample
                pids = [pid for root in self.roots for pid in tree(root)]
            now = 0.0
            for pid in pids:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_one = max(self.peak_one, int(line.split()[1]) / 1024)
                    elif line.startswith("VmRSS:"):
                        now += int(line.split()[1]) / 1024
            self.peak_sum = max(self.peak_sum, now)


# ----------------------------------------------------------------------------- load


def smtp_source(port: int, lmtp: bool, sessions: int, size: int, count: int,
                reuse: bool = True) -> float:
    """Messages/s for `count` messages sent by smtp-source, `sessions` at a time.

    reuse: several messages per connection (-d), as Postfix does with a content filter;
    FuGlu's SMTP listener takes one message per connection (then "421 Cannot accept
    further commands"), so it gets one connection per message.
    """
    args = ["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size),
            "-r", "2", "-f", SENDER, "-t", "rcpt@example.org", f"127.0.0.1:{port}"]
    if lmtp:
        args.insert(1, "-L")
    if reuse:
        args.insert(1, "-d")
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {done.stderr.decode(errors='replace')[-500:]}")
    return count / (time.monotonic() - started)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return line


async def _latency_session(port: int, lmtp: bool, content: bytes, jobs: Iterator[int],
                           out: list[float], reuse: bool) -> None:
    for _ in jobs:
        await _latency_connection(port, lmtp, content, jobs if reuse else iter([0]), out, reuse)


async def _latency_connection(port: int, lmtp: bool, content: bytes, jobs: Iterator[int],
                              out: list[float], reuse: bool) -> None:
    """One connection's messages; a message's time runs from MAIL FROM to its last reply,
    or from connect when the filter takes one message per connection."""
    connected = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        writer.write(b"LHLO bench\r\n" if lmtp else b"EHLO bench\r\n")
        await _reply(reader)
        for _ in jobs:
            started = time.monotonic() if reuse else connected
            for command in [f"MAIL FROM:<{SENDER}>"] + [f"RCPT TO:<{r}>" for r in RECIPIENTS]:
                writer.write(command.encode() + b"\r\n")
                if not (await _reply(reader)).startswith(b"250"):
                    raise RuntimeError(f"{command} refused")
            writer.write(b"DATA\r\n")
            if not (await _reply(reader)).startswith(b"354"):
                raise RuntimeError("DATA refused")
            writer.write(content)
            for _ in RECIPIENTS if lmtp else RECIPIENTS[:1]:
                reply = await _reply(reader)
                if not reply.startswith(b"250"):
                    raise RuntimeError(f"message refused: {reply!r}")
            out.append(time.monotonic() - started)
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()


def latencies(port: int, lmtp: bool, sessions: int, size: int, count: int,
              reuse: bool = True) -> list[float]:
    """Seconds from content to last reply, for `count` messages over `sessions` sessions."""
    content = smtp_source_message(size) + b".\r\n"
    jobs, out = iter(range(count)), list[float]()

    async def run() -> None:
        await asyncio.gather(*(_latency_session(port, lmtp, content, jobs, out, reuse)
                               for _ in range(sessions)))

    asyncio.run(run())
    return sorted(out)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# ----------------------------------------------------------------------------- the filters


@dataclass
class Env:
    base: Path
    clamd: Clamd
    spamd: Spamd
    lmtp_sink: int
    smtp_sink: int


@dataclass
class Running:
    port: int
    lmtp: bool
    reuse: bool
    roots: list[int]
    stop: Callable[[], None]
    errors: Callable[[], list[str]] = field(default=lambda: [])


def popen_logged(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # wait for the forked children too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def wait_up(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until a 220 banner on `port`; fails at once, with the log's tail, if proc died."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited ({proc.returncode}):\n"
                               + log.read_text(errors="replace")[-2000:])
        try:
            wait_banner(port, timeout=0.5)
            return
        except RuntimeError:
            continue
    raise RuntimeError(f"nothing answers on {port}: " + log.read_text(errors="replace")[-2000:])


def log_errors(log: Path, words: tuple[str, ...]) -> Callable[[], list[str]]:
    def errors() -> list[str]:
        text = log.read_text(errors="replace") if log.exists() else ""
        return [line for line in text.splitlines() if any(w in line for w in words)][:3]
    return errors


def launch_lmtpfilter(config: dict[str, dict[str, object]], d: Path,
                      port: int) -> tuple[subprocess.Popen[bytes], Path]:
    """Check `config`, write it to `d`, migrate its database, start `lmtpfilter serve` on it
    and wait for its banner on `port`: the process and its log."""
    from_mapping(config)  # fails here, not in the child, if the table is wrong
    toml = d / "lmtpfilter.toml"
    toml.write_text(render_toml(config))
    subprocess.run([sys.executable, "-m", "lmtpfilter", "db", "upgrade", "-c", str(toml)],
                   check=True, capture_output=True)
    log = d / "lmtpfilter.log"
    proc = popen_logged([sys.executable, "-m", "lmtpfilter", "serve", "-c", str(toml),
                         "--log-level", "WARNING"], log)
    wait_up(port, proc, log)
    return proc, log


def start_lmtpfilter(env: Env, mode: str, loop: str = "asyncio") -> Running:
    d = env.base / (f"lmtpfilter-{mode}" if loop == "asyncio" else f"lmtpfilter-{loop}-{mode}")
    d.mkdir()
    port = free_port()
    config: dict[str, dict[str, object]] = {
        "server": {"listen": [f"127.0.0.1:{port}"], "hostname": "bench.example",
                   "workers": CPUS,
                   # smtp-source takes a retiring worker's 421 as fatal (Postfix retries);
                   # recycling is for long runs, not for a measurement
                   "worker_max_messages": 0,
                   # named, not "auto": "lmtpfilter" is the asyncio baseline
                   "event_loop": loop},
        "downstream": {"address": f"127.0.0.1:{env.lmtp_sink}", "max_idle_connections": 32},
        "clamav": {"enabled": mode != "none",
                   "address": f"unix:{env.clamd.socket_path}"},
        "spamassassin": {"enabled": mode == "full", "max_size": "1M",
                         "address": f"127.0.0.1:{env.spamd.port}"},
        "policy": {"spam_destiny": "pass"},
        "database": {"url": f"sqlite:///{d}/verdicts.db"},
        "quarantine": {"directory": f"{d}/quarantine"},
    }
    proc, log = launch_lmtpfilter(config, d, port)
    return Running(port, True, True, [proc.pid], lambda: terminate(proc),
                   log_errors(log, ("ERROR", "Traceback")))


AMAVISD_AV = """\
@av_scanners = (['ClamAV-clamd', \\&ask_daemon, ["CONTSCAN {{}}\\n", "{socket}"],
                 qr/\\bOK$/m, qr/\\bFOUND$/m, qr/^.*?: (?!Infected Archive)(.*) FOUND$/m ]);
"""
AMAVISD_BYPASS = {
    "none": "@bypass_virus_checks_maps = (1); @bypass_spam_checks_maps = (1);\n"
            "@bypass_banned_checks_maps = (1); @bypass_header_checks_maps = (1);\n"
            "$bypass_decode_parts = 1;\n",
    "clamav": "@bypass_spam_checks_maps = (1);\n"
              "@bypass_banned_checks_maps = (1); @bypass_header_checks_maps = (1);\n",
    "full": "@bypass_banned_checks_maps = (1); @bypass_header_checks_maps = (1);\n",
}


def amavisd_config(d: Path, port: int, env: Env, mode: str) -> str:
    """A self-contained amavisd.conf: LMTP in and out, no syslog, no BerkeleyDB, no SQL.

    Banned-name and header checks are off in every mode (lmtpfilter has neither); the
    spam levels are Debian's defaults; SpamAssassin reads spamd's rules and site config.
    """
    site = env.spamd.dir / "site"
    return f"""\
use strict;
$MYHOME = '{d}';
$TEMPBASE = "$MYHOME/tmp"; $ENV{{TMPDIR}} = $TEMPBASE;
$db_home = "$MYHOME/db"; $helpers_home = "$MYHOME/var";
$lock_file = "$MYHOME/amavisd.lock"; $pid_file = "$MYHOME/amavisd.pid";
$QUARANTINEDIR = "$MYHOME/quarantine";
$daemon_user = 'amavis'; $daemon_group = 'amavis';
$mydomain = 'example.org'; $myhostname = 'bench.example';
$max_servers = {CPUS}; $max_requests = 1000; $child_timeout = 600;
$enable_db = 0; $enable_global_cache = 0; $enable_zmq = 0; $nanny_details_level = 0;
$DO_SYSLOG = 0; $LOGFILE = "$MYHOME/amavis.log"; $log_level = 0;
$inet_socket_bind = '127.0.0.1'; $inet_socket_port = {port}; @inet_acl = qw(127.0.0.1);
$protocol = 'LMTP';
$forward_method = 'lmtp:[127.0.0.1]:{env.lmtp_sink}'; $notify_method = $forward_method;
@local_domains_maps = (1);
$virus_admin = undef; $spam_admin = undef; $warnbadhsender = 0;
$enable_dkim_verification = 0; $enable_dkim_signing = 0;
$sa_tag_level_deflt = 2.0; $sa_tag2_level_deflt = 6.31; $sa_kill_level_deflt = 6.31;
$sa_local_tests_only = 1; $sa_mail_body_size_limit = 1024*1024;
$sa_configpath = '/usr/share/spamassassin'; $sa_siteconfigpath = '{site}';
$final_spam_destiny = D_PASS;
{AMAVISD_AV.format(socket=env.clamd.socket_path)}
@av_scanners_backup = ();
{AMAVISD_BYPASS[mode]}
1;
"""


def start_amavisd(env: Env, mode: str) -> Running:
    # amavisd refuses a config file in a directory it could write to: root owns d,
    # amavis owns d/home.
    d = env.base / f"amavisd-{mode}"
    d.mkdir()
    home = d / "home"
    for sub in ("", "tmp", "db", "var", "quarantine"):
        (home / sub).mkdir(exist_ok=True)
        shutil.chown(home / sub, user="amavis", group="amavis")
    port = free_port()
    conf = d / "amavisd.conf"
    conf.write_text(amavisd_config(home, port, env, mode))
    log = d / "amavisd.out"
    proc = popen_logged(["/usr/sbin/amavisd", "-c", str(conf), "foreground"], log, cwd=home)
    wait_up(port, proc, log)
    return Running(port, True, True, [proc.pid], lambda: terminate(proc),
                   log_errors(home / "amavis.log", ("(!)", "TROUBLE", "FAILED")))


FUGLU_PLUGINS = {"none": "", "clamav": "clamav", "full": "clamav,spamassassin"}


def fuglu_config(d: Path, port: int, env: Env, mode: str) -> str:
    return f"""\
[main]
identifier=bench
daemonize=0
user=nobody
group=nogroup
plugins={FUGLU_PLUGINS[mode]}
prependers=
appenders=
bindaddress=127.0.0.1
incomingport=smtp:{port}
outgoinghost=127.0.0.1
outgoingport={env.smtp_sink}
tempdir={d}/tmp
controlport={d}/control.sock
versioncheck=0
mrtgdir=
disablebounces=1

[performance]
backend=process

[ClamavPlugin]
host=127.0.0.1
port={env.clamd.socket_path}

[SAPlugin]
host=127.0.0.1
port={env.spamd.port}
maxsize=1048576
"""


FUGLU_LOGGING = """\
[loggers]
keys=root
[handlers]
keys=file
[formatters]
keys=plain
[logger_root]
level=ERROR
handlers=file
[handler_file]
class=FileHandler
level=ERROR
formatter=plain
args=('{log}', 'a')
[formatter_plain]
format=%(asctime)s %(name)s %(levelname)s %(message)s
"""


def start_fuglu(env: Env, mode: str) -> Running:
    d = env.base / f"fuglu-{mode}"
    (d / "tmp").mkdir(parents=True)
    for sub in ("", "tmp"):
        shutil.chown(d / sub, user="nobody", group="nogroup")
    port = free_port()
    conf, logconf, log = d / "fuglu.conf", d / "logging.conf", d / "fuglu.log"
    conf.write_text(fuglu_config(d, port, env, mode))
    logconf.write_text(FUGLU_LOGGING.format(log=log))
    log.touch()
    shutil.chown(log, user="nobody", group="nogroup")
    proc = popen_logged([str(FUGLU_VENV / "bin" / "python"), "-m", "fuglu", "-f", "-c", str(conf),
                   "--logconfig", str(logconf), "--pidfile", str(d / "fuglu.pid"),
                   "--baseloglevel", "ERROR"], d / "fuglu.out", cwd=d)
    wait_up(port, proc, d / "fuglu.out")
    return Running(port, False, False, [proc.pid], lambda: terminate(proc),
                   log_errors(log, ("ERROR", "Traceback")))


def start_lmtpfilter_on_uvloop(env: Env, mode: str) -> Running:
    return start_lmtpfilter(env, mode, loop="uvloop")


# The same lmtpfilter on each event loop ([server] event_loop), side by side: "lmtpfilter" on
# asyncio's own, "lmtpfilter-uvloop" on uvloop's (what "auto" takes where uvloop is installed,
# as scripts/install.sh installs it).
STARTERS = {"lmtpfilter": start_lmtpfilter, "lmtpfilter-uvloop": start_lmtpfilter_on_uvloop,
            "amavisd": start_amavisd, "fuglu": start_fuglu}
LABELS = {"lmtpfilter": "lmtpfilter", "lmtpfilter-uvloop": "lmtpfilter on uvloop",
          "amavisd": "amavisd-new", "fuglu": "FuGlu", "direct": "scanners alone"}


# ----------------------------------------------------------------------------- measuring


@dataclass
class Cell:
    product: str
    mode: str
    sessions: int
    size_kb: int
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_filter_ms: float
    cpu_total_ms: float
    rss_one: float
    rss_sum: float


def settle(roots: list[int], timeout: float = 60.0) -> None:
    """Until the processes are idle (workers done starting: their imports would otherwise
    count as CPU of the first measurement)."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(roots)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(roots)
        if now - before < 0.02:
            return
        before = now


def measure(running: Running, scanner_roots: list[int], product: str, mode: str,
            sessions: int, size: int, seconds: float) -> Cell:
    port, lmtp, reuse = running.port, running.lmtp, running.reuse
    settle(running.roots + scanner_roots)
    warm = smtp_source(port, lmtp, sessions, size, max(20, 4 * sessions), reuse)
    count = int(min(5000, max(40, warm * seconds)))
    cpu0, scan0 = cpu_seconds(running.roots), cpu_seconds(scanner_roots)
    with RssSampler(running.roots) as rss:
        rate = smtp_source(port, lmtp, sessions, size, count, reuse)
        cpu1, scan1 = cpu_seconds(running.roots), cpu_seconds(scanner_roots)
        lat = latencies(port, lmtp, sessions, size,
                        int(min(2000, max(60, rate * seconds / 2))), reuse)
    filter_cpu = (cpu1 - cpu0) / count
    return Cell(product, mode, sessions, size // 1024, rate,
                1000 * percentile(lat, 0.50), 1000 * percentile(lat, 0.99),
                1000 * filter_cpu, 1000 * (filter_cpu + (scan1 - scan0) / count),
                rss.peak_one, rss.peak_sum)


def measure_direct(env: Env, mode: str, sessions: int, size: int, seconds: float,
                   scanner_roots: list[int]) -> Cell:
    conf = from_mapping({
        "clamav": {"address": f"unix:{env.clamd.socket_path}"},
        "spamassassin": {"address": f"127.0.0.1:{env.spamd.port}",
                         "max_size": "1M"},
    })
    spam = mode == "full"
    warm = asyncio.run(drive_scanners(conf, True, spam, sessions, size, max(20, 4 * sessions)))
    count = int(min(5000, max(40, warm * seconds)))
    scan0 = cpu_seconds(scanner_roots)
    rate = asyncio.run(drive_scanners(conf, True, spam, sessions, size, count))
    scan1 = cpu_seconds(scanner_roots)
    nan = float("nan")
    return Cell("direct", mode, sessions, size // 1024, rate, nan, nan, nan,
                1000 * (scan1 - scan0) / count, nan, nan)


# ----------------------------------------------------------------------------- reporting


def fmt(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN -> "-"


HEADER = ("filter", "mode", "sessions", "size", "msg/s", "p50 ms", "p99 ms",
          "CPU ms/msg filter", "CPU ms/msg total", "peak RSS/process MB", "peak RSS sum MB")


def row(c: Cell) -> tuple[str, ...]:
    return (LABELS[c.product], MODE_NAMES[c.mode], str(c.sessions), f"{c.size_kb} KB",
            fmt(c.rate, 1 if c.rate < 20 else 0), fmt(c.p50_ms, 1), fmt(c.p99_ms, 1),
            fmt(c.cpu_filter_ms, 2), fmt(c.cpu_total_ms, 2), fmt(c.rss_one), fmt(c.rss_sum))


def ratio_rows(cells: list[Cell]) -> list[tuple[str, ...]]:
    by_key = {(c.product, c.mode, c.sessions, c.size_kb): c for c in cells}
    out = []
    for c in cells:
        if c.product not in OURS:
            continue
        others = []
        for other in ("amavisd", "fuglu", "direct"):
            o = by_key.get((other, c.mode, c.sessions, c.size_kb))
            others.append(f"{c.rate / o.rate:.2f}" if o and o.rate else "-")
        out.append((LABELS[c.product], MODE_NAMES[c.mode], str(c.sessions), f"{c.size_kb} KB",
                    *others))
    return out


OURS = ("lmtpfilter", "lmtpfilter-uvloop")
RATIO_HEADER = ("filter", "mode", "sessions", "size", "vs amavisd-new", "vs FuGlu",
                "vs scanners alone")

# Issue 17's targets: lmtpfilter's msg/s over the better of amavisd-new and FuGlu measured in
# the same run, by mode; with SpamAssassin also over amavisd-new alone and over spamd driven
# alone; the filter's own CPU per 10 KB message with no checks; each process's peak RSS.
RATE_TARGETS = {"none": 5.0, "clamav": 3.0}
SPAM_TARGETS = (("amavisd", 1.0, "amavisd-new"), ("direct", 0.95, "scanners alone"))
CPU_TARGET_MS = 1.4
RSS_TARGET_MB = 80
UVLOOP_GAIN = 1.1  # issue 17 item 3: an optional extra only for 10% more msg/s
TARGET_HEADER = ("target", "filter", "mode", "sessions", "size", "measured", "met")


def target_rows(cells: list[Cell]) -> list[tuple[str, ...]]:
    """One row per target and lmtpfilter cell it applies to; a target whose other product was
    not measured in this run is left out, not guessed."""
    by_key = {(c.product, c.mode, c.sessions, c.size_kb): c for c in cells}
    out: list[tuple[str, ...]] = []

    def add(target: str, c: Cell, measured: str, met: bool) -> None:
        out.append((target, LABELS[c.product], MODE_NAMES[c.mode], str(c.sessions),
                    f"{c.size_kb} KB", measured, "yes" if met else "no"))
    for c in cells:
        if c.product not in OURS:
            continue
        rivals = [o.rate for name in ("amavisd", "fuglu")
                  if (o := by_key.get((name, c.mode, c.sessions, c.size_kb))) and o.rate]
        if c.mode in RATE_TARGETS and rivals:
            ratio = c.rate / max(rivals)
            add(f">= {RATE_TARGETS[c.mode]:g} x the better of amavisd-new and FuGlu", c,
                f"{ratio:.2f} x", ratio >= RATE_TARGETS[c.mode])
        if c.mode == "full":
            for name, want, label in SPAM_TARGETS:
                o = by_key.get((name, c.mode, c.sessions, c.size_kb))
                if o and o.rate:
                    add(f">= {want:g} x {label}", c, f"{c.rate / o.rate:.2f} x",
                        c.rate / o.rate >= want)
        if c.mode == "none" and c.size_kb == 10 and c.cpu_filter_ms == c.cpu_filter_ms:
            add(f"filter CPU <= {CPU_TARGET_MS:g} ms/msg", c, f"{c.cpu_filter_ms:.2f} ms",
                c.cpu_filter_ms <= CPU_TARGET_MS)
        on_uvloop = by_key.get(("lmtpfilter-uvloop", c.mode, c.sessions, c.size_kb))
        if c.product == "lmtpfilter" and on_uvloop and c.rate:
            gain = on_uvloop.rate / c.rate
            add(f"uvloop adopted only at >= {UVLOOP_GAIN:g} x", c, f"{gain:.2f} x",
                gain >= UVLOOP_GAIN)
        if c.rss_one == c.rss_one:
            add(f"peak RSS per process < {RSS_TARGET_MB} MB", c, f"{c.rss_one:.0f} MB",
                c.rss_one < RSS_TARGET_MB)
    return out


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool,
                out: TextIO = sys.stdout) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |", file=out)
        print("|" + "---|" * len(header), file=out)
        for r in rows:
            print("| " + " | ".join(r) + " |", file=out)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    for r in [header, *rows]:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)),
              file=out)


@contextmanager
def shared_daemons(base: Path) -> Iterator[Env]:
    started: list[SmtpSink | Clamd | Spamd] = []
    try:
        lmtp_sink = start_smtp_sink(base / "lmtp", lmtp=True)
        started.append(lmtp_sink)
        smtp_sink = start_smtp_sink(base / "smtp", lmtp=False)
        started.append(smtp_sink)
        clamd = start_clamd(base)
        started.append(clamd)
        spamd = start_spamd(base, children=CPUS)
        started.append(spamd)
        yield Env(base, clamd, spamd, lmtp_sink.port, smtp_sink.port)
    finally:
        for daemon in reversed(started):
            daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products",
                        default="lmtpfilter,lmtpfilter-uvloop,amavisd,fuglu,direct")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--sessions", default="1,16")
    parser.add_argument("--sizes", default="10,100", help="KB")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured pass")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each cell N times, the products in turns (A B C, A B C), and "
                             "keep the median by msg/s (the machine's own noise is +-25%% "
                             "from run to run)")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    args = parser.parse_args()
    products = args.products.split(",")
    modes = [m for m in MODES if m in args.modes.split(",")]
    loads = [(int(s), int(k) * 1024) for s in args.sessions.split(",")
             for k in args.sizes.split(",")]
    base = short_tmpdir("lmtpf-cmp-")
    cells: list[Cell] = []
    failed = False
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {machine()}", flush=True)
    try:
        with shared_daemons(base) as env:
            scanner_roots = [env.clamd.pid, env.spamd.pid]
            for mode in modes:
                cells += measure_mode(env, mode, products, loads, args.repeat, args.seconds,
                                      scanner_roots)
    except Exception:  # the tables of the cells measured so far still come out
        traceback.print_exc()
        failed = True
    finally:
        if os.environ.get("KEEP_BENCH_DIR"):
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print_table(HEADER, [row(c) for c in cells], markdown=False)
    print()
    print("lmtpfilter's msg/s divided by the others':")
    print_table(RATIO_HEADER, ratio_rows(cells), markdown=False)
    print()
    print("Targets (issue 17):")
    print_table(TARGET_HEADER, target_rows(cells), markdown=False)
    if args.markdown:
        with args.markdown.open("w") as out:
            print(f"Measured {time.strftime('%Y-%m-%d')} on {machine()}"
                  + (f", median of {args.repeat} runs per cell" if args.repeat > 1 else "")
                  + ".\n", file=out)
            print_table(HEADER, [row(c) for c in cells], markdown=True, out=out)
            print("\nlmtpfilter's msg/s divided by the others':\n", file=out)
            print_table(RATIO_HEADER, ratio_rows(cells), markdown=True, out=out)
            print("\nTargets (issue 17):\n", file=out)
            print_table(TARGET_HEADER, target_rows(cells), markdown=True, out=out)
    return 1 if failed else 0


def measure_mode(env: Env, mode: str, products: list[str], loads: list[tuple[int, int]],
                 repeat: int, seconds: float, scanner_roots: list[int]) -> list[Cell]:
    """Every product of one mode, running side by side (idle but for the one measured), each
    load measured in turns, A B C, A B C, ...: drift on a shared machine (another tenant, the
    CPU's clock, clamd's cache warming) then hits every product alike, where measuring one
    product's repetitions back to back would hand it all to whichever came first."""
    running: dict[str, Running] = {}
    cells: list[Cell] = []
    try:
        for product in products:
            if product in STARTERS:
                running[product] = STARTERS[product](env, mode)
        for sessions, size in loads:
            tries: dict[str, list[Cell]] = {}
            for _ in range(repeat):
                for product in products:
                    if product == "direct":
                        if mode == "none":
                            continue
                        cell = measure_direct(env, mode, sessions, size, seconds,
                                              scanner_roots)
                    else:
                        cell = measure(running[product], scanner_roots, product, mode,
                                       sessions, size, seconds)
                    tries.setdefault(product, []).append(cell)
            for product in products:
                if product in tries:
                    cells.append(median(tries[product]))
                    print_progress(cells[-1])
    finally:
        for product, started in running.items():
            started.stop()
            for line in started.errors():
                print(f"  {product} ({mode}) logged: {line}", flush=True)
    return cells


def median(cells: list[Cell]) -> Cell:
    """The measurement with the median msg/s (the upper one of an even number)."""
    return sorted(cells, key=lambda c: c.rate)[len(cells) // 2]


def print_progress(c: Cell) -> None:
    print("  " + " | ".join(row(c)), flush=True)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    debian = Path("/etc/debian_version").read_text().strip() if Path(
        "/etc/debian_version").exists() else "?"
    return (f"{CPUS} x {model}, {mem} GB RAM, Debian {debian}, "
            f"Python {sys.version.split()[0]}")


if __name__ == "__main__":
    raise SystemExit(main())
