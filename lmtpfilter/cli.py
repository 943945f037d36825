"""The `lmtpfilter` command line (docs/design.md §2). Exit codes: 0 ok, 1 runtime failure,
2 usage or config error; errors are one line on stderr."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import __version__
from . import config as cfg
from .options import parse_duration
from .policy import Category

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure to report as one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmtpfilter", description="LMTP-stage mail content filter")
    parser.add_argument("--version", action="version", version=f"lmtpfilter {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE",
                        help=f"config file (default: ${cfg.ENV_VAR} or {cfg.DEFAULT_PATH})")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", parents=[common], help="run the filter in the foreground")
    serve.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    web = sub.add_parser("web", parents=[common],
                         help="run the quarantine self-service web page in the foreground")
    web.add_argument("--log-level", default="INFO",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    check = sub.add_parser("check-config", parents=[common],
                           help="validate the config and print the effective values")
    check.add_argument("--reference", action="store_true",
                       help="print the reference of every option (Markdown) instead")

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    up = db.add_parser("upgrade", parents=[common], help="create or upgrade the schema")
    up.add_argument("--revision", default="head")
    down = db.add_parser("downgrade", parents=[common], help="go back to an older schema")
    down.add_argument("revision")
    db.add_parser("current", parents=[common], help="show the schema revision")

    user = sub.add_parser("user", help="per-user and per-domain policy").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    uset = user.add_parser("set", parents=[common], help="set overrides for ADDRESS")
    uset.add_argument("address", help="user@domain, or @domain for a whole domain")
    _add_policy_flags(uset)
    uset.add_argument("--unset", action="append", default=[], metavar="KEY",
                      help="remove an override (e.g. kill_level); repeatable")
    for action in ("show", "delete"):
        p = user.add_parser(action, parents=[common], help=f"{action} ADDRESS's overrides")
        p.add_argument("address")
    user.add_parser("list", parents=[common], help="every address with overrides")

    q = sub.add_parser("quarantine", help="quarantined messages").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    qlist = q.add_parser("list", parents=[common], help="quarantined messages, newest first")
    _add_query_flags(qlist)
    qlist.add_argument("--reason", choices=["virus", "spam", "banned", "bad-header",
                                            "unchecked"])  # the last three: from amavis
    qlist.add_argument("--state", action="append", choices=["held", "released", "expired"],
                       help="repeatable (default: held and released)")
    qlist.add_argument("--all", action="store_true", help="include expired ones")
    qshow = q.add_parser("show", parents=[common], help="headers and verdict of ID")
    qshow.add_argument("id")
    qrel = q.add_parser("release", parents=[common], help="deliver ID after all")
    qrel.add_argument("id")
    qrel.add_argument("--to", action="append", default=[], metavar="ADDRESS",
                      help="deliver to this address instead (repeatable)")
    qrel.add_argument("--force", action="store_true", help="release again")
    qdel = q.add_parser("delete", parents=[common], help="remove ID's file and mark it expired")
    qdel.add_argument("id")
    qimp = q.add_parser("import-amavis", parents=[common],
                        help="import amavisd-new's file quarantine (idempotent, read-only)")
    qimp.add_argument("directory", metavar="DIR", help="e.g. /var/lib/amavis/virusmails")

    sieve = sub.add_parser("sieve", help="per-user Sieve scripts").add_subparsers(
        dest="action", required=True, parser_class=_Parser)
    sync = sieve.add_parser("sync", parents=[common],
                            help="(re)generate and install the scripts of ADDRESS, or all")
    sync.add_argument("address", nargs="?")

    logp = sub.add_parser("log", parents=[common], help="verdicts, one per recipient, newest first")
    _add_query_flags(logp)
    logp.add_argument("--action", choices=["deliver", "discard", "reject", "tempfail", "error"])
    logp.add_argument("--category", choices=[c.value for c in Category])
    from .senders_admin import add_parser as add_senders

    add_senders(sub, common)
    from .amavis_config import add_parser as add_import_amavis

    add_import_amavis(sub)
    return parser


DEFAULT_LIMIT = 100


def _limit(text: str) -> int | None:
    """--limit: a number of rows, or "all" (None)."""
    if text.strip().lower() == "all":
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'expected a number of rows or "all", got {text!r}')
    return int(text)


def _add_query_flags(parser: argparse.ArgumentParser) -> None:
    """The filters of `log` and `quarantine list`, applied in SQL before the limit."""
    parser.add_argument("--recipient", metavar="ADDRESS", help="this recipient (any case)")
    parser.add_argument("--sender", metavar="ADDRESS",
                        help='this sender (any case); "<>" is the null sender')
    parser.add_argument("--since", type=_duration, metavar="AGE",
                        help='newer than AGE, e.g. "1h", "7d"')
    parser.add_argument("--until", type=_duration, metavar="AGE", help="older than AGE")
    parser.add_argument("--limit", type=_limit, default=DEFAULT_LIMIT, metavar="N",
                        help=f'show the newest N (default {DEFAULT_LIMIT}), or "all"')


def _add_policy_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per per-user [policy] key, from the option table: its type, its choices and
    its help. Values are validated again by the key's own parser (userpolicy)."""
    from .options import UserKind, user_kind

    for f in cfg.per_user_options():
        parse, text = f.metadata["parse"], f.metadata["help"].replace("%", "%%")
        kind = user_kind(parse)
        if kind in (UserKind.FLAG, UserKind.MEMBERSHIP):
            parser.add_argument(cfg.cli_flag(f), dest=f.name, default=None, help=text,
                                action=argparse.BooleanOptionalAction)
        elif kind is UserKind.CHOICE:
            parser.add_argument(cfg.cli_flag(f), dest=f.name, choices=parse.choices, help=text)
        else:
            parser.add_argument(cfg.cli_flag(f), dest=f.name, metavar="VALUE", help=text,
                                type=float if kind is UserKind.NUMBER else str)


def _invoking_user() -> str:
    """Who runs the CLI, for the release audit: the login name of the real uid, and the
    user sudo was run by when it was (sudo sets SUDO_USER; only root could forge it)."""
    import os
    import pwd

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    via = os.environ.get("SUDO_USER", "") if os.getuid() == 0 else ""
    return f"{name} (sudo by {via})" if via and via.isprintable() and via != name else name


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config" and args.reference:
        sys.stdout.write(cfg.reference())
        return EXIT_OK
    if args.command == "import-amavis":  # reads amavis's files, not lmtpfilter's config
        from .amavis_config import command as import_amavis

        return import_amavis(args)
    try:
        config = cfg.load(args.config)
    except cfg.ConfigError as exc:
        print(f"lmtpfilter: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler: Callable[[cfg.Config, argparse.Namespace], int] = {
        "check-config": lambda c, a: (sys.stdout.write(cfg.render(c)), EXIT_OK)[1],
        "serve": _serve,
        "web": _web,
        "db": _db,
        "user": _user,
        "quarantine": _quarantine,
        "sieve": _sieve,
        "log": _log,
        "senders": _senders,
    }[args.command]
    import os

    from .privileges import COMMAND_UMASK, PrivilegeError, become_service_user

    # The files a command creates are the service user's, never the world's (privileges.py).
    # The umask is given back on return, for callers that run main() in their own process.
    previous_umask = os.umask(COMMAND_UMASK)
    try:
        if args.command != "check-config":  # it opens no file but the config
            become_service_user(config)
        return handler(config, args)
    except PrivilegeError as exc:
        print(f"lmtpfilter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"lmtpfilter: {exc}", file=sys.stderr)
        return exc.code
    except ValueError as exc:  # validation of an argument (address, quarantine ID, value)
        print(f"lmtpfilter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        os.umask(previous_umask)


def _open_store(config: cfg.Config) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from .options import mask_credentials, mask_url_password
    from .store import SchemaError, Store

    try:
        store = Store(config.database.url)
        store.check_schema()
    except SchemaError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except SQLAlchemyError as exc:  # the URL and the driver's words, password masked
        raise CliError(f"database {mask_url_password(config.database.url)}: "
                       f"{exc.__class__.__name__}: "
                       f"{mask_credentials(str(exc).splitlines()[0])}") from None
    return store


def _serve(config: cfg.Config, args: argparse.Namespace) -> int:
    store = _open_store(config)  # before logging is set up: a refusal is one line
    store.close()
    from .web.links import ReleaseLinks

    # The release links' key, read here so that a bad key file is one line at startup, not
    # a traceback in each worker (the workers read it again when they build the notices).
    try:
        ReleaseLinks.from_config(config.web)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    from .logsetup import LogSetupError, configure

    try:
        configure(config.log, args.log_level)  # stderr, or syslog instead ([log] syslog)
    except LogSetupError as exc:
        raise CliError(str(exc)) from None
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from .allocator import fix_mmap_threshold

    fix_mmap_threshold()  # before the workers fork: they inherit it
    metrics_dir = _metrics_dir(config)
    try:
        from .server import bind, unlink_sockets

        try:
            metrics_sock = (bind(config.metrics.listen, 0o600)
                            if config.metrics.listen is not None else None)
            if config.server.workers == 1:
                return _serve_one(config, None, metrics_sock)
            sockets = [bind(a, config.server.socket_mode) for a in config.server.listen]
        except OSError as exc:
            raise CliError(f"cannot listen: {exc}") from None
        from .workers import Supervisor

        supervisor = Supervisor(config.server.workers, sockets,
                                lambda socks: _serve_one(config, socks, metrics_sock,
                                                         worker=True),
                                stop_timeout=config.server.shutdown_timeout + 10)
        try:
            return supervisor.run()
        finally:
            unlink_sockets(config.server.listen)
    finally:
        if metrics_dir:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)


def _web(config: cfg.Config, args: argparse.Namespace) -> int:
    """`lmtpfilter web`: the quarantine page (lmtpfilter/web/), until SIGTERM. Every refusal
    comes before logging is set up, as one line: the schema, the key, the sockets."""
    store = _open_store(config)
    try:
        from .web.links import load_key

        if config.web.secret_key_file is None:
            raise CliError("[web] secret_key_file: not set; the page needs a key to sign "
                           "sessions and release links (32 random bytes or more)", EXIT_USAGE)
        try:
            key = load_key(config.web.secret_key_file)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        from .server import bind, unlink_sockets

        # A unix socket lets in its owner and group only: the proxy's user joins the group.
        sockets = []
        try:
            sockets.append(bind(config.web.listen, 0o660))
            if config.web.metrics_listen is not None:
                sockets.append(bind(config.web.metrics_listen, 0o600))
        except OSError as exc:
            for sock in sockets:
                sock.close()
            raise CliError(f"cannot listen: {exc}") from None
        from .logsetup import LogSetupError, configure

        try:
            configure(config.log, args.log_level)
        except LogSetupError as exc:
            raise CliError(str(exc)) from None
        from .web.app import serve

        try:
            asyncio.run(serve(config, store, key, sockets[0],
                              sockets[1] if len(sockets) > 1 else None))
        finally:
            for sock in sockets:
                sock.close()
            unlink_sockets([a for a in (config.web.listen, config.web.metrics_listen)
                            if a is not None])
        return EXIT_OK
    finally:
        store.close()


def _metrics_dir(config: cfg.Config) -> str | None:
    """With [metrics].listen, every process keeps its samples in one directory, created
    here before prometheus-client is imported (it picks its storage mode at import)."""
    if config.metrics.listen is None:
        return None
    import os
    import tempfile

    path = tempfile.mkdtemp(prefix="lmtpfilter-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _serve_one(config: cfg.Config, sockets: Any, metrics_sock: Any,
               worker: bool = False) -> int:
    from .app import build, serve

    services = build(config)
    limit = config.server.worker_max_messages if worker else 0
    if limit:  # up to 10% more, so that workers started together do not retire together
        import random

        limit += random.randint(0, limit // 10)
    from .event_loop import loop_factory

    try:
        with asyncio.Runner(loop_factory=loop_factory(config.server.event_loop)) as runner:
            runner.run(serve(config, services, sockets, owns_sockets=not worker,
                             metrics_sock=metrics_sock, retire_after=limit))
    except OSError as exc:
        raise CliError(str(exc)) from None
    finally:
        services.store.close()
    return EXIT_OK


def _db(config: cfg.Config, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from . import store

    try:
        if args.action == "upgrade":
            store.upgrade(config.database.url, args.revision)
        elif args.action == "downgrade":
            store.downgrade(config.database.url, args.revision)
        s = store.Store(config.database.url)
        try:
            from alembic.runtime.migration import MigrationContext

            with s.engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_heads()
        finally:
            s.close()
    except SQLAlchemyError as exc:
        raise CliError(f"database: {str(exc).splitlines()[0]}") from None
    print(f"schema at {', '.join(current) or 'none (empty database)'}")
    return EXIT_OK


def _user(config: cfg.Config, args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from . import userpolicy as up
    from .store import UserPolicy

    store = _open_store(config)
    try:
        if args.action == "list":
            rows = store.transaction(lambda s: list(s.scalars(
                select(UserPolicy).order_by(UserPolicy.address))))
            for row in rows:
                shown = " ".join(f"{k}={v!r}" for k, v in up.overrides_of(row).items())
                print(f"{row.address}  {shown}")
            return EXIT_OK
        key = up.normalise_key(args.address)
        if args.action == "show":
            row = store.transaction(lambda s: s.get(UserPolicy, key))
            overrides = up.overrides_of(row) if row else {}
            effective = up.effective(config.policy, key,
                                     store.transaction(lambda s: up.rows_for(
                                         s, key, config.policy.recipient_delimiter)))
            for name, value in up.per_user_values(effective).items():
                mark = "  (override)" if name in overrides else ""
                print(f"{name} = {value!r}{mark}")
            return EXIT_OK
        from .sieve import SieveError, change_policy

        try:
            if args.action == "delete":
                def delete(s: Any) -> bool:
                    return _delete_user(s, key)
                if not store.preview(delete):
                    raise CliError(f"no overrides for {key}")
                change_policy(config, store, key, delete)
                print(f"deleted overrides of {key}")
                return EXIT_OK
            changes = {k: getattr(args, k) for k in up.OVERRIDABLE
                       if getattr(args, k, None) is not None}
            if not changes and not args.unset:
                raise CliError("nothing to set: give at least one option", EXIT_USAGE)

            def change(s: Any) -> dict[str, Any]:
                return up.overrides_of(up.set_overrides(config.policy, s, key, changes,
                                                        args.unset))
            store.preview(change)  # a value the policy refuses is refused before any script
            row = change_policy(config, store, key, change)
        except SieveError as exc:
            raise CliError(str(exc)) from None
        print(f"{key}: " + (" ".join(f"{k}={v!r}" for k, v in row.items()) or "no overrides"))
        return EXIT_OK
    finally:
        store.close()


def _senders(config: cfg.Config, args: argparse.Namespace) -> int:
    from .senders_admin import ConcurrentChange, NoSuchEntry, command

    store = _open_store(config)
    try:
        return command(config, store, args)
    except (NoSuchEntry, ConcurrentChange) as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()


def _sieve(config: cfg.Config, args: argparse.Namespace) -> int:
    from .sieve import SieveError, sync

    store = _open_store(config)
    try:
        done = sync(config, store, args.address)
    except (SieveError, OSError) as exc:
        raise CliError(f"sieve sync: {exc}") from None
    finally:
        store.close()
    print(f"{config.sieve.method}: {len(done)} script(s): {' '.join(done)}")
    return EXIT_OK


def _delete_user(session: Any, key: str) -> bool:
    from .store import UserPolicy

    row = session.get(UserPolicy, key)
    if row is None:
        return False
    session.delete(row)
    return True


def _quarantine(config: cfg.Config, args: argparse.Namespace) -> int:
    from .quarantine import open_quarantine, validate_id

    store = _open_store(config)
    quarantine = open_quarantine(config.quarantine, store)
    try:
        if args.action == "list":
            page = store.transaction(lambda s: _list_quarantine(s, args))
            for row in page.rows:
                state = ("expired" if row.expired_at else
                         "released" if row.released_at else "held")
                print(f"{row.id}  {row.created_at:%Y-%m-%d %H:%M}  {row.reason:<5} "
                      f"{state:<8} {row.size:>8}  <{row.sender}> -> "
                      f"{', '.join(row.recipient_list)}  {row.detail}  {row.subject!r}")
            _say_if_cut(page)
            return EXIT_OK
        if args.action == "import-amavis":
            from .amavis_quarantine import run_command

            return run_command(config, store, args.directory)
        from .amavis_quarantine import resolve_id  # an amavis mail_id, for imported ones

        qid = validate_id(store.transaction(lambda s: resolve_id(s, args.id)))
        from .release import ReleaseError, load

        try:
            row = store.transaction(lambda s: load(s, qid))
        except ReleaseError as exc:
            raise CliError(str(exc)) from None
        if args.action == "show":
            print(f"Quarantine-ID: {row.id}\nReason: {row.reason} ({row.detail})\n"
                  f"Created: {row.created_at:%Y-%m-%d %H:%M:%S %Z}\nSender: <{row.sender}>\n"
                  f"Recipients: {', '.join(row.recipient_list)}\nSize: {row.size} bytes "
                  f"(compressed)\nSHA-256: {row.sha256}\nTransaction: {row.message_id}\n"
                  f"Released: {row.released_at or 'no'} {row.released_to}\n"
                  + (f"Released by: {row.released_by or '?'} on "
                     f"{row.released_host or '(host not recorded)'}\n"
                     if row.released_at else ""))
            if row.release_replies:
                print("Release replies:\n  " + row.release_replies.replace("\n", "\n  ") + "\n")
            if row.expired_at:
                print(f"(expired on {row.expired_at:%Y-%m-%d}; the file is gone)")
                return EXIT_OK
            head = _header_of(quarantine.read_chunks(row))
            print(head.decode("utf-8", "replace"))
            return EXIT_OK
        if args.action == "release":
            from .release import release

            try:
                result = asyncio.run(release(config, store, qid, args.to, args.force,
                                             by=f"cli {_invoking_user()}"))
            except ReleaseError as exc:
                raise CliError(str(exc)) from None
            for rcpt, reply in result.results:
                print(f"{rcpt}: {reply.line()}")
            return EXIT_OK if all(r.is_success for _, r in result.results) else EXIT_FAILURE
        if args.action == "delete":
            from .quarantine import NotInQuarantine, QuarantineBusy, delete_message

            try:  # the file, then the row, under the lock the janitor takes
                deleted = delete_message(config.quarantine, store, qid)
            except (NotInQuarantine, QuarantineBusy) as exc:
                raise CliError(str(exc)) from None
            print(f"deleted {qid}" + ("" if deleted.file_removed else
                                      " (its file was already gone)"))
            return EXIT_OK
    finally:
        store.close()
    raise AssertionError(args.action)


def _header_of(pieces: Iterator[bytes]) -> bytes:
    """The header of a stored message, reading no further than its end."""
    head = b""
    for piece in pieces:
        head += piece
        ends = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0]
        if ends:
            return head[:min(ends)]
    return head


def _list_quarantine(session: Any, args: argparse.Namespace) -> Any:
    """The newest matching rows, as a queries.Page; every filter is SQL (lmtpfilter/queries.py).
    --state picks states; without it, --all adds expired rows to held and released ones."""
    from .queries import LIVE_STATES, STATES, QuarantineFilters, quarantine_page

    states = frozenset(args.state or (STATES if args.all else LIVE_STATES))
    filters = QuarantineFilters(reason=args.reason, states=states, **_filters(args))
    return quarantine_page(session, filters, args.limit)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filters that `log` and `quarantine list` share, from their flags."""
    from .queries import address_arg

    if args.since is not None and args.until is not None and args.until >= args.since:
        raise CliError(f"--until must be a shorter age than --since: nothing is newer than "
                       f"{args.since:g}s and older than {args.until:g}s", EXIT_USAGE)
    return dict(
        recipient=None if args.recipient is None else address_arg(args.recipient,
                                                                  "--recipient"),
        sender=None if args.sender is None else address_arg(args.sender, "--sender"),
        since=None if args.since is None else _ago(args.since),
        until=None if args.until is None else _ago(args.until))


def _say_if_cut(page: Any) -> None:
    """One line on stderr when --limit left rows out (stdout stays one line per row)."""
    if page.cut:
        total = f"more than {page.total:,}" if page.more else f"{page.total:,}"
        print(f"(showing the newest {len(page.rows):,} of {total}; "
              "use --limit N or --limit all)", file=sys.stderr)


def _ago(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)


def _log(config: cfg.Config, args: argparse.Namespace) -> int:
    from .queries import LogFilters, log_page

    filters = LogFilters(action=args.action, category=args.category, **_filters(args))
    store = _open_store(config)
    try:
        page = store.transaction(lambda s: log_page(s, filters, args.limit))
        for m, v in page.rows:
            score = "-" if m.spam_score is None else f"{m.spam_score:.1f}"
            virus = f" virus={m.virus_names}" if m.virus_names else ""
            quarantine = f" quarantine={v.quarantine_id}" if v.quarantine_id else ""
            quarantine += f" rule={v.rule!r}" if v.rule else ""
            print(f"{m.received_at:%Y-%m-%d %H:%M:%S} {m.id} <{m.sender}> -> <{v.address}> "
                  f"{v.action}/{v.category} score={score}{virus}{quarantine} "
                  f"{v.reply_text}")
        _say_if_cut(page)
        return EXIT_OK
    finally:
        store.close()
