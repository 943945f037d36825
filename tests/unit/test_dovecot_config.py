"""The Dovecot configuration files in scripts/conf/dovecot-<series>/ (issue 21), and Cyrus's
lines for imapd.conf in scripts/conf/cyrus/ (issue 20).

The README quotes the production snippets; each quote must be the file, which is what the tests
and the sandbox run. The version's syntax is chosen in one place for Python (the harness) and
one for the shell (the sandbox, install.sh): both must choose alike.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.harness.daemons import (
    DOVECOT_SYNTAXES,
    SNIPPETS,
    TEMPLATE_NAMES,
    DovecotSyntax,
    dovecot_syntax,
    dovecot_version,
)

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "scripts" / "conf"
SNIPPET_FILES = sorted(p.relative_to(CONF).as_posix()
                       for p in [*CONF.glob("dovecot-*/lmtpfilter-*.conf"),
                                 *CONF.glob("cyrus/lmtpfilter-*.conf")])
QUOTED = re.compile(r"scripts/conf/((?:dovecot-[0-9.]+|cyrus)/lmtpfilter-[\w.-]+\.conf)")


def readme_quotes() -> list[tuple[str, str]]:
    """(snippet file, quoted text) for every README code block that names one in its first two
    lines, as the snippets do."""
    readme = (REPO / "README.md").read_text()
    quotes = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", readme, re.S | re.M):
        named = QUOTED.search("\n".join(block.split("\n")[:2]))
        if named:
            quotes.append((named.group(1), block))
    return quotes


def test_every_snippet_is_quoted_in_the_readme() -> None:
    expected = sorted([f"dovecot-{series}/{name}" for series in DOVECOT_SYNTAXES
                       for name in SNIPPETS] + ["cyrus/lmtpfilter-imapd.conf"])
    assert expected == SNIPPET_FILES
    assert sorted({name for name, _ in readme_quotes()}) == SNIPPET_FILES


@pytest.mark.parametrize("name, quoted", readme_quotes(), ids=lambda v: str(v).split("\n")[0])
def test_the_readme_quotes_the_file_exactly(name: str, quoted: str) -> None:
    # Each copied from what the tests run: a change to the file is a change to the README.
    assert quoted == (CONF / name).read_text()


@pytest.mark.parametrize("text, series", [
    ("2.3.19.1 (9b53102964)", "2.3"),  # Debian 12
    ("2.3.21.1 (d492236fa0)", "2.3"),
    ("2.4.1-4 (7d8c0e5759)", "2.4"),  # Debian 13
    ("2.4.2 (0123456789)", "2.4"),
    ("3.0.0 (0123456789)", "2.4"),  # the newest syntax known
])
def test_python_and_the_shell_choose_the_same_syntax(text: str, series: str) -> None:
    assert dovecot_syntax(dovecot_version(text)).series == series
    shell = subprocess.run(["bash", "-c", 'source scripts/conf/dovecot.sh && dovecot_series "$1"',
                            "dovecot_series", text], cwd=REPO, capture_output=True, text=True,
                           timeout=30)
    assert (shell.returncode, shell.stdout) == (0, series + "\n"), shell.stderr


@pytest.mark.parametrize("text", ["2.2.36 (7d8c0e5759)", "dovecot", ""])
def test_an_unknown_or_old_version_is_refused(text: str) -> None:
    with pytest.raises(RuntimeError):
        dovecot_syntax(dovecot_version(text))
    shell = subprocess.run(["bash", "-c", 'source scripts/conf/dovecot.sh && dovecot_series "$1"',
                            "dovecot_series", text or "x"], cwd=REPO, capture_output=True,
                           text=True, timeout=30)
    assert shell.returncode != 0 and shell.stdout == ""


@pytest.mark.parametrize("syntax", DOVECOT_SYNTAXES.values(), ids=lambda s: s.series)
def test_the_standalone_instance_includes_the_snippets(syntax: DovecotSyntax,
                                                       tmp_path: Path) -> None:
    conf = syntax.write(tmp_path, instance="i", lmtp_port=24, sieve_port=4190, uid=8,
                        gid=9)
    text = conf.read_text()
    assert not re.search(r"(?<!%)\{[a-z_]+\}", text)  # every name in braces filled in
    assert re.findall(r"^!include (\S+)$", text, re.M) == [
        str(tmp_path / name) for name in ("lmtpfilter-master-user.conf",
                                          "lmtpfilter-sieve.conf")]
    for name, (production, path) in SNIPPETS.items():
        assert production in (syntax.conf_dir / name).read_text()
        written = (tmp_path / name).read_text()
        assert production not in written and str(tmp_path / path) in written


def test_the_sandbox_fills_in_the_same_names_and_paths() -> None:
    sandbox = (REPO / "scripts" / "sandbox.sh").read_text()
    assert set(re.findall(r"s#\{(\w+)\}#", sandbox)) == set(TEMPLATE_NAMES)
    for name, (production, path) in SNIPPETS.items():
        assert f's#{production}#$d/{path}#g" "$conf/{name}"' in sandbox
