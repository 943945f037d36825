"""Sieve script generation (sievelib FiltersSet) and folder validation; the generated scripts
compile with the installed Pigeonhole's sievec (0.5 with Dovecot 2.3, 2.4 with Dovecot 2.4)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sievelib.parser import Parser

from lmtpfilter.policy import RecipientPolicy
from lmtpfilter.sieve import (
    DirectoryInstaller,
    SieveError,
    generate,
    sievec,
    validate_folder,
    wrapper,
)


def commands(script: str) -> list[tuple[str, list[object]]]:
    """(command name, its arguments) for every command, depth first."""
    parser = Parser()
    assert parser.parse(script), parser.error
    found: list[tuple[str, list[object]]] = []

    def walk(cmds: list[object]) -> None:
        for cmd in cmds:
            args = [v for v in cmd.arguments.values()]  # type: ignore[attr-defined]
            found.append((cmd.name, args))  # type: ignore[attr-defined]
            walk(getattr(cmd, "children", []))

    walk(parser.result)
    return found


def test_junk() -> None:
    script = generate(RecipientPolicy(junk_destiny="junk", junk_folder="Junk"))
    assert 'header :is "X-Spam-Flag" "YES"' in script
    assert 'fileinto :create "Junk";' in script and "stop;" in script
    assert 'require ["fileinto", "mailbox"];' in script
    assert "ascii-numeric" not in script and "X-Spam-Score" not in script


def test_inbox_files_into_inbox_explicitly() -> None:
    script = generate(RecipientPolicy(junk_destiny="inbox"))
    assert 'fileinto "INBOX";' in script and "discard" not in script


def test_discard() -> None:
    script = generate(RecipientPolicy(junk_destiny="discard"))
    assert "discard;" in script and "fileinto" not in script


@pytest.mark.parametrize("folder", ['Junk"; discard; "', 'a\\"b', "Spam/Ünïcödé 📬",
                                    "}{ stop; keep", '"', "\\"])
def test_hostile_folder_names_stay_folder_names(folder: str) -> None:
    script = generate(RecipientPolicy(junk_destiny="junk", junk_folder=folder))
    names = [name for name, _ in commands(script)]
    assert "discard" not in names and "keep" not in names
    fileinto = [args for name, args in commands(script) if name == "fileinto"]
    assert len(fileinto) == 1
    quoted = [str(a) for a in fileinto[0] if str(a).startswith('"')]
    assert [unquote(q) for q in quoted] == [folder]


def unquote(text: str) -> str:
    """A Sieve quoted string's value (RFC 5228 2.4.2: backslash escapes the next char)."""
    out, chars = [], iter(text[1:-1])
    for c in chars:
        out.append(next(chars) if c == "\\" else c)
    return "".join(out)


@pytest.mark.parametrize("folder", ["", "a\nb", "tab\there", "x" * 201, "nul\0"])
def test_bad_folder_names_refused(folder: str) -> None:
    with pytest.raises(SieveError):
        validate_folder(folder)


def test_wrapper_includes_ours_then_theirs() -> None:
    # sievelib's parser does not know the include extension: Dovecot checks it (CHECKSCRIPT).
    text = wrapper('my "script"')
    assert text.index('include :personal "lmtpfilter";') < text.index(
        'include :personal "my \\"script\\"";')
    assert 'require ["include"];' in text


COMPILED = [("junk", "Junk"), ("junk", "Spam/Ünïcödé 📬"), ("junk", 'Junk"; discard; "'),
            ("inbox", "Junk"), ("discard", "Junk")]


@pytest.mark.parametrize("destiny, folder", COMPILED)
def test_the_installed_sievec_compiles_every_script(destiny: str, folder: str,
                                                    tmp_path: Path) -> None:
    # What Dovecot runs is the binary: the directory installer compiles each script it writes.
    if sievec() is None:
        if os.environ.get("LMTPFILTER_REQUIRE_DAEMONS") == "1":
            pytest.fail("sievec is missing (Debian: dovecot-sieve)")
        pytest.skip("sievec is not installed")
    installer = DirectoryInstaller(tmp_path / "sieve")
    installer.install("a@example.org", generate(RecipientPolicy(junk_destiny=destiny,
                                                                junk_folder=folder)))
    script = installer.path("a@example.org")
    binary = script.with_suffix(".svbin")
    assert binary.stat().st_mtime >= script.stat().st_mtime
    assert stat.S_IMODE(binary.stat().st_mode) == 0o644  # read by the mail user
