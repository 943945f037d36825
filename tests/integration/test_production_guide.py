"""The README's production guide, followed literally (issue 13, item 6).

The commands are the shell blocks of README.md's "Production guide" section, read from the
README: run one by one, in order, as root, in a working directory that `cd` moves, as someone
pasting them would. Most run as they are. Where a command needs systemd, the network, or the
machine's own Postfix, Dovecot, clamd, spamd, ports or /etc, the test runs the equivalent
against its own: MAPPED (inside any command) and SUBSTITUTED (whole commands) say which, and
why. A command that neither names runs as it is, so a command added to the guide is tested as
written.

The Postfix here starts as an amavisd-new site (the seed tutorial's `content_filter` and
master.cf services), with mail waiting in its queue for amavisd-new, and a stand-in holding
amavisd-new's port: the guide must take it out in an order that loses no mail, and start
lmtpfilter only once the port is free. Every location install.sh takes from LMTPFILTER_* is
in a temporary root; so is /run. Needs root; takes about a minute (install.sh builds a venv).
"""

from __future__ import annotations

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

from tests.harness.daemons import (
    Dovecot,
    Postfix,
    free_port,
    short_tmpdir,
    start_dovecot,
    start_postfix,
)
from tests.harness.install import copy_checkout
from tests.harness.scanners import Clamd, Spamd
from tests.harness.systemd import SYSTEMD_PATH, ServiceUnit

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="the guide runs as root")]
ROOT = Path(__file__).parent.parent.parent
GUIDE = "## Production guide (Debian 12 and 13)"
SERVICE_USER = "lmtpfilter"
YOU, OTHER = "you@example.org", "other@example.org"  # the guide's address, and one more
AMAVIS_ERA_SUBJECT = "queued for amavisd-new before the switch"


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
    services: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def paths(self) -> dict[str, Path]:
        """The guide's locations -> this test's (install.sh's LMTPFILTER_* and /run)."""
        return {"/usr/local/src/lmtpfilter": self.root / "usr/local/src/lmtpfilter",
                "/etc/lmtpfilter": self.root / "etc/lmtpfilter",
                "/var/lib/lmtpfilter": self.root / "var/lib/lmtpfilter",
                "/run/lmtpfilter": self.root / "run/lmtpfilter"}

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
}


def mapped(site: Site, text: str) -> str:
    for old, new in site.paths.items():  # not twice: the new paths end with the old ones
        text = re.sub(rf"(?<!{re.escape(str(site.root))}){re.escape(old)}", str(new), text)
    for old_port, new_port in site.ports.items():
        text = re.sub(rf"127\.0\.0\.1:{old_port}\b", f"127.0.0.1:{new_port}", text)
    etc = site.postfix.etc
    text = re.sub(r"(^|&& |; )(postconf|postsuper|postqueue) ", rf"\1\2 -c {etc} ", text)
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


def restart_postfix(site: Site, command: str) -> subprocess.CompletedProcess[str]:
    """`postfix reload`, once main.cf and master.cf are old enough to be read (the harness's
    "cool down"), and wait until master logged it."""
    postfix = site.postfix
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
                 "(postfix reload)", restart_postfix),
    Substitution(r"^systemctl disable --now amavis$",
                 "amavisd-new is not installed: its stand-in stops and frees the port",
                 stop_amavis),
    Substitution(r"^systemctl enable --now lmtpfilter lmtpfilter-janitor\.timer$",
                 "no systemd here: the installed units run as systemd would run them "
                 "(tests/harness/systemd.py), the janitor's once, as its timer does",
                 enable_units),
    Substitution(r"^journalctl -t postfix/lmtp ",
                 "the test's Postfix logs to its own maillog_file, not to the journal",
                 mail_log),
]

# What some commands must have said, besides exiting 0.
EXPECTED_OUTPUT = {
    r"^clamdscan ": "PONG",
    r"--protocol LMTP": "250 2.",
    r"^journalctl ": "status=sent",
    r"^lmtpfilter quarantine list": "virus",
}


def wait_for_postfix(site: Site, command: str) -> None:
    """A person reads swaks's answer before the next line; delivery through Postfix is
    asynchronous, so the test waits for Postfix's queue to empty instead."""
    if command.startswith("postqueue") or (command.startswith("swaks")
                                           and "--protocol LMTP" not in command):
        site.postfix.wait_queue_empty(timeout=60)


@pytest.fixture
def site(clamd: Clamd, spamd: Spamd) -> Iterator[Site]:
    root = short_tmpdir("lmtpf-guide-")
    (root / "apt.conf").write_text('DPkg::Lock::Timeout "300";\n')  # besides apt's own
    ports = {10024: free_port(), 10025: free_port()}
    amavis = AmavisStandIn(ports[10024])
    dovecot = start_dovecot(root / "d", [YOU, OTHER])
    postfix: Postfix | None = None
    services: list[subprocess.Popen[bytes]] = []
    try:
        # Step 4's Sieve chain: the test's Dovecot runs the scripts in /var/lib/lmtpfilter/sieve.
        dovecot.sieve_before_dir.rmdir()
        dovecot.sieve_before_dir.symlink_to(root / "var/lib/lmtpfilter/sieve")
        # "Postfix delivers local mail to Dovecot over LMTP today, through amavisd-new."
        postfix = start_postfix(
            root / "d", transport=f"lmtp:inet:127.0.0.1:{dovecot.lmtp_port}",
            extra_main_cf={"content_filter": f"smtp-amavis:[127.0.0.1]:{ports[10024]}"})
        site = Site(root, postfix, dovecot, clamd, spamd, amavis, ports, services)
        with (postfix.etc / "master.cf").open("a") as master:
            master.write(AMAVIS_MASTER_CF.format(back=ports[10025]))
        assert restart_postfix(site, "").returncode == 0
        postfix.send("sender@example.net", [OTHER],
                     f"Subject: {AMAVIS_ERA_SUBJECT}\r\n\r\nhello\r\n".encode())
        deadline = time.monotonic() + 30
        while "421 4.3.2 amavisd-new stand-in" not in postfix.maillog():
            assert time.monotonic() < deadline, postfix.maillog()[-3000:]
            time.sleep(0.1)
        yield site
    finally:
        for process in services:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        if amavis.running:
            amavis.stop()
        if postfix:
            postfix.stop()
        dovecot.stop()
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


def review_config(site: Site) -> None:
    """Step 3's review of /etc/lmtpfilter/lmtpfilter.toml: the addresses of this test's
    Dovecot, clamd, spamd and Postfix (for notifications), and the admin's address; the
    locations and ports as MAPPED. Each line must be in the shipped file as written here."""
    config = site.paths["/etc/lmtpfilter"] / "lmtpfilter.toml"
    text = config.read_text()
    for old, new in {
        'address = "unix:/run/dovecot/lmtp"': f'address = "127.0.0.1:{site.dovecot.lmtp_port}"',
        'address = "unix:/run/clamav/clamd.ctl"': f'address = "unix:{site.clamd.socket_path}"',
        'address = "127.0.0.1:783"': f'address = "127.0.0.1:{site.spamd.port}"',
        'smtp = "127.0.0.1:25"': f'smtp = "127.0.0.1:{site.postfix.smtp_port}"',
        'admin = ["postmaster@localhost"]': f'admin = ["{YOU}"]',
    }.items():
        assert old in text, f"the shipped config no longer says {old!r}"
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
    assert b"X-Virus-Scanned: lmtpfilter" in queued

    # Step 7: clean in INBOX, GTUBE in Junk (the user's Sieve script), clam.zip quarantined.
    inbox = site.dovecot.wait_for_messages(YOU, 2)
    assert sum(b"X-Mailer: swaks" in m and b"X-Virus-Scanned: lmtpfilter" in m
               for m in inbox) >= 2  # step 6's over LMTP, step 7's through Postfix
    [junk] = site.dovecot.wait_for_messages(YOU, 1, folder="Junk")
    assert b"X-Spam-Flag: YES" in junk and b"GTUBE" in junk
    assert len(list((site.state / "quarantine").rglob("*.eml.gz"))) == 1

    # Root ran lmtpfilter's commands throughout: the state is still the service user's.
    owner = pwd.getpwnam(SERVICE_USER).pw_uid
    names = {p.name for p in site.state.rglob("*")}
    assert {"lmtpfilter.db", "lmtpfilter.db-wal", "lmtpfilter.db-shm", ".janitor.lock"} <= names
    for path in [site.state, *site.state.rglob("*")]:
        info = path.lstat()
        assert info.st_uid == owner, f"{path} belongs to uid {info.st_uid}"
        if path.is_file() and path.parent.name != "sieve":
            assert stat.S_IMODE(info.st_mode) & 0o027 == 0, f"{path}: {info.st_mode:o}"
