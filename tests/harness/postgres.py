"""A throwaway real PostgreSQL server on loopback for integration tests (stdlib only).

:func:`start_postgres` creates a fresh cluster in ``base/postgres/data`` (initdb), runs the
postmaster in the foreground as a child of the test process, listening on 127.0.0.1:PORT and on
a unix socket in ``base/postgres/run``, and creates the role ``lmtpfilter`` (password
``secret``) owning the database ``lmtpfilter``. Nothing of the system clusters
(/etc/postgresql, /var/lib/postgresql, port 5432) is used or touched.

* The server refuses to run as root: every server-side program runs as the ``postgres`` OS
  user (``runuser -u postgres --``), so ``base`` must be world-traversable and short (unix
  socket path limit): use :func:`tests.harness.daemons.short_tmpdir`.
* Host (TCP) connections need a password (scram-sha-256); the unix socket is ``trust`` and is
  used for administration (createdb/dropdb as the ``postgres`` superuser).
* fsync, synchronous_commit and full_page_writes are off and initdb runs with --no-sync:
  fast, and a crash loses data. It is a test server.
* The postmaster stays our descendant (not daemonized by ``pg_ctl start``), so it is reaped
  by us, never left as a zombie of PID 1.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.daemons import free_port

__all__ = [
    "PG_DATABASE",
    "PG_PASSWORD",
    "PG_USER",
    "Postgres",
    "find_pg_bindir",
    "start_postgres",
]

LOOPBACK = "127.0.0.1"
PG_USER = "lmtpfilter"
PG_PASSWORD = "secret"
PG_DATABASE = "lmtpfilter"
OS_USER = "postgres"
SUPERUSER = "postgres"

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def find_pg_bindir() -> Path:
    """Directory holding initdb/postgres/pg_ctl/psql.

    ``$LMTPFILTER_PG_BINDIR`` if set, else the highest /usr/lib/postgresql/<version>/bin,
    else ``pg_config --bindir``, else the directory of ``initdb`` on PATH.
    Raises FileNotFoundError if PostgreSQL's server binaries are not installed.
    """
    candidates: list[Path] = []
    env = os.environ.get("LMTPFILTER_PG_BINDIR")
    if env:
        candidates.append(Path(env))
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates.extend(sorted(versions, key=lambda p: int(p.parent.name), reverse=True))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for c in candidates:
        if all((c / prog).is_file() for prog in ("initdb", "postgres", "pg_ctl", "psql")):
            return c
    raise FileNotFoundError(
        "PostgreSQL server binaries (initdb, postgres, pg_ctl, psql) not found; "
        "install Debian's postgresql package or set LMTPFILTER_PG_BINDIR"
    )


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without PG* variables (they would redirect psql & co)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra or {})
    return env


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _pid_running(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass
class Postgres:
    """A running throwaway PostgreSQL server started by :func:`start_postgres`."""

    dir: Path
    port: int
    pid: int
    bindir: Path = field(default_factory=Path, repr=False)
    startup_seconds: float = 0.0
    """Wall time start_postgres() took (initdb + start + role/database + first connection)."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir / "run"

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    def url(self, database: str = PG_DATABASE) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of a database, as role lmtpfilter over TCP."""
        return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@{LOOPBACK}:{self.port}/{database}"

    def _admin(self, prog: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a client program as the postgres superuser over the unix socket (trust)."""
        res = _as_postgres(
            [
                str(self.bindir / prog),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                *args,
            ],
            cwd=self.dir,
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"{prog} {' '.join(args)} failed (rc {res.returncode}):\n{res.stdout}{res.stderr}"
            )
        return res

    def create_database(self, name: str) -> str:
        """Create database ``name`` owned by role lmtpfilter; return its SQLAlchemy URL."""
        _check_db_name(name)
        self._admin("createdb", "-O", PG_USER, name)
        return self.url(name)

    def psql(self, database: str, sql: str) -> str:
        """Run SQL as the superuser in `database` (stops at the first error); its output."""
        _check_db_name(database)
        return self._admin("psql", "-v", "ON_ERROR_STOP=1", "-X", "-q", "-d", database,
                           "-c", sql).stdout

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, terminating its open connections."""
        _check_db_name(name)
        self._admin("dropdb", "--if-exists", "--force", name)

    def log_text(self) -> str:
        """Server log (initdb output first, then the postmaster's stderr)."""
        return _read_text(self.dir / "initdb.log") + _read_text(self.log_path)

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` and wait until the postmaster is gone. Idempotent."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        stopped = False
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            stopped = (
                _as_postgres(
                    [
                        str(self.bindir / "pg_ctl"),
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        str(int(STOP_TIMEOUT)),
                    ],
                    cwd=self.dir,
                    timeout=STOP_TIMEOUT + 5,
                ).returncode
                == 0
            )
        if not stopped:  # no postmaster.pid yet, or pg_ctl failed: signal directly
            with contextlib.suppress(OSError):
                if self.pid and _pid_running(self.pid):
                    os.kill(self.pid, signal.SIGINT)  # SIGINT = fast shutdown
                else:
                    proc.terminate()  # runuser passes SIGTERM on to its child
        _stop_proc(proc, self.pid)


def _check_db_name(name: str) -> None:
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")


def _as_postgres(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", OS_USER, "--", *args],
        cwd=cwd,
        env=_clean_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _stop_proc(proc: subprocess.Popen[bytes], pid: int) -> None:
    """Wait for the runuser wrapper (and so the postmaster) to exit; SIGKILL after timeout."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while proc.poll() is None or (pid and _pid_running(pid)):
        if time.monotonic() > deadline:
            # start_new_session: runuser leads the process group, postmaster and backends in it
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT)
            return
        time.sleep(POLL_INTERVAL)


def _postmaster_status(data: Path) -> tuple[int, str] | None:
    """(pid, status) from postmaster.pid once complete (status "ready" = accepting)."""
    lines = _read_text(data / "postmaster.pid").splitlines()
    if len(lines) < 8 or not lines[0].strip().isdigit():
        return None
    return int(lines[0]), lines[7].strip()


def start_postgres(base: Path, *, port: int | None = None) -> Postgres:
    """Start a throwaway PostgreSQL in ``base/postgres`` on 127.0.0.1:port (free port if None).

    Returns once role lmtpfilter can log in over TCP with its password to database lmtpfilter.
    Raises RuntimeError (with initdb output and the server log) if that does not happen within
    30 s; whatever was started is stopped first.
    """
    t0 = time.monotonic()
    bindir = find_pg_bindir()
    pw = pwd.getpwnam(OS_USER)
    d = Path(base).absolute() / "postgres"
    port = port or free_port()
    sock = d / "run" / f".s.PGSQL.{port}"
    if len(str(sock)) > SUN_PATH_MAX:
        raise ValueError(f"{sock} exceeds the unix socket path limit; use short_tmpdir()")
    d.mkdir(parents=True, exist_ok=True)
    for parent in d.parents:
        if not parent.stat().st_mode & 0o001:
            raise ValueError(
                f"{parent} is not world-traversable (o+x); the postgres user cannot reach "
                f"{d}. Use short_tmpdir()."
            )
    for sub in (d, d / "run"):
        sub.mkdir(exist_ok=True)
        sub.chmod(0o755)
        os.chown(sub, pw.pw_uid, pw.pw_gid)
    data = d / "data"

    initdb = _as_postgres(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "--no-instructions",
        ],
        cwd=d,
    )
    (d / "initdb.log").write_text(
        f"$ initdb (rc {initdb.returncode})\n{initdb.stdout}{initdb.stderr}\n"
    )
    if initdb.returncode != 0:
        raise RuntimeError(
            f"initdb failed (rc {initdb.returncode}, dir {data}):\n{initdb.stdout}{initdb.stderr}"
        )
    settings = {
        "listen_addresses": f"'{LOOPBACK}'",
        "port": str(port),
        "unix_socket_directories": f"'{d / 'run'}'",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "logging_collector": "off",
        "log_destination": "'stderr'",
        "max_connections": "100",
    }
    # appending keeps the file's owner (postgres); later settings win
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\n# tests/harness/postgres.py: throwaway test server\n")
        conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    log_path = d / "postgres.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            ["runuser", "-u", OS_USER, "--", str(bindir / "postgres"), "-D", str(data)],
            cwd=d,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pg = Postgres(dir=d, port=port, pid=0, bindir=bindir, _proc=proc)

    def fail(why: str) -> RuntimeError:
        pg.stop()
        _stop_proc(proc, pg.pid)
        return RuntimeError(
            f"postgres {why} (dir {d}, port {port}, rc {proc.returncode})\n"
            f"--- server log ---\n{pg.log_text()}"
        )

    deadline = t0 + READY_TIMEOUT
    while True:  # postmaster.pid says "ready" once it accepts connections (as pg_ctl -w)
        if proc.poll() is not None:
            raise fail("died during startup")
        status = _postmaster_status(data)
        if status is not None:
            pg.pid = status[0]
            if status[1] == "ready" and sock.exists():
                break
        if time.monotonic() > deadline:
            raise fail(f"not ready after {READY_TIMEOUT:.0f}s")
        time.sleep(POLL_INTERVAL)

    try:
        pg._admin(
            "psql",
            "-X",
            "-q",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}'",
            "-c",
            f"CREATE DATABASE {PG_DATABASE} OWNER {PG_USER}",
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise fail(f"role/database setup failed: {exc}") from exc

    # a real password (scram) login over TCP, as the application will do
    last = ""
    while True:
        check = subprocess.run(
            [
                str(bindir / "psql"),
                "-X",
                "-w",
                "-At",
                "-c",
                "select 1",
                f"host={LOOPBACK} port={port} user={PG_USER} dbname={PG_DATABASE}",
            ],
            env=_clean_env({"PGPASSWORD": PG_PASSWORD, "PGCONNECT_TIMEOUT": "5"}),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check.returncode == 0 and check.stdout.strip() == "1":
            break
        last = check.stdout + check.stderr
        if proc.poll() is not None:
            raise fail(f"died during startup; last TCP login attempt:\n{last}")
        if time.monotonic() > deadline:
            raise fail(f"TCP login as {PG_USER} failed for {READY_TIMEOUT:.0f}s:\n{last}")
        time.sleep(POLL_INTERVAL)

    pg.startup_seconds = time.monotonic() - t0
    return pg
