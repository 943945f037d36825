"""Which event loop a filter process runs on ([server] event_loop); this module owns that choice.

uvloop (libuv under asyncio's interface) runs the same server code with less CPU per message:
bench/compare.py measures "lmtpfilter" against "lmtpfilter-uvloop" side by side, and the
README's performance section has the figures. It is an optional dependency
(`pip install lmtpfilter[uvloop]`, or Debian's python3-uvloop): "auto" takes it when it is
installed and asyncio's own loop otherwise, as uvicorn's `--loop auto` does. Nothing in the
filter depends on which loop runs it (tests/unit/test_other_event_loops.py and the server tests
run on both).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable

from .options import InvalidValue, one_of

CHOICES = ("auto", "asyncio", "uvloop")

_parse_choice = one_of(*CHOICES)


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def parse_event_loop(value: object) -> str:
    """A config value: one of CHOICES; "uvloop" only where it can be imported, so that
    check-config says so instead of the first worker failing at start."""
    choice = _parse_choice(value)
    if choice == "uvloop" and not uvloop_installed():
        raise InvalidValue('"uvloop" is not installed (pip install "lmtpfilter[uvloop]", or '
                           'apt-get install python3-uvloop); "auto" falls back to asyncio')
    return choice


parse_event_loop.choices = CHOICES  # type: ignore[attr-defined]


def resolve(choice: str) -> str:
    """The loop that `choice` runs on here: "asyncio" or "uvloop"."""
    if choice == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    return choice


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What asyncio.Runner needs to make the loop for `choice`."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop
