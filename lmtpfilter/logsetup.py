"""Where `serve`'s log goes: stderr (the default, for systemd's journal), or syslog.

With `[log] syslog = true` every record goes to the syslog daemon's socket, facility mail,
as "IDENT[PID]: message", and NOT to stderr as well: under systemd, /dev/log is the journal's
own socket and stderr goes to the journal too, so both would write each line twice (and
rsyslog, fed by the journal, would put it in mail.log and in syslog). Errors before logging
is set up (a bad config, a refused start) are still one line on stderr (docs/design.md §2).
"""

from __future__ import annotations

import logging
import logging.handlers
import socket

from .config import LogConfig

STDERR_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class LogSetupError(Exception):
    """The log destination cannot be used; the message is one line naming the key."""


def configure(config: LogConfig, level: str) -> None:
    """Set up the root logger for `serve`; raises LogSetupError when syslog is wanted but
    its socket is not there."""
    if not config.syslog:
        logging.basicConfig(level=level, format=STDERR_FORMAT)
        return
    handler = syslog_handler(config)
    root = logging.getLogger()
    root.setLevel(level)
    root.addHandler(handler)


def syslog_handler(config: LogConfig) -> logging.Handler:
    """A handler that writes to config.syslog_address, facility mail. The PID is put in each
    record when it is written, so that every worker (forked after this) names itself."""
    # SysLogHandler ignores a socket it cannot connect to (and then fails at every record):
    # try it first, so that a missing syslog daemon is a refused start, not a silent log.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(config.syslog_address))
    except OSError as exc:
        raise LogSetupError(f"[log] syslog_address: cannot send to {config.syslog_address}: "
                            f"{exc.strerror or exc}") from None
    finally:
        probe.close()
    handler = logging.handlers.SysLogHandler(
        address=str(config.syslog_address),
        facility=logging.handlers.SysLogHandler.LOG_MAIL, socktype=socket.SOCK_DGRAM)
    # The record's PID, not one fixed in `ident` at start: workers are forked after this.
    handler.setFormatter(logging.Formatter(f"{config.ident}[%(process)d]: %(message)s"))
    return handler
