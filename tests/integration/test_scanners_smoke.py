"""Smoke tests of the scanner harness itself: a real clamd and a real spamd on loopback."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.daemons import short_tmpdir
from tests.harness.scanners import (
    CLAMAV_TESTFILES,
    EICAR,
    GTUBE,
    Clamd,
    Spamd,
    clamd_instream,
    clamd_ping,
    slow_tcp_server,
    spamd_request,
    start_clamd,
    start_spamd,
)

_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
_MISSING = [d for d in ("clamd", "spamd") if not shutil.which(d, path=_PATH)]
if not CLAMAV_TESTFILES.is_dir():
    _MISSING.append("clamav-testfiles")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(_MISSING) and os.environ.get("LMTPFILTER_REQUIRE_DAEMONS") != "1",
        reason=f"not installed: {', '.join(_MISSING)}",
    ),
]

EICAR_FOUND = b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0"
CLEAN = b"stream: OK\0"


def mail(subject: str, body: bytes) -> bytes:
    return (
        b"From: sender@example.com\r\nTo: user1@example.org\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
        b"Message-ID: <" + subject.replace(" ", "-").encode() + b"@example.com>\r\n"
        b"\r\n" + body + b"\r\n"
    )


# Daemons of this module's own, not conftest's session-wide ones: these tests pause, restart
# and fill them, which would disturb the other modules' tests.
@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = short_tmpdir("lmtpf-scan-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def clamd(base: Path) -> Iterator[Clamd]:
    c = start_clamd(base)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def spamd(base: Path) -> Iterator[Spamd]:
    s = start_spamd(base)
    try:
        yield s
    finally:
        s.stop()


# ---------------------------------------------------------------------------- clamd


def test_eicar_constant_is_the_68_byte_test_string() -> None:
    assert len(EICAR) == 68
    assert EICAR.startswith(b"X5O!P%@AP[4\\PZX54") and EICAR.endswith(b"!$H+H*")
    source = Path(__file__).resolve().parents[1] / "harness" / "scanners.py"
    assert EICAR not in source.read_bytes()
    assert GTUBE not in source.read_bytes()


def test_signature_db_files(clamd: Clamd) -> None:
    ndb = (clamd.db_dir / "test.ndb").read_text()
    hdb = (clamd.db_dir / "test.hdb").read_text()
    assert ndb == f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n"
    size = (CLAMAV_TESTFILES / "clam.exe").stat().st_size
    assert re.fullmatch(rf"[0-9a-f]{{32}}:{size}:Clamav\.Test\.File-6\n", hdb), hdb


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_instream_eicar_and_clean(clamd: Clamd, transport: str) -> None:
    addr = clamd.socket_path if transport == "unix" else clamd.tcp_address
    assert clamd_instream(addr, EICAR) == EICAR_FOUND
    assert clamd_instream(addr, b"some text " + EICAR + b" more text") == EICAR_FOUND
    assert clamd_instream(addr, b"Hello, this is perfectly clean.\n" * 100) == CLEAN
    assert clamd_instream(addr, b"") == CLEAN


def test_every_clamav_testfile_is_found(clamd: Clamd) -> None:
    files = sorted(p for p in CLAMAV_TESTFILES.iterdir() if p.is_file())
    assert len(files) > 10
    replies = {p.name: clamd_instream(clamd.socket_path, p.read_bytes()) for p in files}
    missed = {
        name: reply
        for name, reply in replies.items()
        if not (reply.endswith(b".UNOFFICIAL FOUND\0") and reply.startswith(b"stream: "))
    }
    assert not missed, missed


def test_stream_max_length(base: Path) -> None:
    small = start_clamd(base / "small", stream_max_length="1M")
    try:
        limit = 1024 * 1024
        for addr in (small.socket_path, small.tcp_address):
            assert clamd_instream(addr, b"a" * limit) == CLEAN
            reply = clamd_instream(addr, b"a" * (limit + limit // 2))
            assert reply == b"INSTREAM size limit exceeded. ERROR\0", (addr, reply)
        assert small.ping()  # still serving after refusing
    finally:
        small.stop()
    assert "INSTREAM: Size limit reached" in small.log_text()
    assert not small.socket_path.exists()


def test_pause_resume(clamd: Clamd) -> None:
    clamd.pause()
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            clamd_ping(clamd.socket_path, timeout=0.5)
        with pytest.raises(TimeoutError):
            clamd_ping(clamd.tcp_address, timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        clamd.resume()
    assert clamd_ping(clamd.socket_path, timeout=5) == b"PONG\0"
    assert clamd_instream(clamd.tcp_address, EICAR) == EICAR_FOUND


def test_restart_keeps_socket_and_port(clamd: Clamd) -> None:
    before = (clamd.socket_path, clamd.tcp_port, clamd.pid)
    clamd_instream(clamd.tcp_address, b"x")  # leaves a TIME_WAIT on the server side
    clamd.restart()
    assert (clamd.socket_path, clamd.tcp_port) == before[:2]
    assert clamd.pid != before[2]
    assert clamd_instream(clamd.socket_path, EICAR) == EICAR_FOUND
    assert clamd_instream(clamd.tcp_address, EICAR) == EICAR_FOUND


# ---------------------------------------------------------------------------- spamd


def test_spamd_ping(spamd: Spamd) -> None:
    assert spamd_request(spamd.port, "PING").startswith(b"SPAMD/1.5 0 PONG")


def test_spamd_check_gtube(spamd: Spamd) -> None:
    reply = spamd_request(spamd.port, "CHECK", mail("gtube", b"Buy now!\r\n" + GTUBE))
    assert reply.startswith(b"SPAMD/1.1 0 EX_OK\r\n"), reply
    m = re.search(rb"Spam: True ; (-?\d+\.\d+) / 5\.0\r\n", reply)
    assert m, reply
    assert float(m.group(1)) >= 1000.0


def test_spamd_check_ham(spamd: Spamd) -> None:
    reply = spamd_request(spamd.port, "CHECK", mail("lunch", b"Lunch at noon tomorrow?"))
    assert reply.startswith(b"SPAMD/1.1 0 EX_OK\r\n"), reply
    assert re.search(rb"Spam: False ; -?\d+\.\d+ / 5\.0\r\n", reply), reply


def test_spamd_pause_resume(spamd: Spamd) -> None:
    spamd.pause()
    try:
        with pytest.raises(TimeoutError):
            spamd_request(spamd.port, "PING", timeout=0.5)
    finally:
        spamd.resume()
    assert spamd.ping(timeout=5)


# ---------------------------------------------------------------------------- slow peer


def test_slow_tcp_server() -> None:
    port, stop = slow_tcp_server(1.0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
            s.sendall(b"CHECK SPAMC/1.5\r\nContent-length: 2\r\n\r\nhi")
            with pytest.raises(TimeoutError):
                s.recv(100)
            s.settimeout(3)
            t0 = time.monotonic()
            assert s.recv(100) == b""  # closed after the delay, never a reply
            assert time.monotonic() - t0 < 2
    finally:
        stop()
    stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
