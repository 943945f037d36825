"""A syslog daemon of the test's own, and Debian's logwatch amavis service over what it got
(stdlib only).

logwatch's amavis service reads the "maillog" logfile group (mail.log, among others) from
``--logdir``, keeps the lines whose program name is amavis (``*OnlyService``), and prints a
summary of counts per outcome ("Clean passed", "Spam blocked", "Malware blocked", ...) before
the details. :func:`amavis_summary` writes the lines as a syslog-format mail.log in a temporary
directory and returns that summary as {label: count}.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import threading
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


LOG_MAIL = 2  # syslog facility "mail" (RFC 5424 §6.2.1)
_DATAGRAM = re.compile(r"^<(\d+)>(\S+?\[\d+\]): (.*)$", re.S)


class SyslogSink:
    """A unix datagram socket collecting what is sent to it, as (facility, tag, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o666)  # as /dev/log: every user's programs log
        self.sock.settimeout(0.2)
        self.records: list[tuple[int, str, str]] = []
        self.unparsed: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            match = _DATAGRAM.match(data.rstrip(b"\x00").decode("utf-8", "replace"))
            if match:
                self.records.append((int(match.group(1)) >> 3, match.group(2), match.group(3)))
            else:
                self.unparsed.append(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def wait_for(self, count: int, pattern: str, timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for _, _, m in list(self.records) if re.search(pattern, m)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)
