"""The settings page's logic: a user's spam destiny and tag2 level (no HTTP here).

A change goes the way of ``lmtpfilter user set``: ``sieve.change_policy`` installs the user's
new Sieve script first and commits the override only then, so the page never says "saved"
for a policy that the delivery server does not apply. The bounds are the admin's ([web]
tag2_min, tag2_max) and the user's own kill_level, above which spam is not delivered at all
(docs/design.md §7 for the Sieve side).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .. import sieve, userpolicy
from ..config import Config
from ..options import mask_credentials
from ..policy import RecipientPolicy
from ..store import Store

log = logging.getLogger(__name__)

DESTINIES = ("junk", "inbox", "discard")
# A plain decimal, as people type it ("5", "6.5", "6,5"); float() would also take "nan",
# "1e3" and "1_0".
_NUMBER = re.compile(r"-?[0-9]{1,4}(?:[.,][0-9]{1,3})?")

NOT_SAVED = ("Your settings were not saved: the mail server did not accept your filter; "
             "try again later.")


class SettingsError(Exception):
    """A refused change; str(exc) is a sentence for the page."""


@dataclass(frozen=True)
class UserSettings:
    junk_destiny: str
    junk_folder: str
    tag2_level: float
    tag2_min: float
    tag2_max: float


def _key(address: str) -> str:
    """The user's row: their login address, lower-cased (a +extension has no row of its
    own here; the quarantine page's access rule maps it to this address)."""
    return address.strip().lower()


def _policy(config: Config, store: Store, key: str) -> RecipientPolicy:
    rows = store.transaction(
        lambda s: userpolicy.rows_for(s, key, config.policy.recipient_delimiter),
        durable=False)
    return userpolicy.effective(config.policy, key, rows)


def current(config: Config, store: Store, address: str) -> UserSettings:
    """The user's effective settings: the config, their domain's and their own overrides."""
    policy = _policy(config, store, _key(address))
    return UserSettings(junk_destiny=policy.junk_destiny, junk_folder=policy.junk_folder,
                        tag2_level=policy.tag2_level, tag2_min=config.web.tag2_min,
                        tag2_max=config.web.tag2_max)


def score(value: float) -> str:
    """A score as the page shows it: "5.0", "6.5", "6.25"."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


def parse_level(text: str) -> float:
    """The typed tag2 level as a number; SettingsError for anything else."""
    text = text.strip() if isinstance(text, str) else ""
    if not _NUMBER.fullmatch(text):
        raise SettingsError("The spam score must be a number, such as 5 or 6.5.")
    level = float(text.replace(",", "."))
    if not math.isfinite(level):  # the pattern allows none; kept for whoever widens it
        raise SettingsError("The spam score must be a number, such as 5 or 6.5.")
    return level


def check(config: Config, policy: RecipientPolicy, junk_destiny: str, level: float) -> None:
    """The rules a change must keep, each refused with a sentence the user can act on (pure).

    tag_level is checked too: set_overrides would refuse a tag2 below it, with a sentence
    written for admins."""
    if junk_destiny not in DESTINIES:
        raise SettingsError("Choose where spam goes: your junk folder, your inbox, or deleted.")
    low, high = config.web.tag2_min, config.web.tag2_max
    if not low <= level <= high:
        raise SettingsError(f"The spam score must be between {score(low)} and {score(high)}.")
    if level >= policy.kill_level:
        raise SettingsError(
            f"The spam score must be below {score(policy.kill_level)}: from that score on, "
            "mail is not delivered to you at all.")
    if level < policy.tag_level:
        raise SettingsError(f"The spam score must be at least {score(policy.tag_level)}.")


def describe(policy: RecipientPolicy) -> str:
    """Where the user's spam goes now, in one sentence."""
    where = {
        "junk": f"now goes to your folder {policy.junk_folder}",
        "inbox": ("now stays in your inbox, marked " + policy.spam_subject_tag.strip()
                  if policy.spam_subject_tag.strip() else
                  "now stays in your inbox, marked as spam in its headers only"),
        "discard": "is now deleted on arrival",
    }[policy.junk_destiny]
    return f"Spam (score {score(policy.tag2_level)} or more) {where}."


def save(config: Config, store: Store, address: str, junk_destiny: str,
         tag2_level: str) -> str:
    """Validate, install the user's Sieve script, commit; the sentence the page shows.
    SettingsError (safe to show) when refused or not applied; the details go to the log."""
    key = _key(address)
    level = parse_level(tag2_level)
    try:
        check(config, _policy(config, store, key), junk_destiny, level)

        def change(session: Session) -> None:
            userpolicy.set_overrides(config.policy, session, key,
                                     {"junk_destiny": junk_destiny, "tag2_level": level}, ())

        sieve.change_policy(config, store, key, change)
        policy = _policy(config, store, key)
    except sieve.SieveError as exc:
        log.error("web settings of %s not saved: %s", key, exc)
        raise SettingsError(NOT_SAVED) from None
    except (userpolicy.InvalidOverride, ValueError) as exc:
        # The checks above make this unlikely: a domain row or a config changed meanwhile.
        log.error("web settings of %s refused: %s", key, exc)
        raise SettingsError("Your settings were not saved: they do not fit the limits your "
                            "mail administrator set.") from None
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        log.error("web settings of %s not saved: database: %s", key, mask_credentials(first))
        raise SettingsError("Your settings were not saved: try again later.") from None
    log.info("web settings of %s: junk_destiny=%s tag2_level=%g", key, junk_destiny, level)
    return describe(policy)
