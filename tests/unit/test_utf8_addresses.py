"""UTF-8 addresses (RFC 6531) are addresses like any other: per-user policy rows, lookups,
bypass entries and Sieve file names."""

from __future__ import annotations

from pathlib import Path

from lmtpfilter.config import PolicyConfig, from_mapping
from lmtpfilter.policy import RecipientPolicy
from lmtpfilter.sieve import DirectoryInstaller, generate
from lmtpfilter.store import Store, upgrade
from lmtpfilter.userpolicy import DbPolicies, normalise_key, set_overrides

JOSE = "José@Exämple.net"


async def test_a_utf8_user_has_a_policy_row_and_it_is_found(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/u.db"
    upgrade(url)
    store = Store(url)
    try:
        assert normalise_key(JOSE) == "josé@exämple.net"
        store.transaction(lambda s: set_overrides(PolicyConfig(), s, JOSE,
                                                  {"kill_level": 12.0}))
        found = await DbPolicies(store, PolicyConfig(), ttl=0).lookup(["JOSÉ@exämple.net"])
    finally:
        store.close()
    assert found["JOSÉ@exämple.net"].kill_level == 12.0


def test_a_utf8_entry_in_a_bypass_list() -> None:
    config = from_mapping({"policy": {"bypass_spam_checks": ["@exämple.net"]}})
    assert config.policy.bypass_spam_checks.matches("josé@exämple.net")
    assert config.policy.bypass_spam_checks.matches("josé@xn--exmple-cua.net")


def test_a_utf8_users_sieve_script_is_named_after_the_address(tmp_path: Path) -> None:
    installer = DirectoryInstaller(tmp_path)
    installer.install(normalise_key(JOSE), generate(RecipientPolicy()))
    assert (tmp_path / "josé@exämple.net.sieve").read_text().startswith("# Generated")
