#!/usr/bin/env python3
"""Time one lmtpfilter-janitor pass over a large quarantine, and its peak memory.

Builds N quarantine files (default 1,000,000; small, sharded yyyy/mm/dd over `--days` days, as
the filter writes them) with their database rows, then runs `lmtpfilter-janitor run` once with
max_age longer than the tree (a pure walk: every file stat'ed and checked against the DB), and
once with max_age cutting off the oldest tenth. Prints files/s and the run's peak RSS.

    usage: python3 bench/janitor.py [--files 1000000] [--days 365] [--dir /var/tmp/...]
Needs ~4 KB of disk per file (one block each) and as many inodes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from lmtpfilter import store as st  # noqa: E402
from lmtpfilter.quarantine import new_id, relative_path  # noqa: E402


def build(base: Path, files: int, days: int) -> str:
    url = f"sqlite:///{base}/lmtpfilter.db"
    st.upgrade(url)
    store = st.Store(url)
    now = dt.datetime.now(dt.UTC)
    payload = b"x" * 200
    rows: list[dict[str, object]] = []
    started = time.monotonic()
    for i in range(files):
        created = now - dt.timedelta(days=(i * days) / files)
        qid = new_id()
        rel = relative_path(qid, created)
        path = base / "quarantine" / rel
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
        path.write_bytes(payload)
        ts = created.timestamp()
        os.utime(path, (ts, ts))
        rows.append(dict(id=qid, message_id="TX", path=rel, size=len(payload), sha256="0",
                         reason="virus", detail="X", sender="s@x", recipients="r@x",
                         subject="", created_at=created, released_to="", release_replies=""))
        if len(rows) == 10_000:
            store.transaction(lambda s, r=rows: s.execute(  # type: ignore[misc]
                insert(st.Base.metadata.tables["quarantine"]), r), durable=False)
            rows = []
            print(f"  built {i + 1} files ({time.monotonic() - started:.0f} s)", flush=True)
    if rows:
        store.transaction(lambda s: s.execute(insert(st.Base.metadata.tables["quarantine"]),
                                              rows), durable=False)
    store.close()
    return url


def run(base: Path, url: str, max_age: str) -> tuple[float, float, str]:
    config = base / "lmtpfilter.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[quarantine]\ndirectory = "{base}/quarantine"\n'
                      f'max_size = "1T"\nmin_free = 0\n[janitor]\nmax_age = "{max_age}"\n')
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run([sys.executable, "-m", "janitor", "run", "-c", str(config)],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    seconds = time.monotonic() - started
    rss = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    return seconds, rss, result.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--dir", default="/var/tmp/lmtpfilter-janitor-bench")
    args = parser.parse_args()
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    try:
        print(f"building {args.files} files over {args.days} days in {base} ...")
        url = build(base, args.files, args.days)
        seconds, rss, line = run(base, url, f"{args.days + 30}d")
        print(f"walk, nothing to delete: {args.files / seconds:.0f} files/s "
              f"({seconds:.1f} s), peak RSS {rss:.0f} MB\n  {line}")
        cutoff = int(args.days * 0.9)
        seconds, rss, line = run(base, url, f"{cutoff}d")
        print(f"expire the oldest tenth: {args.files / seconds:.0f} files/s "
              f"({seconds:.1f} s), peak RSS {rss:.0f} MB\n  {line}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
