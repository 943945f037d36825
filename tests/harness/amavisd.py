"""A throwaway real amavisd-new (Debian's package) on loopback, for tests (stdlib only).

Companion of :mod:`tests.harness.daemons` and :mod:`tests.harness.scanners` (same conventions:
:func:`start_amavisd` creates its own sub-directory of ``base``; use
:func:`tests.harness.daemons.short_tmpdir` for ``base``). The recipe is bench/compare.py's:

* amavisd reads several ``-c FILE`` options in order. The caller's ``conf_files`` come first
  (e.g. :func:`debian_conf_files`, Debian's conf.d as shipped, plus a tutorial's 50-user); the
  harness's own file comes last and sets only what a test box needs: ``$MYHOME`` and the
  directories below it, the listening port on 127.0.0.1, no syslog (``$LOGFILE``), no BerkeleyDB,
  clamd via CONTSCAN on the test clamd's socket, SpamAssassin inside amavisd with the test
  spamd's site config and local tests only, ``$mydomain = 'example.org'``. Everything else
  (destinies, levels, quarantine layout, bypass maps) is the conf files' business or ``extra``'s.
* Debian's ``20-package`` bypasses virus and spam checks; a test that wants them puts
  :data:`ENABLE_CHECKS` (the lines Debian's ``15-content_filter_mode`` has commented out) in
  ``extra`` or in a conf file of its own.
* amavisd refuses a config file that is not owned by root or that its user could write: the
  config files live in ``base/amavisd`` (root's, 0755), ``$MYHOME`` is ``base/amavisd/home``
  (amavis's).
* The test clamd runs as root, so it can read amavis's 0750 temp directories for CONTSCAN.
* SpamAssassin compiles its rules at startup: allow ~20-40 s; keep one amavisd per module.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Private helpers of daemons.py, imported on purpose (shared harness internals, not copied).
from tests.harness.daemons import (
    LOOPBACK,
    _first_line,
    _instance_dir,
    _read_text,
    _stop_popen,  # also waits for the whole session (_reap_session)
    free_port,
)

__all__ = [
    "AMAVISD",
    "AMAVIS_USER",
    "ENABLE_CHECKS",
    "Amavisd",
    "debian_conf_files",
    "start_amavisd",
]

AMAVISD = Path("/usr/sbin/amavisd")
AMAVIS_USER = "amavis"
READY_TIMEOUT = 120.0  # SpamAssassin's rule compile on a busy 2-CPU box
POLL_INTERVAL = 0.2
LOG_TAIL_LINES = 40

DEBIAN_CONF_DIRS = (Path("/usr/share/amavis/conf.d"), Path("/etc/amavis/conf.d"))
# run-parts --list: only names made of letters, digits, '_' and '-' (no dpkg leftovers).
_RUN_PARTS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")

ENABLE_CHECKS = """\
@bypass_virus_checks_maps = (
   \\%bypass_virus_checks, \\@bypass_virus_checks_acl, \\$bypass_virus_checks_re);
@bypass_spam_checks_maps = (
   \\%bypass_spam_checks, \\@bypass_spam_checks_acl, \\$bypass_spam_checks_re);
"""
"""Perl for ``extra``: virus and spam checks on, as Debian's 15-content_filter_mode says."""


def debian_conf_files(directories: Sequence[Path] = DEBIAN_CONF_DIRS) -> list[Path]:
    """The files amavisd reads without ``-c`` on Debian, in its order (find_config_files);
    ``directories`` replaces Debian's two (copies of them, for a test's own site)."""
    return [
        path
        for directory in directories
        for path in sorted(directory.iterdir())
        if path.is_file() and _RUN_PARTS_NAME.match(path.name)
    ]


@dataclass
class Amavisd:
    """A running amavisd started by :func:`start_amavisd`."""

    home: Path
    """$MYHOME (owned by amavis)."""
    port: int
    """Where it listens (127.0.0.1)."""
    quarantine_dir: Path
    """$QUARANTINEDIR."""
    log_path: Path
    """$LOGFILE: amavis's own log lines ($DO_SYSLOG = 0)."""
    conf_path: Path
    """The harness's own config file, the last ``-c``."""
    stdout_path: Path
    """What the process printed (startup errors before the log file is open)."""
    ready_after: float = 0.0
    """Seconds from spawn until the 220 banner."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log(self) -> str:
        """amavis's log file so far."""
        return _read_text(self.log_path)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = _read_text(self.stdout_path) + _read_text(self.log_path)
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the whole process group, wait (SIGKILL after 10 s) and reap every child.

        Idempotent. The Net::Server parent and its children share the session that
        ``start_new_session`` gave the parent.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        _stop_popen(proc)


def _harness_conf(
    home: Path,
    port: int,
    *,
    clamd_socket: Path,
    spamd_site_dir: Path | None,
    protocol: str,
    forward_method: str,
    extra: str,
) -> str:
    spamassassin = (
        f"$sa_configpath = '/usr/share/spamassassin'; $sa_siteconfigpath = '{spamd_site_dir}';\n"
        if spamd_site_dir is not None
        else ""
    )
    return f"""\
# generated by tests/harness/amavisd.py: the test box; read last
use strict;
$MYHOME = '{home}';
$TEMPBASE = "$MYHOME/tmp"; $ENV{{TMPDIR}} = $TEMPBASE;
$db_home = "$MYHOME/db"; $helpers_home = "$MYHOME/var";
$lock_file = "$MYHOME/amavisd.lock"; $pid_file = "$MYHOME/amavisd.pid";
$unix_socketname = "$MYHOME/amavisd.sock";  # Debian's 25-amavis_helpers: /var/lib/amavis
$QUARANTINEDIR = "$MYHOME/quarantine";
$daemon_user = '{AMAVIS_USER}'; $daemon_group = '{AMAVIS_USER}';
$mydomain = 'example.org'; $myhostname = 'amavis.example.org';
@local_domains_acl = (".$mydomain");  # Debian's 05-domain_id read /etc/mailname
$enable_db = 0; $enable_global_cache = 0; $enable_zmq = 0; $nanny_details_level = 0;
$DO_SYSLOG = 0; $LOGFILE = "$MYHOME/amavis.log"; $log_level = 0;
$inet_socket_bind = '{LOOPBACK}'; $inet_socket_port = {port}; @inet_acl = qw({LOOPBACK});
$protocol = '{protocol}';
$forward_method = '{forward_method}'; $notify_method = $forward_method;
@av_scanners = (['ClamAV-clamd', \\&ask_daemon, ["CONTSCAN {{}}\\n", "{clamd_socket}"],
                 qr/\\bOK$/m, qr/\\bFOUND$/m, qr/^.*?: (?!Infected Archive)(.*) FOUND$/m ]);
@av_scanners_backup = ();
$sa_local_tests_only = 1;
{spamassassin}{extra}
1;  # ensure a defined return
"""


def start_amavisd(
    base: Path,
    *,
    clamd_socket: Path,
    spamd_site_dir: Path | None,
    protocol: str,
    forward_method: str,
    conf_files: Sequence[Path] = (),
    extra: str = "",
    name: str = "amavisd",
) -> Amavisd:
    """Start amavisd (foreground) in ``base/NAME``; return once it sends its 220 banner.

    ``protocol`` is what it listens with ("LMTP" or "SMTP"); ``forward_method`` where it
    delivers (e.g. ``"lmtp:[127.0.0.1]:24"``); ``conf_files`` are read first, in order;
    ``extra`` is Perl appended to the harness's own (last) file. On failure the process is
    stopped and RuntimeError carries the tail of its output and log.
    """
    if protocol not in ("LMTP", "SMTP"):
        raise ValueError(f"protocol must be LMTP or SMTP, not {protocol!r}")
    if not AMAVISD.exists():
        raise RuntimeError(f"{AMAVISD} is not installed (Debian package amavisd-new)")
    d = _instance_dir(base, name)  # root's, 0755: amavisd accepts config files here
    home = d / "home"
    for sub in ("", "tmp", "db", "var", "quarantine"):
        (home / sub).mkdir(exist_ok=True)
        shutil.chown(home / sub, user=AMAVIS_USER, group=AMAVIS_USER)
    (home / "quarantine").chmod(0o750)  # as Debian's /var/lib/amavis/virusmails
    port = free_port()
    conf = d / "amavisd-harness.conf"
    conf.write_text(
        _harness_conf(
            home,
            port,
            clamd_socket=clamd_socket,
            spamd_site_dir=spamd_site_dir,
            protocol=protocol,
            forward_method=forward_method,
            extra=extra,
        )
    )
    conf.chmod(0o644)
    args = [str(AMAVISD)]
    for path in [*conf_files, conf]:
        args += ["-c", str(path)]
    args.append("foreground")
    amavisd = Amavisd(
        home=home,
        port=port,
        quarantine_dir=home / "quarantine",
        log_path=home / "amavis.log",
        conf_path=conf,
        stdout_path=d / "amavisd.out",
    )
    t0 = time.monotonic()
    with amavisd.stdout_path.open("ab") as out:
        amavisd._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home,
            start_new_session=True,
        )
    why = _wait_banner(amavisd._proc, port)
    if why is not None:
        tail = amavisd.log_tail()
        amavisd.stop()
        raise RuntimeError(f"amavisd {why} (port {port}, config {conf})\n{tail}")
    amavisd.ready_after = time.monotonic() - t0
    return amavisd


def _wait_banner(proc: subprocess.Popen[bytes], port: int) -> str | None:
    """None once 127.0.0.1:port greets with 220; else why not ("died ..." / "not ready ...")."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            return f"died during startup (rc {proc.returncode})"
        if _first_line(port).startswith(b"220"):
            return None
        if time.monotonic() > deadline:
            return f"not ready after {READY_TIMEOUT:.0f}s"
        time.sleep(POLL_INTERVAL)
