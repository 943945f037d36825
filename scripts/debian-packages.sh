# Sourced by the other scripts: the Debian 12 packages lmtpfilter's sandbox and tests use,
# installed only when missing (so a second run does not touch apt at all).
# shellcheck shell=bash

LMTPFILTER_DEB_PACKAGES=(
  python3 python3-venv python3-pip
  postfix                                   # the MTA in front (and smtp-source/smtp-sink)
  dovecot-core dovecot-lmtpd dovecot-sieve dovecot-managesieved   # final delivery + Sieve
  clamav-daemon clamdscan clamav-testfiles  # virus scanning
  spamd spamc spamassassin                  # spam scoring
  swaks                                     # sending test mail by hand
  postgresql                                # the store's tests run on PostgreSQL too
)

install_debian_packages() {  # [PACKAGE...] (default: all of the above)
  local missing=() pkg
  local wanted=("$@")
  [ ${#wanted[@]} -gt 0 ] || wanted=("${LMTPFILTER_DEB_PACKAGES[@]}")
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages (run as root to install): ${missing[*]}" >&2
    return 1
  fi
  echo "installing Debian packages: ${missing[*]}"
  # A fresh Postfix must not ask questions nor become the system's mail server.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# make_venv DIR [SPEC]: a virtualenv in DIR with SPEC installed (default: this checkout).
# The tests use an editable install with the test tools: make_venv .venv -e ".[test]"
make_venv() {
  local venv=$1; shift
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${@:-.}"
}
