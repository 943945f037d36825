"""The fuzz targets of tests/fuzz/targets.py on a few hundred inputs each, without atheris,
so CI exercises every target (scripts/fuzz.sh runs them coverage-guided for longer)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz import DATABASE
from tests.fuzz.targets import TARGETS

# Mostly bytes that look like what each target parses, some plain noise.
LINES = st.lists(st.sampled_from([
    b"Subject: x", b"From: a@example.org", b" folded", b"\tfolded", b"", b"no colon",
    b"X-Spam-Flag: YES", b"Subject: =?utf-8?b?w6k=?=", b"Subject: =?bad?x?y?=", b"\xff: x",
    b"220 ok", b"250-PIPELINING", b"250 SIZE", b"250 2.1.0 ok", b"354 go", b"421 4.3.2 bye",
    b"452 4.2.2 full", b"550 5.1.1 no", b"250-x", b"999 x", b"2", b"25x", b"\x00",
    b"[server]", b'listen = ["127.0.0.1:10024"]', b"[downstream]", b'address = "x"',
    b"max_message_size = -1", b'timeout = "1s"', b"[policy]", b"[nope]",
]), max_size=30)
INPUTS = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.binary(max_size=8), LINES, st.sampled_from([b"\r\n", b"\n", b"\r"])).map(
        lambda t: t[0] + t[2].join(t[1])),
)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target(name: str) -> None:
    @settings(max_examples=300, deadline=None, database=DATABASE)
    @given(INPUTS)
    def run(data: bytes) -> None:
        TARGETS[name](data)

    run()
