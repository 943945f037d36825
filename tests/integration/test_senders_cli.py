"""`lmtpfilter senders add|remove|list` as a process, on SQLite and on a real PostgreSQL: what
is stored is what the filter's cache matches, `add` replaces and says so, a missing entry is
exit 1, bad arguments are one line and exit 2 with nothing stored, and the migration goes up
and down."""

from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import inspect

from lmtpfilter import store as st
from lmtpfilter.senderlists import SenderAction, SenderLists, SenderMatch
from tests.harness.postgres import Postgres

pytestmark = pytest.mark.integration
_names = itertools.count()


@dataclass
class Site:
    config: Path
    url: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lmtpfilter", "senders", *args, "-c",
                               str(self.config)], capture_output=True, text=True, timeout=60)

    def listed(self, *args: str) -> list[str]:
        result = self.cli("list", *args)
        assert result.returncode == 0, result.stderr
        # "YYYY-MM-DD HH:MM  <entry>": the entry without its date
        return [line.split("  ", 1)[1] for line in result.stdout.splitlines()]


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/lmtpfilter.db"
    else:
        server: Postgres = request.getfixturevalue("postgres")
        url = server.create_database(f"s{next(_names)}")
    st.upgrade(url)
    config = tmp_path / "lmtpfilter.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[quarantine]\ndirectory = "{tmp_path}/q"\n'
                      "[senders]\nallow_shift = -4.5\n")
    return Site(config, url)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert (result.returncode, result.stderr) == (0, ""), result
    return result.stdout.strip()


async def test_add_list_replace_remove(site: Site) -> None:
    assert ok(site.cli("add", "Alice@Example.ORG", "@B.example", "allow", "--note",
                       "a friend")) == ("added: allow <@b.example> for <alice@example.org> "
                                        "score -4.5 (default)  # a friend")
    assert ok(site.cli("add", "@bücher.example", ".spam.example", "block")) == (
        "added: block <.spam.example> for <@xn--bcher-kva.example>")
    assert ok(site.cli("add", ".", "<>", "bypass")) == "added: bypass <> for <.>"
    # The same (recipient, sender) in another spelling replaces the entry.
    assert ok(site.cli("add", "<alice@example.org>", "b.EXAMPLE", "allow", "--score", "-9")) == (
        "replaced: allow <@b.example> for <alice@example.org> score -9 (was: allow "
        "<@b.example> for <alice@example.org> score -4.5 (default)  # a friend)")
    assert site.listed() == ["bypass <> for <.>",
                             "block <.spam.example> for <@xn--bcher-kva.example>",
                             "allow <@b.example> for <alice@example.org> score -9"]
    assert site.listed("--recipient", "@BÜCHER.example") == [
        "block <.spam.example> for <@xn--bcher-kva.example>"]
    assert site.listed("--sender", "<>") == ["bypass <> for <.>"]
    assert site.listed("--recipient", "nobody@example.org") == []

    # What the CLI stored is what the filter's cache matches.
    store = st.Store(site.url)
    try:
        lists = SenderLists(store, ttl=60.0, allow_shift=-4.5)
        got = await lists.matches("x@mail.spam.example",
                                  ["alice@example.org", "u@xn--bcher-kva.example"])
        assert got == {"alice@example.org": None,
                       "u@xn--bcher-kva.example": SenderMatch(
                           SenderAction.BLOCK, 0.0,
                           "block <.spam.example> for <@xn--bcher-kva.example>")}
    finally:
        store.close()

    assert ok(site.cli("remove", "alice@example.org", "@b.example")) == (
        "removed: allow <@b.example> for <alice@example.org> score -9")
    again = site.cli("remove", "alice@example.org", "@b.example")
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == ("lmtpfilter: no sender list entry for <@b.example> and "
                            "<alice@example.org>\n")
    assert len(site.listed()) == 2


BAD = [
    (["add", "alice@", "x@b.example", "allow"], "recipient: 'alice@': a local part alone"),
    (["add", "a@example.org", "!x@b.example", "block"], "cannot be negated"),
    (["add", "a@example.org", ".", "block"], "an entry for every sender"),
    (["add", "a@example.org", "x@b..example", "block"], "is not a domain name"),
    (["add", "a@example.org", "x@b.example", "block", "--score", "3"],
     "--score: only an allow entry has a score"),
    (["add", "a@example.org", "x@b.example", "allow", "--score", "nan"],
     "--score: expected a finite number"),
    (["add", "a@example.org", "x@b.example", "allow", "--note", "two\nlines"],
     "--note: control characters"),
    (["add", "a@example.org", "x\r\n@b.example", "allow"], "sender: "),
    (["add", "a@example.org", "x@" + "b" * 600 + ".example", "allow"], "longer than 512"),
    (["remove", "a@example.org", "a b@example.org"], "its local part has a space"),
    (["list", "--recipient", "<>"], "recipient: '<>' can never match"),
]


@pytest.mark.parametrize(("args", "words"), BAD, ids=[" ".join(a)[:50] for a, _ in BAD])
def test_bad_arguments_are_one_line_and_exit_2(site: Site, args: list[str],
                                               words: str) -> None:
    result = site.cli(*args)
    assert (result.returncode, result.stdout) == (2, ""), result
    assert result.stderr.startswith("lmtpfilter: ") and words in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert site.listed() == []


def test_argparse_refusals_exit_2(site: Site) -> None:
    for args in (["add", "a@example.org", "x@b.example", "whitelist"],
                 ["add", "a@example.org", "x@b.example", "allow", "--score", "lots"],
                 ["remove", "a@example.org"]):
        result = site.cli(*args)
        assert result.returncode == 2 and "error:" in result.stderr, result


def test_the_migration_goes_down_and_up(site: Site) -> None:
    ok(site.cli("add", "a@example.org", "x@b.example", "block"))
    st.downgrade(site.url, "0003")
    engine = st.make_engine(site.url)
    try:
        assert "sender_lists" not in inspect(engine).get_table_names()
        refused = site.cli("list")
        assert refused.returncode == 2 and "lmtpfilter db upgrade" in refused.stderr
        st.upgrade(site.url)
        assert "sender_lists" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert site.listed() == []
