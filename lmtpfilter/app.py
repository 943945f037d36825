"""`lmtpfilter serve`: build the pipeline from the config and run the server until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Sequence

from .clamav import ClamdScanner, probe_version
from .config import Config
from .downstream import Downstream
from .filtering import FilterStage
from .pipeline import Pipeline, Stage
from .policy import ConfigPolicies
from .server import FilterServer
from .spamd import SpamdScanner

log = logging.getLogger(__name__)


def build_pipeline(config: Config, stages: Sequence[Stage] | None = None) -> Pipeline:
    """The pipeline for `config`; `stages` replaces the filter stage (tests of the proxy)."""
    hostname = config.hostname
    if stages is None:
        stages = [filter_stage(config, hostname)]
    return Pipeline(Downstream(config.downstream, hostname), hostname, stages)


def filter_stage(config: Config, hostname: str) -> FilterStage:
    return FilterStage(
        ConfigPolicies(config.policy),
        ClamdScanner(config.clamav) if config.clamav.enabled else None,
        SpamdScanner(config.spamassassin) if config.spamassassin.enabled else None,
        config.policy.x_header_line.format(hostname=hostname),
    )


async def log_scanner_versions(config: Config) -> None:
    """Say at start-up which clamd we talk to; a clamd that is down is only a warning here
    (mail is tempfailed while it is down, and it may come up after us)."""
    if not config.clamav.enabled:
        return
    try:
        version = await asyncio.to_thread(probe_version, config.clamav)
        log.info("clamd at %s: %s", config.clamav.address, version)
    except Exception as exc:  # python-clamd raises its own and socket errors
        log.warning("clamd at %s not answering yet: %s", config.clamav.address, exc)


async def serve(config: Config, sockets: Sequence[socket.socket] | None = None,
                stages: Sequence[Stage] | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain gracefully (DESIGN.md: 421 after the timeout)."""
    pipeline = build_pipeline(config, stages)
    server = FilterServer(config, pipeline.process)
    await server.start(sockets)
    await log_scanner_versions(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping: draining for up to %gs", config.server.shutdown_timeout)
        await server.shutdown(config.server.shutdown_timeout)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await pipeline.downstream.close()
    log.info("stopped")
