"""Throwaway real mail daemons on loopback for integration tests (stdlib only).

Starts private instances of Dovecot (LMTP + Sieve + ManageSieve; 2.3 or 2.4, each with its own
configuration files in scripts/conf/dovecot-<series>/), Postfix (a second instance with its own
config/queue/data directories) and Postfix's smtp-sink. Nothing of the system instances
(/etc/postfix, /etc/dovecot, /var/spool/postfix, /var/lib/dovecot) is used or touched.

Each ``start_*`` function creates its own sub-directory of ``base`` (``dovecot/``, ``postfix/``,
``smtp-sink/``), so one :func:`short_tmpdir` can host a whole stack. ``base`` must be short
(unix socket paths are limited to 108 bytes) and every parent must be world-traversable
(Dovecot's auth process and mail uid, and the postfix user, must reach it): use
:func:`short_tmpdir`, never pytest's ``tmp_path`` (0700 basetemp, deep paths).

Pitfalls ported from the lab notes:

* Dovecot refuses uid 0 for mail; all mail is owned by nobody:nogroup.
* Every Postfix program re-reads a main.cf (or texthash map) modified less than ~2 s ago, in
  0.3 s steps ("cool down" in util/load_file.c); config files are backdated by 10 s.
* Without a tty, ``postfix`` prints fatal errors nowhere; on failure ``postfix check`` is re-run
  under ``script(1)`` to capture them.
* Postfix's master daemonizes and is re-parented to PID 1, which may reap it late: a zombie
  counts as stopped. ``postfix stop`` polls with ``sleep 1``; SIGTERM to the master is ~0.03 s.
* As root, smtp-sink needs ``-u USER``.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DOVECOT_SYNTAXES",
    "MASTER_PASSWORD",
    "MASTER_USER",
    "SNIPPETS",
    "TEMPLATE_NAMES",
    "USER_PASSWORD",
    "Dovecot",
    "DovecotSyntax",
    "Postfix",
    "SmtpSink",
    "dovecot_syntax",
    "dovecot_version",
    "free_port",
    "lmtp_deliver",
    "managesieve_plain_token",
    "short_tmpdir",
    "start_dovecot",
    "start_postfix",
    "start_smtp_sink",
]

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
"""The checkout: the daemon configs shared with scripts/sandbox.sh are in scripts/conf."""
USER_PASSWORD = "secret"
"""Password of every Dovecot user."""
MASTER_USER = "admin"
"""Dovecot master user: log in as it with the target user as SASL authorization identity."""
MASTER_PASSWORD = "adminsecret"
MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
# Longest socket name below an instance dir is ~30 bytes (e.g. spool/private/proxywrite,
# run/token-login/tokenlogin); keep well under the 108-byte sun_path limit.
MAX_INSTANCE_DIR_LEN = 70


# --------------------------------------------------------------------------- generic helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def short_tmpdir(prefix: str) -> Path:
    """Create a fresh 0755 directory directly under /tmp (short path, o+x for daemons)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def _instance_dir(base: Path, name: str) -> Path:
    base = Path(base).absolute()
    d = base / name
    if len(str(d)) > MAX_INSTANCE_DIR_LEN:
        raise ValueError(
            f"{d} is too long for unix socket paths (max {MAX_INSTANCE_DIR_LEN} chars); "
            "use short_tmpdir()"
        )
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)
    for parent in d.parents:
        if not parent.stat().st_mode & 0o001:
            raise ValueError(
                f"{parent} is not world-traversable (o+x); daemons running as unprivileged "
                "users cannot reach their files. Use short_tmpdir()."
            )
    return d


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _first_line(port: int, timeout: float = 1.0) -> bytes:
    """Connect to 127.0.0.1:port and return the first line the server sends (b"" on error)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            return s.makefile("rb").readline()
    except OSError:
        return b""


def _wait_banners(
    checks: Sequence[tuple[int, bytes]],
    alive: Callable[[], bool],
    timeout: float,
) -> str | None:
    """Poll until every (port, prefix) check answers with a line starting with prefix.

    Returns None when ready, otherwise the reason ("died" / "timeout").
    """
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            return "died"
        if all(_first_line(port).startswith(prefix) for port, prefix in checks):
            return None
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.1)


def _proc_state(pid: int) -> str | None:
    """State letter from /proc/PID/stat, or None if the process does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces/parens: the state follows the LAST ')'
    return stat.rsplit(")", 1)[1].split()[0]


def _pid_running(pid: int) -> bool:
    """True if pid exists and is not a zombie (zombies of re-parented daemons count as gone)."""
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _session_members(sid: int) -> list[int]:
    """Running (non-zombie) processes whose session id is sid."""
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after comm: state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def _reap_session(sid: int, timeout: float = 5.0) -> None:
    """Wait until every process of a daemon's session is gone; SIGKILL stragglers.

    The daemons here are session leaders (Popen(start_new_session=True), Postfix master's
    setsid), so the session id finds children that outlive their master (Dovecot's log).
    """
    deadline = time.monotonic() + timeout
    while members := _session_members(sid):
        if time.monotonic() > deadline:
            for pid in members:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(POLL_INTERVAL)


def _stop_popen(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a Popen child (a session leader) and reap it; SIGKILL after timeout."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):  # pgid == pid: take the children down too
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=timeout)
    _reap_session(proc.pid)


def _backdate(paths: Sequence[Path], seconds: float = 10.0) -> None:
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


# --------------------------------------------------------------------------- LMTP client


class _LineReader:
    """Reads CRLF-terminated SMTP/LMTP reply lines from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._f = sock.makefile("rb")

    def reply(self) -> str:
        """One complete (possibly multi-line) reply, lines joined with "\\n"."""
        lines: list[str] = []
        while True:
            raw = self._f.readline()
            if not raw:
                raise ConnectionError(f"connection closed; got so far: {lines!r}")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def close(self) -> None:
        self._f.close()


def _dot_stuff(message: bytes) -> bytes:
    """CRLF-normalise, dot-stuff and terminate a message for the DATA phase."""
    data = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    return data + b".\r\n"


def lmtp_deliver(
    port: int,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    host: str = LOOPBACK,
    timeout: float = 30.0,
) -> tuple[list[str], list[str]]:
    """Minimal raw LMTP transaction (RFC 2033).

    LHLO, MAIL FROM, one RCPT TO per recipient, DATA (if any recipient was accepted), the
    dot-stuffed message, then ONE reply per accepted recipient, QUIT.

    Returns (RCPT replies in recipient order, post-DATA replies in accepted-recipient order).
    A reply is its line (multi-line replies joined with "\\n"). Raises RuntimeError if LHLO,
    MAIL or DATA is refused.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        r = _LineReader(sock)
        try:

            def cmd(line: str) -> str:
                sock.sendall(line.encode() + b"\r\n")
                return r.reply()

            greeting = r.reply()
            if not greeting.startswith("220"):
                raise RuntimeError(f"LMTP greeting: {greeting!r}")
            for line in ("LHLO localhost", f"MAIL FROM:<{sender}>"):
                reply = cmd(line)
                if not reply.startswith("250"):
                    raise RuntimeError(f"{line!r} -> {reply!r}")
            rcpt_replies = [cmd(f"RCPT TO:<{rcpt}>") for rcpt in recipients]
            accepted = sum(1 for reply in rcpt_replies if reply.startswith("2"))
            data_replies: list[str] = []
            if accepted:
                reply = cmd("DATA")
                if not reply.startswith("354"):
                    raise RuntimeError(f"DATA -> {reply!r}")
                sock.sendall(_dot_stuff(message))
                data_replies = [r.reply() for _ in range(accepted)]
            else:
                cmd("RSET")
            with contextlib.suppress(OSError):  # ConnectionError is an OSError
                cmd("QUIT")
            return rcpt_replies, data_replies
        finally:
            r.close()


def managesieve_plain_token(authzid: str, authcid: str, password: str) -> str:
    """Base64 SASL PLAIN initial response "authzid\\0authcid\\0password"."""
    raw = f"{authzid}\0{authcid}\0{password}".encode()
    return base64.b64encode(raw).decode("ascii")


# --------------------------------------------------------------------------- Dovecot


_MAILDIR_TIME = re.compile(r"(\d+)\.M(\d+)")


def _delivery_order(name: str) -> tuple[int, int, str]:
    """Maildir names start with the delivery time, "<seconds>.M<microseconds>P...", but
    Dovecot does not pad the microseconds: sorted as text, M99999 would follow M100000 of the
    same second, and "the newest message" would be the wrong one."""
    found = _MAILDIR_TIME.match(name)
    if found is None:
        return (0, 0, name)
    return (int(found.group(1)), int(found.group(2)), name)


@dataclass
class Dovecot:
    """A running throwaway Dovecot (LMTP + Sieve + ManageSieve) started by start_dovecot()."""

    dir: Path
    lmtp_port: int
    managesieve_port: int
    users: tuple[str, ...]
    pid: int

    password: str = USER_PASSWORD
    master_user: str = MASTER_USER
    master_password: str = MASTER_PASSWORD
    series: str = "2.3"
    """The configuration syntax it runs with (DOVECOT_SYNTAXES)."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def sieve_before_dir(self) -> Path:
        """Put admin scripts here as ``<user@domain>.sieve`` (run before the personal one)."""
        return self.dir / "sieve-before"

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / "dovecot.log"

    @property
    def auth_socket(self) -> Path:
        """Dovecot's auth-client socket (base_dir/auth-client): `lmtpfilter web` checks
        passwords there ([web] authenticator = "dovecot")."""
        return self.dir / "run" / "auth-client"

    def home(self, address: str) -> Path:
        local, _, domain = address.rpartition("@")
        return self.dir / "mail" / domain / local

    def maildir(self, address: str) -> Path:
        return self.home(address) / "Maildir"

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        """Raw messages in new/ and cur/ of a folder ("INBOX" = Maildir root, else ``.Name``)."""
        root = self.maildir(address)
        if folder != "INBOX":
            root = root / ("." + folder.replace("/", "."))
        files: list[Path] = []
        for sub in ("new", "cur"):
            d = root / sub
            if d.is_dir():
                files.extend(p for p in d.iterdir() if p.is_file())
        files.sort(key=lambda p: _delivery_order(p.name))
        out: list[bytes] = []
        for p in files:
            try:
                out.append(p.read_bytes())
            except FileNotFoundError:  # moved new/ -> cur/ meanwhile
                continue
        return out

    def wait_for_messages(
        self, address: str, count: int, folder: str = "INBOX", timeout: float = 10.0
    ) -> list[bytes]:
        """Wait until the folder holds at least ``count`` messages; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages(address, folder)
            if len(msgs) >= count:
                return msgs
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{address} {folder}: {len(msgs)} message(s) after {timeout}s, "
                    f"expected {count}\n--- dovecot log (tail) ---\n{self.log_text()[-4000:]}"
                )
            time.sleep(POLL_INTERVAL)

    def log_text(self) -> str:
        return _read_text(self.log_path)

    def stop(self) -> None:
        """SIGTERM the master and reap it (SIGKILL after 10 s). Idempotent."""
        if self._proc is not None:
            _stop_popen(self._proc)


# The Dovecot configuration is in files, one directory per configuration syntax
# (scripts/conf/dovecot-<series>/): standalone.conf, the whole throwaway instance (shared with
# scripts/sandbox.sh), which includes the production snippets the README quotes, written beside
# it with the instance's own paths. What else differs between the versions is in DovecotSyntax;
# dovecot_syntax() picks one from `dovecot --version`.
DOVECOT_CONF = REPO / "scripts" / "conf"
SNIPPETS = {
    "lmtpfilter-sieve.conf": ("/var/lib/lmtpfilter/sieve", "sieve-before"),
    "lmtpfilter-master-user.conf": ("/etc/dovecot/master-users", "masters"),
}
"""Production snippet -> (the production path in it, the instance's path relative to its dir)."""
TEMPLATE_NAMES = ("dir", "instance", "lmtp_port", "sieve_port", "uid", "gid")
"""The names in braces that standalone.conf leaves to be filled in."""


@dataclass(frozen=True)
class DovecotSyntax:
    """One Dovecot configuration syntax: its directory of files, and the users file's field
    for a per-user quota ("{quota}" is the limit, like "1K")."""

    series: str
    quota_field: str

    @property
    def conf_dir(self) -> Path:
        return DOVECOT_CONF / f"dovecot-{self.series}"

    def snippet(self, name: str, instance_dir: Path) -> str:
        """The production snippet `name` (a key of SNIPPETS) with the instance's path."""
        production, path = SNIPPETS[name]
        return (self.conf_dir / name).read_text().replace(production, str(instance_dir / path))

    def standalone(self, **values: object) -> str:
        """standalone.conf with TEMPLATE_NAMES filled in (all of them, as keywords)."""
        if set(values) != set(TEMPLATE_NAMES):
            raise ValueError(f"standalone.conf needs exactly {', '.join(TEMPLATE_NAMES)}")
        text = (self.conf_dir / "standalone.conf").read_text()
        for name, value in values.items():
            text = text.replace("{" + name + "}", str(value))
        return text

    def write(self, instance_dir: Path, **values: object) -> Path:
        """standalone.conf as instance_dir/dovecot.conf, with the snippets beside it."""
        for name in SNIPPETS:
            (instance_dir / name).write_text(self.snippet(name, instance_dir))
        conf = instance_dir / "dovecot.conf"
        conf.write_text(self.standalone(dir=instance_dir, **values))
        return conf


DOVECOT_SYNTAXES = {
    "2.3": DovecotSyntax("2.3", quota_field="userdb_quota_rule=*:storage={quota}"),
    "2.4": DovecotSyntax("2.4", quota_field="userdb_quota_storage_size={quota}"),
}


def dovecot_version(text: str | None = None) -> tuple[int, int]:
    """(major, minor) of `dovecot --version` ("2.3.19.1 (9b53102964)", "2.4.1-4 (7d8c0e5759)")."""
    if text is None:
        text = subprocess.run(["dovecot", "--version"], capture_output=True, text=True,
                              timeout=30, check=True).stdout
    parts = text.strip().split(" ")[0].split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise RuntimeError(f"cannot read the Dovecot version from {text!r}") from None


def dovecot_syntax(version: tuple[int, int] | None = None) -> DovecotSyntax:
    """The configuration syntax of Dovecot `version` (default: the installed one)."""
    version = version or dovecot_version()
    if version < (2, 3):
        raise RuntimeError(f"Dovecot {version[0]}.{version[1]} is not supported (2.3 or later)")
    return DOVECOT_SYNTAXES["2.4" if version >= (2, 4) else "2.3"]


def start_dovecot(
    base: Path,
    users: Sequence[str | tuple[str, str | None]],
    *,
    lmtp_port: int | None = None,
    managesieve_port: int | None = None,
) -> Dovecot:
    """Start Dovecot in ``base/dovecot``. users: "addr" or ("addr", quota like "1K" or None).

    Every user's password is USER_PASSWORD; a quota user gets a per-recipient ``552 5.2.2``
    after DATA once full. The master user MASTER_USER/MASTER_PASSWORD may log in as any user.
    """
    d = _instance_dir(base, "dovecot")
    lmtp_port = lmtp_port or free_port()
    managesieve_port = managesieve_port or free_port()
    uid = pwd.getpwnam(MAIL_USER).pw_uid
    gid = grp.getgrnam(MAIL_GROUP).gr_gid
    syntax = dovecot_syntax()

    for sub in ("run", "state", "log", "mail", "sieve-before"):
        (d / sub).mkdir(exist_ok=True)
    os.chown(d / "mail", uid, gid)

    addresses: list[str] = []
    lines: list[str] = []
    for u in users:
        addr, quota = (u, None) if isinstance(u, str) else u
        extra = syntax.quota_field.format(quota=quota) if quota else ""
        lines.append(f"{addr}:{{PLAIN}}{USER_PASSWORD}::::::{extra}\n")
        addresses.append(addr)
    (d / "users").write_text("".join(lines))
    (d / "masters").write_text(f"{MASTER_USER}:{{PLAIN}}{MASTER_PASSWORD}\n")
    conf = syntax.write(d, instance=f"lmtpfilter-test-{lmtp_port}", lmtp_port=lmtp_port,
                        sieve_port=managesieve_port, uid=uid, gid=gid)

    check = subprocess.run(
        ["doveconf", "-n", "-c", str(conf)], capture_output=True, timeout=30, check=False
    )
    (d / "doveconf-n.txt").write_bytes(check.stdout)
    doveconf_err = check.stderr.decode(errors="replace")
    if check.returncode != 0:
        raise RuntimeError(f"doveconf rejected {conf} (rc {check.returncode}):\n{doveconf_err}")

    (d / "run" / "master.pid").unlink(missing_ok=True)
    stdout_path = d / "log" / "dovecot.stdout"
    with stdout_path.open("wb") as out:
        proc = subprocess.Popen(
            ["dovecot", "-F", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dovecot = Dovecot(
        dir=d,
        lmtp_port=lmtp_port,
        managesieve_port=managesieve_port,
        users=tuple(addresses),
        pid=proc.pid,
        series=syntax.series,
        _proc=proc,
    )
    why = _wait_banners(
        [(lmtp_port, b"220"), (managesieve_port, b'"IMPLEMENTATION"')],
        alive=lambda: proc.poll() is None,
        timeout=READY_TIMEOUT,
    )
    if why is not None:
        dovecot.stop()
        raise RuntimeError(
            f"dovecot {'died during startup' if why == 'died' else 'not ready after 30s'} "
            f"(rc {proc.returncode}, lmtp {lmtp_port}, managesieve {managesieve_port})\n"
            f"--- doveconf stderr ---\n{doveconf_err}\n"
            f"--- dovecot.stdout ---\n{_read_text(stdout_path)}\n"
            f"--- dovecot.log ---\n{dovecot.log_text()}"
        )
    return dovecot


# --------------------------------------------------------------------------- Postfix

_MASTER_CF = (REPO / "scripts" / "conf" / "postfix-master.cf").read_text()


@dataclass
class Postfix:
    """A running throwaway second Postfix instance started by start_postfix()."""

    dir: Path
    smtp_port: int
    pid: int

    @property
    def etc(self) -> Path:
        return self.dir / "etc"

    def _run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def send(self, sender: str, recipients: Sequence[str], message: bytes) -> None:
        """Submit over SMTP; raises smtplib.SMTPRecipientsRefused if ANY recipient is refused."""
        with smtplib.SMTP(LOOPBACK, self.smtp_port, local_hostname="localhost", timeout=30) as s:
            refused = s.sendmail(sender, list(recipients), message)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)

    def maillog(self) -> str:
        return _read_text(self.dir / "maillog")

    def queue(self) -> str:
        """``postqueue -p`` output."""
        res = self._run("postqueue", "-c", str(self.etc), "-p")
        return res.stdout + res.stderr

    def queue_is_empty(self) -> bool:
        return "Mail queue is empty" in self.queue()

    def wait_queue_empty(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.queue_is_empty():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"postfix queue not empty after {timeout}s:\n{self.queue()}\n"
                    f"--- maillog (tail) ---\n{self.maillog()[-4000:]}"
                )
            time.sleep(0.1)

    def flush(self) -> None:
        """``postqueue -f``: retry every deferred message now."""
        res = self._run("postqueue", "-c", str(self.etc), "-f")
        if res.returncode != 0:
            raise RuntimeError(f"postqueue -f failed: {res.stdout}{res.stderr}")

    def set_transport(self, transport: str) -> None:
        """Change virtual_transport and reload; returns once master logged the reload."""
        res = self._run("postconf", "-c", str(self.etc), "-e", f"virtual_transport = {transport}")
        if res.returncode != 0:
            raise RuntimeError(f"postconf -e failed: {res.stdout}{res.stderr}")
        _backdate(sorted(self.etc.iterdir()))
        reloads = self.maillog().count(": reload -- ")
        res = self._run("postfix", "-c", str(self.etc), "reload")
        if res.returncode != 0:
            raise RuntimeError(f"postfix reload failed: {res.stdout}{res.stderr}")
        deadline = time.monotonic() + 10.0
        while self.maillog().count(": reload -- ") <= reloads:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix reload not logged:\n{self.maillog()[-4000:]}")
            time.sleep(POLL_INTERVAL)

    def stop(self) -> None:
        """SIGTERM the master (~0.03 s, unlike ``postfix stop``) and wait until it is gone."""
        _stop_postfix_master(self.dir, self.pid)


def _master_pid(d: Path) -> int | None:
    try:
        return int((d / "spool" / "pid" / "master.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _stop_postfix_master(d: Path, pid: int | None) -> None:
    if pid is None:
        pid = _master_pid(d)
    if pid is None or not _pid_running(pid):
        return
    if _read_text(Path(f"/proc/{pid}/comm")).strip() != "master":
        return  # stale pid file, the pid was reused: not ours
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _pid_running(pid):
        if time.monotonic() > deadline:
            # master is a session leader (setsid) -> its children share pgid == pid
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + STOP_TIMEOUT
            while _pid_running(pid) and time.monotonic() < kill_deadline:
                time.sleep(POLL_INTERVAL)
            break
        time.sleep(POLL_INTERVAL)
    _reap_session(pid)


def start_postfix(
    base: Path,
    *,
    transport: str,
    domains: Sequence[str] = ("example.org",),
    recipients: Sequence[str] | None = None,
    smtp_port: int | None = None,
    extra_main_cf: Mapping[str, str] | None = None,
) -> Postfix:
    """Start a second Postfix instance in ``base/postfix`` listening on 127.0.0.1:smtp_port.

    transport: virtual_transport, e.g. "lmtp:inet:127.0.0.1:10024" or "lmtp:unix:/path".
    recipients: accepted addresses (texthash map); None accepts every address in domains.
    No relaying, no outbound delivery, no DNS. extra_main_cf overrides/extends main.cf.
    """
    d = _instance_dir(base, "postfix")
    smtp_port = smtp_port or free_port()
    etc = d / "etc"
    for sub in ("etc", "spool", "data"):
        (d / sub).mkdir(exist_ok=True)
    etc.chmod(0o755)
    pw = pwd.getpwnam("postfix")
    os.chown(d / "data", pw.pw_uid, -1)

    if recipients is None:
        vmaps = "static:OK"
    else:
        (etc / "vmailbox").write_text("".join(f"{r} OK\n" for r in recipients))
        vmaps = f"texthash:{etc}/vmailbox"  # texthash: no postmap step

    params: dict[str, str] = {
        "compatibility_level": "3.6",
        "queue_directory": f"{d}/spool",
        "data_directory": f"{d}/data",
        "syslog_name": f"postfix-test-{smtp_port}",
        "maillog_file": f"{d}/maillog",
        "maillog_file_prefixes": str(d),
        "myhostname": "mx.lab.example",
        "mydomain": "lab.example",
        "myorigin": "$myhostname",
        "inet_interfaces": LOOPBACK,
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "mydestination": "",
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "relayhost": "",
        "relay_domains": "",
        "biff": "no",
        "append_dot_mydomain": "no",
        "readme_directory": "no",
        "smtpd_banner": "$myhostname ESMTP lab",
        # no relaying, no outbound delivery, no DNS: anything not in virtual_mailbox_domains
        # is refused at RCPT; bounces die locally
        "smtpd_relay_restrictions": "reject_unauth_destination",
        "default_transport": "error:5.7.1 outbound delivery disabled in test instance",
        "relay_transport": "error:5.7.1 outbound delivery disabled in test instance",
        "smtp_dns_support_level": "disabled",
        "lmtp_dns_support_level": "disabled",
        "smtpd_peername_lookup": "no",
        "virtual_mailbox_domains": " ".join(domains),
        "virtual_mailbox_maps": vmaps,
        "virtual_transport": transport,
        # test-friendly queue behaviour: fail fast, retry fast
        "lmtp_connect_timeout": "5s",
        "smtp_connect_timeout": "5s",
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "5s",
        "delay_warning_time": "0",
    }
    params.update(extra_main_cf or {})
    (etc / "main.cf").write_text(
        "# generated by tests/harness/daemons.py\n"
        + "".join(f"{k} = {v}\n" for k, v in params.items())
    )
    # chroot column must be "n": the instance has no chroot jail
    (etc / "master.cf").write_text(_MASTER_CF.format(listen=f"{LOOPBACK}:{smtp_port}"))
    # Postfix re-reads config files modified < ~2 s ago until they "cool down": backdate.
    _backdate(sorted(etc.iterdir()))

    def fail(what: str, detail: str) -> RuntimeError:
        check = subprocess.run(
            ["script", "-qc", f"postfix -c {etc} check", "/dev/null"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        _stop_postfix_master(d, None)
        return RuntimeError(
            f"postfix {what} (dir {d}, port {smtp_port})\n{detail}\n"
            f"--- postfix check (under script) ---\n{check.stdout}{check.stderr}\n"
            f"--- maillog ---\n{_read_text(d / 'maillog')}"
        )

    try:
        start = subprocess.run(
            ["postfix", "-c", str(etc), "start"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise fail("start timed out", str(exc)) from exc
    if start.returncode != 0:
        raise fail(f"start failed (rc {start.returncode})", start.stdout + start.stderr)

    pid: int | None = None

    def alive() -> bool:
        nonlocal pid
        pid = pid or _master_pid(d)
        return pid is None or _pid_running(pid)

    why = _wait_banners([(smtp_port, b"220")], alive=alive, timeout=READY_TIMEOUT)
    pid = pid or _master_pid(d)
    if why is not None or pid is None:
        raise fail(
            "master died during startup" if why == "died" else "not answering after 30s",
            start.stdout + start.stderr,
        )
    return Postfix(dir=d, smtp_port=smtp_port, pid=pid)


# --------------------------------------------------------------------------- smtp-sink


@dataclass
class SmtpSink:
    """A running Postfix smtp-sink (LMTP by default) started by start_smtp_sink()."""

    dir: Path
    port: int
    pid: int
    lmtp: bool
    dump: bool
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def dump_dir(self) -> Path:
        return self.dir / "dump"

    def dumps(self) -> list[bytes]:
        """Contents of the dump files (one per transaction), oldest name first."""
        if not self.dump_dir.is_dir():
            return []
        return [p.read_bytes() for p in sorted(self.dump_dir.iterdir()) if p.is_file()]

    def output(self) -> str:
        return _read_text(self.dir / "smtp-sink.out")

    def stop(self) -> None:
        if self._proc is not None:
            _stop_popen(self._proc)


def start_smtp_sink(
    base: Path, *, port: int | None = None, lmtp: bool = True, dump: bool = False
) -> SmtpSink:
    """Start ``smtp-sink`` in ``base/smtp-sink`` on 127.0.0.1:port (LMTP unless lmtp=False).

    dump=True writes every transaction to ``dir/dump/<HHMMSS>.<random>`` (see dumps()).
    """
    d = _instance_dir(base, "smtp-sink")
    port = port or free_port()
    args = ["smtp-sink", "-u", MAIL_USER, "-c", "-m", "512"]
    if lmtp:
        args.append("-L")
    if dump:
        dump_dir = d / "dump"
        dump_dir.mkdir(exist_ok=True)
        shutil.chown(dump_dir, user=MAIL_USER)  # written after setuid
        args += ["-d", f"{dump_dir}/%H%M%S."]
    args += [f"{LOOPBACK}:{port}", "1024"]
    out_path = d / "smtp-sink.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sink = SmtpSink(dir=d, port=port, pid=proc.pid, lmtp=lmtp, dump=dump, _proc=proc)
    why = _wait_banners([(port, b"220")], alive=lambda: proc.poll() is None, timeout=10.0)
    if why is not None:
        sink.stop()
        raise RuntimeError(
            f"smtp-sink {'died' if why == 'died' else 'not ready after 10s'} "
            f"(rc {proc.returncode}, port {port}):\n{_read_text(out_path)}"
        )
    return sink
