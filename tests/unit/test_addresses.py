from __future__ import annotations

import pytest

from lmtpfilter.addresses import matches

LIST = ("postmaster@example.org", "@lists.example.org", "example.net")


@pytest.mark.parametrize(("address", "expected"), [
    ("postmaster@example.org", True),
    ("Postmaster@EXAMPLE.org", True),
    ("other@example.org", False),
    ("anyone@lists.example.org", True),
    ("anyone@sub.lists.example.org", False),
    ("x@example.net", True),
    ("x@example.network", False),
    ("example.net", False),
    ("", False),
])
def test_matches(address: str, expected: bool) -> None:
    assert matches(address, LIST) is expected
