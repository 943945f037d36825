"""Several worker processes sharing the listeners (``[server].workers``), and their supervisor.

The parent binds every listening socket once, then forks the workers; each worker builds its
own event loop, database engine and downstream connections and serves the inherited sockets
(the kernel hands each new connection to one of them). The parent only supervises:

* a worker that dies is restarted (after a short pause if they die in a loop); what it had in
  flight was never acknowledged, so Postfix retries it: nothing is lost;
* a worker that exits 0 on its own retired ([server] worker_max_messages: it drained as on
  SIGTERM after its share of transactions) and is replaced at once;
* SIGTERM (or SIGINT) is passed to every worker, which drains as a single process does; the
  parent waits for them and exits 0.

Forking happens before anything starts threads or opens connections in the parent.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger(__name__)

RESTART_PAUSE = 1.0  # seconds between restarts of a worker that keeps dying at once
QUICK_DEATH = 2.0  # a worker that dies sooner than this after its start "dies at once"


class _StopRequested(Exception):
    """Raised by the signal handler: waitpid() is otherwise retried (PEP 475)."""


class Supervisor:
    def __init__(self, count: int, sockets: Sequence[socket.socket],
                 run_worker: Callable[[Sequence[socket.socket]], int],
                 stop_timeout: float) -> None:
        self.count = count
        self.sockets = sockets
        self.run_worker = run_worker
        self.stop_timeout = stop_timeout
        self.children: dict[int, float] = {}  # pid -> started at
        self._stopping = False

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = self.run_worker(self.sockets)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                os._exit(code)
        self.children[pid] = time.monotonic()
        log.info("worker %d started", pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        raise _StopRequested

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for _ in range(self.count):
            self._spawn()
        while not self._stopping:
            try:
                pid, status = os.waitpid(-1, 0)
            except _StopRequested:
                break
            except ChildProcessError:
                break
            started = self.children.pop(pid, None)
            if started is None or self._stopping:
                continue
            from . import metrics  # imported late: `serve` set up the metrics directory

            retired = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            if retired:
                log.info("worker %d retired; starting another", pid)
                metrics.WORKER_RETIREMENTS.inc()
            else:
                log.error("worker %d died (%s); starting another", pid, _describe(status))
                metrics.WORKER_RESTARTS.inc()
            metrics.mark_process_dead(pid)
            try:
                if not retired and time.monotonic() - started < QUICK_DEATH:
                    time.sleep(RESTART_PAUSE)
                self._spawn()
            except _StopRequested:
                break
        return self._stop()

    def _stop(self) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on, we are stopping anyway
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log.info("stopping %d workers", len(self.children))
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                self.children.pop(pid, None)
        deadline = time.monotonic() + self.stop_timeout
        while self.children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.children.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in list(self.children):  # still there after the drain timeout
            log.error("worker %d did not stop; killing it", pid)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for sock in self.sockets:
            sock.close()
        return 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"
