"""CONTRIBUTING.md stays true where that is cheap to check.

Everything is read from the document itself: the paths it names exist, the scripts it runs are
executable, every `lmtpfilter` / `lmtpfilter-janitor` command in its shell blocks parses, the
docs/configuration.md regeneration command gives the committed file, and every pytest command
line it shows selects at least one test. Change the document and these follow it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from janitor import cli as janitor_cli
from lmtpfilter import cli

ROOT = Path(__file__).resolve().parent.parent.parent
TEXT = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
SCRIPTS: dict[str, str] = tomllib.loads(
    (ROOT / "pyproject.toml").read_text())["project"]["scripts"]
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "lmtpfilter": cli._parser, "lmtpfilter-janitor": janitor_cli._parser}

# ```lang ... ``` blocks, possibly indented (inside a list item).
FENCE = re.compile(r"^([ \t]*)```(\w*)[ \t]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
SHELL_OPERATORS = {">", ">>", "<", "|", "||", "&&", ";", "&"}
SUBCOMMAND_WORD = re.compile(r"[a-z][a-z0-9-]*")


def blocks(*languages: str) -> list[str]:
    out = []
    for m in FENCE.finditer(TEXT):
        if m.group(2) in languages:
            indent = len(m.group(1))
            out.append("\n".join(line[indent:] for line in m.group(3).splitlines()))
    return out


def shell_lines() -> list[str]:
    """The commands of the shell blocks: continuation lines joined, comments dropped."""
    lines = []
    for block in blocks("sh", "bash", "shell"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                lines.append(line.strip())
    return lines


def command(line: str) -> list[str]:
    """The words of a command line, up to the first shell operator."""
    words = shlex.split(line, comments=True)
    cut = next((i for i, w in enumerate(words) if w in SHELL_OPERATORS), len(words))
    return words[:cut]


def program(words: list[str]) -> str:
    return os.path.basename(words[0]) if words else ""


def path_candidates() -> list[str]:
    """Relative paths named in code spans, link targets and code blocks."""
    texts = re.findall(r"`([^`\n]+)`", FENCE.sub("", TEXT))
    texts += re.findall(r"\]\(([^)\s]+)\)", TEXT)
    texts += [b for b in blocks(*{m.group(2) for m in FENCE.finditer(TEXT)})]
    found = []
    for text in texts:
        for token in text.split():
            token = token.strip("()[]\"'").rstrip(".,:;")
            if ("/" in token and not token.startswith(("/", ".venv/")) and "://" not in token
                    and re.fullmatch(r"[\w.*-]+(/[\w.*-]*)+", token)):
                found.append(token)
    return sorted(set(found))


PATHS = path_candidates()
LINES = shell_lines()
CLI_LINES = [line for line in LINES if program(command(line)) in PARSERS]
PYTEST_LINES = [line for line in LINES
                if program(command(line)) == "pytest"
                or (command(line)[:1] == ["scripts/run-tests.sh"] and len(command(line)) > 1)]


def test_the_document_is_read() -> None:
    # Guards against a pattern that silently matches nothing.
    assert len(PATHS) >= 20 and CLI_LINES and PYTEST_LINES, (PATHS, CLI_LINES, PYTEST_LINES)


@pytest.mark.parametrize("path", PATHS)
def test_named_path_exists(path: str) -> None:
    if "*" in path:
        assert list(ROOT.glob(path)), f"CONTRIBUTING.md names {path}: nothing matches"
    else:
        assert (ROOT / path).exists(), f"CONTRIBUTING.md names {path}, which does not exist"


def test_scripts_it_runs_are_executable() -> None:
    for line in LINES:
        first = command(line)[0]
        if "/" in first and not first.startswith(".venv/"):
            assert os.access(ROOT / first, os.X_OK), f"{first} is not executable"


def _parse(prog: str, argv: list[str]) -> int:
    """Parse argv with the program's own parser (nothing runs); the exit code, 0 if it parsed."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            PARSERS[prog]().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize("line", CLI_LINES)
def test_cli_command_parses(line: str) -> None:
    words = command(line)
    assert _parse(program(words), words[1:]) == 0, f"does not parse: {line}"


def test_cli_subcommands_in_the_text_exist() -> None:
    """`lmtpfilter user set` and the like in the prose name real subcommands."""
    spans = re.findall(r"`(lmtpfilter(?:-janitor)? [^`\n]+)`", TEXT)
    assert spans
    for span in spans:
        words = span.split()
        path = []
        for word in words[1:]:
            if not SUBCOMMAND_WORD.fullmatch(word):
                break
            path.append(word)
        assert _parse(words[0], [*path, "--help"]) == 0, f"no such subcommand: {span}"


def _entry_point(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a console script as pyproject.toml declares it (module:function)."""
    module, _, function = SCRIPTS[name].partition(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_entry_points_answer_help_for_each_subcommand() -> None:
    seen = set()
    for line in CLI_LINES:
        words = command(line)
        path = []
        for word in words[1:]:
            if not SUBCOMMAND_WORD.fullmatch(word):
                break
            path.append(word)
        seen.add((program(words), tuple(path)))
    for prog, subcommand in sorted(seen):
        result = _entry_point(prog, *subcommand, "--help")
        assert result.returncode == 0, (prog, subcommand, result.stderr)
        assert "usage:" in result.stdout


def test_reference_regeneration_gives_the_committed_file() -> None:
    targets = []
    for line in CLI_LINES:
        words = shlex.split(line, comments=True)
        if words[1:3] == ["check-config", "--reference"] and ">" in words:
            targets.append(words[words.index(">") + 1])
    assert targets, "CONTRIBUTING.md no longer shows how docs/configuration.md is regenerated"
    result = _entry_point("lmtpfilter", "check-config", "--reference")
    assert result.returncode == 0, result.stderr
    for target in targets:
        assert (ROOT / target).read_text(encoding="utf-8") == result.stdout, (
            f"{target} is not what the command in CONTRIBUTING.md writes")


@pytest.mark.parametrize("line", PYTEST_LINES)
def test_pytest_command_selects_tests(line: str) -> None:
    args = command(line)[1:]
    env = dict(os.environ)
    env.pop("LMTPFILTER_REQUIRE_DAEMONS", None)  # collecting needs no daemon
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    m = re.search(r"^(\d+)(?:/\d+)? tests? collected", result.stdout, re.M)
    assert m and int(m.group(1)) > 0, f"selects no test: {line}\n{result.stdout[-500:]}"
