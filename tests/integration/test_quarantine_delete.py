"""`lmtpfilter quarantine delete` and the quarantine's one lock, on a real quarantine and a real
store, on each quarantine store (test_janitor's world; FILES_ONLY: what only files have): delete
takes the lock the janitor takes, removes the stored copy, marks the row expired, and refuses
anything that is not a quarantine ID or a quarantine path."""

from __future__ import annotations

import datetime as dt
import functools
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lmtpfilter import cli
from lmtpfilter import quarantine as q
from lmtpfilter import store as st
from tests.integration import test_janitor
from tests.integration.test_janitor import FILES_ONLY, Kept, World, janitor

pytestmark = pytest.mark.integration

world = test_janitor.world  # the janitor tests' fixture: a config, a quarantine, a store


def qid_of(path: Kept) -> str:
    return path.name.split(".")[0]


def expired_at(world: World, qid: str) -> dt.datetime | None:
    row = world.store.transaction(lambda s: s.get(st.QuarantineRecord, qid))
    assert row is not None
    return row.expired_at


def delete_cli(world: World, qid: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lmtpfilter", "quarantine", "delete", qid,
                             "-c", str(world.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def quarantine_lock(world: World, *, exclusive: bool, timeout: float = 0) -> q.HeldLock:
    """THE lock of the world's store (a file lock, or PostgreSQL's advisory lock)."""
    return q.open_quarantine(world.config.quarantine, world.store).lock(
        exclusive=exclusive, timeout=timeout)


def janitor_lock(world: World) -> q.HeldLock:
    """The lock exactly as a janitor pass takes it (janitor.cli.one_pass)."""
    return quarantine_lock(world, exclusive=True, timeout=0)


def test_delete_removes_the_file_then_marks_the_row_and_may_be_repeated(world: World) -> None:
    path, other = world.keep(1), world.keep(1)
    proc = delete_cli(world, qid_of(path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out == f"deleted {qid_of(path)}\n"
    assert not path.exists() and world.expired(path)
    assert other.exists() and not world.expired(other)  # nothing else touched
    first = expired_at(world, qid_of(path))
    again = delete_cli(world, qid_of(path))
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert out == f"deleted {qid_of(path)} (its file was already gone)\n"
    assert expired_at(world, qid_of(path)) == first  # the first date stays


def test_delete_of_an_unknown_id_is_one_line_exit_1(world: World) -> None:
    proc = delete_cli(world, q.new_id())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "no quarantined message with ID" in err and err.count("\n") == 1


def test_delete_waits_for_a_janitor_pass_then_succeeds(world: World) -> None:
    path = world.keep(1)
    with janitor_lock(world):
        proc = delete_cli(world, qid_of(path))
        time.sleep(1.5)  # far longer than a delete takes when nothing holds the lock
        assert proc.poll() is None, proc.communicate()
        assert path.exists() and not world.expired(path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not path.exists() and world.expired(path)


def test_delete_gives_up_after_its_timeout_and_changes_nothing(world: World) -> None:
    path = world.keep(1)
    with janitor_lock(world):
        started = time.monotonic()
        with pytest.raises(q.QuarantineBusy, match="the janitor is running"):
            q.delete_message(world.config.quarantine, world.store, qid_of(path),
                             lock_timeout=0.5)
        assert time.monotonic() - started >= 0.5
    assert path.exists() and not world.expired(path)


def test_cli_delete_blocked_by_the_janitor_says_so_in_one_line(
        world: World, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = world.keep(1)
    # The command waits up to a minute; the same function, with a shorter wait.
    monkeypatch.setattr(q, "delete_message",
                        functools.partial(q.delete_message, lock_timeout=0.3))
    with janitor_lock(world):
        code = cli.main(["quarantine", "delete", qid_of(path), "-c", str(world.config_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("lmtpfilter: the janitor is running") and err.count("\n") == 1
    assert path.exists() and not world.expired(path)


def test_a_janitor_pass_is_skipped_while_a_release_or_delete_holds_the_lock(
        world: World) -> None:
    old = world.keep(40)
    with quarantine_lock(world, exclusive=False):
        result = janitor(world, "run")
    assert result.returncode == 0 and "skipped" in result.stderr
    assert old.exists()


def test_deletes_and_releases_share_the_lock(world: World) -> None:
    path = world.keep(1)
    with quarantine_lock(world, exclusive=False):  # a release in progress
        q.delete_message(world.config.quarantine, world.store, qid_of(path), lock_timeout=0)
    assert not path.exists() and world.expired(path)


def test_the_lock_waits_with_a_timeout(world: World) -> None:
    holder = janitor_lock(world).acquire()
    threading.Timer(0.3, holder.release).start()
    started = time.monotonic()
    with quarantine_lock(world, exclusive=True, timeout=10):
        waited = time.monotonic() - started
    assert 0.2 < waited < 5
    if world.url.startswith("sqlite"):  # PostgreSQL's is an advisory lock: no file
        lock_file = world.qdir / q.LOCK_NAME
        assert stat.S_IMODE(lock_file.stat().st_mode) == 0o600


@FILES_ONLY
def test_the_lock_file_is_never_a_symlink(world: World) -> None:
    world.qdir.mkdir(parents=True)
    target = world.base / "elsewhere"
    (world.qdir / q.LOCK_NAME).symlink_to(target)
    with pytest.raises(OSError), q.QuarantineLock(world.qdir, exclusive=False):
        pass
    assert not target.exists()


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "A" * 21 + "/", "A" * 5000, "",
                                     "AAAAAAAAAAA\0AAAAAAAAAA", "A" * 22 + "\n"])
def test_delete_refuses_hostile_ids_before_touching_anything(world: World,
                                                             hostile: str) -> None:
    with pytest.raises(q.InvalidQuarantineId, match="invalid quarantine ID"):
        q.delete_message(world.config.quarantine, world.store, hostile)
    assert not world.qdir.exists()  # not even the lock file was made


def add_row(world: World, qid: str, rel: str) -> None:
    world.store.transaction(lambda s: s.add(st.QuarantineRecord(
        id=qid, message_id="TX", path=rel, size=1, sha256="0" * 64, reason="virus",
        detail="X", sender="s@x", recipients="r@x", created_at=st.utcnow(), released_to="",
        release_replies="")))


def escape_by_dotdot(world: World, qid: str) -> tuple[str, Path]:
    """A row path that climbs out of the quarantine; the victim file it would name."""
    return f"../{qid}.eml.gz", world.base / f"{qid}.eml.gz"


def escape_by_symlinked_day(world: World, qid: str) -> tuple[str, Path]:
    """A path of the layout whose day directory has been swapped for a symlink."""
    outside = world.base / "outside"
    outside.mkdir()
    (world.qdir / "2020" / "01").mkdir(parents=True)
    (world.qdir / "2020" / "01" / "02").symlink_to(outside, target_is_directory=True)
    return f"2020/01/02/{qid}.eml.gz", outside / f"{qid}.eml.gz"


Escape = Callable[[World, str], tuple[str, Path]]


@FILES_ONLY
@pytest.mark.parametrize(("escape", "refusal"), [
    (escape_by_dotdot, "unexpected path"),
    (escape_by_symlinked_day, "not inside the quarantine")])
def test_delete_never_removes_anything_outside_the_quarantine(
        world: World, escape: Escape, refusal: str) -> None:
    qid = q.new_id()
    rel, victim = escape(world, qid)
    victim.write_bytes(b"precious")
    add_row(world, qid, rel)
    with pytest.raises(q.InvalidQuarantineId, match=refusal):
        q.delete_message(world.config.quarantine, world.store, qid)
    assert victim.read_bytes() == b"precious"
    assert expired_at(world, qid) is None


@FILES_ONLY
def test_the_janitor_counts_a_row_with_a_hostile_path_as_having_no_file(world: World) -> None:
    qid = q.new_id()
    rel, victim = escape_by_dotdot(world, qid)
    victim.write_bytes(b"precious")
    add_row(world, qid, rel)
    summary = world.sweep().summary
    assert summary.orphan_rows == 1 and expired_at(world, qid) is not None
    assert victim.read_bytes() == b"precious"


@FILES_ONLY
def test_written_files_and_every_directory_level_are_private(world: World) -> None:
    old_umask = os.umask(0o022)
    try:
        files = q.QuarantineFiles(world.config.quarantine)
        qid = q.new_id()
        stored = files.write(qid, dt.datetime(2021, 3, 4, tzinfo=dt.UTC), [b"Subject: x\r\n"])
    finally:
        os.umask(old_umask)
    path = world.qdir / stored.path
    assert stored.path == f"2021/03/04/{qid}.eml.gz"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for level in (path.parent, path.parent.parent, path.parent.parent.parent):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700, level
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_new_ids_never_look_like_command_line_options() -> None:
    ids = [q.new_id() for _ in range(5000)]  # about 78 would start with "-" by chance
    assert not [i for i in ids if i.startswith("-")]
    assert all(q.validate_id(i) == i for i in ids)
