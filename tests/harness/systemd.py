"""What systemd does with lmtpfilter's units, for machines without systemd (containers, CI).

Only what the units in systemd/ use: User= and Group= (through runuser, as scripts/install.sh
runs commands as the service user), UMask=, Environment=, RuntimeDirectory= and its mode, and
ExecStartPre= / ExecStart= with their "-" (failure ignored) and "+" (run as root) prefixes. The
environment is systemd's: its PATH plus Environment=, nothing inherited. StateDirectory= is
left to install.sh, which makes /var/lib/lmtpfilter with the same owner and mode. The sandboxing
settings (ProtectSystem= and the rest) are not applied; `systemd-analyze verify` checks them
(tests/unit/test_systemd_units.py).
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# systemd's default PATH for services (systemd.exec(5), "Environment variables").
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ServiceUnit:
    """The [Service] section of a unit file: each key with its values, in order."""

    path: Path
    settings: dict[str, list[str]]

    @classmethod
    def read(cls, path: Path, replace: Mapping[str, str] | None = None) -> ServiceUnit:
        """Read `path`, with `replace`'s strings replaced first (as install.sh's sed does)."""
        text = path.read_text()
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        settings: dict[str, list[str]] = {}
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]":
                key, _, value = line.partition("=")
                settings.setdefault(key.strip(), []).append(value.strip())
        return cls(path, settings)

    def value(self, key: str, default: str = "") -> str:
        return self.settings.get(key, [default])[-1]

    @property
    def user(self) -> str:
        return self.value("User", "root")

    @property
    def umask(self) -> int:
        return int(self.value("UMask", "0022"), 8)

    @property
    def environment(self) -> dict[str, str]:
        env = {"PATH": SYSTEMD_PATH}
        for line in self.settings.get("Environment", []):
            for assignment in shlex.split(line):
                key, _, value = assignment.partition("=")
                env[key] = value
        return env

    def commands(self, key: str) -> list[tuple[str, list[str]]]:
        """ExecStartPre= or ExecStart= lines as (prefix characters, argv)."""
        out = []
        for line in self.settings.get(key, []):
            prefix = line[:len(line) - len(line.lstrip("-+!@:"))]
            out.append((prefix, shlex.split(line[len(prefix):])))
        return out

    def argv(self, command: list[str], as_root: bool = False) -> list[str]:
        """`command` as the service runs it: its user and group, umask and environment."""
        env = ["env", "-i", *(f"{k}={v}" for k, v in self.environment.items())]
        shell = ["sh", "-c", f'umask {self.umask:04o}; exec "$@"', "sh", *command]
        if as_root or self.user == "root":
            return [*env, *shell]
        group = ["-g", self.value("Group")] if self.value("Group") else []
        return ["runuser", "-u", self.user, *group, "--", *env, *shell]

    def make_runtime_directory(self, run: Path) -> Path | None:
        """RuntimeDirectory=NAME: `run`/NAME (standing for /run/NAME), the unit's user's."""
        name = self.value("RuntimeDirectory")
        if not name:
            return None
        directory = run / name
        directory.mkdir(parents=True, exist_ok=True)
        uid = pwd.getpwnam(self.user).pw_uid
        gid = grp.getgrnam(self.value("Group")).gr_gid if self.value("Group") else -1
        os.chown(directory, uid, gid)
        directory.chmod(int(self.value("RuntimeDirectoryMode", "0755"), 8))
        return directory

    def run(self, key: str, timeout: float = 120.0) -> list[subprocess.CompletedProcess[str]]:
        """Run every `key` line (ExecStartPre=, or a oneshot's ExecStart=) in order, as
        systemd does: stop at the first failure unless the line says "-"."""
        results = []
        for prefix, command in self.commands(key):
            result = subprocess.run(self.argv(command, as_root="+" in prefix),
                                    capture_output=True, text=True, timeout=timeout)
            results.append(result)
            if result.returncode != 0 and "-" not in prefix:
                break
        return results

    def start(self, run: Path, log: Path) -> tuple[list[subprocess.CompletedProcess[str]],
                                                   subprocess.Popen[bytes] | None]:
        """`systemctl start` of a Type=simple service: the runtime directory, ExecStartPre=,
        then ExecStart= in the background (its output in `log`), in its own session so that
        stopping it reaches every process. The Popen is None if an ExecStartPre= failed."""
        self.make_runtime_directory(run)
        before = self.run("ExecStartPre")
        if any(r.returncode != 0 for r in before):
            return before, None
        [(prefix, command)] = self.commands("ExecStart")
        with log.open("ab") as out:
            process = subprocess.Popen(self.argv(command, as_root="+" in prefix),
                                       stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        return before, process
