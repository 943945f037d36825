"""Run Debian's logwatch amavis service over log lines, and read its summary (stdlib only).

logwatch's amavis service reads the "maillog" logfile group (mail.log, among others) from
``--logdir``, keeps the lines whose program name is amavis (``*OnlyService``), and prints a
summary of counts per outcome ("Clean passed", "Spam blocked", "Malware blocked", ...) before
the details. :func:`amavis_summary` writes the lines as a syslog-format mail.log in a temporary
directory and returns that summary as {label: count}.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

LOGWATCH = "logwatch"
_COUNT = re.compile(r"^\s*(\d+)\s+(\S.*?)(?:\s+-+)?\s+[\d.,]+%?$")


def available() -> bool:
    return shutil.which(LOGWATCH, path="/usr/sbin:/usr/bin:/sbin:/bin") is not None


def syslog_line(message: str, program: str = "amavis[4242]", host: str = "mx",
                when: float | None = None) -> str:
    """One line as rsyslog writes it to mail.log ("Dec  1 14:35:40 HOST PROGRAM: MESSAGE")."""
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(when))
    return f"{stamp} {host} {program}: {message}"


def amavis_summary(mail_log: Iterable[str]) -> dict[str, int]:
    """logwatch --service amavis over these mail.log lines: the Summary's counts by label."""
    with tempfile.TemporaryDirectory(prefix="lmtpf-logwatch-") as d:
        (Path(d) / "mail.log").write_text("".join(line + "\n" for line in mail_log))
        out = subprocess.run(
            [LOGWATCH, "--service", "amavis", "--logdir", d, "--range", "All",
             "--detail", "10", "--output", "stdout", "--format", "text"],
            capture_output=True, text=True, timeout=60, check=True).stdout
    summary = out.partition("****** Summary")[2].partition("****** Detail")[0]
    counts: dict[str, int] = {}
    for line in summary.splitlines():
        match = _COUNT.match(line)
        if match:
            counts[match.group(2).strip()] = int(match.group(1))
    return counts
