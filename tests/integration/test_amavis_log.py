"""`[log] format = "amavis"` with `syslog = true`: a real filter (clamd, spamd, Dovecot behind)
logs to a syslog socket, and logwatch's amavis service counts what it wrote as amavis's lines.

The "syslog daemon" is a unix datagram socket of the test's own; its datagrams become the
lines of a mail.log as rsyslog writes them, which logwatch reads.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness import logwatch
from tests.harness.daemons import Dovecot, free_port, lmtp_deliver
from tests.harness.logwatch import LOG_MAIL, SyslogSink
from tests.harness.scanners import EICAR, GTUBE, Clamd, Spamd

pytestmark = pytest.mark.integration

@pytest.fixture
def syslog_filter(filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot,
                  clamd: Clamd, spamd: Spamd) -> Iterator[tuple[FilterProcess, SyslogSink]]:
    workdir = new_workdir(daemon_base, "amlog")
    sink = SyslogSink(workdir / "log.sock")
    listen = f"127.0.0.1:{free_port()}"
    text = filter_config(
        f"127.0.0.1:{dovecot.lmtp_port}", [listen],
        clamav=f'enabled = true\naddress = "unix:{clamd.socket_path}"',
        spamassassin=f'enabled = true\naddress = "127.0.0.1:{spamd.port}"',
    ).replace("{workdir}", str(workdir))
    text += f'[log]\nformat = "amavis"\nsyslog = true\nsyslog_address = "{sink.path}"\n'
    proc = filter_process(workdir, text, listen).start()
    try:
        yield proc, sink
    finally:
        sink.close()


def message(subject: str, body: bytes) -> bytes:
    return (f"From: sender@example.net\r\nTo: user1@example.org\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.net>\r\n\r\n").encode() \
        + body + b"\r\n"


def test_logwatch_counts_clean_spam_and_virus(
        syslog_filter: tuple[FilterProcess, SyslogSink]) -> None:
    proc, sink = syslog_filter
    port = int(proc.listen.rsplit(":", 1)[1])
    sent = [
        (["user1@example.org", "user2@example.org"], message("clean one", b"Hello.")),
        (["user1@example.org"], message("spam one", GTUBE)),
        (["user2@example.org"], message("virus one", EICAR)),
    ]
    for recipients, data in sent:
        _, replies = lmtp_deliver(port, "sender@example.net", recipients, data)
        assert all(r.startswith("250") for r in replies), replies
    main_lines = sink.wait_for(len(sent), r"^\(\d+-\d+\) (Passed|Blocked) ")
    assert len(main_lines) == len(sent), sink.records

    # Every record went to facility mail, under amavis's program name, and none to stderr.
    assert sink.records and not sink.unparsed
    assert {(facility, tag.partition("[")[0]) for facility, tag, _ in sink.records} == {
        (LOG_MAIL, "amavis")}
    assert any("listening" in m or "clamd at" in m for _, _, m in sink.records)  # not only mail
    assert "Passed" not in proc.log() and "clamd at" not in proc.log()

    mail_log = [logwatch.syslog_line(m, program=tag) for _, tag, m in sink.records]
    summary = logwatch.amavis_summary(mail_log)
    assert summary["Total messages scanned"] == len(sent)
    assert (summary["Clean passed"], summary["Spam blocked"], summary["Malware blocked"]) \
        == (1, 1, 1)
    assert summary["Passed"] == 1 and summary["Blocked"] == 2


def test_serve_refuses_a_missing_syslog_socket(daemon_base: Path) -> None:
    workdir = new_workdir(daemon_base, "amlog-missing")
    config = workdir / "lmtpfilter.toml"
    listen = f"127.0.0.1:{free_port()}"
    config.write_text(filter_config("127.0.0.1:1", [listen]).replace("{workdir}", str(workdir))
                      + f'[log]\nsyslog = true\nsyslog_address = "{workdir}/no-such.sock"\n')
    run = [sys.executable, "-m", "lmtpfilter"]
    subprocess.run([*run, "db", "upgrade", "-c", str(config)], check=True, capture_output=True,
                   timeout=60)
    done = subprocess.run([*run, "serve", "-c", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("lmtpfilter: [log] syslog_address: cannot send to ")
    assert "No such file or directory" in done.stderr
