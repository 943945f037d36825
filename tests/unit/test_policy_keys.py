"""A policy key is declared once, in the option table (config.PolicyConfig): everything else
that knows the per-user keys derives from it, and the migrations must create what the models
say. Adding a key is one declaration plus one migration; this file fails when the migration is
missing or differs."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Boolean, Float, String, create_engine

from lmtpfilter import cli, userpolicy
from lmtpfilter.config import PolicyConfig, per_user_options, reference
from lmtpfilter.options import UserKind, key_of, user_kind
from lmtpfilter.policy import RecipientPolicy
from lmtpfilter.store import Base, UserPolicy, upgrade


def test_the_migrations_create_what_the_models_declare(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/schema.db"
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], ("the migrations do not match the models; write a migration in "
                        "migrations/versions/ for: " + repr(diff))


def test_user_policies_has_one_column_per_per_user_key() -> None:
    columns = {c.name: c for c in UserPolicy.__table__.columns}
    keys = [f.name for f in per_user_options()]
    assert set(columns) - {"address", "updated_at"} == set(keys)
    expected = {UserKind.NUMBER: Float, UserKind.TEXT: String, UserKind.CHOICE: String,
                UserKind.FLAG: Boolean, UserKind.MEMBERSHIP: Boolean}
    for f in per_user_options():
        column = columns[f.name]
        assert column.nullable, f"{f.name}: NULL must mean 'not overridden'"
        assert isinstance(column.type, expected[user_kind(f.metadata["parse"])]), f.name


def test_the_overridable_set_and_the_cli_flags_come_from_the_table() -> None:
    keys = [key_of(f) for f in per_user_options()]
    assert list(userpolicy.OVERRIDABLE) == keys
    parser = cli._parser()
    args = parser.parse_args(["user", "set", "a@example.org", "--kill-level", "12",
                              "--spam-destiny", "reject", "--bypass-spam-checks",
                              "--no-bypass-virus-checks", "--junk-folder", "Spam"])
    assert (args.kill_level, args.spam_destiny, args.bypass_spam_checks,
            args.bypass_virus_checks, args.junk_folder) == (12.0, "reject", True, False, "Spam")
    # Every per-user key has its flag; a key that is not per-user has none.
    for key in keys:
        assert getattr(args, key, "missing") != "missing", key
    with pytest.raises(SystemExit):
        parser.parse_args(["user", "set", "a@example.org", "--local-domains", "x"])
    # The choices are the option's own.
    with pytest.raises(SystemExit):
        parser.parse_args(["user", "set", "a@example.org", "--spam-destiny", "bounce"])


def test_the_reference_says_which_keys_are_per_user() -> None:
    text = reference()
    for f in per_user_options():
        line = next(x for x in text.splitlines() if x.startswith(f"| `{key_of(f)}` "))
        assert "lmtpfilter user set --" in line, line
    local = next(x for x in text.splitlines() if x.startswith("| `local_domains` "))
    assert "user set" not in local


def test_every_per_user_key_is_validated_by_its_config_parser() -> None:
    # The same messages as the config file's, prefixed with the key.
    cases = {"spam_destiny": "bounce", "junk_folder": "", "tag_level": "high",
             "bypass_spam_checks": "yes", "spam_subject_tag": "bad\x01tag"}
    for key, bad in cases.items():
        with pytest.raises(userpolicy.InvalidOverride, match=f"^{key}: "):
            userpolicy.validate_override(key, bad)


def test_a_recipient_policy_is_the_policy_section_for_one_address() -> None:
    config = PolicyConfig(kill_level=12.0, spam_subject_tag="[S] ")
    policy = RecipientPolicy.of(config, "u@example.org").overridden({"tag2_level": 4.0})
    assert isinstance(policy, PolicyConfig)
    assert (policy.kill_level, policy.tag2_level, policy.spam_subject_tag) == (12.0, 4.0, "[S] ")
