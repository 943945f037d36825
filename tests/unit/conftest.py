"""The server's own tests run on both event loops the filter supports ([server] event_loop:
asyncio's and uvloop's, lmtpfilter/event_loop.py); every other async test on asyncio's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from lmtpfilter.event_loop import loop_factory

# The modules that drive FilterServer over real sockets: what differs between loops is there.
ON_BOTH_LOOPS = frozenset({
    "tests.unit.test_server_faults",
    "tests.unit.test_transparency",
    "tests.unit.test_utf8_addresses",
    "tests.unit.test_pipeline_accounting",
})


def pytest_asyncio_loop_factories(
        config: pytest.Config,
        item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.module is not None and item.module.__name__ in ON_BOTH_LOOPS:  # type: ignore[attr-defined]
        return {name: loop_factory(name) for name in ("asyncio", "uvloop")}
    return {"asyncio": loop_factory("asyncio")}
