"""`lmtpfilter import-amavis`: an lmtpfilter.toml from amavisd-new's config files.

The files are read the way amavis layers them (a directory: its files in name order, as
Debian's `run-parts --list`; later assignments win), over amavis's own defaults (Conf.pm), by
the Perl-subset reader (`perl_config.py`), which never runs the Perl. The mapping table
(`amavis_mapping.RULES`) turns the result into lmtpfilter keys; every key of the option table
is written, from amavis or with its lmtpfilter default. Every setting that does not carry
over is one line on stderr: `NAME (FILE:LINE): why`.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as cfg
from .amavis_mapping import KEEP, RULES, Lookup, NotMapped, TomlValue, read_text_file
from .options import InvalidValue, declared, key_of
from .perl_config import read_text
from .perl_values import Binding, Commands, Environment, Opaque, Problem, Ref, Value

DEFAULT_PATHS = ("/etc/amavis/conf.d",)
# What Debian's amavisd reads before /etc/amavis/conf.d (Amavis.pm: find_config_files).
PACKAGE_DIR = "/usr/share/amavis/conf.d"
MAX_FILE_SIZE = 1024 * 1024
MAX_PROBLEMS_PER_FILE = 20
AMAVIS_DEFAULT = "amavis default"

# amavis's own defaults (Amavis/Conf.pm, 2.13) for what the mapping reads.
_DEFAULTS: dict[str, Value] = {
    "$myproduct_name": "amavis",
    "$MYHOME": "/var/amavis",
    "$mydomain": "!change-mydomain-variable!.example.com",
    "$max_servers": 2,
    "$forward_method": "smtp:[127.0.0.1]:10025",
    "$notify_method": "smtp:[127.0.0.1]:10025",
    "$final_virus_destiny": 0,
    "$final_spam_destiny": 1,
    "$sa_spam_modifies_subj": 1,
    "$virus_quarantine_to": "virus-quarantine",
    "$spam_quarantine_to": "spam-quarantine",
    "$sa_local_tests_only": 0,
    "$DO_SYSLOG": 0,  # $do_syslog: undef, amavis then logs to $LOGFILE
    "@lookup_sql_dsn": [],
    "@local_domains_maps": [Ref("%local_domains"), Ref("@local_domains_acl"),
                            Ref("$local_domains_re")],
    "@bypass_virus_checks_maps": [Ref("%bypass_virus_checks"), Ref("@bypass_virus_checks_acl"),
                                  Ref("$bypass_virus_checks_re")],
    "@bypass_spam_checks_maps": [Ref("%bypass_spam_checks"), Ref("@bypass_spam_checks_acl"),
                                 Ref("$bypass_spam_checks_re")],
    "@bypass_banned_checks_maps": [Ref("%bypass_banned_checks"),
                                   Ref("@bypass_banned_checks_acl"),
                                   Ref("$bypass_banned_checks_re")],
    "@bypass_header_checks_maps": [Ref("%bypass_header_checks"),
                                   Ref("@bypass_header_checks_acl"),
                                   Ref("$bypass_header_checks_re")],
    "$final_banned_destiny": 0,  # D_DISCARD
    "$final_bad_header_destiny": 1,  # D_PASS
}

# Why a variable with no lmtpfilter counterpart does not carry over (shown to the admin).
_NO_MEANING: dict[str, str] = {
    r"@banned_filename_maps|%banned_rules|\$banned_namepath_re":
        "banned-file rules other than $banned_filename_re: write them as [content] "
        "banned_rules",
    r"@bad_header_\w+|%allowed_header_tests":
        "bad-header checks are amavis's defaults ([policy] bad_header_destiny decides)",
    r"\$MAXLEVELS|\$MAXFILES|\$M(IN|AX)_EXPANSION_QUOTA":
        "archive limits are clamd's own (MaxRecursion, MaxFiles, MaxScanSize in clamd.conf)",
    r"\$enable_dkim_\w+|@dkim_\w+|%signed_header_fields":
        "lmtpfilter neither verifies nor signs DKIM (a Postfix milter such as OpenDKIM does)",
    r"%(whitelist|blacklist)_sender":
        "sender lists live in the database: `lmtpfilter senders add RECIPIENT SENDER "
        "allow|bypass|block [--score N]`",
    r"%policy_bank|%interface_policy":
        "policy banks (per client or port): lmtpfilter has one [policy] and per-recipient "
        "overrides; amavisd-release is `lmtpfilter quarantine release`",
    r"@viruses_that_fake_sender_maps|\$warn\w*sender":
        "lmtpfilter never notifies senders about viruses by default ([notify] sender)",
    r"@av_scanners_backup": "lmtpfilter scans with clamd only ([clamav])",
    r"\$final_unchecked_destiny":
        "unchecked mail: [policy] on_scanner_failure decides (tempfail or pass)",
}
# amavis's own machinery (decoders, paths, logging, caches): summarised in one line.
_INTERNALS = re.compile(
    r"\$(file|gzip|bzip2|lzop|rpm2cpio|cabextract|uncompress|unfreeze|arc|unarj|unrar|zoo|"
    r"lha|pax|cpio|ar|ripole|dspam|tnef|unstuff|gunzip|bunzip2|unlzop|unzip|zip|sevenzip|"
    r"path|TEMPBASE|pid_file|lock_file|helpers_home|unix_socketname|quarantine_subdir_levels|"
    r"enable_global_cache|DO_SYSLOG|LOGFILE|log_\w+|syslog_\w+|nanny_\w+|child_timeout)"
    r"|%ENV|@keep_decoded_original_maps|@decoders|@additional_perl_modules")
_CALLS = {
    "read_l10n_templates": "notification templates: lmtpfilter has its own "
                           "([notify] templates)",
    "include_config_files": "not followed: give the file on the command line",
    "include_optional_config_files": "not followed: give the file on the command line",
}


class ImportError_(Exception):
    """A usage error (a path that does not exist): one line, exit 2."""


@dataclass
class Report:
    """The result: the TOML text and the stderr lines; `failures` counts what --strict
    counts (everything but the summary of amavis internals)."""

    toml: str = ""
    lines: list[str] = field(default_factory=list)
    failures: int = 0
    values: dict[str, Any] = field(default_factory=dict)

    def add(self, line: str, counts: bool = True) -> None:
        self.lines.append(line)
        self.failures += counts


def config_files(paths: Sequence[str]) -> list[Path]:
    """Files in the order amavis reads them: a directory's files as `run-parts --list`
    lists them (names of letters, digits, _ and -, so no dotfiles, *.dpkg-old or backup~,
    in C-locale order), other paths as given."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted((p for p in path.iterdir()
                           if re.fullmatch(r"[A-Za-z0-9_-]+", p.name) and p.is_file()),
                          key=lambda p: p.name.encode())
        elif path.exists():
            out.append(path)
        else:
            raise ImportError_(f"{raw}: no such file or directory")
    return out


def with_package_files(paths: list[str]) -> list[str]:
    """Debian's amavisd reads its package's files (PACKAGE_DIR: $MYHOME, the bypass maps)
    before /etc/amavis/conf.d: so do we, when the files given are from there."""
    debian = Path(DEFAULT_PATHS[0])
    from_debian = any(Path(p) == debian or Path(p).parent == debian for p in paths)
    if from_debian and Path(PACKAGE_DIR).is_dir() and PACKAGE_DIR not in paths:
        return [PACKAGE_DIR, *paths]
    return paths


def where(env: Environment, name: str) -> str:
    place = env.assigned.get(name)
    if place is None:
        return AMAVIS_DEFAULT
    return place[0] if place[1] == 0 else f"{place[0]}:{place[1]}"


@dataclass(frozen=True)
class Base:
    """The lmtpfilter config the import goes on top of (the installed one, by default): its
    values stand where amavis has nothing to say (the addresses of Dovecot, clamd, spamd; the
    unix socket Postfix uses), so the result is this machine's config, not a generic one."""

    path: str
    values: dict[str, Any]  # "section.key" -> the TOML value as written

    @classmethod
    def read(cls, path: str) -> Base:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ImportError_(f"{path}: {exc.strerror}") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ImportError_(f"{path}: not a valid TOML file: {exc}") from None
        return cls(path, {f"{section}.{key}": value
                          for section, keys in data.items() if isinstance(keys, dict)
                          for key, value in keys.items()})


def import_amavis(paths: Sequence[str], preset: dict[str, str] | None = None,
                  mailname: str = "/etc/mailname", base: Base | None = None) -> Report:
    """Read the files, map them, and render the lmtpfilter config; never raises for what
    the files contain (only ImportError_ for a path that does not exist)."""
    env = Environment()
    for name, value in _DEFAULTS.items():
        env.values[name] = Binding(list(value) if isinstance(value, list) else value,
                                   AMAVIS_DEFAULT, 0)
    for name, text in (preset or {}).items():
        var = name if name[:1] in "$@%" else "$" + name
        env.values[var] = Binding(text, "--set", 0)
        env.assigned[var] = ("--set", 0)
        env.preset.add(var)
    report = Report()
    files = config_files(paths)
    commands = Commands(mailname=lambda: _mailname(mailname),
                        fqdn=lambda: socket.getfqdn() + "\n")
    for path in files:
        for problem in _read_file(env, path, commands):
            if problem.name in _CALLS:
                problem = Problem(problem.name, problem.file, problem.line, _CALLS[problem.name])
            report.add(str(problem))
    values = _map(env, report)
    if base is not None:
        _merge_listen(values, base)
    report.values = values
    report.toml = render(values, [str(p) for p in files], base)
    return report


def _merge_listen(values: dict[str, Any], base: Base) -> None:
    """amavis's port replaces the base's TCP listeners; its unix sockets stay (Postfix's
    `lmtp:unix:...` next hop, which amavis had no counterpart of)."""
    listen = base.values.get("server.listen")
    if "server.listen" not in values or not isinstance(listen, list):
        return
    value, comment, source = values["server.listen"]
    sockets = [x for x in listen if isinstance(x, str) and x.startswith("unix:")]
    if sockets:
        values["server.listen"] = (sockets + [x for x in value if x not in sockets],
                                   f"{comment}; the unix sockets from {base.path}", source)


def _mailname(path: str) -> Value:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline()
    except OSError as exc:
        return Opaque(f"{path}: {exc.strerror}; give --set mydomain=DOMAIN or --mailname FILE")


def _read_file(env: Environment, path: Path, commands: Commands) -> list[Problem]:
    name = str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        return [Problem("file", name, 0, f"cannot read: {exc.strerror}")]
    if len(data) > MAX_FILE_SIZE:
        return [Problem("file", name, 1, f"larger than {MAX_FILE_SIZE // 1024} KB: skipped "
                                         "(not an amavis config file?)")]
    if b"\0" in data:
        line = data[:data.index(b"\0")].count(b"\n") + 1
        return [Problem("file", name, line, "binary (NUL bytes): skipped")]
    problems = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = data.decode("latin-1")
        line = data[:exc.start].count(b"\n") + 1
        problems.append(Problem("encoding", name, line, "not UTF-8: read as Latin-1"))
    problems += read_text(env, text, name, commands)
    if len(problems) > MAX_PROBLEMS_PER_FILE:
        rest = len(problems) - MAX_PROBLEMS_PER_FILE
        last = problems[MAX_PROBLEMS_PER_FILE]
        problems = [*problems[:MAX_PROBLEMS_PER_FILE],
                    Problem("file", name, last.line,
                            f"{rest} more problems not shown; is this an amavis config file?")]
    return problems


def _map(env: Environment, report: Report) -> dict[str, Any]:
    """Apply every rule; the values by "section.key" with their comments."""
    fields = {f"{s.SECTION}.{key_of(f)}": f  # type: ignore[attr-defined]
              for s in cfg.SECTIONS for f in declared(s)}
    values: dict[str, Any] = {}
    read: set[str] = set()
    for rule in RULES:
        look = Lookup(env.get, read_text_file)
        why = getattr(rule.convert, "why", None)
        if why is not None:
            read.update(rule.variables)
            for var in rule.variables:
                if var in env.assigned and getattr(rule.convert, "when_set", True):
                    report.add(f"{var} ({where(env, var)}): not mapped: {why}")
            continue
        try:
            value = rule.convert(look)
        except NotMapped as exc:
            read.update(look.used)
            set_vars = [v for v in look.used if v in env.assigned] or [rule.variables[0]]
            report.add(f"{set_vars[0]} ({where(env, set_vars[0])}): not mapped: {exc}")
            continue
        read.update(look.used)
        read.update(rule.variables)
        if value is KEEP or rule.key is None:
            continue
        try:
            fields[rule.key].metadata["parse"](value)
        except InvalidValue as exc:
            var = next((v for v in look.used if v in env.assigned), rule.variables[0])
            report.add(f"{var} ({where(env, var)}): not mapped: [{rule.key.replace('.', '] ')}"
                       f" {exc}")
            continue
        cited = [f"{v} ({where(env, v)})" for v in look.used if v in env.assigned]
        comment = ("from " + ", ".join(cited)) if cited else \
            f"amavis default of {', '.join(rule.variables)}"
        notes = "".join(f"; {n}" for n in (look.note, rule.note) if n)
        values[rule.key] = (value, comment + notes, cited[0] if cited else
                            f"{rule.variables[0]} ({AMAVIS_DEFAULT})")
    _keep_levels_ordered(values, report)
    _report_unread(env, read, report)
    return values


def _keep_levels_ordered(values: dict[str, Any], report: Report) -> None:
    """lmtpfilter needs tag_level <= tag2_level <= kill_level; amavis does not. A level
    above the next one is lowered to it (its effect in amavis is the same), and said."""
    keys = ("policy.tag_level", "policy.tag2_level", "policy.kill_level")
    for low, high in ((keys[1], keys[2]), (keys[0], keys[1])):
        if low in values and high in values and values[low][0] > values[high][0]:
            value, comment, source = values[low]
            if "undef in amavis" in comment:  # "never" is kill_level, as good as never
                values[low] = (values[high][0], comment + "; as " + high.split(".")[1], source)
                continue
            report.add(f"{source}: lowered from {value:g} to {high.split('.')[1]} "
                       f"{values[high][0]:g}: lmtpfilter needs tag_level <= tag2_level <= "
                       "kill_level")
            values[low] = (values[high][0], comment + "; lowered to " + high.split(".")[1],
                           source)


def _report_unread(env: Environment, read: set[str], report: Report) -> None:
    internals: list[str] = []
    for var in env.assigned:
        if var in read or var in env.preset:
            continue
        if _INTERNALS.fullmatch(var):
            internals.append(var)
            continue
        why = next((w for pattern, w in _NO_MEANING.items() if re.fullmatch(pattern, var)),
                   "no lmtpfilter meaning")
        report.add(f"{var} ({where(env, var)}): not mapped: {why}")
    if internals:
        report.add(f"{', '.join(internals)} ({where(env, internals[0])}): not mapped: amavis "
                   "internals (decoders, paths, logging) with no lmtpfilter meaning",
                   counts=False)


def render(values: dict[str, Any], files: Sequence[str], base: Base | None = None) -> str:
    """A complete lmtpfilter.toml: every section and key, amavis's values where mapped, else
    the base config's, else lmtpfilter's defaults."""
    lines = ["# lmtpfilter.toml written by `lmtpfilter import-amavis` from these files, in "
             "order:"]
    lines += [f"#   {f}" for f in files] or ["#   (none: amavis's defaults)"]
    if base is not None:
        lines += [f"# on top of {base.path}"]
    lines += ["# Check it with `lmtpfilter check-config -c FILE` before you use it."]
    for section in cfg.SECTIONS:
        name = section.SECTION  # type: ignore[attr-defined]
        lines.append(f"\n[{name}]")
        for f in declared(section):
            key = f"{name}.{key_of(f)}"
            if key in values:
                value, comment, _ = values[key]
                lines.append(f"{key_of(f)} = {_toml(value)}  # {_comment(comment)}")
            elif base is not None and key in base.values:
                lines.append(f"{key_of(f)} = {_toml(base.values[key])}  # from "
                             f"{_comment(base.path)}")
            else:
                lines.append(f"{key_of(f)} = {_toml(f.metadata['raw_default'])}"
                             "  # lmtpfilter default")
    return "\n".join(lines) + "\n"


def _toml(value: TomlValue | Any) -> str:
    if isinstance(value, str):  # TOML basic string: escape controls too
        return '"' + "".join(
            "\\\\" if c == "\\" else '\\"' if c == '"' else
            f"\\u{ord(c):04x}" if ord(c) < 32 or ord(c) == 127 else c for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return cfg._toml_value(value)


def _comment(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


# --------------------------------------------------------------------------------------------
# The command (cli.py hands `import-amavis` here).
# --------------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import-amavis", help="write an lmtpfilter.toml from amavisd-new's config files",
        description="Print an lmtpfilter.toml on stdout made from amavisd-new's config files "
                    "(read, never run); one line on stderr for each setting that does not "
                    "carry over. Exit status: 0; 1 with --strict if any setting did not carry "
                    "over (the summary of amavis internals does not count); 2 for bad "
                    "arguments.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help=f"config files or directories, read in this order (default: "
                        f"{DEFAULT_PATHS[0]}); with files from there, {PACKAGE_DIR} is read "
                        "first, as Debian's amavisd does")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if any setting did not carry over")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="define a scalar before reading, e.g. mydomain=example.org (wins "
                        "over Debian's `head -n 1 /etc/mailname` and `hostname --fqdn`)")
    p.add_argument("--mailname", default="/etc/mailname", metavar="FILE",
                   help="the file Debian's 05-domain_id reads $mydomain from")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"the lmtpfilter config to start from: its values stand where amavis "
                        f"has none (addresses, sockets) (default: ${cfg.ENV_VAR} or "
                        f"{cfg.DEFAULT_PATH}, if it exists; else lmtpfilter's defaults)")


def command(args: argparse.Namespace) -> int:
    preset = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[$]?[A-Za-z_]\w*", name):
            print(f"lmtpfilter: --set {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        preset[name.lstrip("$")] = value
    paths = with_package_files(args.paths or list(DEFAULT_PATHS))
    base_path = args.config or os.environ.get(cfg.ENV_VAR)
    if base_path is None and cfg.DEFAULT_PATH.exists():
        base_path = str(cfg.DEFAULT_PATH)
    try:
        base = Base.read(base_path) if base_path else None
        report = import_amavis(paths, preset, args.mailname, base)
    except ImportError_ as exc:
        print(f"lmtpfilter: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(report.toml)
    for line in report.lines:
        print(line, file=sys.stderr)
    return 1 if args.strict and report.failures else 0
