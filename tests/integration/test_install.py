"""scripts/install.sh, twice (idempotent), into temporary locations."""

from __future__ import annotations

import os
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
    paths = {name: base / name for name in ("prefix", "etc", "state", "units")}
    yield paths
    shutil.rmtree(base, ignore_errors=True)


def install(places: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LMTPFILTER_PREFIX=str(places["prefix"]),
               LMTPFILTER_ETC=str(places["etc"]), LMTPFILTER_STATE=str(places["state"]),
               LMTPFILTER_UNITS=str(places["units"]))
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
    config.write_text(config.read_text() + "\n# edited by the admin\n")
    second = install(places)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "# edited by the admin" in config.read_text()  # the config is kept
    if shutil.which("systemd-analyze"):
        units = sorted(p.name for p in places["units"].iterdir())
        verify = subprocess.run(["systemd-analyze", "verify", *[f"./{u}" for u in units]],
                                cwd=places["units"], capture_output=True, text=True,
                                timeout=60)
        assert verify.returncode == 0, verify.stderr
