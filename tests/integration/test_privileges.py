"""Root runs the commands first, the service user's timer comes after: every file of the state
belongs to the service user and none is for others (issue 13, item 5; lmtpfilter/privileges.py).

The commands run from a virtualenv made as scripts/install.sh makes it (tests/harness/install.py):
the service user cannot read the development one. The user is made here with useradd and
removed afterwards. Needs root.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.daemons import free_port, lmtp_deliver, short_tmpdir
from tests.harness.scanners import EICAR, Clamd
from tests.harness.systemd import ServiceUnit

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")]
ROOT = Path(__file__).parent.parent.parent


@pytest.fixture
def base() -> Iterator[Path]:
    path = short_tmpdir("lmtpf-priv-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(base: Path, state: Path, clamd: Clamd | None = None,
                 extra: str = "") -> tuple[Path, int]:
    port = free_port()
    clamav = f'address = "unix:{clamd.socket_path}"' if clamd else "enabled = false"
    config = base / "lmtpfilter.toml"
    config.write_text(f"""\
[server]
listen = ["127.0.0.1:{port}"]
hostname = "filter.test"
{extra}
[downstream]
address = "127.0.0.1:1"
[clamav]
{clamav}
[spamassassin]
enabled = false
[database]
url = "sqlite:///{state}/lmtpfilter.db"
[quarantine]
directory = "{state}/quarantine"
[sieve]
directory = "{state}/sieve"
[notify]
smtp = ""
""")
    config.chmod(0o644)
    return config, port


def fresh_state(base: Path, owner: pwd.struct_passwd) -> Path:
    """An empty state directory of the service user's, as install.sh makes /var/lib/lmtpfilter."""
    state = base / "state"
    state.mkdir(mode=0o751)
    os.chown(state, owner.pw_uid, owner.pw_gid)
    return state


def as_root(command: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(command), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command.name} {' '.join(args)}: {result.stderr}"
    return result


def wait_for_banner(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"lmtpfilter not answering:\n{log.read_text()}")


def test_root_first_then_the_timer_as_the_service_user(
        base: Path, service_bin: Path, service_user: pwd.struct_passwd, clamd: Clamd) -> None:
    state = fresh_state(base, service_user)
    config, port = write_config(base, state, clamd)
    # Root first: the schema, a listing, a policy with its Sieve script, a janitor pass, and
    # the filter itself, which quarantines a virus.
    as_root(service_bin / "lmtpfilter", "db", "upgrade", "-c", str(config))
    as_root(service_bin / "lmtpfilter", "quarantine", "list", "-c", str(config))
    as_root(service_bin / "lmtpfilter", "user", "set", "@example.org", "--kill-level", "12",
            "-c", str(config))
    as_root(service_bin / "lmtpfilter-janitor", "run", "-c", str(config))
    log = base / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen([str(service_bin / "lmtpfilter"), "serve", "-c", str(config)],
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_banner(port, serve, log)
        _, replies = lmtp_deliver(port, "sender@example.net", ["a@example.org"],
                                  b"Subject: eicar\r\n\r\n" + EICAR + b"\r\n")
        assert replies[0].startswith("250 2.7.0") and "quarantined" in replies[0], replies
        # Then the timer's command, as lmtpfilter-janitor.service runs it, while the filter
        # holds the database open (so its -wal and -shm files are there to be checked).
        unit = ServiceUnit.read(ROOT / "systemd/lmtpfilter-janitor.service", replace={
            "/opt/lmtpfilter/venv/bin/": f"{service_bin}/",
            "/etc/lmtpfilter/lmtpfilter.toml": str(config),
            "User=lmtpfilter": f"User={service_user.pw_name}",
            "Group=lmtpfilter": f"Group={service_user.pw_name}"})
        [timer_run] = unit.run("ExecStart")
        assert timer_run.returncode == 0, timer_run.stderr
        assert "janitor:" in timer_run.stdout
        assert_owned_and_private(state, service_user)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)


def assert_owned_and_private(state: Path, owner: pwd.struct_passwd) -> None:
    """Every file and directory under `state` is the owner's; none is for others, and none is
    group-writable, except the Sieve scripts: Dovecot reads them as the mail user (0644)."""
    names = {p.name for p in state.rglob("*")}
    for expected in ("lmtpfilter.db", "lmtpfilter.db-wal", "lmtpfilter.db-shm",
                     ".janitor.lock", "@example.org.sieve"):
        assert expected in names, sorted(names)
    quarantined = list((state / "quarantine").rglob("*.eml.gz"))
    assert len(quarantined) == 1
    for path in [state, *state.rglob("*")]:
        info = path.lstat()
        assert info.st_uid == owner.pw_uid, f"{path} belongs to uid {info.st_uid}"
        if path.parent.name == "sieve" and path.suffix in (".sieve", ".svbin"):
            assert stat.S_IMODE(info.st_mode) == 0o644, path
        elif path.is_file():
            assert stat.S_IMODE(info.st_mode) & 0o027 == 0, f"{path}: {info.st_mode:o}"
    assert stat.S_IMODE(quarantined[0].stat().st_mode) == 0o600


def test_a_missing_service_user_is_refused_in_one_line(base: Path,
                                                       service_bin: Path) -> None:
    state = base / "state"
    state.mkdir()
    config, _ = write_config(base, state, extra='user = "no-such-lmtpfilter-user"')
    for command in (["lmtpfilter", "db", "upgrade"], ["lmtpfilter", "quarantine", "list"],
                    ["lmtpfilter-janitor", "run"]):
        result = subprocess.run([str(service_bin / command[0]), *command[1:], "-c",
                                 str(config)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.endswith("[server] user: no such user "
                                      "'no-such-lmtpfilter-user'\n"), result.stderr
        assert result.stderr.count("\n") == 1
    assert list(state.iterdir()) == []  # nothing was opened, nothing was made


def test_state_of_a_uid_without_a_user_is_refused(base: Path, service_bin: Path) -> None:
    state = base / "state"
    state.mkdir()
    uid = 64000 + secrets.randbelow(1000)
    while True:
        try:
            pwd.getpwuid(uid)
            uid += 1
        except KeyError:
            break
    os.chown(state, uid, uid)
    config, _ = write_config(base, state)
    result = subprocess.run([str(service_bin / "lmtpfilter"), "db", "upgrade", "-c",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == (f"lmtpfilter: {state} belongs to uid {uid}, which is no user: "
                             "set [server] user\n")
