"""Which user a command runs as, and the modes of the files it creates.

Every command creates files with umask 027: the SQLite database and its -wal and -shm files
are 0640, the quarantine files and the lock 0600 (they ask for it), nothing is for others.

A command started as root (an admin's `lmtpfilter db upgrade` or `quarantine list`, a cron
job's `lmtpfilter-janitor run`) first becomes the service user, for good, as Postfix's
commands and amavisd ($daemon_user) give up root: what it creates then belongs to the user the
service runs as. A database or lock file left to root would lock the service out (SQLite opens
a file it cannot write read-only, and fails at the first write). The service user is
`[server].user`, else the owner of the directories that hold the state, the SQLite file's and
the quarantine's, unless that is root: a setup that keeps its state in root's directories (the
sandbox, the tests) stays root. systemd starts `serve` and the janitor as the user already.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from pathlib import Path

from .config import Config

COMMAND_UMASK = 0o027
ROOT_UID = 0


class PrivilegeError(Exception):
    """The service user cannot be told or does not exist; the message is one line."""


def state_directories(config: Config) -> list[Path]:
    """The directories whose files belong to the service user: the SQLite database's
    (PostgreSQL keeps its own files) and the quarantine."""
    from sqlalchemy.engine import make_url

    directories = []
    url = make_url(config.database.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        directories.append(Path(url.database).absolute().parent)
    directories.append(config.quarantine.directory)
    return directories


def existing_ancestor(path: Path) -> Path:
    """`path`, or its nearest parent that exists: its owner is who may create `path`."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def service_account(configured: str, owners: Mapping[Path, int]) -> str | int | None:
    """Whom a command started as root becomes: the configured user name; else the uid that owns
    every state directory (`owners`: directory -> uid), unless that is root; None: stay root."""
    if configured:
        return None if configured == "root" else configured
    uids = set(owners.values())
    if uids <= {ROOT_UID}:
        return None
    if len(uids) == 1:
        return uids.pop()
    described = ", ".join(f"{path} to {_user_name(uid)}" for path, uid in owners.items())
    raise PrivilegeError(f"the state directories belong to different users ({described}): "
                         "set [server] user")


def become_service_user(config: Config) -> str | None:
    """As root, switch to the service user (groups, then gid, then uid; real, effective and
    saved, so there is no way back); otherwise do nothing. Returns the user switched to.
    Called by every command that opens files, before it opens any."""
    if os.geteuid() != ROOT_UID:
        return None
    owners = {directory: existing_ancestor(directory).stat().st_uid
              for directory in state_directories(config)}
    account = service_account(config.server.user, owners)
    if account is None:
        return None
    try:
        entry = pwd.getpwnam(account) if isinstance(account, str) else pwd.getpwuid(account)
    except KeyError:
        if isinstance(account, str):
            raise PrivilegeError(f"[server] user: no such user {account!r}") from None
        directory = next(d for d, uid in owners.items() if uid == account)
        raise PrivilegeError(f"{existing_ancestor(directory)} belongs to uid {account}, which "
                             "is no user: set [server] user") from None
    if entry.pw_uid == ROOT_UID:
        return None
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    # As runuser and su do: programs run from here (sievec) find the user's own home.
    os.environ.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    # Modules are imported when a command needs them: a Python or a virtualenv the user cannot
    # read (one made from a Python under /root) would fail at the next import; say it now.
    for needed in (Path(os.__file__).parent, Path(__file__).parent):
        if not os.access(needed, os.R_OK | os.X_OK):
            raise PrivilegeError(f"{entry.pw_name} cannot read {needed}: install lmtpfilter "
                                 "where the service user can run it (scripts/install.sh)")
    return entry.pw_name


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
