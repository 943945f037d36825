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


# Dovecot 2.4 refuses an 11th concurrent delivery to one user (lmtp_user_concurrency_limit,
# 10 by default; 2.3 had no limit): "451 4.3.0 Too many concurrent deliveries", which the
# filter rightly passes on. So no test here sends more than PER_USER at once to one user.
PER_USER = 8
RECIPIENTS = ("user1@example.org", "user2@example.org", "user3@example.org")


async def burst(listen: str, n: int) -> list[list[str]]:
    """n sessions at once, each to one user in turn (at most PER_USER each)."""
    assert n <= PER_USER * len(RECIPIENTS)
    results = await asyncio.gather(*(lmtp_session(listen, f"s{i}@example.net",
                                                  [RECIPIENTS[i % len(RECIPIENTS)]], MSG)
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
        for replies in await burst(listen, 24) + await burst(tcp, 10):
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


async def deliver_retrying(listen: str, n: int, subject: bytes) -> int:
    """Deliver one message, as Postfix would: a connection that a retiring worker greets
    with 421 (it had accepted it just before closing its listener) is tried again. Returns
    how many tries were refused that way."""
    for refused in range(10):
        try:
            result = await lmtp_session(listen, f"s{n}@example.net", ["user2@example.org"],
                                        b"Subject: " + subject + b"\r\n\r\nhello\r\n")
        except (AssertionError, ConnectionError):  # 421 at the greeting, or closed
            continue
        assert [r[:3] for r in result.data_replies] == ["250"], result
        return refused
    raise AssertionError(f"message {n} refused 10 times")


# On both event loops ([server] event_loop): a retiring worker closes its server, which is
# where Python 3.13's and uvloop's loops once removed the shared socket's file.
@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_a_worker_retires_after_worker_max_messages_and_nothing_is_lost(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
        event_loop: str) -> None:
    workdir = new_workdir(daemon_base, "retire")
    listen = f"unix:{workdir}/lmtp.sock"
    proc = filter_process(workdir, filter_config(
        f"127.0.0.1:{dovecot.lmtp_port}", [listen],
        server=f'workers = 2\nworker_max_messages = 10\nevent_loop = "{event_loop}"'),
        listen).start()
    assert proc.proc is not None
    first = wait_children(proc.proc.pid, 2)
    subject = f"retire-{os.getpid()}-{time.time_ns()}".encode()
    before = len(dovecot.messages("user2@example.org"))
    for start in range(0, 120, PER_USER):  # retirements happen mid-burst
        await asyncio.gather(*(deliver_retrying(listen, n, subject)
                               for n in range(start, start + PER_USER)))
    # Each worker retires after 10-11 transactions: every message went through, once.
    stored = dovecot.wait_for_messages("user2@example.org", before + 120)
    assert sum(subject in m for m in stored) == 120
    log = proc.log()
    # A worker retires after 10-11 transactions plus those its open sessions still bring (up
    # to PER_USER), so 120 messages make at least 120 // (11 + PER_USER) retirements.
    assert log.count("; starting another") >= 120 // (11 + PER_USER)
    assert "died" not in log and "Traceback" not in log
    assert f"(event loop: {event_loop})" in log
    assert re.search(r"retiring after 1[01] transactions \(\[server\] worker_max_messages\)",
                     log)
    now = wait_children(proc.proc.pid, 2)
    assert not now & first  # both first workers were replaced
    assert proc.stop() == 0
