#!/usr/bin/env python3
"""spamd's CPU per message by command, and by what the message carries (issue 17 item 4).

lmtpfilter asks spamd REPORT (the verdict and the rule table with each rule's score, which
amavis-style headers need). SYMBOLS gives the rule names without scores, CHECK the verdict
alone, HEADERS the message's header section as SpamAssassin would rewrite it (with a site
template, X-Spam-Status can carry the scores: `_TESTSSCORES(,)_`). This script starts spamd
(the suite's config: no network tests), sends the same numbered copies of smtp-source's
10 KB message with each command in turns, and reports spamd's CPU per message (the parent
and its children, from /proc), with and without the Return-Path and X-Envelope-From lines
lmtpfilter prepends so that SpamAssassin knows the envelope sender.

Then REPORT alone under three site configs (local.cf), a spamd each, interleaved: the one the
README recommends (scripts/conf/spamd-local.cf: no Bayes, no auto-learning, no network
tests), Debian's shipped local.cf (SpamAssassin's defaults: Bayes and auto-learning on),
and Bayes on with auto-learning off. spamd runs with -L (local tests only) in all three.

    usage: python3 bench/spamd_cost.py [--messages 40] [--size 10240]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import numbered, smtp_source_message  # noqa: E402

from tests.harness.daemons import short_tmpdir  # noqa: E402
from tests.harness.scanners import SPAMD_LOCAL_CF, spamd_request, start_spamd  # noqa: E402

COMMANDS = ("CHECK", "SYMBOLS", "REPORT", "HEADERS")
DEBIAN_LOCAL_CF = Path("/etc/spamassassin/local.cf")
SITE_CONFIGS = {
    "recommended (scripts/conf/spamd-local.cf)": SPAMD_LOCAL_CF,
    "Debian's local.cf (Bayes and auto-learning on)":
        DEBIAN_LOCAL_CF.read_text() if DEBIAN_LOCAL_CF.exists() else "",
    "Bayes on, auto-learning off": SPAMD_LOCAL_CF.replace("use_bayes 0", "use_bayes 1"),
}


def tree_cpu_seconds(root: int) -> float:
    """CPU of `root` and its live children (spamd's children live as long as the test)."""
    out = subprocess.run(["pgrep", "-P", str(root)], capture_output=True, text=True).stdout
    total = 0
    for pid in [root, *map(int, out.split())]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def report_costs(configs: dict[str, str], template: bytes, messages: int
                 ) -> dict[str, list[float]]:
    """spamd's CPU for REPORT on each of `messages` numbered copies, under each site config:
    one spamd (one child) per config, all started first, and each copy sent to each in turn,
    so that the machine's drift (this VM's CPU time per message moves by +-25% from minute
    to minute) hits every config alike."""
    base = short_tmpdir("lmtpf-spamc-")
    daemons = {name: start_spamd(base / str(n), children=1, local_cf=local_cf)
               for n, (name, local_cf) in enumerate(configs.items())}
    costs: dict[str, list[float]] = {name: [] for name in configs}
    try:
        for spamd in daemons.values():
            for n in range(5):
                spamd_request(spamd.port, "REPORT", numbered(template, 10**6 + n))
        for n in range(messages):
            for name, spamd in daemons.items():
                before = tree_cpu_seconds(spamd.pid)
                reply = spamd_request(spamd.port, "REPORT", numbered(template, n))
                assert b" 0 EX_OK" in reply.split(b"\r\n", 1)[0], reply[:200]
                costs[name].append(tree_cpu_seconds(spamd.pid) - before)
    finally:
        for spamd in daemons.values():
            spamd.stop()
        shutil.rmtree(base, ignore_errors=True)
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--size", type=int, default=10240)
    args = parser.parse_args()
    template = smtp_source_message(args.size)
    envelope = b"Return-Path: <sender@example.net>\r\nX-Envelope-From: <sender@example.net>\r\n"
    base = short_tmpdir("lmtpf-spamc-")
    spamd = start_spamd(base, children=1)
    costs: dict[tuple[str, str], list[float]] = {}
    try:
        for n in range(5):  # warm the child: its first messages compile rules
            spamd_request(spamd.port, "REPORT", numbered(template, 10**6 + n))
        for n in range(args.messages):
            message = numbered(template, n)
            for carried, data in (("as received", message),
                                  ("with the envelope lines", envelope + message)):
                for command in COMMANDS:
                    before = tree_cpu_seconds(spamd.pid)
                    reply = spamd_request(spamd.port, command, data)
                    assert b" 0 EX_OK" in reply.split(b"\r\n", 1)[0], reply[:200]
                    costs.setdefault((carried, command), []).append(
                        tree_cpu_seconds(spamd.pid) - before)
    finally:
        spamd.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.messages} numbered copies of smtp-source's {args.size // 1024} KB message, "
          "each sent with every command in turn; spamd's CPU per message (ms):\n")
    print("| message | " + " | ".join(COMMANDS) + " |\n|---|" + "---|" * len(COMMANDS))
    for carried in ("as received", "with the envelope lines"):
        cells = [f"{1000 * statistics.mean(costs[carried, c]):.0f}" for c in COMMANDS]
        print(f"| {carried} | " + " | ".join(cells) + " |")
    print("\nREPORT by spamd's site config (ms of spamd CPU per message, mean / median):\n")
    print("| site config | mean | median |\n|---|---|---|")
    for name, spent in report_costs(SITE_CONFIGS, template, args.messages).items():
        print(f"| {name} | {1000 * statistics.mean(spent):.0f} | "
              f"{1000 * statistics.median(spent):.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
