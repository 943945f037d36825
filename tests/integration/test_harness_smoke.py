"""Smoke tests of the integration harness itself: real Dovecot, Postfix and smtp-sink."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.daemons import (
    MASTER_PASSWORD,
    MASTER_USER,
    Dovecot,
    Postfix,
    SmtpSink,
    free_port,
    lmtp_deliver,
    managesieve_plain_token,
    short_tmpdir,
    start_dovecot,
    start_postfix,
    start_smtp_sink,
)

pytestmark = pytest.mark.integration


def make_message(subject: str, to: str = "a@example.org") -> bytes:
    return (
        f"From: sender@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "Message-ID: <" + subject.replace(" ", "-") + "@test.example>\r\n\r\n"
        "Hello.\r\n.leading dot line\r\n"
    ).encode()


# Daemons of this module's own, not conftest's session-wide ones: these tests pause, restart
# and fill them, which would disturb the other modules' tests.
@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = short_tmpdir("lmtpf-smoke-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot(base: Path) -> Iterator[Dovecot]:
    dc = start_dovecot(base, ["a@example.org", "b@example.org", ("q@example.org", "1K")])
    try:
        yield dc
    finally:
        dc.stop()


@pytest.fixture
def postfix_to_dovecot(base: Path, dovecot: Dovecot) -> Iterator[Postfix]:
    pf = start_postfix(base, transport=f"lmtp:inet:127.0.0.1:{dovecot.lmtp_port}")
    try:
        yield pf
    finally:
        pf.stop()


@pytest.fixture
def sink(base: Path) -> Iterator[SmtpSink]:
    s = start_smtp_sink(base, dump=True)
    try:
        yield s
    finally:
        s.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# ---------------------------------------------------------------------------- Dovecot


def test_dovecot_lmtp_per_recipient_replies(dovecot: Dovecot) -> None:
    # Big enough to exceed q's 1K quota.
    msg = make_message("lmtp smoke") + b"x" * 2000 + b"\r\n"
    rcpts = ["a@example.org", "ghost@example.org", "q@example.org", "b@example.org"]
    rcpt_replies, data_replies = lmtp_deliver(dovecot.lmtp_port, "s@example.com", rcpts, msg)

    assert rcpt_replies[0].startswith("250")
    assert rcpt_replies[1].startswith("550 5.1.1"), rcpt_replies
    assert rcpt_replies[2].startswith("250")
    assert rcpt_replies[3].startswith("250")
    assert len(data_replies) == 3, data_replies  # one per accepted recipient: a, q, b
    assert data_replies[0].startswith("250 2.0.0 <a@example.org>"), data_replies
    assert data_replies[1].startswith("552 5.2.2 <q@example.org>"), data_replies
    assert data_replies[2].startswith("250 2.0.0 <b@example.org>"), data_replies

    for user in ("a@example.org", "b@example.org"):
        msgs = dovecot.wait_for_messages(user, 1)
        assert len(msgs) == 1
        assert b"Subject: lmtp smoke" in msgs[0]
        assert b"\n.leading dot line" in msgs[0]  # dot-stuffing undone by the server
    assert dovecot.messages("q@example.org") == []
    assert dovecot.maildir("a@example.org") == dovecot.dir / "mail/example.org/a/Maildir"


class ManageSieve:
    """Just enough of RFC 5804 for the smoke test (no literals in responses expected)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.response()

    def response(self) -> bytes:
        out = b""
        while True:
            line = self.file.readline()
            assert line, f"connection closed after {out!r}"
            out += line
            if line.startswith((b"OK", b"NO", b"BYE")):
                return out

    def command(self, data: bytes) -> bytes:
        self.sock.sendall(data + b"\r\n")
        return self.response()

    def authenticate(self, token: str) -> bytes:
        return self.command(f'AUTHENTICATE "PLAIN" "{token}"'.encode())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_managesieve_master_user_login(dovecot: Dovecot) -> None:
    user = "b@example.org"
    ms = ManageSieve(dovecot.managesieve_port)
    try:
        assert b'"IMPLEMENTATION"' in ms.greeting and b"PLAIN" in ms.greeting
        token = managesieve_plain_token(user, MASTER_USER, MASTER_PASSWORD)
        reply = ms.authenticate(token)
        assert reply.startswith(b"OK"), reply
        # Prove we act as the user: the script lands in b's home.
        script = b'if header :contains "subject" "x" { keep; }\r\n'
        reply = ms.command(b'PUTSCRIPT "harness" {%d+}\r\n' % len(script) + script)
        assert reply.startswith(b"OK"), reply
        ms.command(b"LOGOUT")
    finally:
        ms.close()
    assert (dovecot.home(user) / "sieve" / "harness.sieve").read_bytes() == script

    ms = ManageSieve(dovecot.managesieve_port)
    try:
        reply = ms.authenticate(managesieve_plain_token(user, MASTER_USER, "wrong"))
        assert reply.startswith(b"NO"), reply
    finally:
        ms.close()

    ms = ManageSieve(dovecot.managesieve_port)  # ordinary login with the common password
    try:
        reply = ms.authenticate(managesieve_plain_token("", "a@example.org", dovecot.password))
        assert reply.startswith(b"OK"), reply
    finally:
        ms.close()


# ---------------------------------------------------------------------------- Postfix


def test_postfix_delivers_to_dovecot(postfix_to_dovecot: Postfix, dovecot: Dovecot) -> None:
    before = len(dovecot.messages("a@example.org"))
    postfix_to_dovecot.send("sender@example.com", ["a@example.org"], make_message("via postfix"))
    msgs = dovecot.wait_for_messages("a@example.org", before + 1)
    assert any(b"Subject: via postfix" in m for m in msgs)
    postfix_to_dovecot.wait_queue_empty()
    assert "status=sent" in postfix_to_dovecot.maillog()


def test_postfix_retarget_and_flush(base: Path) -> None:
    dead_port = free_port()  # nothing listens here: the message is deferred
    pf = start_postfix(
        base, transport=f"lmtp:inet:127.0.0.1:{dead_port}", recipients=["a@example.org"]
    )
    sink: SmtpSink | None = None
    try:
        with pytest.raises(Exception, match="User unknown"):
            pf.send("sender@example.com", ["nobody@example.org"], make_message("refused"))
        pf.send("sender@example.com", ["a@example.org"], make_message("retarget"))
        wait_for(lambda: "status=deferred" in pf.maillog())
        assert not pf.queue_is_empty()

        sink = start_smtp_sink(base, dump=True)
        pf.set_transport(f"lmtp:inet:127.0.0.1:{sink.port}")
        pf.flush()
        pf.wait_queue_empty()
        dumps = sink.dumps
        wait_for(lambda: any(b"Subject: retarget" in d for d in dumps()))
    finally:
        if sink is not None:
            sink.stop()
        pf.stop()


# ---------------------------------------------------------------------------- smtp-sink


def test_smtp_sink_dumps(sink: SmtpSink) -> None:
    before = len(sink.dumps())
    rcpt, data = lmtp_deliver(
        sink.port, "s@example.com", ["x@example.org", "y@example.org"], make_message("sink")
    )
    assert all(r.startswith("250") for r in rcpt), rcpt
    assert len(data) == 2 and all(r.startswith("250") for r in data), data
    wait_for(lambda: len(sink.dumps()) > before)
    assert any(b"Subject: sink" in d for d in sink.dumps())
