"""The Dovecot authentication protocol's pure parts (lmtpfilter/web/dovecot_auth.py); the
real Dovecot answers in tests/integration/test_web.py::test_dovecot_password_check."""

from __future__ import annotations

import base64

import pytest

from lmtpfilter.web.dovecot_auth import (
    AuthUnavailable,
    Verdict,
    auth_request,
    check_greeting,
    handshake,
    parse_reply,
)


def test_handshake_and_request() -> None:
    assert handshake(42) == b"VERSION\t1\t2\nCPID\t42\n"
    line = auth_request(7, "alice@example.org", "pässwörd", "2001:db8::1").decode()
    fields = line.rstrip("\n").split("\t")
    assert fields[:5] == ["AUTH", "7", "PLAIN", "service=lmtpfilter-web", "secured"]
    assert fields[5] == "rip=2001:db8::1"
    assert base64.b64decode(fields[6][5:]) == "\0alice@example.org\0pässwörd".encode()
    assert line.count("\n") == 1  # the base64 response cannot end the line early


@pytest.mark.parametrize("greeting, problem", [
    (["VERSION\t1\t2", "MECH\tPLAIN\tplaintext", "SPID\t1", "CUID\t2", "COOKIE\tab"], None),
    (["VERSION\t2\t0", "MECH\tPLAIN"], "not a Dovecot auth-client socket"),
    (["* OK IMAP4rev1"], "not a Dovecot auth-client socket"),
    (["VERSION\t1\t2", "MECH\tCRAM-MD5"], "does not offer PLAIN"),
])
def test_greeting(greeting: list[str], problem: str | None) -> None:
    if problem is None:
        check_greeting(greeting)
    else:
        with pytest.raises(AuthUnavailable, match=problem):
            check_greeting(greeting)


@pytest.mark.parametrize("line, verdict", [
    ("OK\t1\tuser=alice@example.org\n", Verdict(True, "alice@example.org")),
    ("OK\t1\n", Verdict(True, "")),
    ("FAIL\t1\tuser=alice@example.org\treason=Password mismatch\n", Verdict(False)),
    ("FAIL\t1\n", Verdict(False)),
])
def test_answers(line: str, verdict: Verdict) -> None:
    assert parse_reply(line, 1) == verdict


@pytest.mark.parametrize("line", ["CONT\t1\t\n", "OK\t2\n", "garbage\n", "\n", "FAIL"])
def test_anything_else_is_unavailable_not_a_verdict(line: str) -> None:
    with pytest.raises(AuthUnavailable):
        parse_reply(line, 1)
