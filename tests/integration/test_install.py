"""scripts/install.sh, twice (idempotent), into temporary locations. The README's production
guide, install.sh included, is followed in tests/integration/test_production_guide.py."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.daemons import short_tmpdir

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parent.parent.parent


@pytest.fixture
def places() -> Iterator[dict[str, Path]]:
    base = short_tmpdir("lmtpf-inst-")
    paths = {name: base / name for name in ("prefix", "etc", "state", "units", "bin")}
    yield paths
    shutil.rmtree(base, ignore_errors=True)


def install(places: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LMTPFILTER_PREFIX=str(places["prefix"]),
               LMTPFILTER_ETC=str(places["etc"]), LMTPFILTER_STATE=str(places["state"]),
               LMTPFILTER_UNITS=str(places["units"]), LMTPFILTER_BIN=str(places["bin"]))
    return subprocess.run(["bash", str(ROOT / "scripts/install.sh")], env=env,
                          capture_output=True, text=True, timeout=600)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_twice(places: dict[str, Path]) -> None:
    first = install(places)
    assert first.returncode == 0, first.stderr[-2000:]
    config = places["etc"] / "lmtpfilter.toml"
    assert mode(config) == 0o640 and mode(places["state"]) == 0o751
    assert mode(places["state"] / "quarantine") == 0o700
    assert (places["state"] / "lmtpfilter.db").exists()
    assert (places["state"] / "sieve" / "default.sieve").exists()
    unit = (places["units"] / "lmtpfilter.service").read_text()
    assert f"ExecStart={places['prefix']}/venv/bin/lmtpfilter serve" in unit
    web_unit = (places["units"] / "lmtpfilter-web.service").read_text()
    assert f"ExecStart={places['prefix']}/venv/bin/lmtpfilter web" in web_unit
    # The web page's key: the service user's alone (`lmtpfilter web` refuses a wider one).
    key = places["etc"] / "web.key"
    assert mode(key) == 0o600 and key.stat().st_uid == pwd.getpwnam("lmtpfilter").pw_uid
    web_key = key.read_bytes()
    assert len(web_key) == 32
    for command in ("lmtpfilter", "lmtpfilter-janitor"):  # on PATH, in LMTPFILTER_BIN
        link = places["bin"] / command
        assert link.resolve() == places["prefix"] / "venv/bin" / command
        assert subprocess.run([str(link), "--help"], capture_output=True).returncode == 0
    config.write_text(config.read_text() + "\n# edited by the admin\n")
    # What `lmtpfilter db upgrade` run by root left before commands switched to the service
    # user: a root-owned, world-readable database. Installing again gives it back.
    database = places["state"] / "lmtpfilter.db"
    os.chown(database, 0, 0)
    database.chmod(0o644)
    second = install(places)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "# edited by the admin" in config.read_text()  # the config is kept
    assert key.read_bytes() == web_key  # and the key: a new one would void sent links
    assert database.stat().st_uid == pwd.getpwnam("lmtpfilter").pw_uid
    assert mode(database) == 0o640
    if shutil.which("systemd-analyze"):
        units = sorted(p.name for p in places["units"].iterdir())
        verify = subprocess.run(["systemd-analyze", "verify", *[f"./{u}" for u in units]],
                                cwd=places["units"], capture_output=True, text=True,
                                timeout=60)
        assert verify.returncode == 0, verify.stderr
