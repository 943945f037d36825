# Sourced by the other scripts: the Debian 12 packages lmtpfilter's sandbox and tests use,
# installed only when missing (so a second run does not touch apt at all).
# shellcheck shell=bash

# What lmtpfilter itself needs at run time besides Python: libmagic (detected types) and
# libarchive (archive members), through packages whose names Debian 12 and 13 share.
LMTPFILTER_RUNTIME_LIBRARIES=(file libarchive-tools)

# What the browser tests of the web page use (tests/harness/browser.py): Debian's chromium,
# headless, driven by Selenium through Debian's chromedriver. Tests only: the page itself
# serves plain HTML and needs no browser on the server: only run-tests.sh installs these.
LMTPFILTER_BROWSER_TEST_PACKAGES=(chromium chromium-driver)

LMTPFILTER_DEB_PACKAGES=(
  python3 python3-venv python3-pip
  "${LMTPFILTER_RUNTIME_LIBRARIES[@]}"
  postfix                                   # the MTA in front (and smtp-source/smtp-sink)
  dovecot-core dovecot-lmtpd dovecot-sieve dovecot-managesieved   # final delivery + Sieve
  clamav-daemon clamdscan clamav-testfiles  # virus scanning
  spamd spamc spamassassin                  # spam scoring
  swaks                                     # sending test mail by hand
  postgresql                                # the store's tests run on PostgreSQL too
)

# What the tests of the move from amavisd-new use besides: amavisd-new itself (its conf.d as
# shipped, its quarantine, the switch-over) and logwatch (an amavis log reader admins run).
# Never started as the system's service: see install_unstarted_packages.
LMTPFILTER_MIGRATION_TEST_PACKAGES=(amavisd-new logwatch)

# What the Cyrus tests start in temporary directories (tests/harness/cyrus.py): Debian's
# Cyrus IMAP (lmtpd, timsieved, imapd) and saslpasswd2 for its users. Never started as the
# system's service either: its package would start Cyrus on ports 143, 4190 and 24.
LMTPFILTER_CYRUS_TEST_PACKAGES=(cyrus-imapd sasl2-bin)

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

# install_unstarted_packages PACKAGE...: installs them as install_debian_packages does, but
# with a policy-rc.d that forbids starting any service meanwhile: amavisd-new's package would
# start amavisd as the system's service (on port 10024, where lmtpfilter listens), and its
# postinst would leave it enabled (cyrus-imapd's too). They are disabled afterwards where
# systemd runs.
install_unstarted_packages() {
  local policy=/usr/sbin/policy-rc.d saved="" pkg missing=0
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing=1
  done
  [ "$missing" -eq 1 ] || return 0
  if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; fi
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  local status=0
  install_debian_packages "$@" || status=$?
  if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
  if [ "$status" -eq 0 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now amavis.service amavis-mc.service cyrus-imapd.service \
      >/dev/null 2>&1 || true
  fi
  return "$status"
}

# make_venv DIR [SPEC]: a virtualenv in DIR with SPEC installed (default: this checkout).
# The tests use an editable install with the test tools: make_venv .venv -e ".[test]"
make_venv() {
  local venv=$1; shift
  [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${@:-.}"
}
