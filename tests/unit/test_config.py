"""Config loading: the one table, defaults, conversions, and one clear error per bad key."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter import config as cfg
from lmtpfilter.options import Address, SizeOrPercent

ROOT = Path(__file__).parent.parent.parent
BAD = tomllib.loads((ROOT / "tests/data/config_cases.toml").read_text())["bad"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lmtpfilter.toml"
    path.write_text(text)
    return path


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    c = cfg.load(_write(tmp_path, ""))
    assert c.server.listen == (Address(host="127.0.0.1", port=10024),)
    assert c.server.max_message_size == 50 * 1024 * 1024
    assert c.server.socket_mode == 0o660
    assert c.downstream.address == Address(host="127.0.0.1", port=24)
    assert c.downstream.timeout == 120.0
    assert c.clamav.address == Address(path="/run/clamav/clamd.ctl")
    assert c.spamassassin.max_size == 512 * 1024
    assert (c.policy.tag_level, c.policy.tag2_level, c.policy.kill_level) == (-999.0, 5.0, 25.0)
    assert c.policy.spam_destiny == "discard" and c.policy.on_scanner_failure == "tempfail"
    assert c.quarantine.min_free == SizeOrPercent(percent=5.0)
    assert c.quarantine.max_size == 10 * 1024**3
    assert c.notify.smtp is None and c.notify.from_ == "postmaster"
    assert c.janitor.max_age == 30 * 86400
    assert c.metrics.listen is None


def test_values_are_converted(tmp_path: Path) -> None:
    c = cfg.load(_write(tmp_path, """
[server]
listen = ["unix:/run/lmtpfilter/lmtp.sock", "[::1]:10025", "0.0.0.0:10024"]
max_message_size = "10M"
socket_mode = "0600"
[downstream]
address = "unix:/run/dovecot/lmtp"
timeout = "2m"
[quarantine]
min_free = "1G"
[notify]
from = "filter@example.org"
smtp = "127.0.0.1:25"
[policy]
bypass_spam_checks = ["Postmaster@Example.org", "@lists.example.org"]
"""))
    assert c.server.listen[0] == Address(path="/run/lmtpfilter/lmtp.sock")
    assert c.server.listen[1] == Address(host="::1", port=10025)
    assert str(c.server.listen[1]) == "[::1]:10025"
    assert c.server.max_message_size == 10 * 1024 * 1024
    assert c.server.socket_mode == 0o600
    assert c.downstream.address.is_unix and c.downstream.timeout == 120.0
    assert c.quarantine.min_free.of(10**12) == 1024**3
    assert c.notify.from_ == "filter@example.org"
    assert c.notify.smtp == Address(host="127.0.0.1", port=25)
    assert c.policy.bypass_spam_checks == ("postmaster@example.org", "@lists.example.org")


@pytest.mark.parametrize("case", BAD, ids=[c["error"] for c in BAD])
def test_bad_config_names_the_key(tmp_path: Path, case: dict[str, Any]) -> None:
    path = _write(tmp_path, case["toml"])
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    message = str(info.value)
    assert case["error"] in message
    assert "\n" not in message
    assert message.startswith(str(path))


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="no such file"):
        cfg.load(tmp_path / "missing.toml")


def test_env_var_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cfg.ENV_VAR, str(_write(tmp_path, "[server]\nworkers = 3\n")))
    assert cfg.load().server.workers == 3


def test_effective_config_round_trips(tmp_path: Path) -> None:
    original = cfg.load(_write(tmp_path, '[server]\nmax_message_size = "1M"\n'
                                         '[downstream]\ntimeout = "90s"\n'))
    again = cfg.load(_write(tmp_path, cfg.render(original)))
    assert dataclasses_equal(original, again)


def dataclasses_equal(a: cfg.Config, b: cfg.Config) -> bool:
    return all(getattr(a, s.SECTION) == getattr(b, s.SECTION)  # type: ignore[attr-defined]
               for s in cfg.SECTIONS)


def test_reference_doc_is_up_to_date() -> None:
    """docs/configuration.md is generated from the table; regenerate it when this fails:
    lmtpfilter check-config --reference > docs/configuration.md"""
    assert (ROOT / "docs/configuration.md").read_text() == cfg.reference()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmtpfilter", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_check_config_exit_codes(tmp_path: Path) -> None:
    good = _cli("check-config", "-c", str(_write(tmp_path, "[server]\nworkers = 2\n")))
    assert good.returncode == 0 and "workers = 2" in good.stdout
    bad = _cli("check-config", "-c", str(_write(tmp_path, "[server]\nworkers = 'x'\n")))
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "[server] workers" in bad.stderr
    usage = _cli("no-such-command")
    assert usage.returncode == 2


def test_the_hostname_is_resolved_once_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def getfqdn(name: str = "") -> str:
        calls.append(1)
        return "mx.resolved.test"

    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    c = cfg.from_mapping({})
    assert [c.hostname for _ in range(100)] == ["mx.resolved.test"] * 100
    assert len(calls) == 1
    # A configured name is used as it is, and the resolver is not asked.
    named = cfg.from_mapping({"server": {"hostname": "mx.example.org"}})
    assert named.hostname == "mx.example.org" and len(calls) == 1
