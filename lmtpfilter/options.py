"""How an option is declared, and the value types and parsers options use.

An option (:func:`option`) is a dataclass field carrying its raw TOML default, the parser that
validates and converts a raw value, and its help text; config.py declares every option of the
config file this way (docs/design.md §2). The parsers take what TOML gives (str, int, float,
bool, list) and return the typed value, or raise :class:`InvalidValue` with a message that the
caller prefixes with the key's name.

A [policy] key may be marked ``per_user``: its per-user form (:class:`UserKind`) derives from
its parser, and with it the database column, the `lmtpfilter user set` flag and the per-user
validation.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .addresses import AddressList, InvalidEntry


class InvalidValue(ValueError):
    """Raised by a parser; the caller adds the key name (the loader, `lmtpfilter user set`)."""


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
        raise InvalidValue('expected "host:port" or "unix:/path"')
    if value.startswith("unix:"):
        path = value[5:]
        if not path.startswith("/"):
            raise InvalidValue(f"unix socket path must be absolute, got {path!r}")
        if len(path.encode()) > _MAX_UNIX_PATH:
            raise InvalidValue(f"unix socket path longer than {_MAX_UNIX_PATH} bytes")
        return Address(path=path)
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value)
    if not m:
        # No address form carries credentials; one written with them is not echoed in clear.
        raise InvalidValue('expected "host:port", "[ipv6]:port" or "unix:/path", '
                           f"got {mask_credentials(value)!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise InvalidValue(f"port out of range in {value!r}")
    return Address(host=host, port=port)


def parse_optional_address(value: object) -> Address | None:
    if value == "":
        return None
    return parse_address(value)


def parse_address_list(value: object) -> tuple[Address, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidValue("expected a non-empty list of addresses")
    return tuple(parse_address(v) for v in value)


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: object) -> int:
    """Bytes, from an integer or a string like "512K", "50M", "10G"."""
    if isinstance(value, bool):
        raise InvalidValue('expected a size such as 10485760 or "10M"')
    if isinstance(value, int):
        if value < 0:
            raise InvalidValue("size must not be negative")
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", value, re.IGNORECASE)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    raise InvalidValue(f'expected a size such as 10485760 or "10M", got {value!r}')


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> float:
    """Seconds, from a number or a string like "30s", "15m", "30d"."""
    if isinstance(value, bool):
        raise InvalidValue('expected a duration such as 60 or "15m"')
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidValue("duration must not be negative")
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    raise InvalidValue(f'expected a duration such as 60, "30s", "15m", "30d", got {value!r}')


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
            raise InvalidValue(f"expected a percentage such as \"5%\", got {value!r}") from None
        if not 0 <= pct < 100:
            raise InvalidValue("percentage must be between 0 and 100")
        return SizeOrPercent(percent=pct)
    return SizeOrPercent(bytes=parse_size(value))


def parse_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"expected true or false, got {value!r}")
    return value


def parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"expected a string, got {value!r}")
    if any(ord(c) < 32 and c != "\t" for c in value):
        raise InvalidValue("control characters are not allowed")
    return value


def parse_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValue(f"expected a number, got {value!r}")
    return float(value)


def int_in_range(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(f"expected an integer, got {value!r}")
        if not lo <= value <= hi:
            raise InvalidValue(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def one_of(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in choices:
            raise InvalidValue(f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    parse.choices = choices  # type: ignore[attr-defined]
    return parse


def parse_mode(value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        return int(value, 8)
    raise InvalidValue(f'expected an octal mode such as "0660", got {value!r}')


def parse_hostname(value: object) -> str:
    text = parse_str(value)
    if text and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", text):
        raise InvalidValue(f"not a valid host name: {text!r}")
    return text


def parse_user_name(value: object) -> str:
    """A user name (spamd's User:, a system user): no space, no control character."""
    text = parse_str(value)
    if text and (len(text) > 64 or re.search(r"[\s\x00-\x1f\x7f:]", text)):
        raise InvalidValue(f"not a usable user name: {text!r}")
    return text


def parse_syslog_ident(value: object) -> str:
    """A syslog program name (the TAG of RFC 3164 §4.1.3): letters, digits, "._/-"."""
    text = parse_str(value)
    if text and not re.fullmatch(r"[A-Za-z0-9._/-]{1,32}", text):
        raise InvalidValue(f'expected a program name such as "amavis", got {text!r}')
    return text


_ADDRESS_RE = re.compile(r"[^@\s<>]+@[^@\s<>]+")


def parse_recipient_list(value: object) -> AddressList:
    """An address list in amavis's forms (addresses.py): "example.org", ".example.org",
    ".", "user@example.org", "user@", "!entry"; an entry that can never match is refused."""
    if not isinstance(value, list):
        raise InvalidValue('expected a list such as [".example.org", "user@example.net"]')
    try:
        return AddressList(value)
    except InvalidEntry as exc:
        raise InvalidValue(str(exc)) from None


def parse_delimiter(value: object) -> str:
    """Postfix's recipient_delimiter: "" or a few characters, none of them @ or a space."""
    text = parse_str(value)
    if len(text) > 8 or any(c in text for c in "@ \t.\"<>"):
        raise InvalidValue(f"expected a few characters such as \"+\" or \"+-\", got {text!r}")
    return text


def parse_mail_address_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidValue("expected a list of mail addresses")
    for item in value:
        if not isinstance(item, str) or not _ADDRESS_RE.fullmatch(item):
            raise InvalidValue(f"not a mail address: {item!r}")
    return tuple(value)


def parse_header_template(value: object) -> str:
    text = parse_str(value)
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise InvalidValue(f"bad template: {exc}") from None
    if fields - {"hostname"}:
        raise InvalidValue(f"unknown placeholder(s): {', '.join(sorted(fields - {'hostname'}))}")
    return text


def parse_folder(value: object) -> str:
    text = parse_str(value)
    if not text or len(text) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidValue("folder name must be 1-200 printable characters")
    return text


def parse_cron(value: object) -> str:
    text = parse_str(value)
    if len(text.split()) != 5:
        raise InvalidValue(f'expected 5 cron fields such as "*/15 * * * *", got {text!r}')
    from apscheduler.triggers.cron import CronTrigger  # slow import: only when validating

    try:
        CronTrigger.from_crontab(text)
    except ValueError as exc:
        raise InvalidValue(f"bad cron expression {text!r}: {exc}") from None
    return text


def parse_db_url(value: object) -> str:
    text = parse_str(value)
    from sqlalchemy.engine import make_url  # slow import: only when validating
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # SQLAlchemy's ValueError quotes a piece of the URL, which may be the password.
        raise InvalidValue(f"not an SQLAlchemy URL: {mask_url_password(text)!r}") from None
    return text


def parse_path(value: object) -> Path:
    text = parse_str(value)
    if not text.startswith("/"):
        raise InvalidValue(f"expected an absolute path, got {text!r}")
    return Path(text)


def parse_base_url(value: object) -> str:
    """"" or an absolute http(s) URL without query or fragment; returned without a final /."""
    text = parse_str(value)
    if text == "":
        return ""
    if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?(/[A-Za-z0-9._~%/-]*)?", text):
        raise InvalidValue(f"expected a URL like https://mail.example.org/quarantine, got "
                           f"{text!r}")
    return text.rstrip("/")


def parse_optional_path(value: object) -> Path | None:
    if value == "":
        return None
    return parse_path(value)


# --------------------------------------------------------------------------------------------
# Secrets. A value is shown (check-config, which systemd logs as ExecStartPre; error messages)
# only through its option's mask, so a password never reaches the journal or a terminal.
# --------------------------------------------------------------------------------------------

MASK = "***"
# user:password@ after "scheme://" or where a word starts (not "scheme:" itself), as
# SQLAlchemy splits it: the user name stops at ":" or "/", the password runs to the "@" (to
# the last one of the word, so that a password with an unencoded "@" is masked whole).
_USERINFO_PASSWORD = re.compile(r"(^|//|\s)([^:/\s]*:)(?!//)\S*@")
# libpq (psycopg) also takes the password, or sslpassword, as a query parameter.
_QUERY_PASSWORD = re.compile(r"([?&][^=&\s]*password=)[^&\s]*", re.IGNORECASE)


def mask_credentials(value: object) -> object:
    """`value` as it may be shown: in a string, every `user:password@` and `password=...`
    becomes `user:***@` and `password=***`. Anything else is returned as it is."""
    if not isinstance(value, str):
        return value
    masked = _USERINFO_PASSWORD.sub(rf"\g<1>\g<2>{MASK}@", value)
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", masked)


def mask_url_password(url: object) -> str:
    """A database URL as it may be shown: postgresql+psycopg://user:***@host/db."""
    return str(mask_credentials(url))


# --------------------------------------------------------------------------------------------
# The declaration helper.
# --------------------------------------------------------------------------------------------


class UserKind(enum.Enum):
    """The per-user form of a [policy] key: how it is stored (one nullable column of
    user_policies, see store.py), given on the command line, and applied."""

    NUMBER = "number"  # a float
    TEXT = "text"  # a short string (subject tag, folder)
    CHOICE = "choice"  # one of a few words
    FLAG = "flag"  # true or false
    MEMBERSHIP = "membership"  # an address list in the config; per user: "listed or not"


def user_kind(parse: Callable[[object], Any]) -> UserKind:
    """The per-user form that goes with a parser; a parser without one cannot be per-user."""
    if parse is parse_float:
        return UserKind.NUMBER
    if getattr(parse, "choices", None):
        return UserKind.CHOICE
    if parse in (parse_str, parse_folder):
        return UserKind.TEXT
    if parse is parse_bool:
        return UserKind.FLAG
    if parse is parse_recipient_list:
        return UserKind.MEMBERSHIP
    raise TypeError(f"{getattr(parse, '__name__', parse)!r} has no per-user form")


def parse_user_value(parse: Callable[[object], Any], value: object) -> Any:
    """Validate a per-user value with the option's own parser (a membership is a flag)."""
    if user_kind(parse) is UserKind.MEMBERSHIP:
        return parse_bool(value)
    return parse(value)


# --------------------------------------------------------------------------------------------
# The declaration helper.
# --------------------------------------------------------------------------------------------


def option(default: object, parse: Callable[[object], Any], help: str, *,
           per_user: bool = False, mask: Callable[[Any], Any] | None = None) -> Any:
    """Declare one option: its raw default (as written in TOML), its parser and its help.

    The raw default goes through the same parser as user input, so defaults are validated too.
    per_user: a [policy] key that `lmtpfilter user set` may override for one address or one
    domain; its column, CLI flag and per-user validation derive from the parser (user_kind).
    mask: for a value that may hold a secret, what is shown instead of it (`check-config`,
    messages), e.g. mask_url_password.
    """
    if per_user:
        user_kind(parse)  # fail at import, not at the first `user set`
    return field(
        default_factory=lambda: parse(default),
        metadata={"raw_default": default, "parse": parse, "help": help, "per_user": per_user,
                  "mask": mask},
    )


def shown(f: dataclasses.Field[Any], value: Any) -> Any:
    """An option's value as it may be shown: through its mask, if it has one."""
    mask = f.metadata.get("mask")
    return mask(value) if mask is not None else value


def declared(section: type) -> list[dataclasses.Field[Any]]:
    """The options of a section, in declaration order."""
    return [f for f in dataclasses.fields(section) if "parse" in f.metadata]


def key_of(f: dataclasses.Field[Any]) -> str:
    """The TOML key of an option (`from_` is written `from`)."""
    return f.name.rstrip("_")
