"""What amavisd-new's settings mean in lmtpfilter: one table, :data:`RULES`.

Each rule names the amavis variables it reads, the lmtpfilter key they correspond to (None:
none) and a converter. The converter reads values through a :class:`Lookup`, which resolves
references the way amavis does at lookup time and remembers which variables it read, so the
generated file cites them; it returns the TOML value, :data:`KEEP` (the lmtpfilter default is
right), or raises :class:`NotMapped` with the reason the user sees. The README's
"Migrating from amavisd-new" table is checked against this one (tests/unit/
test_amavis_config.py).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .perl_values import FileMap, Opaque, Ref, Regex, RegexMap, Value


class NotMapped(Exception):
    """The value cannot be carried over; the message says why (one line)."""


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()  # the lmtpfilter default already means what amavis's value means
TomlValue = str | int | float | bool | list[str]


class Lookup:
    """Values as amavis sees them after all files: references resolved, read files read."""

    def __init__(self, get: Callable[[str], Value], read_file: Callable[[str], str]) -> None:
        self._get = get
        self._read_file = read_file
        self.used: list[str] = []  # every variable read, in order (cited in the output)
        self.note = ""  # a converter's remark on this value, added to the comment

    def __call__(self, name: str) -> Value:
        if name not in self.used:
            self.used.append(name)
        return self._get(name)

    def scalar(self, name: str) -> Value:
        """A setting that amavis also offers as by-recipient maps: its site-wide value."""
        value = self(name)
        if isinstance(value, Opaque):
            raise NotMapped(f"its value could not be read: {value.why}")
        return value

    def address_list(self, maps: str) -> list[str]:
        """A list of lookup tables (@local_domains_maps, @bypass_*_maps) as one list in
        amavis's address forms, first match wins: tables in order, a hash's keys from the
        most specific, an ACL as it is, a constant for everyone."""
        value = self(maps)
        tables = value if isinstance(value, list) else [value]
        out: list[str] = []
        for table in tables:
            entries = self._table(table)
            if entries is None:
                break  # a constant: it answers for everyone, later tables are not asked
            out += entries
        return out

    def _table(self, table: Value) -> list[str] | None:
        if isinstance(table, Ref):
            if table.name.startswith("$"):
                target = self(table.name)
                if target is None:
                    return []
                if isinstance(target, Regex | RegexMap):
                    return self._table(target)
                return self._table(target)
            table = self(table.name)
        if table is None:
            return []
        if isinstance(table, dict):
            return _hash_entries(table)
        if isinstance(table, list | tuple):
            return [self._acl_entry(e) for e in table]
        if isinstance(table, FileMap):
            return self._file_table(table)
        if isinstance(table, Regex | RegexMap):
            raise NotMapped("a regular-expression table (new_RE, qr) cannot be written as "
                            "lmtpfilter's address forms; list the addresses or domains")
        if isinstance(table, Opaque):
            raise NotMapped(f"a table could not be read: {table.why}")
        if isinstance(table, str | int | float):
            return ["."] if _truthy(table) else None
        raise NotMapped(f"unsupported lookup table {table!r}")

    def _acl_entry(self, entry: Value) -> str:
        if isinstance(entry, Opaque):
            raise NotMapped(f"an entry could not be read: {entry.why}")
        if not isinstance(entry, str):
            raise NotMapped(f"ACL entry {entry!r} is not a string")
        return entry

    def _file_table(self, table: FileMap) -> list[str]:
        try:
            text = self._read_file(table.path)
        except OSError as exc:
            raise NotMapped(f"{table.function}({table.path}): {exc.strerror or exc}") from None
        keys: dict[str, Value] = {}
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            key, _, rest = line.partition(" ")
            keys[key] = rest.strip() or 1
        if table.function == "read_array":
            return list(keys)
        return _hash_entries(keys)


def _truthy(value: Value) -> bool:
    return value not in (None, "", "0", 0, 0.0)


def _specificity(key: str) -> tuple[int, int]:
    """How amavis tries a hash: the address, then user@, then the domain and its parents
    from the longest, then "." (Amavis::Lookup::lookup_hash)."""
    if key == ".":
        return (3, 0)
    if "@" in key and not key.startswith("@") and not key.endswith("@"):
        return (0, 0)
    if key.endswith("@"):
        return (1, 0)
    # More labels first; of equal length, the domain itself before ".domain".
    return (2, -2 * key.strip(".").count(".") + key.startswith("."))


def _hash_entries(table: dict[str, Value]) -> list[str]:
    out = []
    for key in sorted(table, key=_specificity):
        value = table[key]
        if isinstance(value, Opaque):
            raise NotMapped(f"the value of {key!r} could not be read: {value.why}")
        out.append(key if _truthy(value) else "!" + key)
    return out


# --------------------------------------------------------------------------------------------
# Converters: one per rule, each reading what it needs through the Lookup.
# --------------------------------------------------------------------------------------------

NEVER = 9999.0  # amavis's undef level: no score reaches it (GTUBE is 1000)


def _level(name: str, undef: float, meaning: str) -> Callable[[Lookup], TomlValue | _Keep]:
    def convert(look: Lookup) -> TomlValue | _Keep:
        value = look.scalar(name)
        if value is None:
            look.note = f"undef in amavis: {meaning}"
            return undef
        if isinstance(value, int | float) or (isinstance(value, str) and re.fullmatch(
                r"\s*[+-]?\d+(\.\d*)?\s*", value)):
            return float(value)
        raise NotMapped(f"not a number: {value!r}")
    return convert


_DESTINY = {-3: "reject", -2: "reject", 0: "discard", 1: "pass"}


def _spam_destiny(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$final_spam_destiny")
    if value in (-2, -3):
        look.note = "D_BOUNCE/D_REJECT: a 5xx below dsn_cutoff_level, discarded above"
    if value in _DESTINY:
        return _DESTINY[value]  # type: ignore[index]
    if value == -4:
        raise NotMapped("D_TEMPFAIL: lmtpfilter has no destiny that defers spam")
    raise NotMapped(f"unknown destiny {value!r}")


def _virus_destiny(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$final_virus_destiny")
    if value == -2:
        # amavis sends no bounce for a virus that fakes its sender, which by default
        # (@viruses_that_fake_sender_maps) is every virus: D_BOUNCE is a discard.
        look.note = "D_BOUNCE: amavis bounces no virus that fakes its sender (all, by default)"
        return "discard"
    if value in _DESTINY:
        return _DESTINY[value]  # type: ignore[index]
    if value == -4:
        raise NotMapped("D_TEMPFAIL: lmtpfilter has no destiny that defers viruses")
    raise NotMapped(f"unknown destiny {value!r}")


def _other_destiny(name: str, what: str) -> Callable[[Lookup], TomlValue | _Keep]:
    """$final_banned_destiny, $final_bad_header_destiny: D_BOUNCE and D_REJECT are a 5xx
    (Postfix then bounces to the sender: these senders are seldom forged)."""
    def convert(look: Lookup) -> TomlValue | _Keep:
        value = look.scalar(name)
        if value in _DESTINY:
            return _DESTINY[value]  # type: ignore[index]
        if value == -4:
            raise NotMapped(f"D_TEMPFAIL: lmtpfilter has no destiny that defers {what}")
        raise NotMapped(f"unknown destiny {value!r}")
    return convert


# Debian's $banned_filename_re (20-debian_defaults), pattern by pattern: what lmtpfilter's
# default [content] banned_rules already ban (lmtpfilter/banned.py DEFAULT_BANNED_RULES).
DEBIAN_BANNED_FILENAME_RE = (
    r"\.[^./]*\.(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)\.?$",
    r"\{[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\}?$",
    r"^application/x-msdownload$",
    r"^application/x-msdos-program$",
    r"^application/hta$",
    r".\.(exe|vbs|pif|scr|bat|cmd|com|cpl)$",
    r"^\.(exe-ms)$",
)


def _banned_filename_re(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$banned_filename_re")
    if value is None:
        raise NotMapped("undef: amavis bans nothing by name; lmtpfilter's default [content] "
                        "banned_rules ban executables: set banned_rules = [] to ban nothing")
    patterns = tuple(_pattern(e) for e in value.entries) if isinstance(value, RegexMap) \
        else (_pattern(value),)
    if patterns == DEBIAN_BANNED_FILENAME_RE:
        look.note = "Debian's default: lmtpfilter's default banned_rules ban the same"
        return KEEP
    raise NotMapped("a site's own $banned_filename_re: amavis matches it against names and "
                    "types alike; write its rules as [content] banned_rules (name-re:, "
                    "declared-type:, detected-type:)")


def _pattern(entry: Value) -> str:
    regex = entry[0] if isinstance(entry, tuple) else entry
    return regex.pattern if isinstance(regex, Regex) else repr(regex)


def _subject_tag(look: Lookup) -> TomlValue | _Keep:
    if not _truthy(look.scalar("$sa_spam_modifies_subj")):
        return ""
    tag = look.scalar("$sa_spam_subject_tag")
    return "" if tag is None else str(tag)


def _addresses(maps: str) -> Callable[[Lookup], TomlValue | _Keep]:
    def convert(look: Lookup) -> TomlValue | _Keep:
        return look.address_list(maps)
    return convert


def _recipient_delimiter(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$recipient_delimiter")
    return "" if value is None else str(value)


def _header_line(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$X_HEADER_LINE")
    if value is None:  # Conf.pm's supply_after_defaults
        domain = look.scalar("$mydomain")
        value = f"{look.scalar('$myproduct_name')} at {domain}"
    if value == "":
        raise NotMapped('"" adds no X-Virus-Scanned in amavis; lmtpfilter always adds it')
    return str(value).replace("{", "{{").replace("}", "}}")


def _hostname(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$myhostname")
    # Unset, or this machine's FQDN (Debian's `hostname --fqdn`): lmtpfilter's default, the
    # FQDN when it starts, means the same and does not freeze today's name in the file.
    if value is None or str(value) == socket.getfqdn():
        return KEEP
    return str(value)


def _quarantine_dir(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$QUARANTINEDIR")
    if value in (None, ""):
        raise NotMapped("amavis keeps no quarantine files; lmtpfilter always quarantines "
                        "viruses, in [quarantine] directory")
    # Not lmtpfilter's directory: amavis's files stay amavis's (and its group's), in its
    # layout; lmtpfilter's quarantine is its own, and takes amavis's messages by import.
    raise NotMapped(f"lmtpfilter keeps its own quarantine ([quarantine] directory); bring "
                    f"amavis's messages over with `lmtpfilter quarantine import-amavis "
                    f"{value}`")


def _log_format(look: Lookup) -> TomlValue | _Keep:
    if look.scalar("$log_templ") is not None:
        raise NotMapped("a custom $log_templ: lmtpfilter writes amavis's default main log "
                        "line ([log] format = \"amavis\")")
    return "amavis"


def _syslog(look: Lookup) -> TomlValue | _Keep:
    return _truthy(look.scalar("$DO_SYSLOG"))


def _syslog_ident(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$syslog_ident")
    # "" is lmtpfilter's default: "amavis" with format = "amavis", as amavis's default is.
    return KEEP if value in (None, "", "amavis") else str(value)


def _syslog_facility(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$syslog_facility")
    if value in (None, "mail"):
        return KEEP
    raise NotMapped(f"{value!r}: lmtpfilter logs to syslog facility mail")


def _quarantine_to(kind: str) -> Callable[[Lookup], TomlValue | _Keep]:
    def convert(look: Lookup) -> TomlValue | _Keep:
        value = look.scalar(f"${kind}_quarantine_to")
        if value in (None, ""):
            if kind == "spam":
                return False
            raise NotMapped("amavis does not quarantine viruses; lmtpfilter always does "
                            "(docs/design.md section 3)")
        text = str(value)
        if "@" in text or ":" in text:
            raise NotMapped(f"{text!r} sends the quarantine to a mailbox or SQL; lmtpfilter "
                            "keeps it in [quarantine] directory")
        return True if kind == "spam" else KEEP
    return convert


def _admins(look: Lookup) -> TomlValue | _Keep:
    out: list[str] = []
    for name in ("$virus_admin", "$spam_admin"):
        value = look.scalar(name)
        if value in (None, ""):
            continue
        for address in re.split(r"[\s,]+", str(value).strip()):
            if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", address):
                raise NotMapped(f"{name}: not a mail address: {address!r}")
            if address not in out:
                out.append(address)
    return out


def _warn_recipient(look: Lookup) -> TomlValue | _Keep:
    return any(_truthy(look.scalar(n)) for n in ("$warnvirusrecip", "$warnbannedrecip"))


def _warn_sender(look: Lookup) -> TomlValue | _Keep:
    if _truthy(look.scalar("$warnvirussender")):
        raise NotMapped("retired by amavis (setting it has no effect); [notify] sender stays "
                        "off: telling forged senders is backscatter")
    return KEEP


_METHOD = re.compile(r"(smtp|lmtp):(?:\[([^\]]+)\]|([^:\s]+)):(\d+)|lmtp:unix:(/\S+)")


def _notify_method(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$notify_method")
    m = _METHOD.fullmatch(str(value or ""))
    if not m or m.group(1) != "smtp":
        raise NotMapped(f"{value!r}: [notify] smtp takes the host:port of an SMTP server")
    if m.group(4) == "10025":
        raise NotMapped(f"{value!r} is Postfix's re-injection service for amavis, which goes "
                        "away: set [notify] smtp to your MTA, e.g. 127.0.0.1:25")
    host = m.group(2) or m.group(3)
    return f"[{host}]:{m.group(4)}" if ":" in host else f"{host}:{m.group(4)}"


def _forward_method(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$forward_method")
    m = _METHOD.fullmatch(str(value or ""))
    if m and m.group(5):
        return f"unix:{m.group(5)}"
    if m and m.group(1) == "lmtp":
        host = m.group(2) or m.group(3)
        return f"[{host}]:{m.group(4)}" if ":" in host else f"{host}:{m.group(4)}"
    raise NotMapped(f"{value!r}: lmtpfilter delivers over LMTP to your mailbox server, not "
                    "back to Postfix: set [downstream] address to your LMTP server")


def _workers(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$max_servers")
    if isinstance(value, int) and 1 <= value <= 256:
        return value
    raise NotMapped(f"{value!r}: [server] workers is a number from 1 to 256")


def _max_requests(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$max_requests")
    if value is None:
        return KEEP
    # Not carried over: the same idea at another scale.
    raise NotMapped(f"{value!r}: an amavis child takes one message at a time, an lmtpfilter "
                    "worker hundreds; [server] worker_max_messages (10000 by default) "
                    "replaces a worker after that many")


def _listen(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$inet_socket_port")
    if value is None:
        return KEEP
    ports = list(value) if isinstance(value, tuple | list) else [value]
    out = []
    for port in ports:
        if not isinstance(port, int | str) or not str(port).isdigit():
            raise NotMapped(f"port {port!r} is not a number")
        out.append(f"127.0.0.1:{port}")
    return out


def _spam_max_size(look: Lookup) -> TomlValue | _Keep:
    value = look.scalar("$sa_mail_body_size_limit")
    if value is None:
        return KEEP
    if isinstance(value, int | float) and value >= 0:
        return int(value)
    raise NotMapped(f"not a size: {value!r}")


def _clamd(look: Lookup) -> TomlValue | _Keep:
    """The socket of the ClamAV-clamd entry of @av_scanners (other scanners: not mapped)."""
    scanners = look("@av_scanners")
    if scanners is None:
        return KEEP  # not set in the files read: nothing to carry over
    for entry in scanners if isinstance(scanners, list) else []:
        if isinstance(entry, tuple) and len(entry) > 2 and isinstance(entry[0], str) and \
                re.search(r"clamd", entry[0], re.IGNORECASE) and isinstance(entry[2], tuple):
            sockets = [s for s in entry[2][1:] if isinstance(s, str)]
            if sockets and sockets[0].startswith("/"):
                return f"unix:{sockets[0]}"
            if sockets and re.fullmatch(r"[^:\s]+:\d+", sockets[0]):
                return sockets[0]
    raise NotMapped("no ClamAV-clamd entry: lmtpfilter scans with clamd only ([clamav])")


def _absent(why: str, *, when_set: bool = True) -> Callable[[Lookup], TomlValue | _Keep]:
    """A variable with no lmtpfilter counterpart: reported (with `why`) when the files set
    it to something that matters (any value with when_set, else a true one)."""
    def convert(look: Lookup) -> TomlValue | _Keep:
        return KEEP
    convert.why = why  # type: ignore[attr-defined]
    convert.when_set = when_set  # type: ignore[attr-defined]
    return convert


@dataclass(frozen=True)
class Rule:
    variables: tuple[str, ...]  # amavis names with their sigil
    key: str | None  # "section.key", or None when lmtpfilter has no such setting
    convert: Callable[[Lookup], TomlValue | _Keep]
    note: str = ""  # added to the comment in the generated file


RULES: tuple[Rule, ...] = (
    Rule(("$sa_tag_level_deflt",), "policy.tag_level",
         _level("$sa_tag_level_deflt", -999.0, "always add the spam fields")),
    Rule(("$sa_tag2_level_deflt",), "policy.tag2_level",
         _level("$sa_tag2_level_deflt", NEVER, "never")),
    Rule(("$sa_kill_level_deflt",), "policy.kill_level",
         _level("$sa_kill_level_deflt", NEVER, "never")),
    Rule(("$sa_dsn_cutoff_level",), "policy.dsn_cutoff_level",
         _level("$sa_dsn_cutoff_level", NEVER, "no cutoff")),
    Rule(("$sa_spam_subject_tag", "$sa_spam_modifies_subj"), "policy.spam_subject_tag",
         _subject_tag),
    Rule(("$final_spam_destiny",), "policy.spam_destiny", _spam_destiny),
    Rule(("$final_virus_destiny",), "policy.virus_destiny", _virus_destiny),
    Rule(("@local_domains_acl", "@local_domains_maps"), "policy.local_domains",
         _addresses("@local_domains_maps")),
    Rule(("$recipient_delimiter",), "policy.recipient_delimiter", _recipient_delimiter),
    Rule(("@bypass_spam_checks_maps",), "policy.bypass_spam_checks",
         _addresses("@bypass_spam_checks_maps")),
    Rule(("@bypass_virus_checks_maps",), "policy.bypass_virus_checks",
         _addresses("@bypass_virus_checks_maps")),
    Rule(("$X_HEADER_LINE",), "policy.x_header_line", _header_line),
    Rule(("$myhostname",), "server.hostname", _hostname),
    Rule(("$max_servers",), "server.workers", _workers),
    Rule(("$max_requests",), None, _max_requests),
    Rule(("$inet_socket_port",), "server.listen", _listen,
         "Postfix must now reach lmtpfilter over LMTP"),
    Rule(("$forward_method",), "downstream.address", _forward_method),
    Rule(("@av_scanners",), "clamav.address", _clamd),
    Rule(("$sa_mail_body_size_limit",), "spamassassin.max_size", _spam_max_size),
    Rule(("$QUARANTINEDIR",), None, _quarantine_dir),
    Rule(("$spam_quarantine_to",), "quarantine.spam", _quarantine_to("spam")),
    Rule(("$virus_quarantine_to",), None, _quarantine_to("virus")),
    Rule(("$virus_admin", "$spam_admin"), "notify.admin", _admins),
    Rule(("$warnvirusrecip", "$warnbannedrecip"), "notify.recipient", _warn_recipient),
    Rule(("$warnvirussender",), "notify.sender", _warn_sender),
    Rule(("$notify_method",), "notify.smtp", _notify_method),
    Rule(("$log_templ",), "log.format", _log_format,
         "amavis's main log line, for the tools that read it (logwatch, mailgraph)"),
    Rule(("$DO_SYSLOG",), "log.syslog", _syslog),
    Rule(("$syslog_ident",), "log.syslog_ident", _syslog_ident),
    Rule(("$syslog_facility",), None, _syslog_facility),
    Rule(("$mydomain", "$myproduct_name"), None,
         _absent("used where it is expanded", when_set=False)),
    Rule(("$daemon_user", "$daemon_group"), None,
         _absent("User= and Group= of lmtpfilter's systemd units; commands started as root "
                 "become [server] user", when_set=False)),
    Rule(("$MYHOME",), None, _absent("used where it is expanded", when_set=False)),
    Rule(("$db_home", "@storage_sql_dsn"), None,
         _absent("lmtpfilter keeps its state and every verdict in [database] url "
                 "(`lmtpfilter log`)")),
    Rule(("@lookup_sql_dsn",), None,
         _absent("per-user settings: use `lmtpfilter user set ADDRESS ...` (an address or "
                 "@domain)")),
    Rule(("$enable_db",), None,
         _absent("amavis's BerkeleyDB (cache, nanny, SNMP): lmtpfilter needs no cache and "
                 "has [metrics]")),
    Rule(("$sa_local_tests_only",), None,
         _absent("SpamAssassin's network tests are spamd's own configuration (local.cf)")),
    Rule(("$banned_filename_re",), None, _banned_filename_re),
    Rule(("@whitelist_sender_maps", "@blacklist_sender_maps", "@score_sender_maps"), None,
         _absent("sender lists live in the database: `lmtpfilter senders add RECIPIENT "
                 "SENDER allow|bypass|block [--score N]` (addresses and domains; regular "
                 "expressions do not carry over)")),
    Rule(("$final_banned_destiny",), "policy.banned_destiny",
         _other_destiny("$final_banned_destiny", "banned contents")),
    Rule(("$final_bad_header_destiny",), "policy.bad_header_destiny",
         _other_destiny("$final_bad_header_destiny", "bad headers")),
    Rule(("@bypass_banned_checks_maps",), "policy.bypass_banned_checks",
         _addresses("@bypass_banned_checks_maps")),
    Rule(("@bypass_header_checks_maps",), "policy.bypass_header_checks",
         _addresses("@bypass_header_checks_maps")),
)


def rule_variables() -> dict[str, Rule]:
    return {name: rule for rule in RULES for name in rule.variables}


def read_text_file(path: str) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")
