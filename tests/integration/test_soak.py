"""The soak with faults (bench/soak.py), in its 2,000-message version: the same chain, the
same fault schedule and the same checks as the hour-long run whose table is in the README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs for the quarantine")
def test_soak_2000_messages_with_faults(tmp_path: Path) -> None:
    result_file = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--profile", "ci",
                          "--json", str(result_file)],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    print(run.stdout[-6000:], run.stderr[-4000:])  # the table, in the test's output
    result = json.loads(result_file.read_text())
    outcomes = result["outcomes"]
    assert outcomes["messages"] == 2000
    assert outcomes.get("lost", 0) == 0, result["problems"]
    assert outcomes.get("leaked", 0) == 0, result["problems"]
    assert result["unexplained_duplicates"] == []
    # Each kind of outcome happened, so the account had something to count.
    assert outcomes["delivered"] > 0 and outcomes["quarantined"] > 0 and outcomes["refused"] > 0
    assert {f["name"] for f in result["faults"]} >= {
        "clamd killed and restarted", "spamd stopped past its timeout", "Dovecot restarted",
        "a worker SIGKILLed", "SQLite DB locked by another process",
        "quarantine filesystem full", "Dovecot frozen past the downstream timeout"}
    assert all(result["checks"].values()), result["checks"]
    assert run.returncode == 0
