"""`lmtpfilter import-amavis`: amavis config files read (never run) and mapped to an
lmtpfilter.toml that loads; each case is an entry of tests/data/amavis_config/cases.toml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter import config as cfg
from lmtpfilter import options
from lmtpfilter.amavis_config import import_amavis, with_package_files
from lmtpfilter.amavis_mapping import RULES
from lmtpfilter.perl_config import read_text
from lmtpfilter.perl_values import Commands, Environment

ROOT = Path(__file__).parent.parent.parent
DATA = ROOT / "tests/data/amavis_config"
CASES = tomllib.loads((DATA / "cases.toml").read_text())["case"]
REQUIRE = os.environ.get("LMTPFILTER_REQUIRE_DAEMONS") == "1"


def _skip_unless(path: str) -> None:
    if not Path(path).exists():
        if REQUIRE:
            pytest.fail(f"{path} is missing: install amavisd-new (scripts/debian-packages.sh)")
        pytest.skip(f"{path} is missing: amavisd-new is not installed")


def _run_case(case: dict[str, Any], tmp_path: Path) -> tuple[dict[str, Any], list[str]]:
    if "requires" in case:
        _skip_unless(case["requires"])
    paths = [p if p.startswith("/") else str(DATA / p) for p in case.get("files", [])]
    if "text" in case:
        text = case["text"].replace("@DATA@", str(DATA)) * case.get("times", 1)
        written = tmp_path / "50-user"
        written.write_bytes(text.encode(case.get("encoding", "utf-8")))
        paths.append(str(written))
    mailname = str(DATA / case.get("mailname", "does-not-exist"))
    report = import_amavis(paths, case.get("set", {}), mailname)
    # The generated file loads with lmtpfilter's own loader, whatever the input was.
    data = tomllib.loads(report.toml)
    cfg.from_mapping(data, source="generated")
    return data, report.lines


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_import(case: dict[str, Any], tmp_path: Path) -> None:
    data, lines = _run_case(case, tmp_path)
    for key, expected in case.get("expect", {}).items():
        section, name = key.split(".")
        assert data[section][name] == expected, (key, lines)
    wanted = case.get("lines", [])
    for words in wanted:
        assert any(words in line for line in lines), f"no stderr line with {words!r}: {lines}"
    if case.get("only_lines"):  # amavis's own defaults may add lines: not the input's
        extra = [line for line in lines if not any(w in line for w in wanted)
                 and "(amavis default)" not in line]
        assert extra == [], extra
    for line in lines:  # every line: NAME (FILE:LINE): why  (or "(amavis default)")
        assert re.fullmatch(r".+ \((?:.+:\d+|amavis default|--set)\): .+", line), line


def test_every_key_is_written_with_its_origin(tmp_path: Path) -> None:
    case = next(c for c in CASES if c["name"].startswith("tutorial"))
    report = import_amavis([str(DATA / f) for f in case["files"]], case["set"])
    keys = [line for line in report.toml.splitlines() if re.match(r"\w+ = ", line)]
    declared = [f for s in cfg.SECTIONS for f in options.declared(s)]
    assert len(keys) == len(declared)
    assert all("# lmtpfilter default" in k or "# from " in k or "# amavis default" in k
               for k in keys)


def test_later_assignments_win_and_directories_are_read_in_name_order(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "20-b").write_text("$sa_kill_level_deflt = 20;\n")
    (conf / "10-a").write_text("$sa_kill_level_deflt = 10; $sa_tag2_level_deflt = 3;\n")
    for skipped in ("30-c.dpkg-old", "40-d~", ".50-e", "60.conf"):  # as run-parts --list
        (conf / skipped).write_text("$sa_kill_level_deflt = 99;\n")
    report = import_amavis([str(conf)])
    assert tomllib.loads(report.toml)["policy"]["kill_level"] == 20.0
    assert f"{conf}/20-b:1" in report.toml


def test_debian_package_files_come_first_for_etc_conf_d() -> None:
    _skip_unless("/usr/share/amavis/conf.d")
    assert with_package_files(["/etc/amavis/conf.d"])[0] == "/usr/share/amavis/conf.d"
    assert with_package_files(["/tmp/amavisd.conf"]) == ["/tmp/amavisd.conf"]


def test_set_wins_over_debian_idioms_but_not_over_assignments(tmp_path: Path) -> None:
    conf = tmp_path / "05-domain_id"
    conf.write_text("chomp($mydomain = `head -n 1 /etc/mailname`);\n"
                    "chomp($myhostname = `hostname --fqdn`);\n$X_HEADER_LINE = \"$mydomain\";\n"
                    "$myhostname = 'mx.example.com';\n")
    report = import_amavis([str(conf)], {"mydomain": "example.org", "myhostname": "a.b.c"},
                           mailname=str(DATA / "mailname-example.net"))
    data = tomllib.loads(report.toml)
    assert data["policy"]["x_header_line"] == "example.org"
    assert data["server"]["hostname"] == "mx.example.com"


# ---- the real command, in a subprocess ----------------------------------------------------

# The config the import starts from: the one install.sh installs (not this machine's).
SHIPPED_CONFIG = ROOT / "etc" / "lmtpfilter.toml"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmtpfilter", "import-amavis", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "LMTPFILTER_CONFIG": str(SHIPPED_CONFIG)})


def test_cli_starts_from_the_installed_config(tmp_path: Path) -> None:
    """What amavis has nothing to say about comes from the installed config (Dovecot's
    socket, Postfix's unix socket), amavis's settings go on top; -c names another file."""
    done = _cli(str(DATA / "tutorial-50-user"), "--set", "mydomain=example.org")
    assert done.returncode == 0, done.stderr
    data = tomllib.loads(done.stdout)
    shipped = tomllib.loads(SHIPPED_CONFIG.read_text())
    assert f"# on top of {SHIPPED_CONFIG}" in done.stdout
    assert data["downstream"]["address"] == shipped["downstream"]["address"]
    assert data["policy"]["kill_level"] == 100.0  # the tutorial's, not the shipped 25
    assert data["server"]["listen"] == shipped["server"]["listen"]  # the socket, and 10024
    own = tmp_path / "own.toml"
    own.write_text('[server]\nlisten = ["unix:/srv/lmtp.sock", "[::1]:24"]\n'
                   '[downstream]\naddress = "127.0.0.1:2424"\n')
    port = tmp_path / "60-port"
    port.write_text("$inet_socket_port = 10026;\n")
    other = tomllib.loads(_cli(str(DATA / "tutorial-50-user"), str(port), "-c", str(own)).stdout)
    assert other["server"]["listen"] == ["unix:/srv/lmtp.sock", "127.0.0.1:10026"]
    assert other["downstream"]["address"] == "127.0.0.1:2424"
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    for config in (bad, tmp_path / "missing.toml"):
        refused = _cli(str(DATA / "tutorial-50-user"), "-c", str(config))
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert str(config) in refused.stderr and refused.stdout == ""


def test_cli_tutorial_over_debian_output_passes_check_config(tmp_path: Path) -> None:
    _skip_unless("/etc/amavis/conf.d/20-debian_defaults")
    files = sorted(str(p) for p in Path("/etc/amavis/conf.d").iterdir())
    done = _cli(*files, str(DATA / "tutorial-50-user"), "--set", "mydomain=example.org")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = tmp_path / "lmtpfilter.toml"
    out.write_text(done.stdout)
    check = subprocess.run([sys.executable, "-m", "lmtpfilter", "check-config", "-c", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    strict = _cli(*files, str(DATA / "tutorial-50-user"), "--set", "mydomain=example.org",
                  "--strict")
    assert strict.returncode == 1 and strict.stdout == done.stdout


@pytest.mark.parametrize(("content", "words"), [
    (b"$x = <<EOT;\nbody\nEOT\n", "here-document"),
    (b"@local_domains_acl = ((( '.x.org' );\n", "never closed"),
    (b"x" * (10 * 1024 * 1024), "larger than"),
    (b"\x7fELF\x00\x01\x02", "NUL bytes"),
    (b"# \xe9t\xe9\n$sa_kill_level_deflt = 9;\n", "not UTF-8"),
])
def test_cli_hostile_input_is_one_line_and_exit_status(tmp_path: Path, content: bytes,
                                                       words: str) -> None:
    path = tmp_path / "50-user"
    path.write_bytes(content)
    done = _cli(str(path), "--strict")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if words in line] != [], done.stderr
    assert _cli(str(path)).returncode == 0


@pytest.mark.parametrize("args", [["/no/such/dir"], ["--set", "no-equals-sign"]])
def test_cli_usage_errors_exit_2(args: list[str]) -> None:
    done = _cli(*args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize(("text", "why"), [
    ("$x = " + "-" * 5000 + "1; $sa_kill_level_deflt = 7;", None),  # no recursion per "-"
    ("$x = " + "(" * 5000 + ")" * 5000 + "; $sa_kill_level_deflt = 7;", "nested too deeply"),
    ("(;" * 5000 + "\n$sa_kill_level_deflt = 7;", "too many brackets never closed"),
    ("$x = [" + "1," * 20000 + "]; $sa_kill_level_deflt = 7;", "list longer than"),
    ("$x = 1.." + "9" * 70 + "; $sa_kill_level_deflt = 7;", "number literal too long"),
])
def test_pathological_statements_are_problems(text: str, why: str | None) -> None:
    env = Environment()
    problems = read_text(env, text, "f", Commands(lambda: "", lambda: ""))
    if why is None:
        assert problems == []
    else:
        assert any(why in p.why for p in problems), problems
    if "never closed" not in (why or "") and "too long" not in (why or ""):
        assert env.get("$sa_kill_level_deflt") == 7  # reading went on after the problem


# ---- random text: only the reader's own problems, never an exception ----------------------

PIECES = ["$x", "@y", "%z", "$h{k}", "=", ";", "(", ")", "[", "]", "{", "}", ",", "=>", "'s'",
          '"d $x @y \\@"', "q(a)", "qw(a b)", "qr'x'i", "<<EOT\n", "\nEOT\n", "`ls`", "1..3",
          "200*1024", "/", "-", ".", "undef", "D_PASS", "new_RE(", "read_hash(", "\\", "sub",
          "do", "#", "\n", "=pod\n", "\n=cut\n", "__END__", "chomp(", "push", "$", "@", "x",
          "1e308", "9" * 80, "\x00", "\u00e9", "$sa_kill_level_deflt"]


def test_property_random_text_never_raises() -> None:
    h = pytest.importorskip("hypothesis")
    st = h.strategies

    def check(parts: list[str]) -> None:
        text = "".join(parts)
        env = Environment()
        problems = read_text(env, text, "f", Commands(lambda: "example.org\n",
                                                      lambda: "mx.example.org\n"))
        assert all(p.file == "f" and p.why for p in problems)

    text = st.lists(st.sampled_from(PIECES) | st.text(max_size=5), max_size=40)
    h.settings(max_examples=200, deadline=None, database=None)(h.given(text)(check))()


# ---- the README's table is the mapping table ----------------------------------------------

def _readme_rows() -> list[tuple[list[str], str | None]]:
    """(amavis variables, lmtpfilter key or None) of each row of the README's table; the key
    is the `[section] key` that the second column starts with."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Migrating from amavisd-new", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not line.startswith("|") or set(cells[0]) <= {"-"}:
            continue
        names = [m for m in re.findall(r"`([^`]+)`", cells[0])
                 if re.fullmatch(r"[$@%]\w+", m)]
        key = re.match(r"`\[(\w+)\] (\w+)`", cells[1])
        if names:
            rows.append((names, f"{key.group(1)}.{key.group(2)}" if key else None))
    return rows


def test_readme_table_and_mapping_table_agree() -> None:
    readme = {name: key for names, key in _readme_rows() for name in names}
    importer = {name: rule.key for rule in RULES for name in rule.variables}
    assert {n: k for n, k in importer.items() if n not in readme} == {}, \
        "variables the importer maps that the README's table does not list"
    assert {n: k for n, k in readme.items() if n not in importer} == {}, \
        "variables of the README's table that the importer does not know"
    assert {n: (readme[n], k) for n, k in importer.items() if readme[n] != k} == {}
