"""[server].workers: several processes share the listeners, under a supervisor."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, free_port
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration
MSG = b"Subject: workers\r\n\r\nhello\r\n"


def children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def wait_children(pid: int, count: int, timeout: float = 15) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(pid)
        if len(kids) == count:
            return kids
        time.sleep(0.1)
    raise AssertionError(f"{len(children(pid))} workers, wanted {count}")


async def burst(listen: str, n: int) -> list[list[str]]:
    results = await asyncio.gather(*(lmtp_session(listen, f"s{i}@example.net",
                                                  ["user1@example.org"], MSG)
                                     for i in range(n)))
    return [r.data_replies for r in results]


async def test_workers_share_the_load_and_survive_a_killed_worker(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot) -> None:
    workdir = new_workdir(daemon_base, "wk")
    listen = f"unix:{workdir}/lmtp.sock"
    tcp = f"127.0.0.1:{free_port()}"
    proc = filter_process(workdir, filter_config(f"127.0.0.1:{dovecot.lmtp_port}",
                                                 [listen, tcp], server="workers = 2"),
                          listen).start()
    assert proc.proc is not None
    workers = wait_children(proc.proc.pid, 2)
    # Both workers accept on the same sockets; which one the kernel wakes is its choice, so
    # send bursts until both have served (a handful at most in practice).
    served_by: set[int] = set()
    for _ in range(20):
        for replies in await burst(listen, 30) + await burst(tcp, 10):
            assert [r[:3] for r in replies] == ["250"]
        served_by = {int(p) for p in
                     re.findall(r"\[(\d+)\] lmtpfilter.pipeline: tx=", proc.log())}
        if served_by == workers:
            break
    assert served_by == workers  # both took connections

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = children(proc.proc.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    assert len(children(proc.proc.pid)) == 2 and victim not in children(proc.proc.pid)
    assert f"worker {victim} died (signal SIGKILL); starting another" in proc.log()
    for replies in await burst(listen, 10):
        assert [r[:3] for r in replies] == ["250"]

    assert proc.stop() == 0
    assert children(proc.proc.pid) == set()
    assert not Path(listen[5:]).exists()  # the supervisor removed the socket
