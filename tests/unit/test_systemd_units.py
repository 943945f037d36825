"""The systemd units pass `systemd-analyze verify` (Debian's systemd ships it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).parent.parent.parent / "systemd").iterdir())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify(tmp_path: Path) -> None:
    # The units name the installed commands; point them at the ones of this environment.
    bindir = Path(sys.executable).parent
    for unit in UNITS:
        text = unit.read_text().replace("/opt/lmtpfilter/venv/bin/", f"{bindir}/")
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", *[f"./{u.name}" for u in UNITS]],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "lmtpfilter" not in result.stderr, result.stderr  # no warnings about our units


def test_units_are_hardened() -> None:
    for unit in UNITS:
        if unit.suffix != ".service":
            continue
        text = unit.read_text()
        for setting in ("User=lmtpfilter", "NoNewPrivileges=yes", "ProtectSystem=strict",
                        "ReadWritePaths=/var/lib/lmtpfilter", "ProtectHome=yes",
                        "PrivateTmp=yes", "PrivateDevices=yes",
                        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                        "SystemCallFilter=@system-service", "CapabilityBoundingSet="):
            assert setting in text, f"{unit.name}: {setting}"


def test_timer_is_persistent() -> None:
    assert "Persistent=true" in (UNITS[0].parent / "lmtpfilter-janitor.timer").read_text()


def test_web_unit_runs_the_page_and_writes_only_the_state() -> None:
    text = (UNITS[0].parent / "lmtpfilter-web.service").read_text()
    assert "ExecStart=/opt/lmtpfilter/venv/bin/lmtpfilter web\n" in text
    assert "User=lmtpfilter\n" in text
    # The database, the Sieve scripts and the quarantine are all below /var/lib/lmtpfilter;
    # the page creates no directory of its own (the filter's unit makes that one).
    writable = [line for line in text.splitlines()
                if line.startswith(("ReadWritePaths=", "StateDirectory=", "RuntimeDirectory=",
                                    "CacheDirectory=", "LogsDirectory="))]
    assert writable == ["ReadWritePaths=/var/lib/lmtpfilter"]
