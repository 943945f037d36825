"""The README's production guide, followed literally (issue 13, item 6).

The commands are the shell blocks of README.md's "Production guide" section, read from the
README: run one by one, in order, as root, in a working directory that `cd` moves, as someone
pasting them would. Most run as they are. Where a command needs systemd, the network, or the
machine's own Postfix, Dovecot, clamd, spamd, ports or /etc, the test runs the equivalent
against its own: MAPPED (inside any command) and SUBSTITUTED (whole commands) say which, and
why. A command that neither names runs as it is, so a command added to the guide is tested as
written.

The Postfix here starts as an amavisd-new site set up as the seed tutorial does: Debian's
real amavisd-new (its /usr/share/amavis/conf.d and /etc/amavis/conf.d as shipped, the
tutorial's 50-user) as Postfix's `content_filter`, re-injecting on port 10025. A clean, a spam
(GTUBE) and a virus (EICAR) message go through it first; then amavisd-new stops and a stand-in
holds its port (answering 421, as a busy amavisd) while one more message waits in Postfix's
queue: the guide must take amavis out in an order that loses no mail, import its settings and
quarantine, and start lmtpfilter only once the port is free. After the guide, clean, spam and
virus mail must have had the same outcomes and headers as under amavis, amavis's quarantined
virus must be in lmtpfilter's quarantine, and the log lines must count in logwatch as amavis's
did. Every location install.sh takes from LMTPFILTER_* is in a temporary root; so are /run,
/usr/share/amavis and /etc/amavis. Needs root; takes about two minutes (install.sh builds a venv).
"""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import logwatch
from tests.harness.amavisd import Amavisd, debian_conf_files, start_amavisd
from tests.harness.daemons import (
    Dovecot,
    Postfix,
    free_port,
    short_tmpdir,
    start_dovecot,
    start_postfix,
)
from tests.harness.install import copy_checkout
from tests.harness.logwatch import SyslogSink
from tests.harness.scanners import EICAR, GTUBE, Clamd, Spamd
from tests.harness.systemd import SYSTEMD_PATH, ServiceUnit

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="the guide runs as root")]
ROOT = Path(__file__).parent.parent.parent
GUIDE = "## Production guide (Debian 12 and 13)"
SERVICE_USER = "lmtpfilter"
YOU, OTHER = "you@example.org", "other@example.org"  # the guide's address, and one more
POSTMASTER = "postmaster@example.org"  # Debian's amavis: $virus_admin = "postmaster@$mydomain"
AMAVIS_ERA_SUBJECT = "queued for amavisd-new before the switch"
TUTORIAL_50_USER = ROOT / "tests" / "data" / "amavis_config" / "tutorial-50-user"
PACKAGE_CONF, SITE_CONF = Path("/usr/share/amavis/conf.d"), Path("/etc/amavis/conf.d")


def guide_commands(readme: str) -> list[str]:
    """The commands of the guide's ```sh blocks, in order: continuation lines joined,
    comment lines and blank lines left out."""
    section = re.split(r"\n## ", readme.split(GUIDE, 1)[1], maxsplit=1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1]
                continue
            command, pending = (pending + line).strip(), ""
            if command and not command.startswith("#"):
                commands.append(re.sub(r"\s+", " ", command))
    return commands


class AmavisStandIn:
    """Holds amavisd-new's port and answers as a busy amavisd does (421): Postfix keeps the
    mail it meant for it in its queue. Stopping it is `systemctl disable --now amavis`."""

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                continue
            with connection:
                connection.sendall(b"421 4.3.2 amavisd-new stand-in: busy, try later\r\n")

    def stop(self) -> None:
        self.running = False
        self.thread.join()
        self.listener.close()


@dataclass
class Site:
    """The test's machine: a temporary root for lmtpfilter, and its own daemons."""

    root: Path
    postfix: Postfix
    dovecot: Dovecot
    clamd: Clamd
    spamd: Spamd
    amavis: AmavisStandIn
    ports: dict[int, int]  # the guide's port -> this test's
    amavisd: Amavisd  # stopped before the guide starts; its files stay
    amavis_era: dict[str, bytes]  # what the clean and the spam message looked like in INBOX
    syslog: SyslogSink  # the machine's syslog (/dev/log), for lmtpfilter's [log] syslog
    services: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def paths(self) -> dict[str, Path]:
        """The guide's locations -> this test's (install.sh's LMTPFILTER_* and /run)."""
        return {"/usr/local/src/lmtpfilter": self.root / "usr/local/src/lmtpfilter",
                "/etc/lmtpfilter": self.root / "etc/lmtpfilter",
                "/var/lib/lmtpfilter": self.root / "var/lib/lmtpfilter",
                "/run/lmtpfilter": self.root / "run/lmtpfilter",
                str(SITE_CONF): self.root / "etc/amavis/conf.d",
                "/var/lib/amavis/virusmails": self.amavisd.quarantine_dir}

    @property
    def state(self) -> Path:
        return self.paths["/var/lib/lmtpfilter"]

    @property
    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        bin_dir = self.root / "usr/local/bin"
        env.update(PATH=f"{bin_dir}:{SYSTEMD_PATH}", HOME=str(self.root),
                   DEBIAN_FRONTEND="noninteractive", APT_CONFIG=str(self.root / "apt.conf"),
                   LMTPFILTER_PREFIX=str(self.root / "opt/lmtpfilter"),
                   LMTPFILTER_ETC=str(self.paths["/etc/lmtpfilter"]),
                   LMTPFILTER_STATE=str(self.state),
                   LMTPFILTER_UNITS=str(self.root / "etc/systemd/system"),
                   LMTPFILTER_BIN=str(bin_dir),
                   # The default config path, /etc/lmtpfilter/lmtpfilter.toml, moved with /etc.
                   LMTPFILTER_CONFIG=str(self.paths["/etc/lmtpfilter"] / "lmtpfilter.toml"))
        return env


# Inside every command (and in the reviewed config): why each mapping is there.
MAPPED = {
    "locations": "/etc/lmtpfilter, /var/lib/lmtpfilter, /run/lmtpfilter and the clone live in "
                 "the temporary root (install.sh's LMTPFILTER_* variables)",
    "ports": "127.0.0.1:10024 and :10025 are free ports here: the machine's may be taken",
    "postfix": "postconf, postsuper and postqueue act on the test's Postfix (-c), never on "
               "/etc/postfix; swaks --server 127.0.0.1 (port 25) goes to its SMTP port",
    "scanners": "clamdscan and spamc ask the test's clamd and spamd, which run with the "
                "settings of step 2 (tests/harness/scanners.py)",
    "apt": "apt-get waits for the dpkg lock (APT_CONFIG: DPkg::Lock::Timeout) instead of "
           "failing while another apt-get runs on the machine",
    "amavis": "import-amavis reads the test's copies of /usr/share/amavis/conf.d and "
              "/etc/amavis/conf.d (the ones its amavisd read); the quarantine import reads "
              "that amavisd's $QUARANTINEDIR",
}


def mapped(site: Site, text: str) -> str:
    for old, new in site.paths.items():  # not twice: the new paths end with the old ones
        text = re.sub(rf"(?<!{re.escape(str(site.root))}){re.escape(old)}", str(new), text)
    for old_port, new_port in site.ports.items():
        text = re.sub(rf"127\.0\.0\.1:{old_port}\b", f"127.0.0.1:{new_port}", text)
    etc = site.postfix.etc
    text = re.sub(r"(^|&& |; )(postconf|postsuper|postqueue) ", rf"\1\2 -c {etc} ", text)
    # Debian's package files are read first for /etc/amavis/conf.d: here, for its copy.
    text = re.sub(r"^lmtpfilter import-amavis ",
                  f"lmtpfilter import-amavis {site.root}{PACKAGE_CONF} ", text)
    text = re.sub(r"--server 127\.0\.0\.1(?![:\d])", f"--server 127.0.0.1:{site.postfix.smtp_port}",
                  text)
    # Where a command starts (not a package name in apt-get's list).
    text = re.sub(r"(^|&& |; )clamdscan ", rf"\1clamdscan --config-file={site.clamd.conf_path} ",
                  text)
    return re.sub(r"(^|&& |; )spamc ", rf"\1spamc -p {site.spamd.port} ", text)


@dataclass
class Substitution:
    """A command of the guide that runs as something else here, and why."""

    pattern: str
    why: str
    run: Callable[[Site, str], subprocess.CompletedProcess[str]]
    used: int = 0


def ok(command: str, output: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(command, 0, output, "")


def shell(site: Site, command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f"set -eo pipefail\n{command}"], cwd=cwd,
                          env=site.environment, capture_output=True, text=True, timeout=900)


def clone(site: Site, command: str) -> subprocess.CompletedProcess[str]:
    copy_checkout(site.paths["/usr/local/src/lmtpfilter"])
    return ok(command)


def reload_postfix(site: Site, command: str) -> subprocess.CompletedProcess[str]:
    return restart_postfix(site.postfix)


def restart_postfix(postfix: Postfix) -> subprocess.CompletedProcess[str]:
    """`postfix reload`, once main.cf and master.cf are old enough to be read (the harness's
    "cool down"), and wait until master logged it."""
    then = time.time() - 10
    for path in postfix.etc.iterdir():
        os.utime(path, (then, then))
    reloads = postfix.maillog().count(": reload -- ")
    result = subprocess.run(["postfix", "-c", str(postfix.etc), "reload"],
                            capture_output=True, text=True, timeout=60)
    deadline = time.monotonic() + 10
    while result.returncode == 0 and postfix.maillog().count(": reload -- ") <= reloads:
        assert time.monotonic() < deadline, postfix.maillog()[-3000:]
        time.sleep(0.05)
    return result


def stop_amavis(site: Site, command: str) -> subprocess.CompletedProcess[str]:
    site.amavis.stop()
    return ok(command)


def enable_units(site: Site, command: str) -> subprocess.CompletedProcess[str]:
    """What `systemctl enable --now lmtpfilter lmtpfilter-janitor.timer` does, with the units
    install.sh installed: the service started as its unit says (tests/harness/systemd.py), and
    the janitor's service run once, as the timer will run it every 15 minutes."""
    units = site.root / "etc/systemd/system"
    service = ServiceUnit.read(units / "lmtpfilter.service")
    before, process = service.start(site.root / "run", site.root / "lmtpfilter.log")
    output = "".join(r.stdout + r.stderr for r in before)
    if process is None:
        return subprocess.CompletedProcess(command, 1, output, "ExecStartPre failed")
    site.services.append(process)
    port = site.ports[10024]
    deadline = time.monotonic() + 30
    while not banner(port):
        if process.poll() is not None or time.monotonic() > deadline:
            return subprocess.CompletedProcess(command, 1, output,
                                               (site.root / "lmtpfilter.log").read_text())
        time.sleep(0.1)
    [janitor] = ServiceUnit.read(units / "lmtpfilter-janitor.service").run("ExecStart")
    return subprocess.CompletedProcess(command, janitor.returncode,
                                       output + janitor.stdout, janitor.stderr)


def banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(100).startswith(b"220")
    except OSError:
        return False


def mail_log(site: Site, command: str) -> subprocess.CompletedProcess[str]:
    lines = [line for line in site.postfix.maillog().splitlines() if "/lmtp[" in line]
    return ok(command, "\n".join(lines) + "\n")


def amavis_log(site: Site, command: str) -> subprocess.CompletedProcess[str]:
    return ok(command, "\n".join(syslog_lines(site.syslog, "amavis")) + "\n")


def syslog_lines(sink: SyslogSink, program: str) -> list[str]:
    """What the syslog socket got from PROGRAM, as rsyslog writes it in mail.log."""
    return [logwatch.syslog_line(message, tag) for _, tag, message in list(sink.records)
            if tag.startswith(program + "[")]


SUBSTITUTED = [
    Substitution(r"^apt-get update$",
                 "the package lists need the network; every package of the next command is "
                 "installed already, which that command (run as it is) shows",
                 lambda site, command: ok(command)),
    Substitution(r"^git clone <this repository> /usr/local/src/lmtpfilter && "
                 r"cd /usr/local/src/lmtpfilter$",
                 "the working tree under test is copied (a clone would take the last commit); "
                 "the next commands run there", clone),
    Substitution(r"^systemctl restart clamav-daemon spamd$",
                 "no systemd here; the test's clamd and spamd run with step 2's settings",
                 lambda site, command: ok(command)),
    Substitution(r"^systemctl restart postfix$",
                 "no systemd here: the test's Postfix re-reads main.cf and master.cf "
                 "(postfix reload)", reload_postfix),
    Substitution(r"^systemctl disable --now amavis$",
                 "the test's amavisd-new stopped before the guide (its stand-in held the "
                 "port since): the stand-in stops and frees the port", stop_amavis),
    Substitution(r"^systemctl enable --now lmtpfilter lmtpfilter-janitor\.timer$",
                 "no systemd here: the installed units run as systemd would run them "
                 "(tests/harness/systemd.py), the janitor's once, as its timer does",
                 enable_units),
    Substitution(r"^journalctl -t postfix/lmtp ",
                 "the test's Postfix logs to its own maillog_file, not to the journal",
                 mail_log),
    Substitution(r"^journalctl -t amavis ",
                 "lmtpfilter's [log] syslog goes to the test's syslog socket, not the journal",
                 amavis_log),
]

# What some commands must have said, besides exiting 0.
EXPECTED_OUTPUT = {
    r"^clamdscan ": "PONG",
    r"--protocol LMTP": "250 2.",
    r"^journalctl -t postfix": "status=sent",
    r"^journalctl -t amavis": "Blocked INFECTED",
    r"^lmtpfilter quarantine import-amavis": "imported 2,",  # the virus, and the spam
    r"^lmtpfilter quarantine list": "virus",
}


def wait_for_postfix(site: Site, command: str) -> None:
    """A person reads swaks's answer before the next line; delivery through Postfix is
    asynchronous, so the test waits for Postfix's queue to empty instead."""
    if command.startswith("postqueue") or (command.startswith("swaks")
                                           and "--protocol LMTP" not in command):
        site.postfix.wait_queue_empty(timeout=60)


def amavis_site_conf(root: Path) -> list[Path]:
    """The amavis config of the test's machine: copies of Debian's two conf.d directories as
    shipped, with the tutorial's 50-user; the files its amavisd reads, in amavisd's order.
    05-domain_id reads $mydomain from /etc/mailname, which this machine may not have: the
    copy says what the test machine's would ("example.org") instead. (import-amavis reads the
    real idiom in tests/unit/test_amavis_config.py.)"""
    package, site = root / str(PACKAGE_CONF).lstrip("/"), root / str(SITE_CONF).lstrip("/")
    shutil.copytree(PACKAGE_CONF, package)
    shutil.copytree(SITE_CONF, site)
    shutil.copy(TUTORIAL_50_USER, site / "50-user")
    domain_id = site / "05-domain_id"
    text, count = re.subn(r"chomp\(\$mydomain = `head -n 1 /etc/mailname`\);",
                          "$mydomain = 'example.org';", domain_id.read_text())
    assert count == 1, f"Debian's 05-domain_id changed:\n{text}"
    domain_id.write_text(text)
    return debian_conf_files([package, site])


def send_three(postfix: Postfix, dovecot: Dovecot, to: str, era: str) -> dict[str, bytes]:
    """A clean, a spam (GTUBE) and a virus (EICAR) message through Postfix to `to`; what
    reached its mailbox (INBOX, or Junk where a Sieve script put it there), by kind."""
    for kind, body in (("clean", b"hello"), ("spam", GTUBE), ("virus", EICAR)):
        postfix.send("sender@example.net", [to],
                     f"From: sender@example.net\r\nTo: {to}\r\nSubject: {era} era {kind}\r\n"
                     f"Message-ID: <{era}-era-{kind}@example.net>\r\n\r\n".encode()
                     + body + b"\r\n")
    postfix.wait_queue_empty(timeout=60)
    deadline = time.monotonic() + 10  # queued "sent" is stored: only the folder listing lags
    while True:
        stored = dovecot.messages(to) + dovecot.messages(to, folder="Junk")
        found = {kind: m for kind in ("clean", "spam", "virus") for m in stored
                 if f"{era} era {kind}".encode() in m}
        if len(found) >= 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def amavis_era(postfix: Postfix, dovecot: Dovecot, amavisd: Amavisd) -> dict[str, bytes]:
    """The three through amavisd-new, with the tutorial's settings: clean and spam delivered
    (the spam tagged, and quarantined: it is over the kill level, D_PASS), the virus
    quarantined, not delivered."""
    era = send_three(postfix, dovecot, YOU, "amavis")
    assert set(era) == {"clean", "spam"}, amavisd.log_tail()
    kept = sorted(p.name.split("-")[0] for p in amavisd.quarantine_dir.rglob("*-*")
                  if p.is_file())
    assert kept == ["spam", "virus"], (kept, amavisd.log_tail())
    return era


@pytest.fixture
def site(clamd: Clamd, spamd: Spamd) -> Iterator[Site]:
    root = short_tmpdir("lmtpf-guide-")
    (root / "apt.conf").write_text('DPkg::Lock::Timeout "300";\n')  # besides apt's own
    ports = {10025: free_port()}
    dovecot = start_dovecot(root / "d", [YOU, OTHER, POSTMASTER])
    syslog = SyslogSink(root / "dev-log")
    postfix: Postfix | None = None
    amavisd: Amavisd | None = None
    amavis: AmavisStandIn | None = None
    services: list[subprocess.Popen[bytes]] = []
    try:
        # Step 4's Sieve chain: the test's Dovecot runs the scripts in /var/lib/lmtpfilter/sieve.
        dovecot.sieve_before_dir.rmdir()
        dovecot.sieve_before_dir.symlink_to(root / "var/lib/lmtpfilter/sieve")
        # "Postfix delivers local mail to Dovecot over LMTP today, through amavisd-new."
        amavisd = start_amavisd(
            root / "d", clamd_socket=clamd.socket_path, spamd_site_dir=spamd.dir / "site",
            protocol="SMTP", forward_method=f"smtp:[127.0.0.1]:{ports[10025]}",
            conf_files=amavis_site_conf(root))
        ports[10024] = amavisd.port
        postfix = start_postfix(
            root / "d", transport=f"lmtp:inet:127.0.0.1:{dovecot.lmtp_port}",
            extra_main_cf={"content_filter": f"smtp-amavis:[127.0.0.1]:{ports[10024]}"})
        with (postfix.etc / "master.cf").open("a") as master:
            master.write(AMAVIS_MASTER_CF.format(back=ports[10025]))
        restart_postfix(postfix)
        era = amavis_era(postfix, dovecot, amavisd)
        # amavisd-new busy from here on: its mail waits in Postfix's queue.
        amavisd.stop()
        amavis = AmavisStandIn(ports[10024])
        postfix.send("sender@example.net", [OTHER],
                     f"Subject: {AMAVIS_ERA_SUBJECT}\r\n\r\nhello\r\n".encode())
        deadline = time.monotonic() + 30
        while "421 4.3.2 amavisd-new stand-in" not in postfix.maillog():
            assert time.monotonic() < deadline, postfix.maillog()[-3000:]
            time.sleep(0.1)
        yield Site(root, postfix, dovecot, clamd, spamd, amavis, ports, amavisd, era, syslog,
                   services)
    finally:
        for process in services:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        if amavis and amavis.running:
            amavis.stop()
        if amavisd:
            amavisd.stop()
        if postfix:
            postfix.stop()
        dovecot.stop()
        syslog.close()
        shutil.rmtree(root, ignore_errors=True)


# The seed tutorial's (and amavisd-new's README.postfix) master.cf services; the chroot column
# is "n": the test's Postfix has no chroot jail.
AMAVIS_MASTER_CF = """
smtp-amavis unix -      -       n     -       2  smtp
    -o smtp_data_done_timeout=1200
    -o smtp_send_xforward_command=yes
    -o max_use=20
127.0.0.1:{back} inet n  -       n     -       -  smtpd
    -o content_filter=
    -o local_recipient_maps=
    -o smtpd_restriction_classes=
    -o smtpd_client_restrictions=permit_mynetworks,reject
    -o mynetworks=127.0.0.0/8
    -o receive_override_options=no_header_body_checks,no_unknown_recipient_checks
"""


# The tutorial's $X_HEADER_LINE, "spam & virus filtering at $mydomain".
SCANNED = b"X-Virus-Scanned: spam & virus filtering at example.org"


def verdict(message: bytes) -> dict[str, object]:
    """What the filter said of a message, in the fields amavis and lmtpfilter both write:
    their names, the virus-scanned line, the spam flag, the verdict and threshold of
    X-Spam-Status, and the subject tag. (The scores differ: amavis runs SpamAssassin inside,
    lmtpfilter asks spamd.)"""
    fields = email.message_from_bytes(message, policy=email.policy.compat32)
    status = " ".join(str(fields.get("X-Spam-Status", "")).split())
    return {"names": sorted({k for k in fields
                             if k.lower().startswith(("x-spam-", "x-virus-"))}),
            "X-Virus-Scanned": fields.get("X-Virus-Scanned"),
            "X-Spam-Flag": fields.get("X-Spam-Flag"),
            "X-Spam-Status": (status.split(",")[0], re.findall(r"required=\S+", status)),
            "Subject tag": str(fields.get("Subject", "")).startswith("[SPAM]")}


def quarantine_list(site: Site) -> list[dict[str, str]]:
    """`lmtpfilter quarantine list`, one dict per message."""
    done = subprocess.run(["lmtpfilter", "quarantine", "list"], env=site.environment,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    row = re.compile(r"(?P<id>\S+)  \S+ \S+  (?P<reason>\S+)\s+(?P<state>\S+)\s+\d+  "
                     r"<(?P<sender>[^>]*)> -> (?P<recipients>.*?)  (?P<detail>.*)  '.*'$")
    rows = [m.groupdict() for m in map(row.match, done.stdout.splitlines()) if m]
    assert len(rows) == len(done.stdout.splitlines()), done.stdout
    return rows


def review_config(site: Site) -> None:
    """Step 3's review of /etc/lmtpfilter/lmtpfilter.toml, which import-amavis wrote from the
    installed file and amavis's settings: the addresses of this test's Dovecot, clamd (amavis's
    @av_scanners named Debian's), spamd, Postfix (for notifications) and syslog socket; the
    locations and ports as MAPPED. Each line must be in the file as written here."""
    config = site.paths["/etc/lmtpfilter"] / "lmtpfilter.toml"
    text = config.read_text()
    for old, new in {
        'address = "unix:/run/dovecot/lmtp"': f'address = "127.0.0.1:{site.dovecot.lmtp_port}"',
        'address = "unix:/var/run/clamav/clamd.ctl"':
            f'address = "unix:{site.clamd.socket_path}"',
        'address = "127.0.0.1:783"': f'address = "127.0.0.1:{site.spamd.port}"',
        'smtp = "127.0.0.1:25"': f'smtp = "127.0.0.1:{site.postfix.smtp_port}"',
        'syslog_address = "/dev/log"': f'syslog_address = "{site.syslog.path}"',
    }.items():
        assert old in text, f"the imported config no longer says {old!r}"
        text = text.replace(old, new)
    config.write_text(mapped(site, text))


def test_the_production_guide_works_when_followed_literally(site: Site) -> None:
    commands = guide_commands((ROOT / "README.md").read_text())
    cwd = site.root
    for command in commands:
        substitution = next((s for s in SUBSTITUTED if re.search(s.pattern, command)), None)
        if command.startswith("lmtpfilter check-config"):
            review_config(site)  # "Review /etc/lmtpfilter/lmtpfilter.toml ..., then:"
        if substitution is not None:
            substitution.used += 1
            result = substitution.run(site, mapped(site, command))
            if command.startswith("git clone"):
                cwd = site.paths["/usr/local/src/lmtpfilter"]
        else:
            result = shell(site, mapped(site, command), cwd)
        output = result.stdout + result.stderr
        print(f"$ {command}\n{output}")  # shown when the test fails
        assert result.returncode == 0, f"{command}\n(ran as {mapped(site, command)})\n{output}"
        for pattern, expected in EXPECTED_OUTPUT.items():
            if re.search(pattern, command):
                assert expected in output, f"{command}: no {expected!r} in\n{output}"
        wait_for_postfix(site, command)
    assert [s.pattern for s in SUBSTITUTED if not s.used] == [], "the guide changed"

    # install.sh put the commands on PATH.
    bin_dir = site.root / "usr/local/bin"
    for name in ("lmtpfilter", "lmtpfilter-janitor"):
        assert (bin_dir / name).resolve() == site.root / "opt/lmtpfilter/venv/bin" / name

    # amavisd-new is out of Postfix, and nothing it had queued was lost.
    postconf = ["postconf", "-c", str(site.postfix.etc)]
    assert subprocess.run([*postconf, "-h", "content_filter"], capture_output=True,
                          text=True).stdout.strip() == ""
    services = subprocess.run([*postconf, "-M"], capture_output=True, text=True).stdout
    assert "smtp-amavis" not in services and f":{site.ports[10025]}" not in services
    [queued] = [m for m in site.dovecot.wait_for_messages(OTHER, 1)
                if AMAVIS_ERA_SUBJECT.encode() in m]
    assert b"(lmtpfilter)" in queued and SCANNED in queued

    # Step 7: clean in INBOX, GTUBE in Junk (the user's Sieve script), clam.zip quarantined.
    inbox = site.dovecot.wait_for_messages(YOU, 4)  # amavis's two, step 6's and step 7's
    ours = [m for m in inbox if b"X-Mailer: swaks" in m and b"(lmtpfilter)" in m]
    assert len(ours) >= 2  # step 6's over LMTP, step 7's through Postfix
    [junk] = site.dovecot.wait_for_messages(YOU, 1, folder="Junk")
    assert b"X-Spam-Flag: YES" in junk and b"GTUBE" in junk

    # The same three messages as under amavisd-new, to a user with the site's policy (YOU's
    # own kill level is step 6's): the same outcomes, with the same header fields and values.
    # Clean and spam delivered, the spam tagged and a copy quarantined (over the kill level,
    # destiny pass); the virus quarantined, not delivered; the admin told of it both times.
    now = send_three(site.postfix, site.dovecot, OTHER, "lmtpfilter")
    assert set(now) == {"clean", "spam"}
    assert verdict(now["clean"]) == verdict(site.amavis_era["clean"])
    assert verdict(now["spam"]) == verdict(site.amavis_era["spam"])
    assert SCANNED in now["clean"] and b"Subject: [SPAM]" in now["spam"]
    rows = quarantine_list(site)
    held = [(row["reason"], row["recipients"]) for row in rows
            if row["sender"] == "sender@example.net"]
    assert sorted(held) == sorted([("virus", OTHER), ("spam", OTHER),  # lmtpfilter's
                                   ("virus", YOU), ("spam", YOU)]), rows  # amavis's, imported
    assert [(row["reason"], row["recipients"]) for row in rows
            if row["sender"] != "sender@example.net"] == [("virus", YOU)], rows  # clam.zip
    notices = site.dovecot.wait_for_messages(POSTMASTER, 3, timeout=30)
    assert len(notices) >= 3, "amavis's and lmtpfilter's virus notices to $virus_admin"

    # amavis's own files are where they were.
    assert [p.name for p in site.amavisd.quarantine_dir.rglob("virus-*")] != []

    # The log lines: logwatch counts lmtpfilter's as it counted amavisd-new's.
    # What went through lmtpfilter: clean were step 6's and 7's, the message queued for
    # amavisd-new, OTHER's, and the two virus notices to the admin; step 7's GTUBE was spammy
    # (YOU's kill level is 2000 there), OTHER's spam over the kill level; two viruses.
    # The log line follows the LMTP reply, so the last notice can be in Dovecot before its
    # line is in the socket: wait for the ten (amavisd-new logs to its own file).
    site.syslog.wait_for(10, r"^\(\S+\) (Passed|Blocked) ")
    counts = logwatch.amavis_summary(syslog_lines(site.syslog, "amavis"))
    assert {k: counts.get(k) for k in ("Clean passed", "Spammy passed", "Spam passed",
                                       "Malware blocked", "Total messages scanned")} == {
        "Clean passed": 6, "Spammy passed": 1, "Spam passed": 1, "Malware blocked": 2,
        "Total messages scanned": 10}, counts

    # Root ran lmtpfilter's commands throughout: the state is still the service user's.
    owner = pwd.getpwnam(SERVICE_USER).pw_uid
    names = {p.name for p in site.state.rglob("*")}
    assert {"lmtpfilter.db", "lmtpfilter.db-wal", "lmtpfilter.db-shm", ".janitor.lock"} <= names
    for path in [site.state, *site.state.rglob("*")]:
        info = path.lstat()
        assert info.st_uid == owner, f"{path} belongs to uid {info.st_uid}"
        if path.is_file() and path.parent.name != "sieve":
            assert stat.S_IMODE(info.st_mode) & 0o027 == 0, f"{path}: {info.st_mode:o}"
