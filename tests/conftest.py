"""Shared fixtures: the real daemons (tests/harness/daemons.py) and the filter as a process.

Integration tests need Dovecot, Postfix and friends installed (scripts/run-tests.sh installs
them). Where they are missing the tests are skipped, unless LMTPFILTER_REQUIRE_DAEMONS=1 (set
by the test script and CI), in which case a missing daemon is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
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
from tests.harness.install import make_service_venv
from tests.harness.postgres import Postgres, start_postgres
from tests.harness.scanners import Clamd, Spamd, start_clamd, start_spamd
from tests.lmtp_tools import FakeDownstream

DAEMONS = ["dovecot", "postfix", "smtp-sink", "clamd", "spamd"]
# PostgreSQL is found by tests/harness/postgres.py (not on PATH); it enforces the same rule.


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [d for d in DAEMONS if not shutil.which(d, path=os.environ.get("PATH", "")
                                                       + ":/usr/sbin:/sbin")]
    if not missing:
        return
    if os.environ.get("LMTPFILTER_REQUIRE_DAEMONS") == "1":
        raise pytest.UsageError(f"daemons required but missing: {', '.join(missing)}")
    skip = pytest.mark.skip(reason=f"not installed: {', '.join(missing)}")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def daemon_base() -> Iterator[Path]:
    """A short, world-traversable directory for daemon state and sockets."""
    path = short_tmpdir("lmtpf-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


USERS: list[str | tuple[str, str | None]] = [
    "user1@example.org", "user2@example.org", "user3@example.org", ("full@example.org", "1K")]


@pytest.fixture(scope="session")
def dovecot(daemon_base: Path) -> Iterator[Dovecot]:
    dc = start_dovecot(daemon_base, USERS)
    try:
        yield dc
    finally:
        dc.stop()


@pytest.fixture(scope="session")
def clamd(daemon_base: Path) -> Iterator[Clamd]:
    daemon = start_clamd(daemon_base)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def spamd(daemon_base: Path) -> Iterator[Spamd]:
    daemon = start_spamd(daemon_base)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeDownstream]:
    """A scriptable fake downstream LMTP server (tests/lmtp_tools.py)."""
    server = FakeDownstream()
    await server.start()
    yield server
    await server.stop()


class FilterProcess:
    """`lmtpfilter serve` in a subprocess, with its own config file."""

    def __init__(self, workdir: Path, config_text: str, listen: str) -> None:
        self.workdir = workdir
        self.listen = listen
        self.config_path = workdir / "lmtpfilter.toml"
        # Configs written before the work directory was known say "{workdir}".
        self.config_path.write_text(config_text.replace("{workdir}", str(workdir)))
        self.log_path = workdir / "lmtpfilter.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FilterProcess:
        upgrade = subprocess.run(
            [sys.executable, "-m", "lmtpfilter", "db", "upgrade", "-c", str(self.config_path)],
            capture_output=True, text=True, timeout=60)
        if upgrade.returncode != 0:
            raise RuntimeError(f"lmtpfilter db upgrade failed: {upgrade.stderr}")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmtpfilter", "serve", "-c", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lmtpfilter exited early:\n{self.log()}")
            if self._banner():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"lmtpfilter not answering on {self.listen}:\n{self.log()}")

    def _banner(self) -> bool:
        try:
            if self.listen.startswith("unix:"):
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(1)
                s.connect(self.listen[5:])
            else:
                host, port = self.listen.rsplit(":", 1)
                s = socket.create_connection((host, int(port)), timeout=1)
        except OSError:
            return False
        try:
            return s.recv(100).startswith(b"220")
        except OSError:
            return False
        finally:
            s.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def filter_process(daemon_base: Path) -> Iterator[type[FilterProcess]]:
    """A factory; every process it starts is stopped at teardown."""
    started: list[FilterProcess] = []

    class Tracked(FilterProcess):
        processes = started  # for pytest_runtest_makereport: their logs go with a failure

        def start(self) -> FilterProcess:
            started.append(self)
            return super().start()

    yield Tracked
    for p in started:
        if p.proc is not None and p.proc.poll() is None:
            p.stop(signal.SIGKILL)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """A failed test that started lmtpfilter processes shows the end of their logs: the
    filter runs in a subprocess, so its log is otherwise lost with the test's directory."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    factory = getattr(item, "funcargs", {}).get("filter_process")
    if report.failed and factory is not None:
        for process in getattr(factory, "processes", []):
            report.sections.append((f"lmtpfilter log {process.log_path}",
                                    process.log()[-6000:]))


def filter_config(downstream: str, listen: list[str], **extra: str) -> str:
    """A config file text for a test filter; scanners are off unless `extra` sets them."""
    listen_toml = ", ".join(f'"{x}"' for x in listen)
    workdir = Path(listen[0].removeprefix("unix:")).parent if listen[0].startswith("unix:") \
        else None
    sections = {
        "server": f'listen = [{listen_toml}]\nhostname = "filter.test"\nsocket_mode = "0666"',
        "downstream": f'address = "{downstream}"\ntimeout = "10s"',
        "clamav": "enabled = false",
        "spamassassin": "enabled = false",
        "database": "url = \"sqlite:///{workdir}/lmtpfilter.db\"",
        "quarantine": "directory = \"{workdir}/quarantine\"",
    }
    for section, body in extra.items():
        sections[section] = (sections[section] + "\n" + body) if section in ("server",
                                                                              "downstream") \
            else body
    text = "".join(f"[{name}]\n{body}\n" for name, body in sections.items())
    return text if workdir is None else text.replace("{workdir}", str(workdir))


def new_workdir(base: Path, name: str) -> Path:
    path = Path(base) / f"{name}-{free_port()}"
    path.mkdir(mode=0o755)
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One throwaway PostgreSQL for the run; each test makes its own database in it
    (Postgres.create_database)."""
    server = start_postgres(short_tmpdir("lmtpf-pg-"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def chain(filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot
          ) -> Iterator[tuple[Postfix, FilterProcess]]:
    """The production chain: a Postfix at Debian's defaults delivering over LMTP to a filter
    process on a unix socket, which delivers to the shared Dovecot."""
    workdir = new_workdir(daemon_base, "chain")
    listen = f"unix:{workdir}/lmtp.sock"
    proc = filter_process(workdir, filter_config(f"127.0.0.1:{dovecot.lmtp_port}", [listen]),
                          listen).start()
    postfix = start_postfix(workdir, transport=f"lmtp:{listen}",
                            extra_main_cf={"lmtp_destination_recipient_limit": "50"})
    try:
        yield postfix, proc
    finally:
        postfix.stop()


@pytest.fixture(scope="module")
def service_bin() -> Iterator[Path]:
    """A service venv with lmtpfilter installed as install.sh does (for commands run as
    another user than root, who cannot import the checkout's .venv)."""
    base = short_tmpdir("lmtpf-venv-")
    try:
        yield make_service_venv(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def service_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway system user, as install.sh makes the service's; deleted afterwards."""
    name = f"lmtpft-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)
