"""Whom a command started as root becomes (lmtpfilter/privileges.py), as a table; the rest,
as root with real users, is tests/integration/test_privileges.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmtpfilter import cli
from lmtpfilter import config as cfg
from lmtpfilter.privileges import (
    PrivilegeError,
    existing_ancestor,
    service_account,
    state_directories,
)

DB, QUARANTINE = Path("/var/lib/lmtpfilter"), Path("/var/lib/lmtpfilter/quarantine")

CASES = [
    # (name, [server] user, owners of the state directories, whom root becomes)
    ("installed: lmtpfilter owns the state", "", {DB: 999, QUARANTINE: 999}, 999),
    ("root owns it all (sandbox, tests): stay root", "", {DB: 0, QUARANTINE: 0}, None),
    ("PostgreSQL: the quarantine alone", "", {QUARANTINE: 999}, 999),
    ("configured user wins over the owners", "mail", {DB: 999, QUARANTINE: 0}, "mail"),
    ("configured root: stay root", "root", {DB: 999, QUARANTINE: 999}, None),
]


@pytest.mark.parametrize(("configured", "owners", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_service_account(configured: str, owners: dict[Path, int],
                         expected: str | int | None) -> None:
    assert service_account(configured, owners) == expected


@pytest.mark.parametrize("owners", [{DB: 999, QUARANTINE: 0}, {DB: 999, QUARANTINE: 998}],
                         ids=["root and a user", "two users"])
def test_state_of_different_owners_is_refused(owners: dict[Path, int]) -> None:
    with pytest.raises(PrivilegeError, match=r"different users .*: set \[server\] user"):
        service_account("", owners)


def test_state_directories(tmp_path: Path) -> None:
    sqlite = cfg.from_mapping({"database": {"url": f"sqlite:///{tmp_path}/db/x.db"},
                               "quarantine": {"directory": f"{tmp_path}/q"}})
    assert state_directories(sqlite) == [tmp_path / "db", tmp_path / "q"]
    postgres = cfg.from_mapping({"database": {"url": "postgresql+psycopg://u@h/db"},
                                 "quarantine": {"directory": f"{tmp_path}/q"}})
    assert state_directories(postgres) == [tmp_path / "q"]
    assert existing_ancestor(tmp_path / "q" / "2026" / "01") == tmp_path


def test_main_gives_the_umask_back(tmp_path: Path) -> None:
    """Commands create files with umask 027; main() restores the caller's umask when it
    returns, so a test (or anything) that calls it in its own process keeps its own."""
    config = tmp_path / "lmtpfilter.toml"
    config.write_text(f'[quarantine]\ndirectory = "{tmp_path}/q"\n')
    before = os.umask(0o022)
    try:
        assert cli.main(["check-config", "-c", str(config)]) == 0
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)
