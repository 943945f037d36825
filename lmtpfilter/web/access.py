"""Who may see, release and delete which quarantined message on the web page (pure).

The rules (issue 19, docs/design.md §7's per-user keys):

- a user is their login, a mail address, lower-cased; a recipient is theirs when it is that
  address once lower-cased and stripped of its ``+extension`` (``[policy]
  recipient_delimiter``, Postfix's rule: the first delimiter character cuts);
- a user sees a message when one of its recipients is theirs, and releases it to those
  recipients only; a virus is listed but released by an administrator only;
- a user deletes a message only when every recipient is theirs: deleting removes the one
  stored copy, which the other recipients may still want;
- an administrator (``[web] admins``) sees and acts on everything, releasing to every
  recipient;
- nobody gets a recipient delivered twice: a recipient that a release already delivered to
  (the ``release_replies`` audit lines) is not released to again. The filter stores a
  message once for all its recipients, so "released" is per recipient here, not the row's
  ``released_at``, which says only that somebody got it.

Every decision is a function of its arguments; the routes (app.py) turn a refusal into a
page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..addresses import base_address

VIRUS = "virus"  # QuarantineRecord.reason of a virus

ADMIN_ONLY_VIRUS = "Viruses are released by an administrator only."
NOT_ALL_YOURS = ("This message was also sent to other people: only an administrator can "
                 "delete it.")


@dataclass(frozen=True)
class Viewer:
    """Who is logged in: their address (lower-case) and whether they are an admin."""

    address: str
    admin: bool = False


def viewer(address: str, admins: Iterable[str]) -> Viewer:
    login = address.lower()
    return Viewer(login, login in {a.lower() for a in admins})


def owner_of(recipient: str, delimiter: str) -> str:
    """The address a recipient belongs to: lower-cased, without its +extension."""
    return base_address(recipient.lower(), delimiter)


def own_recipients(who: Viewer, recipients: Sequence[str], delimiter: str) -> list[str]:
    """The recipients that are `who`'s (in RCPT order, as written), for any viewer."""
    return [r for r in recipients if owner_of(r, delimiter) == who.address]


def may_see(who: Viewer, recipients: Sequence[str], delimiter: str) -> bool:
    return who.admin or bool(own_recipients(who, recipients, delimiter))


@dataclass(frozen=True)
class Decision:
    """What an action may do: to whom (release), or why not (`refused`, a sentence to show;
    `forbidden`: by the rules, not because it is done already)."""

    targets: tuple[str, ...] = ()
    refused: str = ""
    forbidden: bool = False

    @property
    def allowed(self) -> bool:
        return not self.refused


def release_decision(who: Viewer, reason: str, recipients: Sequence[str], delimiter: str,
                     delivered: Iterable[str] = ()) -> Decision:
    """Whom `who` may release this message to now. `delivered`: the recipients a release
    already delivered to (delivered_recipients). Assumes may_see()."""
    if reason == VIRUS and not who.admin:
        return Decision(refused=ADMIN_ONLY_VIRUS, forbidden=True)
    wanted = list(recipients) if who.admin else own_recipients(who, recipients, delimiter)
    done = {d.lower() for d in delivered}
    targets = tuple(r for r in wanted if r.lower() not in done)
    if not targets:
        whose = "" if who.admin else " to you"
        return Decision(refused=f"This message was already released{whose}.")
    return Decision(targets=targets)


def delete_decision(who: Viewer, recipients: Sequence[str], delimiter: str) -> Decision:
    """Whether `who` may delete the message (its one stored copy). Assumes may_see()."""
    if who.admin or (recipients and all(owner_of(r, delimiter) == who.address
                                        for r in recipients)):
        return Decision()
    return Decision(refused=NOT_ALL_YOURS, forbidden=True)


def delivered_recipients(release_replies: str) -> set[str]:
    """The recipients (lower-cased) that a release delivered to, from the audit lines that
    release.release() appends: "YYYY-MM-DD HH:MM:SS by WHO: RCPT: REPLY". Only ": " splits
    (a time has no space after its colons, an address no ": "); a line of another form is
    not a delivery."""
    done: set[str] = set()
    for line in release_replies.splitlines():
        parts = line.split(": ", 2)
        if len(parts) == 3 and " by " in parts[0] and parts[2][:1] == "2":
            done.add(parts[1].strip().lower())
    return done
