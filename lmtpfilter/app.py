"""`lmtpfilter serve`: build the pipeline from the config and run the server until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import metrics
from .clamav import ClamdScanner, probe_version
from .config import Config
from .downstream import Downstream
from .filtering import FilterStage, SenderSource
from .lmtp_server import Capabilities
from .notify import Notifications, Outbox
from .pipeline import Pipeline, Stage, Summary, Transaction, key_value_summary
from .policy import PolicySource
from .quarantine import open_quarantine
from .reply import Reply
from .senderlists import SenderLists
from .server import FilterServer, Processor
from .spamd import SpamdScanner
from .store import Store
from .userpolicy import DbPolicies
from .verdicts import QuarantineStage, Recorder
from .web.links import ReleaseLinks

log = logging.getLogger(__name__)


def build_pipeline(config: Config, stages: Sequence[Stage]) -> Pipeline:
    """A pipeline with the given stages and no store (tests of the proxy core)."""
    hostname = config.hostname
    return Pipeline(Downstream(config.downstream, hostname), hostname, stages)


def filter_stage(config: Config, policies: PolicySource, hostname: str,
                 senders: SenderSource | None = None) -> FilterStage:
    return FilterStage(
        policies,
        ClamdScanner(config.clamav) if config.clamav.enabled else None,
        SpamdScanner(config.spamassassin) if config.spamassassin.enabled else None,
        config.policy.x_header_line.format(hostname=hostname),
        config.content,
        senders,
    )


@dataclass
class Services:
    store: Store
    pipeline: Pipeline
    outbox: Outbox


def build(config: Config) -> Services:
    """Everything `serve` runs: store, policies, scanners, quarantine, recorder, outbox."""
    hostname = config.hostname
    store = Store(config.database.url)
    # Read the [web] key now: a bad key file stops `serve` at start with one line (cli.main
    # shows a ValueError as such), not at the first quarantined message.
    notifications = Notifications(config.notify, hostname, ReleaseLinks.from_config(config.web))
    stages: list[Stage] = [
        filter_stage(config, DbPolicies(store, config.policy, config.database.policy_cache_ttl),
                     hostname, SenderLists.from_config(store, config)),
        QuarantineStage(config, store, open_quarantine(config.quarantine, store),
                        notifications),
    ]
    pipeline = Pipeline(Downstream(config.downstream, hostname), hostname, stages,
                        Recorder(store, hostname), summary=summary(config))
    return Services(store, pipeline,
                    Outbox(store, config.notify, config.notify.interval, hostname))


def summary(config: Config) -> Summary:
    """The per-message log line's format, chosen once here ([log] format)."""
    if config.log.format == "amavis":
        from .amavis_log import AmavisSummary

        return AmavisSummary()
    return key_value_summary


async def quarantine_gauges(store: Store, interval: float = 15.0) -> None:
    """Keep the quarantine size gauges current (from the live rows)."""
    from .quarantine import live_usage

    while True:
        try:
            usage = await store.run(live_usage, durable=False)
            metrics.QUARANTINE_FILES.set(usage.files)
            metrics.QUARANTINE_SIZE.set(usage.size)
        except Exception:
            log.warning("metrics: could not read the quarantine size", exc_info=True)
        await asyncio.sleep(interval)


def extensions_for(downstream: Downstream) -> Callable[[], Capabilities]:
    """What our LHLO announces: SMTPUTF8 always (the addresses are passed on as they are,
    docs/design.md §9), DSN when the downstream server announces it (its parameters would
    have nowhere to go otherwise)."""
    return lambda: Capabilities(smtputf8=True, dsn=downstream.announces("DSN"))


def warn_about_policy(config: Config) -> None:
    """Say at start-up what a setting that looks harmless causes (docs/design.md §3)."""
    if config.policy.virus_destiny == "reject":
        log.warning(
            "[policy] virus_destiny = \"reject\": each virus gets a 5xx, so Postfix sends a "
            "bounce with the virus's name to the envelope sender, which viruses forge "
            "(backscatter); \"discard\" quarantines it and tells no one outside")


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


def _retiring(process: Processor, limit: int, stop: asyncio.Event) -> Processor:
    """`process`, counting the transactions it finished; at `limit` it sets `stop`, after
    the transaction's replies are on their way (call_soon), so the drain that follows sees
    that session idle."""
    finished = 0

    async def counted(tx: Transaction) -> list[Reply]:
        nonlocal finished
        try:
            return await process(tx)
        finally:
            finished += 1
            if finished == limit:
                log.info("retiring after %d transactions ([server] worker_max_messages)",
                         finished)
                asyncio.get_running_loop().call_soon(stop.set)

    return counted


async def serve(config: Config, services: Services,
                sockets: Sequence[socket.socket] | None = None,
                owns_sockets: bool = True,
                metrics_sock: socket.socket | None = None,
                retire_after: int = 0) -> None:
    """Run until SIGTERM/SIGINT, then drain gracefully (421 after the timeout).

    owns_sockets=False (a worker): the unix socket files belong to the supervisor.
    retire_after > 0 (a worker): drain the same way once that many transactions finished,
    so that the supervisor starts a fresh process ([server] worker_max_messages)."""
    downstream = services.pipeline.downstream
    stop = asyncio.Event()
    process: Processor = services.pipeline.process
    if retire_after > 0:
        process = _retiring(process, retire_after, stop)
    server = FilterServer(config, process, unlink_on_shutdown=owns_sockets,
                          announce=extensions_for(downstream))
    warn_about_policy(config)
    await downstream.probe()  # learn what it announces before the first client's LHLO
    await server.start(sockets)
    await log_scanner_versions(config)
    outbox = asyncio.create_task(services.outbox.run_forever())
    metrics_http = await metrics.serve_http(metrics_sock) if metrics_sock else None
    gauges = asyncio.create_task(quarantine_gauges(services.store)) if metrics_sock else None
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
        for task in (outbox, gauges):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if metrics_http is not None:
            metrics_http.close()
        await services.pipeline.downstream.close()
    log.info("stopped")
