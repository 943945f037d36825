"""The configuration: every option declared once, with its type, default, validator and help.

Each section is a frozen dataclass; each field is declared with :func:`option`, which carries the
raw TOML default, the parser that validates and converts it, and the help text. The loader, the
`check-config` printout and the generated reference (docs/configuration.md) all read this one
table, so a new option is one declaration here and nothing else.

Bad input fails at load time with :class:`ConfigError`, whose message names the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import string
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

DEFAULT_PATH = Path("/etc/lmtpfilter/lmtpfilter.toml")
ENV_VAR = "LMTPFILTER_CONFIG"


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line naming the key."""


class _Invalid(ValueError):
    """Raised by a parser; the loader adds the key name."""


# --------------------------------------------------------------------------------------------
# Value types and their parsers. Each parser takes the raw TOML value and returns the typed one.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """Where to listen or connect: TCP host:port or a unix socket path."""

    host: str = ""
    port: int = 0
    path: str = ""  # set for unix sockets

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# Unix socket paths are limited to 108 bytes including the NUL (sun_path).
_MAX_UNIX_PATH = 107


def parse_address(value: object) -> Address:
    if not isinstance(value, str) or not value:
        raise _Invalid('expected "host:port" or "unix:/path"')
    if value.startswith("unix:"):
        path = value[5:]
        if not path.startswith("/"):
            raise _Invalid(f"unix socket path must be absolute, got {path!r}")
        if len(path.encode()) > _MAX_UNIX_PATH:
            raise _Invalid(f"unix socket path longer than {_MAX_UNIX_PATH} bytes")
        return Address(path=path)
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value)
    if not m:
        raise _Invalid(f'expected "host:port", "[ipv6]:port" or "unix:/path", got {value!r}')
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise _Invalid(f"port out of range in {value!r}")
    return Address(host=host, port=port)


def parse_optional_address(value: object) -> Address | None:
    if value == "":
        return None
    return parse_address(value)


def parse_address_list(value: object) -> tuple[Address, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid("expected a non-empty list of addresses")
    return tuple(parse_address(v) for v in value)


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: object) -> int:
    """Bytes, from an integer or a string like "512K", "50M", "10G"."""
    if isinstance(value, bool):
        raise _Invalid('expected a size such as 10485760 or "10M"')
    if isinstance(value, int):
        if value < 0:
            raise _Invalid("size must not be negative")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", value, re.IGNORECASE)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    raise _Invalid(f'expected a size such as 10485760 or "10M", got {value!r}')


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """Seconds, from a number or a string like "30s", "15m", "30d"."""
    if isinstance(value, bool):
        raise _Invalid('expected a duration such as 60 or "15m"')
    if isinstance(value, int | float):
        if value < 0:
            raise _Invalid("duration must not be negative")
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    raise _Invalid(f'expected a duration such as 60, "30s", "15m", "30d", got {value!r}')


@dataclass(frozen=True)
class SizeOrPercent:
    """A free-space floor: an absolute byte count or a percentage of the filesystem."""

    bytes: int = 0
    percent: float = 0.0

    def of(self, total: int) -> int:
        return self.bytes if not self.percent else int(total * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else str(self.bytes)


def parse_size_or_percent(value: object) -> SizeOrPercent:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            pct = float(value.strip()[:-1])
        except ValueError:
            raise _Invalid(f"expected a percentage such as \"5%\", got {value!r}") from None
        if not 0 <= pct < 100:
            raise _Invalid("percentage must be between 0 and 100")
        return SizeOrPercent(percent=pct)
    return SizeOrPercent(bytes=parse_size(value))


def parse_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {value!r}")
    return value


def parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {value!r}")
    if any(ord(c) < 32 and c != "\t" for c in value):
        raise _Invalid("control characters are not allowed")
    return value


def parse_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {value!r}")
    return float(value)


def int_in_range(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise _Invalid(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def one_of(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    parse.choices = choices  # type: ignore[attr-defined]
    return parse


def parse_mode(value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        return int(value, 8)
    raise _Invalid(f'expected an octal mode such as "0660", got {value!r}')


def parse_hostname(value: object) -> str:
    text = parse_str(value)
    if text and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", text):
        raise _Invalid(f"not a valid host name: {text!r}")
    return text


_ADDRESS_RE = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_DOMAIN_RE = re.compile(r"@?[A-Za-z0-9.-]+")


def parse_address_or_domain_list(value: object) -> tuple[str, ...]:
    """Recipients ("user@dom") or domains ("@dom", or "dom" in local_domains); lower-cased."""
    if not isinstance(value, list):
        raise _Invalid("expected a list of addresses or @domains")
    out = []
    for item in value:
        if not isinstance(item, str) or not (
            _ADDRESS_RE.fullmatch(item) or _DOMAIN_RE.fullmatch(item)
        ):
            raise _Invalid(f'expected "user@domain" or "@domain", got {item!r}')
        out.append(item.lower())
    return tuple(out)


def parse_mail_address_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid("expected a list of mail addresses")
    for item in value:
        if not isinstance(item, str) or not _ADDRESS_RE.fullmatch(item):
            raise _Invalid(f"not a mail address: {item!r}")
    return tuple(value)


def parse_header_template(value: object) -> str:
    text = parse_str(value)
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise _Invalid(f"bad template: {exc}") from None
    if fields - {"hostname"}:
        raise _Invalid(f"unknown placeholder(s): {', '.join(sorted(fields - {'hostname'}))}")
    return text


def parse_folder(value: object) -> str:
    text = parse_str(value)
    if not text or len(text) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise _Invalid("folder name must be 1-200 printable characters")
    return text


def parse_cron(value: object) -> str:
    text = parse_str(value)
    if len(text.split()) != 5:
        raise _Invalid(f'expected 5 cron fields such as "*/15 * * * *", got {text!r}')
    from apscheduler.triggers.cron import CronTrigger  # slow import: only when validating

    try:
        CronTrigger.from_crontab(text)
    except ValueError as exc:
        raise _Invalid(f"bad cron expression {text!r}: {exc}") from None
    return text


def parse_db_url(value: object) -> str:
    text = parse_str(value)
    from sqlalchemy.engine import make_url  # slow import: only when validating
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(text)
    except ArgumentError as exc:
        raise _Invalid(str(exc)) from None
    return text


def parse_path(value: object) -> Path:
    text = parse_str(value)
    if not text.startswith("/"):
        raise _Invalid(f"expected an absolute path, got {text!r}")
    return Path(text)


def parse_optional_path(value: object) -> Path | None:
    if value == "":
        return None
    return parse_path(value)


# --------------------------------------------------------------------------------------------
# The declaration helper.
# --------------------------------------------------------------------------------------------


def option(default: object, parse: Callable[[object], Any], help: str) -> Any:
    """Declare one option: its raw default (as written in TOML), its parser and its help.

    The raw default goes through the same parser as user input, so defaults are validated too.
    """
    return field(
        default_factory=lambda: parse(default),
        metadata={"raw_default": default, "parse": parse, "help": help},
    )


# --------------------------------------------------------------------------------------------
# The sections. Names are fixed by DESIGN.md §2.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    SECTION: ClassVar[str] = "server"
    listen: tuple[Address, ...] = option(
        ["127.0.0.1:10024"], parse_address_list,
        'Where Postfix connects: "host:port" or "unix:/path"; several allowed.')
    socket_mode: int = option(
        "0660", parse_mode, "Permissions of the unix sockets in `listen`.")
    hostname: str = option(
        "", parse_hostname, "Name used in the greeting and Received: header (default: FQDN).")
    max_message_size: int = option(
        "50M", parse_size, "Largest message accepted; larger ones get 552 5.3.4 per recipient.")
    workers: int = option(
        1, int_in_range(1, 256), "Processes sharing the listeners.")
    shutdown_timeout: float = option(
        "30s", parse_duration,
        "On SIGTERM, how long in-flight transactions may run before the rest get 421.")
    idle_timeout: float = option(
        "300s", parse_duration, "Close a client connection idle for this long (RFC 5321 5 min).")


@dataclass(frozen=True)
class DownstreamConfig:
    SECTION: ClassVar[str] = "downstream"
    address: Address = option(
        "127.0.0.1:24", parse_address,
        'The final LMTP server (Dovecot, Cyrus): "host:port" or "unix:/path".')
    timeout: float = option(
        "120s", parse_duration, "Timeout for each downstream reply (the body may take longer).")
    connect_timeout: float = option(
        "10s", parse_duration, "Timeout for connecting and the LMTP greeting.")
    max_idle_connections: int = option(
        8, int_in_range(0, 1024), "Idle downstream connections kept open for reuse.")


@dataclass(frozen=True)
class ClamavConfig:
    SECTION: ClassVar[str] = "clamav"
    enabled: bool = option(True, parse_bool, "Scan every message with clamd.")
    address: Address = option(
        "unix:/run/clamav/clamd.ctl", parse_address, "clamd's socket (LocalSocket or TCPSocket).")
    timeout: float = option("60s", parse_duration, "Timeout of one clamd scan.")


@dataclass(frozen=True)
class SpamassassinConfig:
    SECTION: ClassVar[str] = "spamassassin"
    enabled: bool = option(True, parse_bool, "Score every message with spamd.")
    address: Address = option("127.0.0.1:783", parse_address, "spamd's address.")
    timeout: float = option("60s", parse_duration, "Timeout of one spamd check.")
    max_size: int = option(
        "512K", parse_size, "Larger messages are not spam-scanned (recorded as skipped).")


_DESTINIES = ("pass", "discard", "reject")


@dataclass(frozen=True)
class PolicyConfig:
    SECTION: ClassVar[str] = "policy"
    tag_level: float = option(
        -999.0, parse_float, "Add X-Spam-Status/Score/Level at or above this score.")
    tag2_level: float = option(
        5.0, parse_float, "At or above: X-Spam-Flag: YES and the subject tag (spam).")
    kill_level: float = option(25.0, parse_float, "At or above: apply spam_destiny.")
    spam_subject_tag: str = option(
        "[SPAM] ", parse_str, 'Prefix added to the Subject of spam; "" for none.')
    spam_destiny: str = option(
        "discard", one_of(*_DESTINIES), "What happens at kill level: pass | discard | reject.")
    virus_destiny: str = option(
        "discard", one_of(*_DESTINIES), "What happens to a virus: pass | discard | reject.")
    junk_destiny: str = option(
        "junk", one_of("junk", "inbox", "discard"),
        "What the user's Sieve script does with tagged spam: junk | inbox | discard.")
    junk_folder: str = option("Junk", parse_folder, "Folder for junk_destiny = junk.")
    bypass_spam_checks: tuple[str, ...] = option(
        [], parse_address_or_domain_list, 'Recipients ("user@dom") or domains ("@dom").')
    bypass_virus_checks: tuple[str, ...] = option(
        [], parse_address_or_domain_list, 'Recipients ("user@dom") or domains ("@dom").')
    local_domains: tuple[str, ...] = option(
        [], parse_address_or_domain_list,
        "Domains accepted at RCPT; empty = every recipient is local (the LMTP case).")
    on_scanner_failure: str = option(
        "tempfail", one_of("tempfail", "pass"),
        "A scanner down or timing out: tempfail (451) or pass (deliver unscanned, marked).")
    x_header_line: str = option(
        "lmtpfilter at {hostname}", parse_header_template, "Value of X-Virus-Scanned.")


@dataclass(frozen=True)
class QuarantineConfig:
    SECTION: ClassVar[str] = "quarantine"
    directory: Path = option(
        "/var/lib/lmtpfilter/quarantine", parse_path, "Where quarantined messages are kept.")
    spam: bool = option(True, parse_bool, "Keep a copy of spam discarded/rejected at kill level.")
    max_size: int = option("10G", parse_size, "Budget for the whole quarantine directory.")
    min_free: SizeOrPercent = option(
        "5%", parse_size_or_percent, "Keep at least this much of the filesystem free.")
    on_full: str = option(
        "tempfail", one_of("tempfail", "discard-without-copy"),
        "Quarantine over budget: tempfail (451) or discard without a copy.")


@dataclass(frozen=True)
class DatabaseConfig:
    SECTION: ClassVar[str] = "database"
    url: str = option(
        "sqlite:////var/lib/lmtpfilter/lmtpfilter.db", parse_db_url,
        "SQLAlchemy URL; PostgreSQL for several hosts (postgresql+psycopg://...).")
    policy_cache_ttl: float = option(
        "60s", parse_duration, "How long per-user policies are cached by the filter.")


@dataclass(frozen=True)
class SieveConfig:
    SECTION: ClassVar[str] = "sieve"
    method: str = option(
        "directory", one_of("directory", "managesieve", "none"),
        "How per-user Sieve scripts are installed.")
    directory: Path = option(
        "/var/lib/lmtpfilter/sieve", parse_path,
        "Dovecot 2.3: sieve_before = <directory>/%u.sieve")
    managesieve_address: Address = option(
        "127.0.0.1:4190", parse_address, "ManageSieve server.")
    managesieve_user: str = option(
        "", parse_str, "Admin/master user; scripts are put per user via SASL authzid.")
    managesieve_password_file: Path | None = option(
        "", parse_optional_path, "File holding that user's password.")


@dataclass(frozen=True)
class NotifyConfig:
    SECTION: ClassVar[str] = "notify"
    smtp: Address | None = option(
        "", parse_optional_address, '"host:port" of an MTA; "" disables notifications.')
    # `from` is a Python keyword: the attribute is from_, the key stays "from".
    from_: str = option("postmaster", parse_str, "Sender of notifications.")
    admin: tuple[str, ...] = option([], parse_mail_address_list, "Addresses told about viruses.")
    recipient: bool = option(True, parse_bool, "Tell the recipient a message was quarantined.")
    sender: bool = option(False, parse_bool, "Tell the sender (backscatter: off unless asked).")
    interval: float = option(
        "5s", parse_duration, "How often pending notifications are sent (and retried).")
    templates: Path | None = option(
        "", parse_optional_path,
        "Directory with your own notification templates (default: the built-in ones).")


@dataclass(frozen=True)
class JanitorConfig:
    SECTION: ClassVar[str] = "janitor"
    schedule: str = option(
        "*/15 * * * *", parse_cron, "Cron schedule for `lmtpfilter-janitor serve`.")
    max_age: float = option("30d", parse_duration, "Quarantine files older than this expire.")
    verdict_retention: float = option(
        "180d", parse_duration, "Verdict rows older than this are pruned.")


@dataclass(frozen=True)
class MetricsConfig:
    SECTION: ClassVar[str] = "metrics"
    listen: Address | None = option(
        "", parse_optional_address, 'Serve Prometheus /metrics here, e.g. "127.0.0.1:9425".')


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    clamav: ClamavConfig = field(default_factory=ClamavConfig)
    spamassassin: SpamassassinConfig = field(default_factory=SpamassassinConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    janitor: JanitorConfig = field(default_factory=JanitorConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = "(defaults)"

    @property
    def hostname(self) -> str:
        return self.server.hostname or socket.getfqdn()


SECTIONS: tuple[type, ...] = tuple(
    f.type if isinstance(f.type, type) else globals()[str(f.type)]
    for f in dataclasses.fields(Config)
    if f.name != "source"
)


def _key(f: dataclasses.Field[Any]) -> str:
    return f.name.rstrip("_")  # from_ -> from


def _options(section: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(section) if "parse" in f.metadata]


def from_mapping(data: Mapping[str, Any], source: str = "(mapping)") -> Config:
    """Build a Config from parsed TOML; raise ConfigError naming the first bad key."""
    known = {s.SECTION: s for s in SECTIONS}  # type: ignore[attr-defined]
    for name, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key {name!r} is outside any [section]")
        if name not in known:
            raise ConfigError(f"{source}: unknown section [{name}]")
    sections: dict[str, Any] = {}
    for name, cls in known.items():
        given = dict(data.get(name, {}))
        kwargs: dict[str, Any] = {}
        for f in _options(cls):
            key = _key(f)
            if key in given:
                raw = given.pop(key)
                try:
                    kwargs[f.name] = f.metadata["parse"](raw)
                except _Invalid as exc:
                    raise ConfigError(f"{source}: [{name}] {key}: {exc}") from None
        if given:
            raise ConfigError(f"{source}: [{name}] unknown key {sorted(given)[0]!r}")
        sections[name] = cls(**kwargs)
    config = Config(**sections, source=source)
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    """Rules that involve more than one key."""
    p = config.policy
    if not p.tag_level <= p.tag2_level <= p.kill_level:
        raise ConfigError(
            f"{config.source}: [policy] tag_level <= tag2_level <= kill_level does not hold "
            f"({p.tag_level:g}, {p.tag2_level:g}, {p.kill_level:g})")


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config from `path`, else $LMTPFILTER_CONFIG, else the default path.

    A missing default file means "all defaults"; a missing explicit file is an error.
    """
    explicit = path is not None or ENV_VAR in os.environ
    target = Path(path if path is not None else os.environ.get(ENV_VAR, DEFAULT_PATH))
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{target}: no such file") from None
        return from_mapping({}, source="(defaults)")
    except OSError as exc:
        raise ConfigError(f"{target}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{target}: not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{target}: TOML syntax error: {exc}") from None
    return from_mapping(data, source=str(target))


# --------------------------------------------------------------------------------------------
# Rendering: the effective config (check-config) and the reference (docs/configuration.md).
# --------------------------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if value is None:
        return '""'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_duration(seconds: float) -> str:
    """The largest unit that expresses `seconds` exactly: 2592000 -> "30d"."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s" if seconds >= 1 or seconds == 0 else f"{round(seconds * 1000)}ms"


def _effective(f: dataclasses.Field[Any], value: object) -> str:
    """Render a parsed value back as TOML a user could write."""
    if f.metadata["parse"] is parse_mode:
        return _toml_value(f"{value:04o}")
    if f.metadata["parse"] is parse_duration:
        return _toml_value(format_duration(float(value)))  # type: ignore[arg-type]
    return _toml_value(value)


def render(config: Config) -> str:
    """The effective configuration as TOML, defaults included."""
    lines = [f"# effective configuration, from {config.source}"]
    for cls in SECTIONS:
        section = getattr(config, cls.SECTION)  # type: ignore[attr-defined]
        lines.append(f"\n[{cls.SECTION}]")  # type: ignore[attr-defined]
        for f in _options(cls):
            lines.append(f"{_key(f)} = {_effective(f, getattr(section, f.name))}")
    return "\n".join(lines) + "\n"


def reference() -> str:
    """Markdown reference of every option, generated from the declarations."""
    out = [
        "# Configuration reference",
        "",
        "Generated by `lmtpfilter check-config --reference` from `lmtpfilter/config.py`;",
        "do not edit by hand. Sizes accept `\"10M\"`-style strings, durations `\"30s\"`,",
        "`\"15m\"`, `\"30d\"`. Every key has a default, so an empty file is valid; unknown keys",
        "and bad values are errors at load time naming the key.",
    ]
    for cls in SECTIONS:
        out += ["", f"## [{cls.SECTION}]", "", "| key | default | meaning |", "|---|---|---|"]  # type: ignore[attr-defined]
        for f in _options(cls):
            choices: Sequence[str] | None = getattr(f.metadata["parse"], "choices", None)
            meaning = f.metadata["help"].replace("|", "\\|")
            if choices and "|" not in f.metadata["help"]:
                meaning += " One of: " + ", ".join(f"`{c}`" for c in choices) + "."
            default = _toml_value(f.metadata["raw_default"])
            out.append(f"| `{_key(f)}` | `{default}` | {meaning} |")
    return "\n".join(out) + "\n"
