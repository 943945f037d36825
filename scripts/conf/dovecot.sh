# Sourced by scripts/sandbox.sh: which configuration syntax, and so which of
# scripts/conf/dovecot-2.3/ and dovecot-2.4/, fits the installed Dovecot. The test harness makes
# the same choice (dovecot_syntax in tests/harness/daemons.py; tests/unit/test_dovecot_config.py
# checks that they agree).
# shellcheck shell=bash

dovecot_series() {  # [VERSION] (default: `dovecot --version`): prints 2.3 or 2.4
  local version=${1:-} major minor
  [ -n "$version" ] || version=$(dovecot --version 2>/dev/null) || {
    echo "dovecot_series: Dovecot is not installed" >&2; return 1; }
  version=${version%% *}
  IFS=.- read -r major minor _ <<< "$version"
  if ! [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]]; then
    echo "dovecot_series: cannot read the Dovecot version from '$version'" >&2; return 1
  fi
  if (( major > 2 || (major == 2 && minor >= 4) )); then echo 2.4
  elif (( major == 2 && minor == 3 )); then echo 2.3
  else echo "dovecot_series: Dovecot $version is not supported (2.3 or later)" >&2; return 1
  fi
}
