"""The `lmtpfilter` command line (DESIGN.md §3). Exit codes: 0 ok, 1 runtime failure,
2 usage or config error; errors are one line on stderr."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from . import __version__
from . import config as cfg

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints usage + message; keep it to one line and our exit code.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


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
    check = sub.add_parser("check-config", parents=[common],
                           help="validate the config and print the effective values")
    check.add_argument("--reference", action="store_true",
                       help="print the reference of every option (Markdown) instead")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config" and args.reference:
        sys.stdout.write(cfg.reference())
        return EXIT_OK
    try:
        config = cfg.load(args.config)
    except cfg.ConfigError as exc:
        print(f"lmtpfilter: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check-config":
        sys.stdout.write(cfg.render(config))
        return EXIT_OK
    if args.command == "serve":
        return _serve(config, args.log_level)
    raise AssertionError(args.command)


def _serve(config: cfg.Config, level: str) -> int:
    from .app import serve

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"lmtpfilter: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
