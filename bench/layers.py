#!/usr/bin/env python3
"""Where one lmtpfilter worker's CPU goes per message, by layer, from a sampling profile.

    smtp-source -L (16 sessions, 10 KB, 2 recipients) --> lmtpfilter (workers = 1) --> smtp-sink -L
                                                               |--> clamd (--mode clamav)
                                                               '--> verdicts in SQLite

After a warm-up, py-spy samples the worker (--rate 250, --nonblocking: the worker is never
stopped) for --seconds while smtp-source keeps it busy. Over the same window the script reads
the worker's CPU seconds (/proc/PID/stat utime+stime) and the messages it recorded (rows of the
verdict table), hence CPU ms per message. py-spy leaves out idle samples (a thread waiting in
epoll, a lock or a socket), so the samples are the CPU's, not the wall clock's.

Each sample is given to ONE layer: its stack is walked from the innermost frame outwards and
the first frame that a rule of LAYER_RULES maps decides. A frame no rule maps (the standard
library's datetime, email.utils, secrets, enum...) is walked past, so its cost goes to the
code that called it; a rule with the layer CALLER does the same for a module that a broader
rule would otherwise take (asyncio's streams belong to the downstream client using them).
Libraries that are layers of their own (SQLAlchemy and sqlite3, logging, prometheus_client,
asyncio and selectors) take their samples whoever called them.

The event loop's samples are mostly socket calls made for a layer (a reply written by the
server adapter, a command sent downstream, a scan streamed to clamd): a second table gives them
by the layer they were for (the next layer out of the loop's frames), and the main table's last
column adds them to that layer.

Output: the table (layer | share of samples % | CPU us per message | with the loop's work for
it), the CPU ms per message, msg/s, the number of samples, the date and the machine, the loop's
table, then the 15 innermost functions with the most samples of their own (what to optimise).
Two checks of the profile's quality come with it: the samples over the measured CPU (near 1 on
an idle machine; above it, py-spy counted threads that were runnable but not running, waiting
for a core or the GIL, and the shares lean towards where they wait), and the share of stacks
read while they changed (--nonblocking; the inner frames still decide).

    usage: python3 bench/layers.py [--mode none|clamav] [--seconds 20] [--quick] [--keep]
                                   [--event-loop asyncio|uvloop] [--markdown FILE] [--json FILE]

Needs py-spy (`pip install -e ".[bench]"`), Postfix's smtp-source and smtp-sink, and for
--mode clamav the packages of scripts/run-tests.sh (clamd). Run it on an idle machine: any other
load on the two cores slows the worker and the sampler alike and distorts the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from compare import (  # noqa: E402
    CLK_TCK,
    SENDER,
    launch_lmtpfilter,
    log_errors,
    machine,
    settle,
    smtp_source,
    terminate,
    tree,
)

from tests.harness.daemons import free_port, short_tmpdir, start_smtp_sink  # noqa: E402
from tests.harness.scanners import start_clamd  # noqa: E402

SESSIONS = 16
SIZE = 10 * 1024
RATE = 250  # py-spy samples per second
CALLER = "(caller)"  # a rule's layer: walk on, the frame belongs to whoever called it
WAIT = "waiting (not CPU)"  # a thread blocked in a queue or lock that py-spy took for busy
OTHER = "other"

# ----------------------------------------------------------------------------- the rules

# (layer, file pattern, function pattern or None), tried in order on each frame. The file is
# py-spy's short name ("lmtpfilter/server.py", "asyncio/events.py", "sqlalchemy/engine/base.py")
# and the pattern is searched from a "/" boundary; the function is py-spy's qualified name
# ("LMTPSession.data_received") and its pattern must match all of it (re.fullmatch), but
# for what a nested function or comprehension adds ("Message.copy_with.<locals>.<genexpr>"
# is Message.copy_with's).
# A frame is in the first rule whose patterns both match.
ACCEPT = "accept + greeting"
COMMANDS = "command parsing"
DATA = "DATA read"
HEADERS = "header edit"
SCANNERS = "scanners (client side)"
POLICY = "policy (filter stage)"
PIPELINE = "pipeline glue"
DOWNSTREAM = "downstream client"
DB = "DB record"
LOGGING = "logging"
METRICS = "metrics"
LOOP = "event loop + sockets"

LAYER_RULES: list[tuple[str, str, str | None]] = [
    # A pool thread whose innermost frame is its loop is in the queue's get (or waking from
    # it, waiting for the GIL): no CPU of ours. These samples are shown, not costed.
    (WAIT, r"concurrent/futures/thread\.py", r"_worker"),
    (WAIT, r"threading\.py", r"(Condition|Event|Semaphore|BoundedSemaphore)\.wait|Thread\.join"
                             r"|Thread\._wait_for_tstate_lock"),
    (WAIT, r"queue\.py", r"Queue\.get"),
    # accept + greeting: the connection made and lost, the session and its state machine built
    (ACCEPT, r"lmtpfilter/server\.py",
     r"LMTPSession\.(__init__|connection_made|connection_lost)|FilterServer\.(admit|release"
     r"|_factory|announce)|_peer_of"),
    (ACCEPT, r"lmtpfilter/lmtp_server\.py", r"ServerConnection\.__init__"),
    (ACCEPT, r"lmtpfilter/app\.py", r"extensions_for.*"),
    (ACCEPT, r"asyncio/selector_events\.py",
     r".*(_accept_connection2?|_make_socket_transport|Transport\.__init__"
     r"|_call_connection_lost|Transport\.close)"),
    # DATA read: the DATA framing in the state machine, the message parsed, the transaction
    (DATA, r"lmtpfilter/lmtp_server\.py",
     r"ServerConnection\.(_read_body|_check_header|_end_of_body|_header_too_big)"
     r"|has_long_line"),
    (DATA, r"lmtpfilter/server\.py", r"LMTPSession\._transaction|new_transaction_id"),
    (DATA, r"lmtpfilter/message\.py",
     r"Message\.(parse|header_block|body|body_wire_ready|fields|get|header_text|line_ending)"
     r"|_split_header_block|_fields|HeaderField\..*"),
    # command parsing: the rest of the server state machine, the syntax, the asyncio adapter
    (CALLER, r"lmtpfilter/reply\.py", None),  # replies: the server's and the downstream's
    (COMMANDS, r"lmtpfilter/(lmtp_server|lmtp_events|smtp_syntax)\.py", None),
    (COMMANDS, r"lmtpfilter/server\.py",
     r"LMTPSession\.(data_received|eof_received|_drain|_write|_.*_timer|idle)"
     r"|FilterServer\.refuse_recipient"),
    # header edit: our Received: field, the verdict fields, the copy with its header
    (HEADERS, r"lmtpfilter/headers\.py", None),
    (HEADERS, r"lmtpfilter/message\.py", r"Message\.copy_with|_tag_subject|fold"),
    (HEADERS, r"lmtpfilter/pipeline\.py",
     r"(Pipeline\.)?received_header|rfc5322_date|address_literal"),
    # the scanners' client side
    (SCANNERS, r"lmtpfilter/(clamav|spamd|scanresult)\.py", None),
    # policy: the filter stage, the decisions, the lists and the content checks
    (POLICY, r"lmtpfilter/(filtering|policy|userpolicy|senderlists|addresses|content"
             r"|mime_walk|archive_walk|banned|header_checks)\.py", None),
    # logging and metrics, called from the pipeline
    (LOGGING, r"lmtpfilter/pipeline\.py", r"summary_line|key_value_summary"),
    (METRICS, r"lmtpfilter/pipeline\.py", r"count"),
    # the downstream client: its state machine, its asyncio shell, the envelope and pieces
    (DOWNSTREAM, r"lmtpfilter/(downstream|lmtp_protocol)\.py", None),
    (DOWNSTREAM, r"lmtpfilter/pipeline\.py", r"Pipeline\._deliver_group|_downstream_params"
                                             r"|Envelope\..*|WireReady\..*"),
    (CALLER, r"asyncio/streams\.py", None),  # the streams are the downstream client's
    # handing work to a thread (the store's) is the cost of the layer that hands it
    (CALLER, r"asyncio/base_events\.py", r"BaseEventLoop\.run_in_executor"),
    (CALLER, r"concurrent/futures/.*", None),
    # the DB record: the recorder and the quarantine stage, the store, SQLAlchemy, sqlite3
    (DB, r"lmtpfilter/(verdicts|store|quarantine|quarantine_sql)\.py", None),
    (DB, r"(sqlalchemy|sqlite3|alembic|psycopg2?)/.*", None),
    # the rest of the pipeline: running the stages, grouping the recipients; its data
    # classes belong to whoever builds or changes them (Variant.adding: the filter stage)
    (CALLER, r"lmtpfilter/pipeline\.py", r"(Transaction|Recipient|Variant)\..*"),
    (PIPELINE, r"lmtpfilter/(pipeline|server)\.py", None),
    # libraries that are layers of their own
    (LOGGING, r"lmtpfilter/(logsetup|amavis_log)\.py", None),
    (LOGGING, r"logging/.*", None),
    (METRICS, r"lmtpfilter/metrics\.py", None),
    (METRICS, r"prometheus_client/.*", None),
    (LOOP, r"asyncio/.*", None),
    (LOOP, r"(selectors|socket|ssl|threading|queue)\.py", None),
]

_COMPILED = [(layer, re.compile(r"(?:^|/)" + f + r"$"),
              re.compile(f"(?:{fn})(?:\\..*)?") if fn else None)
             for layer, f, fn in LAYER_RULES]
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?):(?P<line>\d+)\)$")
LAYERS = [ACCEPT, COMMANDS, DATA, HEADERS, SCANNERS, POLICY, PIPELINE, DOWNSTREAM, DB,
          LOGGING, METRICS, LOOP, OTHER]
# The outermost frame of a whole stack: the main thread's or another thread's entry. A stack
# that starts elsewhere was read while it changed (--nonblocking): its inner frames still
# say where the CPU was, but it may be attributed less surely.
ROOTS = re.compile(r"^(_run_module_as_main|<module>|Thread\._bootstrap) ")


def split_frame(frame: str) -> tuple[str, str]:
    """py-spy's "function (file:line)" as (function, file); a frame of another form (a
    process or thread name, a native frame) as (frame, "")."""
    found = FRAME.match(frame)
    return (found["function"], found["file"]) if found else (frame, "")


def layer_of_frame(function: str, file: str) -> str | None:
    for layer, file_re, function_re in _COMPILED:
        if file_re.search(file) and (function_re is None or function_re.fullmatch(function)):
            return layer
    return None


def layer_of_stack(frames: list[str]) -> tuple[str, str]:
    """(layer, for whom): frames from the outermost to the innermost, as py-spy writes them.
    For whom: for a sample of the event loop's, the next layer out (who wrote to the socket,
    who set the timer), or "the loop itself" (its own dispatch, select); else the layer."""
    layer = OTHER
    for frame in reversed(frames):
        found = layer_of_frame(*split_frame(frame))
        if found is None or found == CALLER:
            continue
        if layer == OTHER:
            layer = found
            if layer != LOOP:
                return layer, layer
        elif found != LOOP and found != WAIT:
            return layer, found
    return layer, ("the loop itself" if layer == LOOP else layer)


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) format: "frame;frame;... count" per line."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            stacks.append((stack.split(";"), int(n)))
    return stacks


@dataclass
class Profile:
    samples: int  # the costed ones: all but WAIT
    waiting: int
    partial: int  # stacks not starting at a thread's entry
    by_layer: dict[str, int]
    loop_for: dict[str, int]  # the event loop's samples by the layer they were for
    top_self: list[tuple[str, int, str]]  # innermost function (file), samples, its layer


def with_loop(prof: Profile, layer: str) -> int:
    """The layer's samples and the event loop's samples on its behalf; for the loop, only
    its own ("the loop itself"): the columns then add up to 100% too."""
    if layer == LOOP:
        return prof.loop_for.get("the loop itself", 0)
    return prof.by_layer.get(layer, 0) + prof.loop_for.get(layer, 0)


def attribute(stacks: list[tuple[list[str], int]], top: int = 15) -> Profile:
    by_layer: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    loop_for: Counter[str] = Counter()
    leaf_layer: Counter[tuple[str, str]] = Counter()
    partial = 0
    for frames, n in stacks:
        layer, for_whom = layer_of_stack(frames)
        by_layer[layer] += n
        if layer == LOOP:
            loop_for[for_whom] += n
        partial += 0 if ROOTS.match(frames[0]) else n
        if layer == WAIT:
            continue
        function, file = split_frame(frames[-1])
        leaf = f"{function} ({file})" if file else function
        by_leaf[leaf] += n
        leaf_layer[leaf, layer] += n
    waiting = by_layer.pop(WAIT, 0)
    usual = {}  # the layer a function's own samples went to most often
    for (leaf, layer), _n in sorted(leaf_layer.items(), key=lambda kv: kv[1]):
        usual[leaf] = layer
    return Profile(sum(by_layer.values()), waiting, partial, dict(by_layer),
                   dict(loop_for.most_common()),
                   [(leaf, n, usual[leaf]) for leaf, n in by_leaf.most_common(top)])


# ----------------------------------------------------------------------------- the run


@dataclass
class Result:
    date: str
    machine: str
    mode: str
    sessions: int
    size_kb: int
    seconds: float  # the measured window
    messages: int
    rate: float
    cpu_ms_per_message: float
    samples: int  # costed samples (all but "waiting")
    waiting: int  # samples of threads blocked in a queue or lock, left out
    partial: int  # samples whose stack did not start at a thread's entry (read while changing)
    sampled_cpu: float  # costed samples / rate over the measured CPU seconds: near 1 is good
    layers: list[dict[str, object]] = field(default_factory=list)
    top_self: list[dict[str, object]] = field(default_factory=list)
    loop_for: list[dict[str, object]] = field(default_factory=list)
    profile: str | None = None


def process_cpu(pid: int) -> float:
    """utime + stime of the process, all its threads (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def recorded(db: Path) -> int:
    """Messages in the verdict table: the messages the worker finished."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def start_filter(base: Path, mode: str, sink_port: int, clamd_socket: Path | None,
                 event_loop: str = "asyncio") -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    """lmtpfilter as compare.start_lmtpfilter starts it, but with one worker: the serve
    process itself handles the connections (no supervisor), and that is the one profiled.
    On asyncio's loop by default: its dispatch is Python that py-spy sees; uvloop's is C,
    whose time py-spy gives to the Python frame below it (the callback it ran)."""
    d = base / f"lmtpfilter-{mode}"
    d.mkdir()
    port = free_port()
    config: dict[str, dict[str, object]] = {
        "server": {"listen": [f"127.0.0.1:{port}"], "hostname": "bench.example",
                   "workers": 1, "event_loop": event_loop},
        "downstream": {"address": f"127.0.0.1:{sink_port}", "max_idle_connections": 32},
        "clamav": {"enabled": mode == "clamav"},
        "spamassassin": {"enabled": False},
        "policy": {"spam_destiny": "pass"},
        "database": {"url": f"sqlite:///{d}/verdicts.db"},
        "quarantine": {"directory": f"{d}/quarantine"},
    }
    if clamd_socket is not None:
        config["clamav"]["address"] = f"unix:{clamd_socket}"
    proc, log = launch_lmtpfilter(config, d, port)
    return proc, port, d / "verdicts.db", log


def the_worker(pid: int) -> int:
    """The process serving the connections: with workers = 1, the serve process itself."""
    pids = tree(pid)
    if len(pids) != 1:
        raise RuntimeError(f"expected one lmtpfilter process, found {pids}")
    return pid


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is missing: pip install py-spy (into the project's venv)")
    return found


def profile_under_load(port: int, worker: int, db: Path, seconds: float, warm_rate: float,
                       raw: Path) -> tuple[float, int, float]:
    """(window seconds, messages, worker CPU seconds) while py-spy samples the worker.

    smtp-source is given enough messages to outlast the profile (twice the warm-up's rate
    over the window, plus a start) and is stopped once py-spy is done: it is the load, not
    the measure."""
    count = int(warm_rate * (seconds + 3) * 2) + 200
    args = ["smtp-source", "-L", "-d", "-s", str(SESSIONS), "-m", str(count), "-l", str(SIZE),
            "-r", "2", "-f", SENDER, "-t", "rcpt@example.org", f"127.0.0.1:{port}"]
    load = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # every session connected and busy
        if load.poll() is not None:
            raise RuntimeError("smtp-source ended early: "
                               + (load.stderr.read() if load.stderr else b"").decode()[-500:])
        cpu0, msgs0, t0 = process_cpu(worker), recorded(db), time.monotonic()
        spy = subprocess.run([py_spy(), "record", "--pid", str(worker), "--rate", str(RATE),
                              "--format", "raw", "--nonblocking", "--duration",
                              str(max(1, round(seconds))), "-o", str(raw)],
                             capture_output=True, text=True, timeout=seconds + 120)
        cpu1, msgs1, t1 = process_cpu(worker), recorded(db), time.monotonic()
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy.stderr[-1000:]}")
        if load.poll() is not None:
            print("  warning: smtp-source finished before the profile did: the window's end"
                  " was not under load", flush=True)
    finally:
        if load.poll() is None:
            load.terminate()
        load.wait(30)
    return t1 - t0, msgs1 - msgs0, cpu1 - cpu0


def run(mode: str, seconds: float, quick: bool, raw_dir: Path | None,
        event_loop: str = "asyncio") -> Result:
    base = short_tmpdir("lmtpf-layers-")
    daemons: list[object] = []
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    try:
        sink = start_smtp_sink(base / "lmtp", lmtp=True)
        daemons.append(sink)
        clamd = start_clamd(base) if mode == "clamav" else None
        if clamd is not None:
            daemons.append(clamd)
        proc, port, db, log = start_filter(base, mode, sink.port,
                                           clamd.socket_path if clamd else None, event_loop)
        worker = the_worker(proc.pid)
        settle([worker] + ([clamd.pid] if clamd else []))
        warm_count = 200 if quick else 2000
        warm = smtp_source(port, True, SESSIONS, SIZE, warm_count)
        print(f"  warm-up: {warm_count} messages at {warm:.0f} msg/s", flush=True)
        raw = (raw_dir or base) / f"layers-{mode}-{time.strftime('%Y%m%d-%H%M%S')}.raw"
        window, messages, cpu = profile_under_load(port, worker, db, seconds, warm, raw)
        if messages <= 0:
            raise RuntimeError("no message was recorded during the profile")
        prof = attribute(read_raw(raw))
        if prof.samples == 0:
            raise RuntimeError(f"py-spy recorded no sample in {raw}")
        cpu_us = 1e6 * cpu / messages
        layers = [{"layer": name, "samples": prof.by_layer.get(name, 0),
                   "share": prof.by_layer.get(name, 0) / prof.samples,
                   "cpu_us_per_message": cpu_us * prof.by_layer.get(name, 0) / prof.samples,
                   "with_loop_us_per_message": cpu_us * with_loop(prof, name) / prof.samples}
                  for name in LAYERS]
        return Result(
            date=time.strftime("%Y-%m-%d %H:%M"), machine=machine(), mode=mode,
            sessions=SESSIONS, size_kb=SIZE // 1024, seconds=round(window, 2),
            messages=messages, rate=messages / window, cpu_ms_per_message=cpu_us / 1000,
            samples=prof.samples, waiting=prof.waiting, partial=prof.partial,
            sampled_cpu=round(prof.samples / RATE / cpu, 2) if cpu > 0 else 0.0, layers=layers,
            top_self=[{"function": f, "samples": n, "share": n / prof.samples, "layer": layer}
                      for f, n, layer in prof.top_self],
            loop_for=[{"for": who, "samples": n, "share": n / prof.samples,
                       "cpu_us_per_message": cpu_us * n / prof.samples}
                      for who, n in prof.loop_for.items()],
            profile=str(raw) if raw_dir else None)
    finally:
        if proc is not None:
            terminate(proc)
            if log is not None:
                for line in log_errors(log, ("ERROR", "Traceback"))():
                    print(f"  lmtpfilter logged: {line}", flush=True)
        for daemon in reversed(daemons):
            daemon.stop()  # type: ignore[attr-defined]
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------- reporting


MODE_NAMES = {"none": "no checks", "clamav": "ClamAV"}


def markdown(r: Result) -> str:
    lines = [
        f"Measured {r.date} on {r.machine}: one worker, mode {MODE_NAMES[r.mode]}, "
        f"smtp-source -L {r.sessions} sessions, {r.size_kb} KB, 2 recipients; py-spy "
        f"{RATE} Hz for {r.seconds:g} s.",
        "",
        f"CPU per message: **{r.cpu_ms_per_message:.2f} ms** at {r.rate:.0f} msg/s "
        f"({r.messages} messages, {r.samples} samples).",
        "",
        f"The samples, at {RATE} Hz, account for {r.sampled_cpu:.2f} x the worker's measured "
        f"CPU; {r.waiting} more samples were threads blocked in a queue or lock (left out), "
        f"and {100 * r.partial / max(1, r.samples + r.waiting):.1f}% of all samples had a stack "
        "read while it changed (attributed by their inner frames all the same).",
        "",
        "| layer | share of samples % | CPU us per message | with the loop's work for it, "
        "us |",
        "|---|---|---|---|",
    ]
    for layer in r.layers:
        lines.append(f"| {layer['layer']} | {100 * float(str(layer['share'])):.1f} | "
                     f"{float(str(layer['cpu_us_per_message'])):.0f} | "
                     f"{float(str(layer['with_loop_us_per_message'])):.0f} |")
    lines += ["", "The last column adds to each layer the event loop's work for it (below); for "
              f"{LOOP} itself it keeps only the loop's own.",
              "", f"{LOOP}, by the layer it worked for (the next one out of the loop's "
              "frames: who wrote to the socket, set the timer, scheduled the task):", "",
              "| for | share of samples % | CPU us per message |", "|---|---|---|"]
    for part in r.loop_for:
        lines.append(f"| {part['for']} | {100 * float(str(part['share'])):.1f} | "
                     f"{float(str(part['cpu_us_per_message'])):.0f} |")
    lines += ["", "Innermost functions by samples of their own:", "",
              "| function | share % | layer |", "|---|---|---|"]
    for top in r.top_self:
        lines.append(f"| `{top['function']}` | {100 * float(str(top['share'])):.1f} | "
                     f"{top['layer']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("none", "clamav"), default="none")
    parser.add_argument("--seconds", type=float, default=20.0, help="profile duration")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (5 s profile, small warm-up) to check the script")
    parser.add_argument("--keep", action="store_true",
                        help="keep py-spy's raw profile (in the current directory)")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="[server] event_loop of the profiled worker")
    args = parser.parse_args()
    seconds = min(args.seconds, 5.0) if args.quick else args.seconds
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {machine()}", flush=True)
    result = run(args.mode, seconds, args.quick, Path.cwd() if args.keep else None,
                 args.event_loop)
    text = markdown(result)
    print(text)
    if result.profile:
        print(f"raw profile kept: {result.profile}")
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
