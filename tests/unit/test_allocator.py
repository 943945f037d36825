"""lmtpfilter.allocator: with the fixed mmap threshold, a big buffer allocated after a bigger
one was freed is still mmapped (given back to the system when freed), where glibc's dynamic
threshold would have raised itself and served it from the heap it keeps."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")

PROBE = """
import ctypes, os, sys
from lmtpfilter.allocator import fix_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                              "usmblks", "fsmblks", "uordblks", "fordblks",
                                              "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
big = bytearray(3_000_000)
del big  # glibc's dynamic threshold now rises to about 3 MB
before = libc.mallinfo2().hblks
buffer = bytearray(1_000_000)
print(libc.mallinfo2().hblks - before)
"""


def mmapped_blocks_for_a_1mb_buffer(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* tunable from the caller
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env=env)
    return int(out.stdout)


def test_a_big_buffer_stays_in_mmap_after_a_bigger_one_was_freed() -> None:
    assert mmapped_blocks_for_a_1mb_buffer("fixed") == 1
    assert mmapped_blocks_for_a_1mb_buffer("glibc-default") == 0  # what the fix is for


def test_an_administrators_own_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmtpfilter.allocator import fix_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "262144")
    assert fix_mmap_threshold() is False
