"""`lmtpfilter-janitor run [-c FILE] [--dry-run]` and `lmtpfilter-janitor serve [-c FILE]`.

Exit codes as lmtpfilter's: 0 ok (also when another run holds the lock: nothing to do),
1 runtime failure, 2 usage or config error. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from lmtpfilter import config as cfg
from lmtpfilter.options import mask_credentials
from lmtpfilter.privileges import COMMAND_UMASK, PrivilegeError, become_service_user
from lmtpfilter.quarantine import QuarantineBusy, open_quarantine

from .sweep import Summary, Sweeper

log = logging.getLogger("janitor")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmtpfilter-janitor",
                     description="expire the quarantine, enforce its budget, prune old verdicts")
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE")
    common.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", parents=[common], help="one pass (cron, systemd timer)")
    run.add_argument("--dry-run", action="store_true", help="delete nothing, say what it would")
    sub.add_parser("serve", parents=[common], help="run passes on [janitor].schedule")
    return parser


def one_pass(config: cfg.Config, dry_run: bool = False) -> Summary | None:
    """A pass holding the quarantine lock exclusive; None if another run (or a release or a
    delete) holds it: there is nothing to wait for, the next pass comes on schedule. With
    the sql store on PostgreSQL the lock is the database's, so a pass on another host sharing
    it counts: timers on every host fire, one sweeps, the others stand aside."""
    from lmtpfilter.store import Store

    store = Store(config.database.url)
    try:
        store.check_schema()
        with open_quarantine(config.quarantine, store).lock(exclusive=True, timeout=0):
            return Sweeper(config, store, dry_run=dry_run).run()
    except QuarantineBusy as exc:
        log.warning("janitor: stood aside, skipped this pass: %s", exc)
        return None
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        config = cfg.load(args.config)
    except cfg.ConfigError as exc:
        print(f"lmtpfilter-janitor: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Run by root (cron, by hand), the janitor creates the lock, the database's -wal and -shm
    # files as the service user, as lmtpfilter's commands do (lmtpfilter/privileges.py).
    previous_umask = os.umask(COMMAND_UMASK)
    try:
        become_service_user(config)
        if args.command == "run":
            return _run(config, args.dry_run)
        return _serve(config)
    except PrivilegeError as exc:
        print(f"lmtpfilter-janitor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        os.umask(previous_umask)


def _run(config: cfg.Config, dry_run: bool) -> int:
    from lmtpfilter.store import SchemaError

    try:
        summary = one_pass(config, dry_run)
    except SchemaError as exc:
        print(f"lmtpfilter-janitor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # one clear line; the traceback is in the log at DEBUG
        log.debug("janitor pass failed", exc_info=True)
        # A driver's message may quote the database URL: never its password.
        first_line = mask_credentials(str(exc).splitlines()[0] if str(exc) else "")
        print(f"lmtpfilter-janitor: {exc.__class__.__name__}: {first_line}", file=sys.stderr)
        return EXIT_FAILURE
    if summary is not None:
        print(summary.line())
    return EXIT_OK


def _serve(config: cfg.Config) -> int:
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    scheduler = BlockingScheduler(timezone="UTC")

    def job() -> None:
        try:  # a failed pass is logged; the next one runs on schedule
            summary = one_pass(config)
            if summary is not None:
                log.info("%s", summary.line())
        except Exception:
            log.exception("janitor pass failed")

    # CronTrigger.from_crontab: standard crontab fields (its day-of-week 0 is Monday, but the
    # ranges users write, like "*/15 * * * *" or "0 3 * * *", mean the same).
    scheduler.add_job(job, CronTrigger.from_crontab(config.janitor.schedule, timezone="UTC"),
                      id="janitor", coalesce=True, max_instances=1, misfire_grace_time=300)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("janitor: stopping")
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("janitor: running on schedule %r", config.janitor.schedule)
    scheduler.start()
    log.info("janitor: stopped")
    return EXIT_OK
