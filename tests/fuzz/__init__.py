"""Fuzzing (issue 16 item 1): a hypothesis state machine that drives the real server
in-process, and coverage-guided atheris targets for the pure parts.

CI runs the bounded "ci" profile; scripts/fuzz.sh runs the "long" one for as long as asked.
Both keep hypothesis's example database in .hypothesis/ at the top of the checkout, so a failing
example found once is replayed first on every later run in that checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

ROOT = Path(__file__).resolve().parent.parent.parent
DATABASE = DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis" / "examples"))
# Slow by nature (sockets, a whole server per example): speed is not what is tested.
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
         HealthCheck.large_base_example]

PROFILES = {
    # CI: bounded so the file stays under about a minute on a 2-core machine.
    "ci": settings(max_examples=60, stateful_step_count=20, deadline=None,
                   database=DATABASE, suppress_health_check=_SLOW),
    # scripts/fuzz.sh: one round of a loop that runs until its time is up.
    "long": settings(max_examples=400, stateful_step_count=40, deadline=None,
                     database=DATABASE, suppress_health_check=_SLOW),
}


def profile() -> settings:
    """The settings chosen by LMTPFILTER_FUZZ_PROFILE (default "ci"); never loaded globally,
    so the property tests elsewhere keep their own settings."""
    return PROFILES[os.environ.get("LMTPFILTER_FUZZ_PROFILE", "ci")]
