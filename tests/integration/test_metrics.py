"""[metrics].listen: Prometheus text format, counting a known sequence of messages, across
two worker processes."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FilterProcess, filter_config, new_workdir
from tests.harness.daemons import Dovecot, free_port
from tests.lmtp_tools import lmtp_session

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):  # parses, or raises
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


async def test_metrics_count_a_known_sequence(
        filter_process: type[FilterProcess], daemon_base: Path, dovecot: Dovecot) -> None:
    workdir = new_workdir(daemon_base, "mx")
    listen = f"127.0.0.1:{free_port()}"
    port = free_port()
    text = filter_config(f"127.0.0.1:{dovecot.lmtp_port}", [listen],
                         server="workers = 2", metrics=f'listen = "127.0.0.1:{port}"')
    proc = filter_process(workdir, text, listen).start()
    msg = (b"From: s@example.net\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
           b"Subject: counted\r\n\r\nhello\r\n")
    for _ in range(5):  # 5 messages x (2 delivered + 1 unknown user)
        result = await lmtp_session(proc.listen, "s@example.net",
                                    ["user1@example.org", "user2@example.org",
                                     "ghost@example.org"], msg)
        assert [r[:3] for r in result.data_replies] == ["250", "250", "550"]
    samples = scrape(port)
    assert samples["lmtpfilter_messages_total{}"] == 5
    assert samples["lmtpfilter_recipients_total{action=deliver,category=clean}"] == 15
    assert samples["lmtpfilter_replies_total{code_class=2xx}"] == 10
    assert samples["lmtpfilter_replies_total{code_class=5xx}"] == 5
    assert samples["lmtpfilter_downstream_replies_total{code_class=2xx}"] == 10
    assert samples["lmtpfilter_inflight_transactions{}"] == 0
    assert any(re.match(r"lmtpfilter_worker_restarts_total", k) for k in samples)
    assert proc.stop() == 0
