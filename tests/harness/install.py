"""lmtpfilter as scripts/install.sh installs it, for tests that run it as another user.

The development virtualenv will not do for them: its Python lives under /root, which the service
user cannot read. install.sh's virtualenv is made from Debian's Python (make_venv in
scripts/debian-packages.sh), from the working tree under test, copied: a git clone would take
the last commit instead.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What the copy leaves out: the development venv, build output and the tools' caches.
NOT_SOURCES = shutil.ignore_patterns(".venv", "build", ".git", "*.egg-info", "__pycache__",
                                     ".mypy_cache", ".ruff_cache", ".pytest_cache")


def copy_checkout(target: Path) -> Path:
    """The working tree under test, as files, in `target` (which must not exist yet)."""
    shutil.copytree(REPO, target, ignore=NOT_SOURCES)
    return target


def make_service_venv(base: Path) -> Path:
    """install.sh's virtualenv in base/venv, from a copy in base/src; returns its bin/."""
    source = copy_checkout(base / "src")
    subprocess.run(["bash", "-c", 'source scripts/debian-packages.sh && '
                    'PYTHON=/usr/bin/python3 make_venv "$1" ".[uvloop]"', "make_venv",
                    str(base / "venv")], cwd=source, check=True, capture_output=True,
                   timeout=600)
    return base / "venv" / "bin"
