"""The settings page's logic (lmtpfilter/web/settings.py) against a real SQLite store and the
`directory` Sieve installer: a saved choice is the user's override and their installed
script, the page's sentence says where spam goes, and every refusal is a sentence for the
user with nothing changed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmtpfilter.config import Config, from_mapping
from lmtpfilter.store import Store, upgrade
from lmtpfilter.userpolicy import set_overrides
from lmtpfilter.web.settings import NOT_SAVED, SettingsError, UserSettings, current, save

ALICE = "alice@example.org"


def make_config(tmp_path: Path, **policy: Any) -> Config:
    return from_mapping({
        "database": {"url": f"sqlite:///{tmp_path}/settings.db"},
        "sieve": {"method": "directory", "directory": str(tmp_path / "sieve")},
        "policy": {"recipient_delimiter": "+", **policy},
        "web": {"tag2_min": 3.0, "tag2_max": 12.0},
    })


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
def store(config: Config) -> Iterator[Store]:
    upgrade(config.database.url)
    s = Store(config.database.url)
    yield s
    s.close()


def script_of(config: Config, address: str) -> str:
    return (config.sieve.directory / f"{address}.sieve").read_text()


def test_current_is_the_config_until_the_user_saves(config: Config, store: Store) -> None:
    assert current(config, store, ALICE) == UserSettings(
        junk_destiny="junk", junk_folder="Junk", tag2_level=5.0, tag2_min=3.0, tag2_max=12.0)


def test_current_includes_the_domains_overrides(config: Config, store: Store) -> None:
    store.transaction(lambda s: set_overrides(config.policy, s, "@example.org",
                                              {"junk_folder": "Spam", "tag2_level": 6.5}))
    settings = current(config, store, "Alice@Example.org")
    assert (settings.junk_folder, settings.tag2_level) == ("Spam", 6.5)


@pytest.mark.parametrize(("destiny", "level", "sentence", "in_script"), [
    ("junk", "5", "Spam (score 5.0 or more) now goes to your folder Junk.",
     'fileinto :create "Junk"'),
    ("inbox", "6,5", "Spam (score 6.5 or more) now stays in your inbox, marked [SPAM].",
     'fileinto "INBOX"'),
    ("discard", " 7.25 ", "Spam (score 7.25 or more) is now deleted on arrival.", "discard;"),
])
def test_save_installs_the_script_and_says_where_spam_goes(
        config: Config, store: Store, destiny: str, level: str, sentence: str,
        in_script: str) -> None:
    assert save(config, store, "Alice@Example.ORG", destiny, level) == sentence
    assert in_script in script_of(config, ALICE)
    settings = current(config, store, ALICE)
    assert (settings.junk_destiny, settings.tag2_level) == (destiny, float(level.strip()
                                                                           .replace(",", ".")))


def test_the_sentence_names_the_users_folder_and_tag(tmp_path: Path) -> None:
    config = make_config(tmp_path, junk_folder="Unwanted", spam_subject_tag="***SPAM*** ")
    upgrade(config.database.url)
    store = Store(config.database.url)
    try:
        assert save(config, store, ALICE, "junk", "4") == (
            "Spam (score 4.0 or more) now goes to your folder Unwanted.")
        assert save(config, store, ALICE, "inbox", "4") == (
            "Spam (score 4.0 or more) now stays in your inbox, marked ***SPAM***.")
    finally:
        store.close()


REFUSED = {
    "unknown destiny": ("trash", "5",
                        "Choose where spam goes: your junk folder, your inbox, or deleted."),
    "empty destiny": ("", "5", "Choose where spam goes: your junk folder, your inbox, or deleted."),
    "not a number": ("junk", "five", "The spam score must be a number, such as 5 or 6.5."),
    "empty level": ("junk", "", "The spam score must be a number, such as 5 or 6.5."),
    "nan": ("junk", "nan", "The spam score must be a number, such as 5 or 6.5."),
    "infinity": ("junk", "inf", "The spam score must be a number, such as 5 or 6.5."),
    "exponent": ("junk", "1e1", "The spam score must be a number, such as 5 or 6.5."),
    "underscores": ("junk", "1_0", "The spam score must be a number, such as 5 or 6.5."),
    "below the admin's minimum": ("junk", "2.9", "The spam score must be between 3.0 and 12.0."),
    "above the admin's maximum": ("junk", "12.5",
                                  "The spam score must be between 3.0 and 12.0."),
    "at the user's kill level": ("junk", "10", "The spam score must be below 10.0: from that "
                                 "score on, mail is not delivered to you at all."),
}


@pytest.mark.parametrize(("destiny", "level", "says"), REFUSED.values(), ids=REFUSED.keys())
def test_refusals_change_nothing(config: Config, store: Store, destiny: str, level: str,
                                 says: str) -> None:
    store.transaction(lambda s: set_overrides(config.policy, s, ALICE, {"kill_level": 10.0}))
    with pytest.raises(SettingsError) as caught:
        save(config, store, ALICE, destiny, level)
    assert str(caught.value) == says
    assert current(config, store, ALICE).tag2_level == 5.0
    assert not (config.sieve.directory / f"{ALICE}.sieve").exists()


def test_the_bounds_themselves_are_allowed(config: Config, store: Store) -> None:
    assert save(config, store, ALICE, "junk", "3").startswith("Spam (score 3.0 or more)")
    assert save(config, store, ALICE, "junk", "12").startswith("Spam (score 12.0 or more)")


def test_below_the_users_tag_level(config: Config, store: Store) -> None:
    store.transaction(lambda s: set_overrides(config.policy, s, ALICE, {"tag_level": 4.0}))
    with pytest.raises(SettingsError, match=r"^The spam score must be at least 4\.0\.$"):
        save(config, store, ALICE, "junk", "3.5")


def test_a_sieve_failure_saves_nothing_and_logs_the_detail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path)
    config.sieve.directory.write_text("a file where the directory should be")
    upgrade(config.database.url)
    store = Store(config.database.url)
    try:
        with caplog.at_level(logging.ERROR, logger="lmtpfilter.web.settings"), \
                pytest.raises(SettingsError) as caught:
            save(config, store, ALICE, "discard", "6")
        assert current(config, store, ALICE).junk_destiny == "junk"
    finally:
        store.close()
    assert str(caught.value) == NOT_SAVED
    assert "Sieve" not in str(caught.value) and str(tmp_path) not in str(caught.value)
    [record] = caplog.records
    assert record.getMessage().startswith(f"web settings of {ALICE} not saved: {ALICE}: "
                                          "nothing changed: the Sieve script could not be "
                                          "installed: ")
