"""`lmtpfilter quarantine import-amavis`: amavis's quarantine files, parsed and imported.

The cases are amavis quarantine files in tests/data/amavis_quarantine (cases.toml says what
each must give); each test lays them out as amavis would (flat, hashed, gzip) in a temp dir.
The real amavisd-new writes them in tests/integration/test_amavis_quarantine.py.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter import amavis_quarantine as aq
from lmtpfilter import store as st
from lmtpfilter.cli import main
from lmtpfilter.config import Config, from_mapping
from lmtpfilter.message import Message
from lmtpfilter.quarantine import QuarantineFiles, open_quarantine, validate_id

DATA = Path(__file__).resolve().parents[1] / "data" / "amavis_quarantine"
CASES: list[dict[str, Any]] = tomllib.loads((DATA / "cases.toml").read_text())["case"]
LAYOUTS = ("flat", "hashed", "gzip")
TEN_DAYS = 10 * 86400


def laid_out(directory: Path, name: str, data: bytes, layout: str, mtime: float) -> Path:
    """Where amavis puts a file: DIR/name, DIR/<first char of mail_id>/name, or gzipped."""
    mail_id = name.split("-", 1)[1]
    if layout == "hashed":
        path = directory / mail_id[0] / name
    elif layout == "gzip":
        path, data = directory / (name + ".gz"), gzip.compress(data)
    else:
        path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


@dataclass
class World:
    config: Config
    store: st.Store
    source: Path
    config_path: Path

    def rows(self) -> dict[str, st.QuarantineRecord]:
        return self.store.transaction(lambda s: {r.message_id: r for r in
                                                 s.query(st.QuarantineRecord)})

    def run(self) -> tuple[aq.ImportSummary, list[tuple[Path, str]]]:
        skipped: list[tuple[Path, str]] = []
        summary = aq.import_directory(self.config, self.store, self.source,
                                      lambda p, why: skipped.append((p, why)))
        return summary, skipped


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    st.upgrade(url)
    mapping = {"database": {"url": url}, "quarantine": {"directory": str(tmp_path / "q")}}
    config_path = tmp_path / "lmtpfilter.toml"
    config_path.write_text(f'[database]\nurl = "{url}"\n[quarantine]\n'
                           f'directory = "{tmp_path / "q"}"\n')
    source = tmp_path / "virusmails"
    source.mkdir()
    store = st.Store(url)
    try:
        yield World(from_mapping(mapping), store, source, config_path)
    finally:
        store.close()


def fingerprint(directory: Path) -> dict[str, tuple[str, float, int]]:
    """Every file under directory: content hash, mtime, mode."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                            p.stat().st_mtime, p.stat().st_mode)
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_case_parsed_and_stored(world: World, case: dict[str, Any], layout: str) -> None:
    data = (DATA / case["file"]).read_bytes()
    mtime = 1_700_000_000.0
    laid_out(world.source, case["file"], data, layout, mtime)
    summary, skipped = world.run()
    assert (summary.imported, summary.already, summary.skipped, skipped) == (1, 0, 0, [])
    mail_id = case["file"].split("-", 1)[1]
    row = world.rows()[aq.MESSAGE_ID_PREFIX + mail_id]
    validate_id(row.id)
    assert (row.sender, row.recipient_list, row.reason, row.detail, row.subject) == (
        case["sender"], case["recipients"], case["reason"], case["detail"], case["subject"])
    assert row.created_at.timestamp() == mtime
    files = QuarantineFiles(world.config.quarantine)
    assert files.path_of(row).stat().st_mtime == mtime  # the janitor ages it by this
    stored = files.read(row)
    assert hashlib.sha256(stored).hexdigest() == row.sha256
    # Our X-Quarantine-ID on top, then the original as amavis would release it, less the
    # verdict fields the sender wrote.
    top = f"X-Quarantine-ID: <{row.id}>\n".encode()
    assert stored.startswith(top)
    original = data[data.index(case["original"].encode()):]
    kept = Message.parse(original)
    expected = b"".join(f.raw for f in kept.fields if f.key not in case["removed"])
    assert stored[len(top):] == expected + bytes(kept.body)
    amavis_fields = ("x-envelope-", "x-amavis-", "delivered-to", "return-path")
    assert not [f.key for f in Message.parse(stored).fields if f.key.startswith(amavis_fields)]


def test_imported_into_the_sql_store_with_amavis_dates(world: World) -> None:
    """store = "sql": the copies are chunks dated as amavis's files (the janitor's walk sees
    that date), read back whole; a second import adds nothing."""
    world.config = from_mapping({"database": {"url": world.store.url},
                                 "quarantine": {"directory": str(world.source.parent / "q"),
                                                "store": "sql"}})
    dates = {}
    for i, case in enumerate(CASES):
        mtime = 1_700_000_000.0 + i * 86400
        laid_out(world.source, case["file"], (DATA / case["file"]).read_bytes(), "flat", mtime)
        dates[aq.MESSAGE_ID_PREFIX + case["file"].split("-", 1)[1]] = mtime
    summary, skipped = world.run()
    assert (summary.imported, summary.skipped, skipped) == (len(CASES), 0, [])
    rows = world.rows()
    assert {key: row.created_at.timestamp() for key, row in rows.items()} == dates
    quarantine = open_quarantine(world.config.quarantine, world.store)
    walked = {f.qid: f.mtime for listing in quarantine.listings() for f in listing.files}
    assert walked == {row.id: dates[key] for key, row in rows.items()}
    for row in rows.values():
        assert row.path == "" and hashlib.sha256(quarantine.read(row)).hexdigest() == row.sha256
    assert not list((world.source.parent / "q").rglob("*.eml.gz"))  # no files
    again, _ = world.run()
    assert (again.imported, again.already) == (0, len(CASES))


def test_import_twice_adds_nothing_and_source_is_untouched(world: World) -> None:
    for i, case in enumerate(CASES):
        laid_out(world.source, case["file"], (DATA / case["file"]).read_bytes(),
                 LAYOUTS[i % len(LAYOUTS)], 1_700_000_000.0 + i)
    world.source.chmod(0o750)
    before = fingerprint(world.source)
    first, _ = world.run()
    rows = {k: (r.id, r.path, r.sha256) for k, r in world.rows().items()}
    second, _ = world.run()
    assert (first.imported, first.already) == (len(CASES), 0)
    assert (second.imported, second.already) == (0, len(CASES))
    assert {k: (r.id, r.path, r.sha256) for k, r in world.rows().items()} == rows
    assert fingerprint(world.source) == before  # nothing changed, added or deleted


def test_the_same_file_plain_and_gzip_is_one_message(world: World) -> None:
    case = CASES[0]
    data = (DATA / case["file"]).read_bytes()
    laid_out(world.source, case["file"], data, "flat", 1_700_000_000.0)
    laid_out(world.source, case["file"], data, "gzip", 1_700_000_000.0)
    summary, _ = world.run()
    assert (summary.imported, summary.already) == (1, 1)


GARBLED: dict[str, bytes] = {
    "virus-Garbled00001.gz": b"\x1f\x8b\x08\x00 not really gzip",
    "virus-Garbled00002": b"",
    "spam-Garbled000003": b"X-Envelope-From: <a@example.net>\nSubject: no recipients\n\nbody\n",
    "spam-Garbled000004": b"X-Envelope-To: <u@example.org>\nSubject: no sender\n\nbody\n",
    "banned-Garbled0005": (b"X-Envelope-From: <a@example.net>\nX-Envelope-To: <u@example.org>\n"
                           b"X-Quarantine-ID: <SomeOtherId1>\nSubject: x\n\nbody\n"),
    "badh-Garbled000006": b"X-Envelope-From: <a@example.net>\nX-Envelope-To: <u@example.org>\n",
}


def test_garbled_files_are_named_and_the_rest_imported(world: World) -> None:
    for name, data in GARBLED.items():
        (world.source / name).write_bytes(data)
    good = CASES[1]["file"]
    laid_out(world.source, good, (DATA / good).read_bytes(), "hashed", 1_700_000_000.0)
    (world.source / "clean-ArchiveCopy1").write_bytes((DATA / good).read_bytes())
    (world.source / "README").write_text("not amavis's")  # not named like amavis's: ignored
    summary, skipped = world.run()
    assert summary.imported == 1 and summary.failed == len(GARBLED)
    assert summary.skipped == len(GARBLED) + 1
    assert sorted(p.name for p, _ in skipped) == sorted([*GARBLED, "clean-ArchiveCopy1"])
    assert all(why and "\n" not in why for _, why in skipped)


def test_a_fifo_named_like_a_quarantine_file_is_skipped_without_blocking(world: World) -> None:
    os.mkfifo(world.source / CASES[0]["file"])
    summary, skipped = world.run()
    assert summary.failed == 1 and skipped == [(world.source / CASES[0]["file"],
                                                "not a regular file")]


def test_symlinks_are_not_followed(world: World, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    case = CASES[0]
    shutil.copy(DATA / case["file"], elsewhere / case["file"])
    (world.source / "H").symlink_to(elsewhere)
    (world.source / case["file"]).symlink_to(elsewhere / case["file"])
    summary, skipped = world.run()
    assert summary.imported == 0 and [p.name for p, _ in skipped] == [case["file"]]


@pytest.mark.parametrize("value, addresses", [
    ("<a@example.org>", ["a@example.org"]),
    ("<>", [""]),
    ("<a@example.org>, <b@example.org>", ["a@example.org", "b@example.org"]),
    ('<"x, <y>"@example.org>,<b@example.org>', ['"x, <y>"@example.org', "b@example.org"]),
    ("a@example.org, b@example.org", ["a@example.org", "b@example.org"]),
])
def test_address_lists(value: str, addresses: list[str]) -> None:
    assert aq.parse_addresses(value) == addresses


def cli(world: World, *args: str) -> int:
    return main(["quarantine", *args, "-c", str(world.config_path)])


def test_cli_imports_lists_and_resolves_amavis_ids(world: World,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for case in CASES:
        laid_out(world.source, case["file"], (DATA / case["file"]).read_bytes(), "hashed",
                 1_700_000_000.0)
    (world.source / "spam-Garbled000003").write_bytes(GARBLED["spam-Garbled000003"])
    assert cli(world, "import-amavis", str(world.source)) == 1  # one file was garbled
    out, err = capsys.readouterr()
    assert out == f"imported {len(CASES)}, already there 0, skipped 1\n"
    assert err.count("\n") == 1 and "spam-Garbled000003" in err
    assert cli(world, "list", "--reason", "bad-header") == 0
    out, _ = capsys.readouterr()
    assert out.count("\n") == 1 and "bad-header" in out
    row = world.rows()[aq.MESSAGE_ID_PREFIX + "HV8_NBRLoS-0"]
    for given in ("HV8_NBRLoS-0", "virus-HV8_NBRLoS-0", "H/virus-HV8_NBRLoS-0.gz"):
        assert cli(world, "show", given) == 0
        out, _ = capsys.readouterr()
        assert out.startswith(f"Quarantine-ID: {row.id}\n")
    assert cli(world, "show", "NotImported1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no message imported from amavis has mail_id" in err
    for hostile in ("../../etc/passwd", "../virus-HV8_NBRLoS-0/..", "HV8_NBRLoS-", "x" * 5000):
        assert cli(world, "show", hostile) == 2
        assert "invalid quarantine ID" in capsys.readouterr().err


@pytest.mark.parametrize("make, code, words", [
    (lambda d: d / "missing", 2, "no such directory"),
    (lambda d: d / "virusmails" / "not-a-dir", 2, "not a directory"),
])
def test_cli_bad_directory_is_one_line(world: World, capsys: pytest.CaptureFixture[str],
                                       make: Any, code: int, words: str) -> None:
    (world.source / "not-a-dir").write_text("")
    target = make(world.source.parent)
    assert cli(world, "import-amavis", str(target)) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and str(target) in err


def test_a_full_quarantine_stops_the_import_in_one_line(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    for case in CASES:
        laid_out(world.source, case["file"], (DATA / case["file"]).read_bytes(), "flat",
                 1_700_000_000.0)
    text = world.config_path.read_text().replace("[quarantine]\n",
                                                 '[quarantine]\nmax_size = "1K"\n')
    world.config_path.write_text(text)
    assert cli(world, "import-amavis", str(world.source)) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    stopped = re.match(r"lmtpfilter: import stopped at \S+ \(imported (\d+), already there 0, "
                       r"skipped 0\): quarantine holds \d+ bytes, budget is 1024$", err)
    assert stopped, err
    assert len(world.rows()) == int(stopped.group(1)) < len(CASES)  # what fitted stays
