"""The one content call the filter stage makes: walk the message once, apply the rules.

`inspect` is pure apart from the clock (it reads only the message bytes in memory) and
thread-safe (the libmagic handle is shared under a lock, archive_walk.py), so the stage may
run it in a worker thread. The facts it returns are the same for every recipient; whether a
banned message is passed, discarded or rejected is decided per recipient (policy.decide).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .archive_walk import ContentLimits, Problem
from .banned import BannedMatch, evaluate
from .message import Message
from .mime_walk import Inventory, inventory

if TYPE_CHECKING:
    from .config import ContentConfig


@dataclass(frozen=True, slots=True)
class ContentFacts:
    checked: bool  # False: [content] enabled = false, nothing was looked at
    parts: int  # leaf parts and archive members found
    problems: tuple[Problem, ...]
    banned: BannedMatch | None
    seconds: float
    inventory: Inventory | None = None


NOT_CHECKED = ContentFacts(False, 0, (), None, 0.0)


def limits_of(config: ContentConfig) -> ContentLimits:
    return ContentLimits(config.max_depth, config.max_parts, config.max_expanded,
                         config.time_limit)


def inspect(message: Message, config: ContentConfig) -> ContentFacts:
    if not config.enabled:
        return NOT_CHECKED
    started = time.perf_counter()
    found = inventory(message, limits_of(config))
    banned = evaluate(found, config.banned_rules)
    return ContentFacts(True, len(found.parts), found.problems, banned,
                        time.perf_counter() - started, found)
