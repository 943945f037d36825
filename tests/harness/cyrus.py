"""A throwaway real Cyrus IMAP (Debian's cyrus-imapd 3.x) on loopback for integration tests.

Cyrus's ``master`` runs as user cyrus in ``base/cyrus`` with its own imapd.conf and cyrus.conf
(scripts/conf/cyrus/standalone-*.conf: Debian's files with the paths moved, plus the lines the
README gives for lmtpfilter, lmtpfilter-imapd.conf, appended as they are) and starts lmtpd (on a
TCP port and on Debian's unix socket), imapd and timsieved. Nothing of the system's Cyrus
(/etc/imapd.conf, /var/lib/cyrus, /var/spool/cyrus, /run/cyrus) is used or touched.

The recipe, worked out here (Cyrus 3.6.1, Debian 12):

* Users live in a SASL database of the instance (``saslpasswd2 -f``): "alice@example.org" is
  user alice of realm example.org, which ``virtdomains: userid`` matches; the admin and the
  proxy user have the server name as realm.
* Mailboxes are created over IMAP by the admin (``admins: admin``): CREATE
  "user/alice@example.org" and "user/alice/Junk@example.org" (``unixhierarchysep: yes``);
  SETQUOTA sets a storage quota in KB. lmtpd refuses a recipient without a mailbox at RCPT
  with a multi-line 550 5.1.1, and one whose quota is already reached with 452 4.2.2.
* With Debian's ``altnamespace: no`` a user sees their folders below INBOX: "INBOX/Junk".
* lmtpd over TCP needs ``-a`` (preauthorized); the unix socket is preauthorized already.
* ``master -D`` stays in the foreground with stdout and stderr open; Cyrus's own log lines go
  to syslog (/dev/log), which the test machine may not have: there is no log file to read.
"""

from __future__ import annotations

import base64
import grp
import imaplib
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.daemons import (
    LOOPBACK,
    POLL_INTERVAL,
    READY_TIMEOUT,
    REPO,
    _instance_dir,
    _read_text,
    _stop_popen,
    _wait_banners,
    free_port,
)

__all__ = ["ADMIN", "ADMIN_PASSWORD", "CONF", "CYR_INFO", "PROXY_PASSWORD", "PROXY_USER",
           "USER_PASSWORD", "Cyrus", "cyrus_installed", "start_cyrus"]

CONF = REPO / "scripts" / "conf" / "cyrus"
MASTER = Path("/usr/lib/cyrus/bin/master")
CYR_INFO = Path("/usr/lib/cyrus/bin/cyr_info")
SASLPASSWD = "saslpasswd2"
CYRUS_USER = "cyrus"
CYRUS_GROUP = "mail"
SERVERNAME = "cyrus.test"
USER_PASSWORD = "secret"
"""Password of every mail user."""
ADMIN = "admin"
"""Cyrus admin (``admins:``): creates mailboxes and sets quotas; the harness's, not the filter's."""
ADMIN_PASSWORD = "adminsecret"
PROXY_USER = "lmtpfilter"
"""The ManageSieve login the README gives lmtpfilter (``proxyservers:``)."""
PROXY_PASSWORD = "proxysecret"
TEMPLATE_NAMES = ("dir", "conf", "instance", "servername", "imap_port", "lmtp_port",
                  "sieve_port")


def cyrus_installed() -> bool:
    return MASTER.exists() and shutil.which(SASLPASSWD) is not None


def fill(template: str, **values: object) -> str:
    text = template
    for name in TEMPLATE_NAMES:
        text = text.replace("{" + name + "}", str(values[name]))
    return text


@dataclass
class Cyrus:
    """A running throwaway Cyrus started by start_cyrus()."""

    dir: Path
    lmtp_port: int
    imap_port: int
    sieve_port: int
    users: tuple[str, ...]
    virtdomains: bool = True
    """False with ``virtdomains: off``: Cyrus drops the domain; alice@example.org is "alice"."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def userid(self, address: str) -> str:
        """The Cyrus user of an address: itself, or its local part under virtdomains: off."""
        return address if self.virtdomains else address.rpartition("@")[0] or address

    def admin_name(self, address: str, folder: str | None = None) -> str:
        """The admin's name for a user's mailbox (unixhierarchysep: yes): user/alice@example.org
        and user/alice/Junk@example.org; user/alice under virtdomains: off."""
        local, _, domain = self.userid(address).rpartition("@")
        path = f"user/{local or domain}" + (f"/{folder}" if folder else "")
        return f"{path}@{domain}" if local else path

    @property
    def imapd_conf(self) -> Path:
        return self.dir / "imapd.conf"

    @property
    def cyrus_conf(self) -> Path:
        return self.dir / "cyrus.conf"

    @property
    def lmtp_socket(self) -> Path:
        """lmtpd's unix socket (Debian: /run/cyrus/socket/lmtp, directory 0750 cyrus:mail)."""
        return self.dir / "run" / "socket" / "lmtp"

    @property
    def sieve_dir(self) -> Path:
        return self.dir / "sieve"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def output(self) -> str:
        """What master and its children printed (startup errors, crashes)."""
        return _read_text(self.dir / "master.out")

    # ---- lifecycle

    def start(self) -> Cyrus:
        """Start master (again, after stop(): same ports, same mail)."""
        (self.dir / "run" / "master.pid").unlink(missing_ok=True)
        with (self.dir / "master.out").open("ab") as out:
            self._proc = subprocess.Popen(
                [str(MASTER), "-C", str(self.imapd_conf), "-M", str(self.cyrus_conf),
                 "-p", str(self.dir / "run" / "master.pid"), "-D"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                user=CYRUS_USER, group=CYRUS_GROUP, extra_groups=[], start_new_session=True)
        proc = self._proc
        why = _wait_banners([(self.lmtp_port, b"220 "), (self.imap_port, b"* OK"),
                             (self.sieve_port, b'"IMPLEMENTATION"')],
                            alive=lambda: proc.poll() is None, timeout=READY_TIMEOUT)
        if why is not None:
            self.stop()
            raise RuntimeError(f"cyrus master {why} (rc {proc.returncode}, lmtp "
                               f"{self.lmtp_port}, imap {self.imap_port}, sieve "
                               f"{self.sieve_port})\n{self.output()}")
        return self

    def stop(self) -> None:
        """SIGTERM master (it takes its services down) and reap it. Idempotent."""
        if self._proc is not None:
            _stop_popen(self._proc)

    # ---- IMAP

    @contextmanager
    def imap(self, user: str = ADMIN) -> Iterator[imaplib.IMAP4]:
        """An IMAP session logged in as `user` (the admin, or a mail user)."""
        client = imaplib.IMAP4(LOOPBACK, self.imap_port, timeout=30)
        try:
            password = ADMIN_PASSWORD if user == ADMIN else USER_PASSWORD
            _ok(client.login(user, password), f"LOGIN {user}")
            yield client
        finally:
            with suppress(OSError, imaplib.IMAP4.error):
                client.logout()

    def create_mailbox(self, address: str, folders: Sequence[str] = (),
                       quota_kb: int | None = None) -> None:
        """The user's mailbox and folders below it, as an admin creates them (cyradm's
        cm, sam ... anyone p, sq)."""
        with self.imap() as client:
            _ok(client.create(_quote(self.admin_name(address))), f"CREATE {address}")
            for folder in folders:
                name = self.admin_name(address, folder)
                _ok(client.create(_quote(name)), f"CREATE {name}")
                # user+Folder@ reaches a folder only if anyone may post to it (right "p"),
                # else lmtpd files into INBOX: what an admin sets for plus addressing.
                _ok(client.setacl(_quote(name), "anyone", "p"), f"SETACL {name}")
            if quota_kb is not None:
                _ok(client.setquota(_quote(self.admin_name(address)),
                                    f"(STORAGE {quota_kb})"),
                    f"SETQUOTA {address}")

    def folders(self, address: str) -> list[str]:
        """The user's folders as the user sees them ("INBOX", "INBOX/Junk", ...)."""
        with self.imap(self.userid(address)) as client:
            typ, data = client.list()
            _ok((typ, data), "LIST")
        names = []
        for line in data:
            assert isinstance(line, bytes)
            match = re.match(rb'\(.*?\) "/" (.*)$', line)
            assert match, line
            names.append(match.group(1).decode().strip('"'))
        return names

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        """The raw messages of one of the user's folders ("INBOX", "INBOX/Junk"), in UID
        order, read over IMAP as the user (BODY.PEEK[]: nothing is marked seen)."""
        with self.imap(self.userid(address)) as client:
            typ, data = client.select(_quote(folder), readonly=True)
            if typ != "OK":
                return []  # no such folder (yet)
            typ, data = client.uid("SEARCH", "ALL")
            _ok((typ, data), "UID SEARCH")
            uids = data[0].decode().split() if data and data[0] else []
            out = []
            for uid in uids:
                typ, fetched = client.uid("FETCH", uid, "(BODY.PEEK[])")
                _ok((typ, fetched), f"UID FETCH {uid}")
                part = fetched[0]
                assert isinstance(part, tuple), fetched
                out.append(part[1])
            return out

    def wait_for_messages(self, address: str, count: int, folder: str = "INBOX",
                          timeout: float = 10.0) -> list[bytes]:
        """Wait until the folder holds at least `count` messages; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(address, folder)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} {folder}: {len(found)} message(s) after "
                                   f"{timeout}s, expected {count}\n{self.output()[-2000:]}")
            time.sleep(POLL_INTERVAL * 4)

    # ---- ManageSieve, as a user or as the proxy user for a user

    def sieve_token(self, address: str, as_proxy: bool = False) -> str:
        """SASL PLAIN for AUTHENTICATE: the user's own login, or the proxy user's for them."""
        address = self.userid(address)
        if as_proxy:
            raw = f"{address}\0{PROXY_USER}\0{PROXY_PASSWORD}"
        else:
            raw = f"\0{address}\0{USER_PASSWORD}"
        return base64.b64encode(raw.encode()).decode()


def set_options(imapd_conf: str, lines: str) -> str:
    """imapd.conf with the "key: value" lines of `lines` set: a key's line changed where the
    file has it (Cyrus refuses a key given twice), added at the end where it has not."""
    out = imapd_conf.splitlines()
    for line in lines.splitlines():
        key = line.split(":", 1)[0]
        if line.startswith("#") or ":" not in line:
            continue
        at = [i for i, old in enumerate(out) if old.split(":", 1)[0] == key]
        if at:
            out[at[0]] = line
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ok(result: tuple[str, Sequence[object]], what: str) -> None:
    typ, data = result
    if typ != "OK":
        raise RuntimeError(f"IMAP {what}: {typ} {data!r}")


def _saslpasswd(db: Path, user: str, password: str, realm: str | None = None) -> None:
    realm_args = ["-u", realm] if realm else []
    done = subprocess.run([SASLPASSWD, "-p", "-c", "-f", str(db), *realm_args, user],
                          input=password.encode(), capture_output=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"saslpasswd2 {user}: {done.stderr.decode(errors='replace')}")


def start_cyrus(base: Path, users: Sequence[str | tuple[str, int | None]], *,
                folders: Sequence[str] = ("Junk",),
                options: Mapping[str, str] | None = None) -> Cyrus:
    """Start Cyrus in ``base/cyrus``. users: "addr" or ("addr", storage quota in KB).

    Each user gets a mailbox with `folders` below it and the password USER_PASSWORD; ADMIN
    and PROXY_USER (the README's ManageSieve login for lmtpfilter) are in the SASL database.
    options: imapd.conf settings over the README's (e.g. {"virtdomains": "off"}).
    """
    d = _instance_dir(base, "cyrus")
    uid = pwd.getpwnam(CYRUS_USER).pw_uid
    gid = grp.getgrnam(CYRUS_GROUP).gr_gid
    for sub in ("lib", "spool", "sieve", "run/proc", "run/lock", "run/socket"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    lmtp_port, imap_port, sieve_port = free_port(), free_port(), free_port()
    values = {"dir": d, "conf": d / "imapd.conf", "instance": f"cyrus-test-{lmtp_port}",
              "servername": SERVERNAME, "imap_port": imap_port, "lmtp_port": lmtp_port,
              "sieve_port": sieve_port}
    imapd = set_options(fill((CONF / "standalone-imapd.conf").read_text(), **values),
                        (CONF / "lmtpfilter-imapd.conf").read_text())
    imapd = set_options(imapd, "".join(f"{k}: {v}\n" for k, v in (options or {}).items()))
    (d / "imapd.conf").write_text(imapd)
    (d / "cyrus.conf").write_text(fill((CONF / "standalone-cyrus.conf").read_text(), **values))

    db = d / "sasldb2"
    _saslpasswd(db, ADMIN, ADMIN_PASSWORD, SERVERNAME)
    _saslpasswd(db, PROXY_USER, PROXY_PASSWORD, SERVERNAME)
    addresses = [u if isinstance(u, str) else u[0] for u in users]
    virtdomains = (options or {}).get("virtdomains", "userid") != "off"
    for address in addresses:  # "alice@example.org": user alice of realm example.org
        if virtdomains:
            _saslpasswd(db, address, USER_PASSWORD)
        else:
            _saslpasswd(db, address.rpartition("@")[0], USER_PASSWORD, SERVERNAME)
    for path in [d, *d.rglob("*")]:
        os.chown(path, uid, gid)
    os.chmod(d, 0o755)  # the tests' own files beside it; Cyrus's are 0700 by its umask
    os.chmod(d / "run" / "socket", 0o750)  # as Debian's tmpfiles.d makes /run/cyrus/socket

    cyrus = Cyrus(dir=d, lmtp_port=lmtp_port, imap_port=imap_port, sieve_port=sieve_port,
                  users=tuple(addresses), virtdomains=virtdomains).start()
    try:
        for user in users:
            address, quota = (user, None) if isinstance(user, str) else user
            cyrus.create_mailbox(address, folders, quota)
    except BaseException:
        cyrus.stop()
        raise
    return cyrus
