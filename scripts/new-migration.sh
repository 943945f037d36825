#!/usr/bin/env bash
# A new Alembic migration for what the models (lmtpfilter/store.py, and the user_policies
# columns derived from the option table) now declare and the migrations do not yet create:
# upgrades a scratch SQLite database to the current head, then lets Alembic write the
# difference to migrations/versions/NNNN_<message>.py. Review the file before committing;
# tests/unit/test_policy_keys.py fails until the migrations match the models.
#   usage: scripts/new-migration.sh "per-user dsn_cutoff_level"
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 MESSAGE" >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
.venv/bin/python - "$1" "$scratch" <<'PY'
import sys
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from lmtpfilter.store import alembic_config, upgrade

message, scratch = sys.argv[1], sys.argv[2]
url = f"sqlite:///{scratch}/schema.db"
upgrade(url)
config = alembic_config(url)
heads = ScriptDirectory.from_config(config).get_heads()
next_id = f"{max(int(h) for h in heads) + 1:04d}"
command.revision(config, message=message, autogenerate=True, rev_id=next_id)
print(f"written: migrations/versions/{next_id}_*.py (review it)", file=sys.stderr)
PY
