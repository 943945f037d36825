#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what the tests need (Debian packages,
# a virtualenv in .venv with lmtpfilter and its test tools; both idempotent), then runs
# ruff, mypy and pytest. The integration tests start their own Postfix, Dovecot, clamd,
# spamd on loopback in temporary directories; nothing of the system's is used or changed.
#   usage: scripts/run-tests.sh [pytest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/debian-packages.sh

install_debian_packages
install_debian_packages "${LMTPFILTER_BROWSER_TEST_PACKAGES[@]}"
install_unstarted_packages "${LMTPFILTER_MIGRATION_TEST_PACKAGES[@]}" \
  "${LMTPFILTER_CYRUS_TEST_PACKAGES[@]}"
make_venv .venv -e ".[test]"
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin:/sbin"
export LMTPFILTER_REQUIRE_DAEMONS=1   # a missing daemon fails the run instead of skipping

echo "== ruff";   ruff check .
echo "== mypy";   mypy
echo "== pytest"
# pytest exits 5 when it collected no test: that is a failure here, like any non-zero code.
exec pytest "$@"
