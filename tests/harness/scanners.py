"""Throwaway real clamd and spamd on loopback for integration tests (stdlib only).

Companion of :mod:`tests.harness.daemons` (same conventions: each ``start_*`` creates its own
sub-directory of ``base``; use :func:`tests.harness.daemons.short_tmpdir` for ``base``).

* clamd (ClamAV 1.4) runs with a tiny signature DB the tests build themselves
  (:func:`build_signature_db`): no freshclam, no network. Unofficial signatures are reported
  with a ``.UNOFFICIAL`` suffix (``Eicar-Test-Signature.UNOFFICIAL FOUND``): match the prefix.
  clamd stays root (no ``User`` line), listens on ``DIR/clamd.sock`` and 127.0.0.1:PORT.
* spamd (SpamAssassin 4.0) uses Debian's shipped rules (``-C /usr/share/spamassassin``, pinned so
  that a later sa-update cannot change scores) and a private site config without bayes, auto-learn,
  network tests, razor/pyzor/dcc, AWL or TxRep. The site dir needs the ``*.pre`` files from
  /etc/spamassassin, else spamd says "no loaded plugin implements 'check_main'".
  spamd preforks children that accept connections themselves: pause/stop act on the whole
  process group / session.

Also raw protocol clients (``clamd_ping``, ``clamd_instream``, ``spamd_request``) and
:func:`slow_tcp_server`, a peer that accepts and never answers.

Pitfalls ported from the lab notes: ``clamdscan --stream`` silently truncates at its own
StreamMaxLength (so the tests speak zINSTREAM themselves); over the limit clamd replies
``INSTREAM size limit exceeded. ERROR`` and closes, so the client's send may fail with
EPIPE/ECONNRESET while the reply is still readable; ``spamc -K`` prints no ``PONG``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Private helpers of daemons.py, imported on purpose (shared harness internals, not copied).
from tests.harness.daemons import (
    LOOPBACK,
    REPO,
    _instance_dir,
    _read_text,
    _stop_popen,  # also waits for the whole session (_reap_session)
    free_port,
)

__all__ = [
    "CLAMAV_TESTFILES",
    "EICAR",
    "ENVELOPE_TEST_RULE",
    "ENVELOPE_TEST_SENDER",
    "GTUBE",
    "Clamd",
    "Spamd",
    "build_signature_db",
    "clamd_instream",
    "clamd_ping",
    "slow_tcp_server",
    "spamd_request",
    "start_clamd",
    "start_spamd",
]

# Split in two so that the complete test strings never appear verbatim in this file.
EICAR: bytes = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
"""The 68-byte EICAR anti-virus test string."""
GTUBE: bytes = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*" + b"GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
"""SpamAssassin's GTUBE string (1000 points)."""

CLAMAV_TESTFILES = Path("/usr/share/clamav-testfiles")
EICAR_SIGNATURE = "Eicar-Test-Signature"
CLAM_EXE_SIGNATURE = "Clamav.Test.File-6"

CLAMD_READY_TIMEOUT = 30.0
SPAMD_READY_TIMEOUT = 60.0
SPAMD_ZOMBIE_WAIT = 3.0
POLL_INTERVAL = 0.05
MAX_UNIX_SOCKET_PATH = 100  # sun_path is 108 bytes including the NUL

ClamdAddress = Path | tuple[str, int]
"""A unix socket path, or (host, port) for TCP."""


# --------------------------------------------------------------------------- signature DB


def build_signature_db(directory: Path) -> None:
    """Write the test signature DB into ``directory`` (created if missing).

    ``test.ndb``: EICAR as a body signature (also matches inside archives / MIME parts).
    ``test.hdb``: md5:size of clam.exe from clamav-testfiles; every sample there contains or
    unpacks to it. clamd reports these as ``<name>.UNOFFICIAL``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    assert len(EICAR) == 68
    (directory / "test.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")
    clam_exe = (CLAMAV_TESTFILES / "clam.exe").read_bytes()
    md5 = hashlib.md5(clam_exe, usedforsecurity=False).hexdigest()
    (directory / "test.hdb").write_text(f"{md5}:{len(clam_exe)}:{CLAM_EXE_SIGNATURE}\n")


# --------------------------------------------------------------------------- raw clients


def _clamd_connect(addr: ClamdAddress, timeout: float) -> socket.socket:
    if isinstance(addr, tuple):
        return socket.create_connection(addr, timeout=timeout)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(str(addr))
    except BaseException:
        s.close()
        raise
    return s


def _read_until_nul(s: socket.socket) -> bytes:
    reply = b""
    while not reply.endswith(b"\0"):
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:  # clamd closed with unread data (size limit): RST
            break
        if not chunk:
            break
        reply += chunk
    return reply


def clamd_ping(addr: ClamdAddress, timeout: float = 1.0) -> bytes:
    """Send zPING, return the raw reply (b"PONG\\0" when healthy). Raises OSError/TimeoutError."""
    with _clamd_connect(addr, timeout) as s:
        s.sendall(b"zPING\0")
        return _read_until_nul(s)


def clamd_instream(
    addr: ClamdAddress, data: bytes, *, chunk: int = 65536, timeout: float = 30.0
) -> bytes:
    """zINSTREAM ``data``; return the raw reply, e.g. ``b"stream: OK\\0"``.

    A send failing because clamd already replied and closed (StreamMaxLength) is ignored.
    """
    with _clamd_connect(addr, timeout) as s:
        try:
            s.sendall(b"zINSTREAM\0")
            for i in range(0, len(data), chunk):
                part = data[i : i + chunk]
                s.sendall(struct.pack("!L", len(part)) + part)
            s.sendall(struct.pack("!L", 0))
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _read_until_nul(s)


def spamd_request(
    port: int,
    command: str,
    message: bytes = b"",
    *,
    host: str = LOOPBACK,
    user: str = "nobody",
    timeout: float = 30.0,
) -> bytes:
    """One raw SPAMC/1.5 request (PING, CHECK, SYMBOLS, REPORT, ...); returns the raw reply."""
    if command == "PING":
        request = b"PING SPAMC/1.5\r\n\r\n"
    else:
        body = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        request = (
            f"{command} SPAMC/1.5\r\nContent-length: {len(body)}\r\nUser: {user}\r\n\r\n".encode()
            + body
        )
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


# --------------------------------------------------------------------------- process helpers


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group of a session leader started with start_new_session=True."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_group(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGCONT)  # a SIGSTOPped daemon never sees SIGTERM
    _stop_popen(proc)  # SIGTERM, wait, SIGKILL after timeout, then wait for the whole session


def _wait_session_reaped(sid: int, timeout: float) -> bool:
    """Best effort: wait until no process, not even a zombie, has session id sid."""
    deadline = time.monotonic() + timeout
    while True:
        members = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                # after comm: state ppid pgrp session ...
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                    members = True
                    break
            except (OSError, IndexError, ValueError):
                continue
        if not members:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)


def _which(program: str) -> str:
    """Absolute path of a daemon binary (also looks in /usr/sbin and /sbin)."""
    path = shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(f"{program} is not installed")
    return path


def _wait_ready(
    probe: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float
) -> str | None:
    """Poll probe until True. Returns None when ready, else "died" / "timeout"."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            return "died"
        if probe():
            return None
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(POLL_INTERVAL)


# --------------------------------------------------------------------------- clamd


class _Pausable:
    """SIGSTOP/SIGCONT for a daemon's whole process group: a paused daemon still has its
    connections accepted by the kernel, but never answers (a hung scanner)."""

    _proc: subprocess.Popen[bytes] | None

    def pause(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            _signal_group(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            _signal_group(self._proc.pid, signal.SIGCONT)


@dataclass
class Clamd(_Pausable):
    """A running throwaway clamd started by start_clamd()."""

    dir: Path
    socket_path: Path
    tcp_port: int
    pid: int
    stream_max_length: str
    ready_after: float
    """Seconds from spawn until PING answered PONG (last start)."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def conf_path(self) -> Path:
        return self.dir / "clamd.conf"

    @property
    def db_dir(self) -> Path:
        return self.dir / "db"

    @property
    def log_path(self) -> Path:
        return self.dir / "clamd.log"

    @property
    def tcp_address(self) -> tuple[str, int]:
        return (LOOPBACK, self.tcp_port)

    def log_text(self) -> str:
        return _read_text(self.log_path) + _read_text(self.dir / "clamd.stdout")

    def ping(self, timeout: float = 1.0) -> bool:
        """True if PING over the unix socket answers PONG within timeout."""
        return _clamd_pong(self.socket_path, timeout)

    def stop(self) -> None:
        """SIGTERM clamd and wait for it (SIGKILL after 10 s). Idempotent; works while paused."""
        _stop_group(self._proc)

    def restart(self) -> None:
        """Stop, then start again with the same config (same socket path and TCP port)."""
        self.stop()
        self._proc, self.ready_after = _launch_clamd(self.dir, self.socket_path, self.tcp_port)
        self.pid = self._proc.pid


def _clamd_conf(d: Path, socket_path: Path, tcp_port: int, stream_max_length: str) -> str:
    return f"""\
# generated by tests/harness/scanners.py (no User line: stays root)
Foreground yes
LogFile {d}/clamd.log
LogTime yes
LogVerbose no
TemporaryDirectory {d}/tmp
DatabaseDirectory {d}/db
LocalSocket {socket_path}
LocalSocketMode 666
FixStaleSocket yes
TCPSocket {tcp_port}
TCPAddr {LOOPBACK}
MaxThreads 4
StreamMaxLength {stream_max_length}
SelfCheck 0
Bytecode no
ScanMail yes
ScanArchive yes
# As the README recommends: content past a scan limit is reported, never passed as clean;
# and deep enough nesting for a mail around clamav-testfiles' clam_cache_emax.tgz.
AlertExceedsMax yes
MaxRecursion 40
"""


def _launch_clamd(
    d: Path, socket_path: Path, tcp_port: int
) -> tuple[subprocess.Popen[bytes], float]:
    """Spawn clamd with d/clamd.conf, wait for PONG; on failure stop it and raise RuntimeError."""
    if _clamd_pong(socket_path):
        raise RuntimeError(f"a clamd already answers on {socket_path}")
    t0 = time.monotonic()
    with (d / "clamd.stdout").open("ab") as out:
        proc = subprocess.Popen(
            [_which("clamd"), "-c", str(d / "clamd.conf")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    why = _wait_ready(lambda: _clamd_pong(socket_path), proc, CLAMD_READY_TIMEOUT)
    if why is not None:
        _stop_group(proc)
        raise RuntimeError(
            f"clamd {'died during startup' if why == 'died' else 'not ready after 30s'} "
            f"(rc {proc.returncode}, socket {socket_path}, tcp {tcp_port})\n"
            f"--- clamd.stdout ---\n{_read_text(d / 'clamd.stdout')}\n"
            f"--- clamd.log ---\n{_read_text(d / 'clamd.log')}"
        )
    return proc, time.monotonic() - t0


def _clamd_pong(socket_path: Path, timeout: float = 1.0) -> bool:
    try:
        return clamd_ping(socket_path, timeout) == b"PONG\0"
    except OSError:  # includes TimeoutError, FileNotFoundError, ConnectionRefusedError
        return False


def start_clamd(
    base: Path, *, tcp_port: int | None = None, stream_max_length: str = "25M"
) -> Clamd:
    """Start clamd in ``base/clamd``: unix socket ``base/clamd/clamd.sock`` + 127.0.0.1:tcp_port.

    stream_max_length uses clamd syntax ("1000", "10K", "25M"). One clamd per ``base``.
    """
    d = _instance_dir(base, "clamd")
    socket_path = d / "clamd.sock"
    if len(os.fsencode(socket_path)) >= MAX_UNIX_SOCKET_PATH:
        raise ValueError(f"unix socket path too long: {socket_path}")
    tcp_port = tcp_port or free_port()
    (d / "tmp").mkdir(exist_ok=True)
    build_signature_db(d / "db")
    (d / "clamd.conf").write_text(_clamd_conf(d, socket_path, tcp_port, stream_max_length))
    proc, ready_after = _launch_clamd(d, socket_path, tcp_port)
    return Clamd(
        dir=d,
        socket_path=socket_path,
        tcp_port=tcp_port,
        pid=proc.pid,
        stream_max_length=stream_max_length,
        ready_after=ready_after,
        _proc=proc,
    )


# --------------------------------------------------------------------------- spamd

SPAMD_USER = "nobody"
SPAMD_LOCAL_CF = (REPO / "scripts" / "conf" / "spamd-local.cf").read_text()
ENVELOPE_TEST_SENDER = "envelope-test@example.net"
ENVELOPE_TEST_RULE = "LMTPF_ENVFROM_TEST"
# Test-only rules, in a file of their own beside local.cf (so not in the sandbox). The rule
# tests SpamAssassin's EnvelopeFrom pseudo-header, the address SPF checks: a hit shows which
# envelope sender SpamAssassin settled on (tests/integration/test_scanning.py).
SPAMD_TEST_CF = f"""\
header {ENVELOPE_TEST_RULE} EnvelopeFrom =~ /^envelope-test\\@example\\.net$/
describe {ENVELOPE_TEST_RULE} The envelope sender is {ENVELOPE_TEST_SENDER}
score {ENVELOPE_TEST_RULE} 0.1
"""


@dataclass
class Spamd(_Pausable):
    """A running throwaway spamd started by start_spamd()."""

    dir: Path
    port: int
    pid: int
    children: int
    ready_after: float
    """Seconds from spawn until PING answered PONG."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.dir / "spamd.log"

    def log_text(self) -> str:
        return _read_text(self.log_path) + _read_text(self.dir / "spamd.stderr")

    def ping(self, timeout: float = 1.0) -> bool:
        try:
            return spamd_request(self.port, "PING", timeout=timeout).startswith(b"SPAMD/1.5 0 PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM the parent; wait until the whole session (children too) is gone. Idempotent.

        spamd's parent exits right after signalling its children, so they end as zombies of
        PID 1, which may reap them late (~1 s here); wait a bounded while for that too, so that
        ``pgrep spamd`` is empty afterwards.
        """
        _stop_group(self._proc)
        if self._proc is not None:
            _wait_session_reaped(self._proc.pid, SPAMD_ZOMBIE_WAIT)


def start_spamd(base: Path, *, port: int | None = None, children: int = 2,
                local_cf: str = SPAMD_LOCAL_CF) -> Spamd:
    """Start spamd in ``base/spamd`` on 127.0.0.1:port with exactly ``children`` children,
    with ``local_cf`` as its site's local.cf (bench/spamd_cost.py compares site configs)."""
    d = _instance_dir(base, "spamd")
    port = port or free_port()
    site, home = d / "site", d / "home"
    site.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    shutil.chown(home, user=SPAMD_USER)
    for pre in sorted(Path("/etc/spamassassin").glob("*.pre")):
        shutil.copy(pre, site / pre.name)
    (site / "local.cf").write_text(local_cf)
    (site / "lmtpfilter-tests.cf").write_text(SPAMD_TEST_CF)
    (d / "spamd.pid").unlink(missing_ok=True)
    args = [
        _which("spamd"),
        "-C", "/usr/share/spamassassin",
        f"--siteconfigpath={site}",
        "-L", "-x",
        "-u", SPAMD_USER,
        "-H", str(home),
        "-i", f"{LOOPBACK}:{port}",
        "-A", LOOPBACK,
        f"--min-children={children}",
        f"--max-children={children}",
        "--min-spare=1",
        f"--max-spare={children}",
        "-r", str(d / "spamd.pid"),
        "-s", str(d / "spamd.log"),
    ]  # fmt: skip
    t0 = time.monotonic()
    with (d / "spamd.stderr").open("ab") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    spamd = Spamd(dir=d, port=port, pid=proc.pid, children=children, ready_after=0.0, _proc=proc)
    why = _wait_ready(spamd.ping, proc, SPAMD_READY_TIMEOUT)
    if why is not None:
        spamd.stop()
        raise RuntimeError(
            f"spamd {'died during startup' if why == 'died' else 'not ready after 60s'} "
            f"(rc {proc.returncode}, port {port})\n{spamd.log_text()}"
        )
    spamd.ready_after = time.monotonic() - t0
    return spamd


# --------------------------------------------------------------------------- slow peer


def slow_tcp_server(delay: float) -> tuple[int, Callable[[], None]]:
    """Listen on a free 127.0.0.1 port; accept, read everything, never answer.

    Each connection is closed without a reply ``delay`` seconds after it was accepted (or when
    stopped). Returns (port, stop); stop() is idempotent and joins the threads.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, 0))
    listener.listen(64)
    listener.settimeout(0.1)
    port: int = listener.getsockname()[1]
    stopping = threading.Event()
    workers: list[threading.Thread] = []

    def hold(conn: socket.socket) -> None:
        deadline = time.monotonic() + delay
        with conn:
            conn.settimeout(0.1)
            while not stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    if not conn.recv(65536):  # peer finished sending: just keep quiet
                        stopping.wait(remaining)
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    def accept_loop() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=hold, args=(conn,), daemon=True)
            workers.append(worker)
            worker.start()

    acceptor = threading.Thread(target=accept_loop, name=f"slow-tcp-{port}", daemon=True)
    acceptor.start()

    def stop() -> None:
        stopping.set()
        acceptor.join(timeout=5)
        listener.close()
        for worker in list(workers):
            worker.join(timeout=5)

    return port, stop
