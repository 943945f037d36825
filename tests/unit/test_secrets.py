"""Passwords are never shown: not by check-config (systemd logs it as ExecStartPre), not in a
config error, not when the database cannot be reached (issue 13, item 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from lmtpfilter import config as cfg
from lmtpfilter.options import (
    MASK,
    declared,
    key_of,
    mask_credentials,
    mask_url_password,
    parse_optional_path,
    parse_path,
)

SECRET = "S3cr3t-pw"
OTHER_SECRET = "K3y-pw"

# (shown as written, shown as masked). Passwords are distinctive, so "not in" means something.
MASKED_URLS = [
    (f"postgresql+psycopg://lmtp:{SECRET}@db.example.org/lmtp",
     f"postgresql+psycopg://lmtp:{MASK}@db.example.org/lmtp"),
    (f"postgresql+psycopg://lmtp:{SECRET}@db.example.org:5432/lmtp?sslmode=require",
     f"postgresql+psycopg://lmtp:{MASK}@db.example.org:5432/lmtp?sslmode=require"),
    # libpq takes a password, or a key's password, as a query parameter too.
    (f"postgresql+psycopg://lmtp@db/lmtp?password={SECRET}&sslpassword={OTHER_SECRET}",
     f"postgresql+psycopg://lmtp@db/lmtp?password={MASK}&sslpassword={MASK}"),
    # SQLAlchemy reads the password up to the "@": it may hold ":" and "/".
    (f"postgresql://lmtp:{SECRET}:/x@db/lmtp", f"postgresql://lmtp:{MASK}@db/lmtp"),
    # An unencoded "@" in it: masked whole, never half.
    (f"postgresql://lmtp:{SECRET}@{OTHER_SECRET}@db/lmtp", f"postgresql://lmtp:{MASK}@db/lmtp"),
    (f"postgresql://:{SECRET}@db/lmtp", f"postgresql://:{MASK}@db/lmtp"),
    ("postgresql://lmtp@db/lmtp", "postgresql://lmtp@db/lmtp"),
    ("sqlite:////var/lib/lmtpfilter/lmtpfilter.db", "sqlite:////var/lib/lmtpfilter/lmtpfilter.db"),
    ("sqlite://", "sqlite://"),
]


@pytest.mark.parametrize(("url", "shown"), MASKED_URLS, ids=[u for u, _ in MASKED_URLS])
def test_a_database_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert mask_url_password(url) == shown
    assert SECRET not in shown and OTHER_SECRET not in shown
    password = make_url(url).password
    assert not password or str(password) not in shown


@pytest.mark.parametrize(("text", "shown"), [
    (f"user:{SECRET}@mail.example.org:587", f"user:{MASK}@mail.example.org:587"),
    (f"smtp://user:{SECRET}@mail.example.org:587", f"smtp://user:{MASK}@mail.example.org:587"),
    (f"database postgresql://u:{SECRET}@h/db: refused",
     f"database postgresql://u:{MASK}@h/db: refused"),
    ("127.0.0.1:25", "127.0.0.1:25"),
    ("postmaster@example.org", "postmaster@example.org"),
    ("unix:/run/dovecot/lmtp", "unix:/run/dovecot/lmtp"),
])
def test_credentials_in_any_text_are_masked(text: str, shown: str) -> None:
    assert mask_credentials(text) == shown


def test_which_options_hold_secrets() -> None:
    """Masking is declared with the option (option(..., mask=...)), not special-cased where
    values are shown. Only [database] url holds one: every address (parse_address) refuses
    credentials, and [sieve] managesieve_password_file names a file, which may be shown. A new
    option whose name says password or secret must be a path or declare a mask."""
    masked = {(s.SECTION, key_of(f)) for s in cfg.SECTIONS  # type: ignore[attr-defined]
              for f in declared(s) if f.metadata["mask"] is not None}
    assert masked == {("database", "url")}
    for section in cfg.SECTIONS:
        for f in declared(section):
            if any(word in f.name for word in ("password", "secret", "credential", "token")):
                assert (f.metadata["mask"] is not None
                        or f.metadata["parse"] in (parse_path, parse_optional_path)), f.name


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lmtpfilter.toml"
    path.write_text(text + f'\n[quarantine]\ndirectory = "{tmp_path}/quarantine"\n')
    return path


def test_check_config_prints_the_url_with_the_password_masked(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://lmtp:{SECRET}@db.example.org/lmtp?sslpassword={OTHER_SECRET}"
    config = _write(tmp_path, f'[database]\nurl = "{url}"')
    rendered = cfg.render(cfg.load(config))
    assert f'url = "postgresql+psycopg://lmtp:{MASK}@db.example.org/lmtp?sslpassword={MASK}"' \
        in rendered
    result = subprocess.run([sys.executable, "-m", "lmtpfilter", "check-config", "-c",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"lmtp:{MASK}@db.example.org" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert OTHER_SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(("toml", "key"), [
    # The password "S3cr3t-pw@x:K3y-pw", "@" unencoded: SQLAlchemy takes "K3y-pw@db" for the
    # port, and its ValueError quoted it.
    (f'[database]\nurl = "postgresql://lmtp:{SECRET}@x:{OTHER_SECRET}@db/lmtp"', "[database] url"),
    (f'[notify]\nsmtp = "smtp://user:{SECRET}@mail.example.org:587"', "[notify] smtp"),
    (f'[notify]\nsmtp = "user:{SECRET}@mail.example.org:587"', "[notify] smtp"),
])
def test_a_bad_value_is_named_without_its_password(tmp_path: Path, toml: str, key: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(_write(tmp_path, toml))
    message = str(caught.value)
    assert key in message and "\n" not in message
    assert SECRET not in message and OTHER_SECRET not in message


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=120)


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    """The one line a command prints when it cannot reach the database: the URL, masked, and
    the driver's words (psycopg's message names the host and port, never the password)."""
    config = _write(tmp_path, f'[database]\nurl = "postgresql+psycopg://lmtp:{SECRET}@'
                              '127.0.0.1:1/lmtp?connect_timeout=5"')
    for module, args in (("lmtpfilter", ["quarantine", "list"]),
                         ("lmtpfilter", ["user", "list"]),
                         ("janitor", ["run"])):
        result = _run(module, *args, "-c", str(config))
        assert result.returncode == 1, (module, args, result.stderr)
        assert SECRET not in result.stdout + result.stderr, (module, args)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "OperationalError" in lines[0], result.stderr
        if module == "lmtpfilter":
            assert f"database postgresql+psycopg://lmtp:{MASK}@127.0.0.1:1/lmtp" in lines[0]
