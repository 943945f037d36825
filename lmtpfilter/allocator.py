"""glibc's allocator, set for a long-lived server (`lmtpfilter serve` and its workers).

What it owns: one setting, made once at startup, before the workers are forked (they inherit
it). glibc serves an allocation of 128 KiB or more with mmap and returns it to the system on
free, but by default its threshold is dynamic: after such a block is freed, the threshold
rises to that block's size (up to 32 MiB), and the next big message buffer comes from the
heap, whose freed space glibc keeps. A filter's big buffers come in bursts (a few 3 MB
messages, a fan-out), so a worker's RSS ratcheted up after each burst for as long as it
lived: in the 100,000-message soak, glibc held 59.7 MB from the system with 26.3 MB in use.
A fixed threshold (M_MMAP_THRESHOLD, as MALLOC_MMAP_THRESHOLD_=131072, which Dovecot 2.4.1
sets for its processes) keeps big buffers in mmap: bench/malloc_retention.py measured a
process with it flat (+0.3% over 8 minutes of bursts, peak 107 MB) beside one at glibc's
defaults (+2.8%, excursions to 81 MB, peak 117 MB). Small objects are pymalloc's and
unaffected; a 10-100 KB message stays under the threshold.

An administrator's own MALLOC_MMAP_THRESHOLD_ wins (glibc read it at startup). On a C library
other than glibc nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc's mmap threshold fixed at `threshold`; True if it was set here."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: glibc's, already loaded
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        log.warning("could not set glibc's mmap threshold; worker memory may creep after "
                    "bursts of big messages ([server] worker_max_messages bounds it)")
        return False
