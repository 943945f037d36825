"""`lmtpfilter serve`: build the pipeline from the config and run the server until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Sequence

from .config import Config
from .downstream import Downstream
from .pipeline import Pipeline, Stage
from .server import FilterServer

log = logging.getLogger(__name__)


def build_pipeline(config: Config, stages: Sequence[Stage] = ()) -> Pipeline:
    hostname = config.hostname
    return Pipeline(Downstream(config.downstream, hostname), hostname, stages)


async def serve(config: Config, sockets: Sequence[socket.socket] | None = None,
                stages: Sequence[Stage] = ()) -> None:
    """Run until SIGTERM/SIGINT, then drain gracefully (DESIGN.md: 421 after the timeout)."""
    pipeline = build_pipeline(config, stages)
    server = FilterServer(config, pipeline.process)
    await server.start(sockets)
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
