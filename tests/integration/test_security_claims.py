"""The claims of docs/security.md that no other test shows, with the real Dovecot (LMTP for
releases, ManageSieve for its credentials).

Each test is named in docs/security.md beside the claim it shows.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import http.client
import os
import pwd
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from lmtpfilter import config as cfg
from lmtpfilter import store as st
from lmtpfilter.quarantine import QuarantineFiles, new_id
from lmtpfilter.server import bind
from lmtpfilter.sieve import DirectoryInstaller, SieveError
from tests.harness.daemons import Dovecot, free_port, short_tmpdir

pytestmark = pytest.mark.integration

U1, U2, U3 = "user1@example.org", "user2@example.org", "user3@example.org"


@dataclass
class Site:
    """A config, store and quarantine whose downstream is the real Dovecot."""

    base: Path
    config_path: Path
    store: st.Store

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lmtpfilter", *args, "-c",
                               str(self.config_path)], capture_output=True, text=True,
                              timeout=60)

    def quarantine(self, recipients: list[str], data: bytes) -> str:
        """A message quarantined for `recipients` (the envelope), as the filter keeps one."""
        config = cfg.load(self.config_path)
        qid = new_id()
        created = dt.datetime.now(dt.UTC)
        stored = QuarantineFiles(config.quarantine).write(qid, created, [data])
        record = st.QuarantineRecord(
            id=qid, message_id=f"tx{qid[:8]}", path=stored.path, size=stored.size,
            sha256=stored.sha256, reason="virus", detail="Eicar-Test-Signature",
            sender="sender@example.net", recipients="\n".join(recipients), subject="claims",
            created_at=created, released_to="", release_replies="")

        def add(session: Session) -> None:
            session.add(record)

        self.store.transaction(add)
        return qid

    def record(self, qid: str) -> st.QuarantineRecord:
        row = self.store.transaction(lambda s: s.get(st.QuarantineRecord, qid))
        assert row is not None
        return row


@pytest.fixture
def site(dovecot: Dovecot) -> Iterator[Site]:
    base = short_tmpdir("lmtpf-sec-")
    url = f"sqlite:///{base}/lmtpfilter.db"
    config_path = base / "lmtpfilter.toml"
    config_path.write_text(f'[database]\nurl = "{url}"\n'
                           f'[quarantine]\ndirectory = "{base}/quarantine"\n'
                           f'[downstream]\naddress = "127.0.0.1:{dovecot.lmtp_port}"\n')
    st.upgrade(url)
    store = st.Store(url)
    try:
        yield Site(base, config_path, store)
    finally:
        store.close()


def mail(*headers: str) -> bytes:
    return ("\r\n".join(["From: sender@example.net", *headers, "Subject: claims", ""])
            + "\r\nThe body.\r\n").encode()


def counts(dovecot: Dovecot) -> dict[str, int]:
    return {u: len(dovecot.messages(u)) for u in (U1, U2, U3)}


# ---- releases --------------------------------------------------------------------------------

def test_a_release_goes_to_the_recorded_recipients_only(site: Site, dovecot: Dovecot) -> None:
    """Without --to, the envelope recipients the copy was kept for, never an address the
    message's own header fields name (they are the sender's words)."""
    qid = site.quarantine([U1, U2], mail(f"To: {U3}", f"Cc: {U3}", f"Reply-To: {U3}"))
    before = counts(dovecot)
    released = site.cli("quarantine", "release", qid)
    assert released.returncode == 0, released.stderr
    assert [line.split(":")[0] for line in released.stdout.splitlines()] == [U1, U2]
    dovecot.wait_for_messages(U1, before[U1] + 1)
    dovecot.wait_for_messages(U2, before[U2] + 1)
    assert counts(dovecot)[U3] == before[U3]
    assert site.record(qid).released_to == f"{U1}, {U2}"


def test_a_release_to_an_address_it_was_not_for_needs_to(site: Site, dovecot: Dovecot) -> None:
    """--to is the explicit flag: the copy goes to those addresses only, and the record says
    to whom and that the command line asked (an audit line per recipient)."""
    qid = site.quarantine([U1], mail(f"To: {U1}"))
    before = counts(dovecot)
    released = site.cli("quarantine", "release", qid, "--to", U3)
    assert released.returncode == 0, released.stderr
    assert released.stdout.startswith(f"{U3}: 250 ")
    dovecot.wait_for_messages(U3, before[U3] + 1)
    assert counts(dovecot)[U1] == before[U1]
    row = site.record(qid)
    # The audit names the Unix user who ran the command (cli._invoking_user).
    by = f"cli {pwd.getpwuid(os.getuid()).pw_name}"
    assert (row.released_to, row.released_by) == (U3, by)
    assert f"by {by}: {U3}: 250 " in row.release_replies


@pytest.mark.parametrize("hostile", [
    f"{U1}>\r\nRCPT TO:<{U3}", f"{U1}> NOTIFY=NEVER", "", "no-at-sign"])
def test_a_hostile_release_address_is_refused_before_anything_is_sent(
        site: Site, dovecot: Dovecot, hostile: str) -> None:
    qid = site.quarantine([U1], mail(f"To: {U1}"))
    before = counts(dovecot)
    refused = site.cli("quarantine", "release", qid, "--to", hostile)
    assert refused.returncode in (1, 2) and refused.stderr.count("\n") == 1, refused
    assert counts(dovecot) == before
    row = site.record(qid)
    assert row.released_at is None and row.release_replies == ""


@pytest.mark.parametrize("action", ["show", "release"])
def test_a_row_whose_path_leaves_the_quarantine_is_refused(site: Site, dovecot: Dovecot,
                                                           action: str) -> None:
    """A quarantine row written behind the filter's back names a file outside the quarantine
    (a readable gzip, so only the check stands between it and a delivery): refused in one
    line, nothing read, nothing sent."""
    qid = site.quarantine([U1], mail(f"To: {U1}"))
    victim = site.base / f"{qid}.eml.gz"
    victim.write_bytes(gzip.compress(mail("To: victim@example.org")))

    def hostile_path(session: Session) -> None:
        session.execute(update(st.QuarantineRecord).where(st.QuarantineRecord.id == qid)
                        .values(path=f"../{qid}.eml.gz"))

    site.store.transaction(hostile_path)
    before = counts(dovecot)
    result = site.cli("quarantine", action, qid)
    assert result.returncode == 2, result
    assert "unexpected path" in result.stderr and result.stderr.count("\n") == 1
    assert "victim@example.org" not in result.stdout
    assert counts(dovecot) == before and site.record(qid).released_at is None


# ---- ManageSieve credentials ------------------------------------------------------------------

def test_the_managesieve_password_is_never_printed(site: Site, dovecot: Dovecot) -> None:
    """A refused login names the server and the user, never the password (nor its SASL PLAIN
    form, which is the password in base64)."""
    password = "Wr0ng-S3cret-pw"
    secret = site.base / "managesieve.secret"
    secret.write_text(password + "\n")
    os.chmod(secret, 0o600)
    with site.config_path.open("a") as f:
        f.write(f'[sieve]\nmethod = "managesieve"\n'
                f'managesieve_address = "127.0.0.1:{dovecot.managesieve_port}"\n'
                f'managesieve_user = "{dovecot.master_user}"\n'
                f'managesieve_password_file = "{secret}"\n')
    result = site.cli("user", "set", U1, "--junk-destiny", "junk")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "refused" in out and dovecot.master_user in out, out
    plain = base64.b64encode(f"{U1}\0{dovecot.master_user}\0{password}".encode()).decode()
    assert password not in out and plain not in out and "Traceback" not in out, out


# ---- Sieve script names ------------------------------------------------------------------------

@pytest.mark.parametrize("hostile", [
    "x@example.org/../../../evil", "../x@example.org", ".x@example.org", "x\0@example.org",
    "no-domain@", "no-at-sign", "a" * 300 + "@example.org"])
def test_a_sieve_script_name_never_leaves_the_sieve_directory(tmp_path: Path,
                                                              hostile: str) -> None:
    """The per-user script file is named after the address: one that would climb out of the
    directory, hide as a dot file or be no address is refused before anything is written."""
    directory = tmp_path / "sieve"
    installer = DirectoryInstaller(directory)
    with pytest.raises(SieveError, match="not a usable mailbox address"):
        installer.install(hostile, "keep;\n")
    with pytest.raises(SieveError, match="not a usable mailbox address"):
        installer.remove(hostile)
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


# ---- the LMTP socket ------------------------------------------------------------------------

def test_the_unix_socket_gets_socket_mode_whatever_the_umask(tmp_path: Path) -> None:
    """Bound under umask 0177 (0600), then chmod to [server].socket_mode (0660 by default:
    the service's group, where Postfix is a member): no moment where others could connect.
    The process umask is given back afterwards."""
    default = cfg.from_mapping({"server": {"listen": [f"unix:{tmp_path}/lmtp.sock"]}})
    assert default.server.socket_mode == 0o660
    old = os.umask(0o000)  # the worst umask a caller could have
    try:
        sock = bind(default.server.listen[0], default.server.socket_mode)
        assert os.umask(0o000) == 0o000  # given back
    finally:
        os.umask(old)
    try:
        info = os.stat(tmp_path / "lmtp.sock")
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    finally:
        sock.close()


# ---- the systemd sandbox -----------------------------------------------------------------------

UNITS = Path(__file__).parent.parent.parent / "systemd"
# docs/security.md's table "What the systemd sandbox forbids", setting for setting.
SANDBOX = [
    "User=lmtpfilter", "Group=lmtpfilter", "UMask=0027",
    "NoNewPrivileges=yes", "RestrictSUIDSGID=yes", "CapabilityBoundingSet=",
    "AmbientCapabilities=", "ProtectSystem=strict", "ReadWritePaths=/var/lib/lmtpfilter",
    "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes", "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes",
    "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "RestrictNamespaces=yes",
    "RestrictRealtime=yes", "LockPersonality=yes", "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM", "SystemCallArchitectures=native"]


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_every_service_unit_has_the_whole_sandbox(unit: str) -> None:
    lines = set((UNITS / unit).read_text().splitlines())
    assert [s for s in SANDBOX if s not in lines] == []
    assert not [line for line in lines if line.startswith(("ReadWritePaths=", "User="))
                and line not in SANDBOX]  # no second writable path, no other user
    if unit == "lmtpfilter.service":  # the socket's directory: the group's, not others'
        assert {"RuntimeDirectory=lmtpfilter", "RuntimeDirectoryMode=0750"} <= lines


# ---- the web page behind its proxy ---------------------------------------------------------------

def get_login(port: int, source: str) -> tuple[str, str]:
    """GET /login from `source` (a loopback address), claiming HTTPS as a proxy would: the
    page's text and its Set-Cookie header ("" when none)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                      source_address=(source, 0))
    try:
        conn.request("GET", "/login", headers={"X-Forwarded-Proto": "https",
                                               "X-Forwarded-For": "198.51.100.7"})
        response = conn.getresponse()
        return response.read().decode(), response.getheader("set-cookie") or ""
    finally:
        conn.close()


def test_forwarded_headers_are_believed_from_the_local_proxy_only(site: Site,
                                                                   dovecot: Dovecot) -> None:
    """Behind nginx or Apache on the same host, X-Forwarded-Proto says the request came over
    HTTPS. From any other peer (here 127.0.0.2: loopback, but not the proxy's 127.0.0.1) the
    header is ignored: the page stays plain HTTP, so it asks no password and sets no cookie."""
    key = site.base / "web.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    port = free_port()
    with site.config_path.open("a") as f:
        f.write(f'[web]\nlisten = "127.0.0.1:{port}"\nsecret_key_file = "{key}"\n'
                f'dovecot_auth_socket = "{dovecot.auth_socket}"\nallow_plain_http = false\n')
    log_path = site.base / "web.log"
    with log_path.open("ab") as log:
        web = subprocess.Popen([sys.executable, "-m", "lmtpfilter", "web", "-c",
                                str(site.config_path)], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:  # until it listens (a guard against a hang, not a speed check)
            assert web.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        text, cookie = get_login(port, "127.0.0.1")
        assert 'id="login"' in text and cookie.lower().startswith("__host-lmtpfilter=")
        text, cookie = get_login(port, "127.0.0.2")
        assert "must be served over HTTPS" in text and 'id="login"' not in text
        assert cookie == ""
    finally:
        web.terminate()
        web.wait(timeout=30)
