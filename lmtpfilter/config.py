"""The configuration: every option of the config file declared once, in one table.

Each section is a frozen dataclass; each field is declared with :func:`~.options.option`, which
carries the raw TOML default, the parser that validates and converts it, and the help text. The
loader, the `check-config` printout, the generated reference (docs/configuration.md) and, for
[policy] keys marked ``per_user``, the per-recipient policy, the user_policies columns and the
`lmtpfilter user set` flags all read this one table (docs/design.md §2).

Bad input fails at load time with :class:`ConfigError`, whose message names the key.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .addresses import AddressList
from .banned import DEFAULT_BANNED_RULES, BannedRule, parse_banned_rules
from .event_loop import parse_event_loop
from .options import (
    _DURATION_UNITS,
    Address,
    InvalidValue,
    SizeOrPercent,
    declared,
    int_in_range,
    key_of,
    mask_url_password,
    one_of,
    option,
    parse_address,
    parse_address_list,
    parse_base_url,
    parse_bool,
    parse_cron,
    parse_db_url,
    parse_delimiter,
    parse_duration,
    parse_float,
    parse_folder,
    parse_header_template,
    parse_hostname,
    parse_mail_address_list,
    parse_mode,
    parse_optional_address,
    parse_optional_path,
    parse_path,
    parse_recipient_list,
    parse_size,
    parse_size_or_percent,
    parse_str,
    parse_syslog_ident,
    parse_user_name,
    shown,
)

DEFAULT_PATH = Path("/etc/lmtpfilter/lmtpfilter.toml")
ENV_VAR = "LMTPFILTER_CONFIG"


class ConfigError(Exception):
    """A config file that cannot be used; the message is one line naming the key."""


# --------------------------------------------------------------------------------------------
# The sections. Their names are part of the config file's contract (docs/design.md §2).
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
    worker_max_messages: int = option(
        10_000, int_in_range(0, 100_000_000),
        "With workers >= 2, a worker that has finished this many transactions (plus up to "
        "10%, so that workers do not retire together) stops accepting, drains as on SIGTERM "
        "and exits, and the supervisor starts a fresh one: the memory a worker's allocator "
        "kept from its busiest moments goes back to the system (amavisd-new: max_requests; "
        "Postfix: max_use; gunicorn: max_requests). 0 = never. With workers = 1 there is no "
        "supervisor to start another, so the process is not recycled.")
    event_loop: str = option(
        "auto", parse_event_loop,
        "The event loop each process runs on: auto | asyncio | uvloop. \"auto\" takes uvloop "
        "when it is installed (pip install \"lmtpfilter[uvloop]\", or python3-uvloop), which "
        "costs less CPU per message (README: Performance), and asyncio's own loop otherwise.")
    shutdown_timeout: float = option(
        "30s", parse_duration,
        "On SIGTERM, how long in-flight transactions may run before the rest get 421.")
    idle_timeout: float = option(
        "300s", parse_duration,
        "Close a client connection (421 4.4.2) that takes this long to send a whole command "
        "line, or that sends nothing for this long during DATA (RFC 5321 5 min; 0 = never). "
        "It runs per command, not per read, so a byte a second does not keep it alive.")
    transaction_timeout: float = option(
        "10m", parse_duration,
        "Close a client connection (421 4.4.2) whose transaction, from MAIL to the final "
        "dot, takes longer than this: a client trickling its message cannot hold a slot for "
        "ever (Postfix: smtpd_per_record_deadline). Our own processing after the dot does "
        "not count. 0 = never.")
    max_connections: int = option(
        200, int_in_range(1, 100_000),
        "Client connections one process serves at once (so workers x this in all); past it "
        "a new client gets 421 4.3.2 and is closed (Postfix: default_process_limit 100 per "
        "service). Each connection costs a file descriptor: keep it under LimitNOFILE.")
    max_recipients: int = option(
        1000, int_in_range(100, 100_000),
        "Accepted RCPTs per transaction; past it RCPT gets 452 4.5.3 and the client sends "
        "the rest in another transaction (RFC 5321 4.5.3.1.8 asks for at least 100; "
        "Postfix: smtpd_recipient_limit = 1000).")
    max_header_size: int = option(
        "1M", parse_size,
        "Largest header section (the octets before the first empty line, as received); a "
        "message with a larger one is refused after the dot with 552 5.3.4 per recipient. "
        "0 = no limit of its own (max_message_size still applies).")
    user: str = option(
        "", parse_str,
        "Every command started as root switches to this user before it opens a file, so that "
        'what it creates belongs to the service; "" = the owner of the database\'s and the '
        "quarantine's directories (none if root owns them).")


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
    user: str = option(
        "", parse_user_name,
        'Sent as spamd\'s "User:" (as `spamc -u`): whose preferences apply; "" sends none.')
    max_connections: int = option(
        5, int_in_range(1, 1000),
        "spamd requests one filter process has open at once. Others wait for a free one up "
        "to `timeout` (then 451), and spamd's answer gets `timeout` after that. Keep workers "
        "x this <= spamd's --max-children (Debian: 5): spamd scans a request queued in its "
        "backlog even after we gave up on it, and under load that wasted work never lets it "
        "catch up.")


_DESTINIES = ("pass", "discard", "reject")


@dataclass(frozen=True)
class PolicyConfig:
    """The [policy] section. Keys marked per_user may be overridden for an address or a
    domain (`lmtpfilter user set`); see policy.RecipientPolicy for how they apply."""

    SECTION: ClassVar[str] = "policy"
    tag_level: float = option(
        -999.0, parse_float, "Add X-Spam-Status/Score/Level at or above this score.",
        per_user=True)
    tag2_level: float = option(
        5.0, parse_float, "At or above: X-Spam-Flag: YES and the subject tag (spam).",
        per_user=True)
    kill_level: float = option(
        25.0, parse_float, "At or above: apply spam_destiny.", per_user=True)
    spam_subject_tag: str = option(
        "[SPAM] ", parse_str, 'Prefix added to the Subject of spam; "" for none.',
        per_user=True)
    spam_destiny: str = option(
        "discard", one_of(*_DESTINIES), "What happens at kill level: pass | discard | reject.",
        per_user=True)
    dsn_cutoff_level: float = option(
        10.0, parse_float,
        "Spam with spam_destiny = reject at or above this score is discarded (and "
        "quarantined) instead: a 5xx makes Postfix bounce to a sender that spam forges "
        "(amavis's $sa_dsn_cutoff_level).", per_user=True)
    virus_destiny: str = option(
        "discard", one_of(*_DESTINIES), "What happens to a virus: pass | discard | reject.",
        per_user=True)
    banned_destiny: str = option(
        "discard", one_of(*_DESTINIES),
        "What happens to a message with a part the [content] banned_rules ban: pass (with "
        "X-Amavis-Alert) | discard (quarantined) | reject (amavis's $final_banned_destiny).",
        per_user=True)
    bad_header_destiny: str = option(
        "pass", one_of(*_DESTINIES),
        "What happens to a message with a bad header section: pass (with X-Amavis-Alert) | "
        "discard (quarantined) | reject (amavis's $final_bad_header_destiny).", per_user=True)
    junk_destiny: str = option(
        "junk", one_of("junk", "inbox", "discard"),
        "What the user's Sieve script does with tagged spam: junk | inbox | discard.",
        per_user=True)
    junk_folder: str = option(
        "Junk", parse_folder, "Folder for junk_destiny = junk.", per_user=True)
    bypass_spam_checks: AddressList = option(
        [], parse_recipient_list,
        'Recipients not spam-checked, in amavis\'s forms ("user@dom", "dom", ".dom", "user@", '
        '"."); per user: true/false.', per_user=True)
    bypass_virus_checks: AddressList = option(
        [], parse_recipient_list,
        "Recipients not virus-checked, in the same forms; per user: true/false.",
        per_user=True)
    bypass_banned_checks: AddressList = option(
        [], parse_recipient_list,
        "Recipients whose mail the [content] banned_rules do not stop, in the same forms; "
        "per user: true/false.", per_user=True)
    bypass_header_checks: AddressList = option(
        [], parse_recipient_list,
        "Recipients whose mail is not checked for bad headers, in the same forms; per user: "
        "true/false.", per_user=True)
    local_domains: AddressList = option(
        [], parse_recipient_list,
        'Local recipients, in the same forms (Debian\'s amavis: [".example.org"]); only they '
        "get spam headers and subject tags, as in amavis. Empty: everyone is local.")
    refuse_non_local: bool = option(
        False, parse_bool,
        "Refuse recipients outside local_domains at RCPT (550 5.1.2) instead of delivering "
        "them untagged.")
    recipient_delimiter: str = option(
        "", parse_delimiter,
        'Postfix\'s recipient_delimiter, e.g. "+": alice+lists@ gets alice@\'s policy, lists '
        "and Sieve script, and is recorded as alice+lists@.")
    on_scanner_failure: str = option(
        "tempfail", one_of("tempfail", "pass"),
        "A scanner down or timing out: tempfail (451) or pass (deliver unscanned, marked).",
        per_user=True)
    x_header_line: str = option(
        "lmtpfilter at {hostname}", parse_header_template, "Value of X-Virus-Scanned.")

    def inconsistency(self) -> str | None:
        """What breaks a rule between keys, or None. The config file and every per-user
        override (with the values it inherits) are held to the same rules."""
        if not self.tag_level <= self.tag2_level <= self.kill_level:
            return (f"tag_level <= tag2_level <= kill_level does not hold "
                    f"({self.tag_level:g}, {self.tag2_level:g}, {self.kill_level:g})")
        return None


def per_user_options() -> list[dataclasses.Field[Any]]:
    """The [policy] keys that may be overridden per user or domain, in declaration order."""
    return [f for f in declared(PolicyConfig) if f.metadata["per_user"]]


def cli_flag(f: dataclasses.Field[Any]) -> str:
    """The `lmtpfilter user set` flag of a per-user key: kill_level -> --kill-level."""
    return "--" + key_of(f).replace("_", "-")


@dataclass(frozen=True)
class SendersConfig:
    """Per-recipient sender lists (`lmtpfilter senders`; lmtpfilter/senderlists.py)."""

    SECTION: ClassVar[str] = "senders"
    enabled: bool = option(
        True, parse_bool,
        "Apply the sender lists of `lmtpfilter senders` (allow, bypass, block per recipient, "
        "address or domain, as amavis's wblist); false ignores them without a query.")
    allow_shift: float = option(
        -3.0, parse_float,
        "Added to the spam score of mail from an allowed sender when the entry gives no "
        "--score (amavis's soft-whitelisting, @score_sender_maps; Debian's examples use -3).")


@dataclass(frozen=True)
class QuarantineConfig:
    SECTION: ClassVar[str] = "quarantine"
    store: str = option(
        "files", one_of("files", "sql"),
        "Where the message bytes are kept: files (gzip files under directory) or sql (in the "
        "[database], zlib-compressed in 1 MiB chunks, as amavisd-new's sql: quarantine; "
        "SQLite for one host, PostgreSQL for several). The index rows are in the database "
        "either way.")
    directory: Path = option(
        "/var/lib/lmtpfilter/quarantine", parse_path,
        "Where quarantined messages are kept (store = files); with store = sql, only the "
        "lock file the janitor, release and delete share is kept here.")
    spam: bool = option(True, parse_bool, "Keep a copy of spam at kill level, delivered "
                        "(spam_destiny = pass) or not, as amavis's $spam_quarantine_to does.")
    max_size: int = option(
        "10G", parse_size,
        "Budget for the whole quarantine: the compressed bytes of the messages kept (store = "
        "files: the files; store = sql: the chunks' bytes, which is what deleting a message "
        "frees).")
    min_free: SizeOrPercent = option(
        "5%", parse_size_or_percent,
        "Keep at least this much of the filesystem free: the quarantine directory's (store = "
        "files) or the SQLite database file's (store = sql on SQLite). On PostgreSQL the "
        "server's disk cannot be seen from the filter, so neither a size nor a percentage "
        "is applied: watch the server's disk; a write it refuses is a full quarantine "
        "(on_full), and `lmtpfilter-janitor run` reports the database's size "
        "(pg_database_size) and the chunks' (pg_total_relation_size).")
    on_full: str = option(
        "tempfail", one_of("tempfail", "discard-without-copy"),
        "Quarantine over budget: tempfail (451) or discard without a copy.")


@dataclass(frozen=True)
class DatabaseConfig:
    SECTION: ClassVar[str] = "database"
    url: str = option(
        "sqlite:////var/lib/lmtpfilter/lmtpfilter.db", parse_db_url,
        "SQLAlchemy URL; PostgreSQL for several hosts (postgresql+psycopg://...). Shown with "
        "its password as ***.", mask=mask_url_password)
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
    managesieve_authzid: str = option(
        "address", one_of("address", "local-part"),
        'Whom the login acts for: the whole address (Dovecot; Cyrus with virtdomains: '
        'userid) or its local part (Cyrus with virtdomains: off, where alice@ of any domain '
        'is user "alice").')


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
class WebConfig:
    """The [web] section: `lmtpfilter web`, the quarantine self-service page (lmtpfilter/web/)."""

    SECTION: ClassVar[str] = "web"
    listen: Address = option(
        "127.0.0.1:8025", parse_address,
        "Where `lmtpfilter web` listens (behind nginx or Apache with TLS).")
    base_url: str = option(
        "", parse_base_url,
        'The page\'s public URL, e.g. "https://mail.example.org/quarantine"; recipient '
        'notifications carry a release link only when it is set.')
    secret_key_file: Path | None = option(
        "", parse_optional_path,
        "File holding the key that signs session cookies and release links (32 random bytes "
        "or more; `lmtpfilter web` refuses to start without it).")
    authenticator: str = option(
        "dovecot", one_of("dovecot", "imap"),
        "Who checks users' passwords (nothing is stored): dovecot (its authentication "
        "server, over dovecot_auth_socket) or imap (IMAP LOGIN at imap_address: Cyrus).")
    dovecot_auth_socket: Path = option(
        "/run/dovecot/auth-lmtpfilter", parse_path,
        "Dovecot's auth-client listener for the page (see the README's `service auth` "
        "lines), for authenticator = dovecot.")
    imap_address: Address = option(
        "127.0.0.1:143", parse_address,
        "The IMAP server that checks passwords, for authenticator = imap (IMAP LOGIN).")
    imap_tls: str = option(
        "none", one_of("none", "starttls", "implicit"),
        "TLS to the IMAP server: none (loopback), starttls, implicit (port 993).")
    admins: tuple[str, ...] = option(
        [], parse_mail_address_list, "Addresses that see and act on every quarantined message.")
    allow_plain_http: bool = option(
        False, parse_bool,
        "Set session cookies over plain HTTP too; only for a page on localhost (tests, a "
        "tunnel). Otherwise the page works only behind HTTPS.")
    session_lifetime: float = option("8h", parse_duration, "How long a login lasts.")
    release_link_lifetime: float = option(
        "7d", parse_duration, "How long a release link in a notification stays valid.")
    login_attempts: int = option(
        5, int_in_range(1, 1000),
        "Failed logins allowed per address, and (x4) per client address, within login_window.")
    login_window: float = option(
        "15m", parse_duration, "The window login_attempts counts in.")
    tag2_min: float = option(
        2.0, parse_float, "The lowest tag2_level a user may choose on the settings page.")
    tag2_max: float = option(
        15.0, parse_float, "The highest tag2_level a user may choose on the settings page.")
    metrics_listen: Address | None = option(
        "", parse_optional_address,
        'Serve the page\'s Prometheus /metrics (logins, releases) here, e.g. '
        '"127.0.0.1:9426".')

    def inconsistency(self) -> str | None:
        if self.tag2_min > self.tag2_max:
            return f"tag2_min ({self.tag2_min}) is above tag2_max ({self.tag2_max})"
        return None


@dataclass(frozen=True)
class ContentConfig:
    """The [content] section: the content inventory and the banned-contents rules
    (mime_walk.py, banned.py). The limits default to amavis's Debian defaults ($MAXLEVELS,
    $MAXFILES, $MAX_EXPANSION_QUOTA), so that what amavis looked into is looked into; the
    walk streams archives, so memory does not grow with them."""

    SECTION: ClassVar[str] = "content"
    enabled: bool = option(
        True, parse_bool, "List every part and archive member and apply banned_rules.")
    banned_rules: tuple[BannedRule, ...] = option(
        list(DEFAULT_BANNED_RULES), parse_banned_rules,
        'Ordered rules, first match wins: "allow|ban MATCHER[:ARG]" with name:GLOB, '
        "name-re:REGEX, declared-type:GLOB, detected-type:GLOB, double-extension[:EXTS], "
        "encrypted-archive, unreadable-archive, incomplete, mime-error, any. The default is "
        "amavis's Debian $banned_filename_re plus scripts and shortcuts, unreadable "
        "archives and incomplete inspection (see lmtpfilter/banned.py).")
    max_depth: int = option(
        14, int_in_range(1, 100), "Deepest MIME plus archive nesting looked into "
        "(amavis's $MAXLEVELS); deeper is incomplete.")
    max_parts: int = option(
        1500, int_in_range(1, 1_000_000), "Most MIME parts plus archive members looked at "
        "(amavis's $MAXFILES); more is incomplete.")
    max_expanded: int = option(
        "300M", parse_size, "Most bytes decompressed from archives per message (amavis's "
        "$MAX_EXPANSION_QUOTA); more is incomplete (a zip bomb).")
    time_limit: float = option(
        "10s", parse_duration, "Longest walk of one message; longer is incomplete.")


@dataclass(frozen=True)
class LogConfig:
    SECTION: ClassVar[str] = "log"
    format: str = option(
        "lmtpfilter", one_of("lmtpfilter", "amavis"),
        "The per-message line: lmtpfilter (one key=value line) | amavis (amavisd-new 2.13's "
        '"Passed CLEAN {RelayedInbound}, ..." line(s), which logwatch, mailgraph and '
        "amavis-logwatch read).")
    syslog: bool = option(
        False, parse_bool,
        "Send the whole log to syslog (facility mail, so that it lands in mail.log) instead "
        "of stderr; `serve` refuses to start when syslog_address is not there.")
    syslog_ident: str = option(
        "", parse_syslog_ident,
        'The program name of the syslog lines, "NAME[PID]: "; "" = "amavis" with format = '
        '"amavis" (logwatch and mailgraph select amavis\'s lines by that name), else '
        '"lmtpfilter".')
    syslog_address: Path = option(
        "/dev/log", parse_path, "The syslog daemon's unix datagram socket.")

    @property
    def ident(self) -> str:
        return self.syslog_ident or ("amavis" if self.format == "amavis" else "lmtpfilter")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    clamav: ClamavConfig = field(default_factory=ClamavConfig)
    spamassassin: SpamassassinConfig = field(default_factory=SpamassassinConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    senders: SendersConfig = field(default_factory=SendersConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    janitor: JanitorConfig = field(default_factory=JanitorConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    web: WebConfig = field(default_factory=WebConfig)
    source: str = "(defaults)"
    # [server].hostname, or the machine's FQDN: resolved once, here, because getfqdn() may
    # ask the resolver and the name is read on the event loop (Received:, quarantine copies).
    hostname: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.hostname:
            object.__setattr__(self, "hostname", self.server.hostname or socket.getfqdn())


SECTIONS: tuple[type, ...] = tuple(
    f.type if isinstance(f.type, type) else globals()[str(f.type)]
    for f in dataclasses.fields(Config)
    if f.name not in ("source", "hostname")
)


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
        for f in declared(cls):
            key = key_of(f)
            if key in given:
                raw = given.pop(key)
                try:
                    kwargs[f.name] = f.metadata["parse"](raw)
                except InvalidValue as exc:
                    raise ConfigError(f"{source}: [{name}] {key}: {exc}") from None
        if given:
            raise ConfigError(f"{source}: [{name}] unknown key {sorted(given)[0]!r}")
        sections[name] = cls(**kwargs)
    config = Config(**sections, source=source)
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    """Rules that involve more than one key."""
    problem = config.policy.inconsistency()
    if problem:
        raise ConfigError(f"{config.source}: [policy] {problem}")
    problem = config.web.inconsistency()
    if problem:
        raise ConfigError(f"{config.source}: [web] {problem}")


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
    """Render a parsed value back as TOML a user could write, secrets masked (`shown`)."""
    value = shown(f, value)
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
        for f in declared(cls):
            lines.append(f"{key_of(f)} = {_effective(f, getattr(section, f.name))}")
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
        for f in declared(cls):
            choices: Sequence[str] | None = getattr(f.metadata["parse"], "choices", None)
            meaning = f.metadata["help"].replace("|", "\\|")
            if choices and "|" not in f.metadata["help"]:
                meaning += " One of: " + ", ".join(f"`{c}`" for c in choices) + "."
            if f.metadata["per_user"]:
                meaning += f" Per user or domain: `lmtpfilter user set {cli_flag(f)}`."
            # a "|" (in a rule's regex) would end the table cell, even in backticks
            default = _toml_value(f.metadata["raw_default"]).replace("|", "\\|")
            out.append(f"| `{key_of(f)}` | `{default}` | {meaning} |")
    return "\n".join(out) + "\n"
