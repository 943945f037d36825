#!/usr/bin/env bash
# Install lmtpfilter for production on Debian 12 or 13, as root. Idempotent: run it again after an
# upgrade (it keeps your config, upgrades the package and the database schema).
#
#   creates the system user and group `lmtpfilter` (and adds `postfix` to the group, for the
#     unix socket);
#   installs lmtpfilter into a virtualenv in /opt/lmtpfilter/venv, and links `lmtpfilter` and
#     `lmtpfilter-janitor` into /usr/local/bin (on root's PATH);
#   /etc/lmtpfilter/lmtpfilter.toml from etc/lmtpfilter.toml if there is none (root:lmtpfilter
#     0640); /var/lib/lmtpfilter (0751: Dovecot must reach sieve/) with sieve/ (0755) and
#     quarantine/ (0700);
#   gives back to lmtpfilter what a command run as root by an older version left to root there
#     (the service could not write it), then runs `lmtpfilter db upgrade` and `lmtpfilter sieve
#     sync` as lmtpfilter;
#   /etc/lmtpfilter/web.key if there is none: 32 random bytes for `lmtpfilter web` (the
#     quarantine page signs its cookies and release links with it), lmtpfilter's own, 0600;
#   installs the systemd units (and reloads systemd when it runs). It enables nothing: the
#     README's production guide says when to `systemctl enable --now lmtpfilter
#     lmtpfilter-janitor.timer`, and its web page section when to enable lmtpfilter-web.
#
# The locations can be moved for tests: LMTPFILTER_PREFIX (/opt/lmtpfilter), LMTPFILTER_ETC
# (/etc/lmtpfilter), LMTPFILTER_STATE (/var/lib/lmtpfilter), LMTPFILTER_UNITS
# (/etc/systemd/system), LMTPFILTER_BIN (/usr/local/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/debian-packages.sh

PREFIX=${LMTPFILTER_PREFIX:-/opt/lmtpfilter}
ETC=${LMTPFILTER_ETC:-/etc/lmtpfilter}
STATE=${LMTPFILTER_STATE:-/var/lib/lmtpfilter}
UNITS=${LMTPFILTER_UNITS:-/etc/systemd/system}
BIN=${LMTPFILTER_BIN:-/usr/local/bin}
USER_NAME=lmtpfilter

[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 2; }

if ! getent group "$USER_NAME" > /dev/null; then groupadd --system "$USER_NAME"; fi
if ! getent passwd "$USER_NAME" > /dev/null; then
  useradd --system --gid "$USER_NAME" --home-dir "$STATE" --no-create-home \
          --shell /usr/sbin/nologin "$USER_NAME"
fi
# Postfix's delivery agents keep the postfix user's groups: this one opens the socket to them.
if getent passwd postfix > /dev/null; then usermod -aG "$USER_NAME" postfix; fi

# Debian's own Python: the service user must be able to run it (a Python under /root would
# not do), and it is the one security updates reach. libmagic and libarchive, which the
# content checks use, come with `file` and `libarchive-tools` (their names are the same on
# Debian 12 and 13, where the libraries' own names differ).
install_debian_packages python3 python3-venv "${LMTPFILTER_RUNTIME_LIBRARIES[@]}"
mkdir -p "$PREFIX"
# With uvloop, the faster event loop ([server] event_loop = "auto" takes it; README:
# Performance).
PYTHON=/usr/bin/python3 make_venv "$PREFIX/venv" --upgrade ".[uvloop]"
mkdir -p "$BIN"
for command in lmtpfilter lmtpfilter-janitor; do
  ln -sfn "$PREFIX/venv/bin/$command" "$BIN/$command"
done

install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
CONFIG=$ETC/lmtpfilter.toml
if [ ! -e "$CONFIG" ]; then
  sed -e "s#/var/lib/lmtpfilter#$STATE#g" etc/lmtpfilter.toml > "$CONFIG"
  chown root:"$USER_NAME" "$CONFIG"
  chmod 0640 "$CONFIG"
  echo "wrote $CONFIG: review it"
fi
# The web page's key: whoever reads it can forge sessions and release links, so only the
# service user may (`lmtpfilter web` refuses a key file others can read). Kept on upgrades:
# a new key would log everyone out and void the links in notifications already sent.
WEB_KEY=$ETC/web.key
if [ ! -e "$WEB_KEY" ]; then
  (umask 077 && head -c 32 /dev/urandom > "$WEB_KEY")
  chown "$USER_NAME:$USER_NAME" "$WEB_KEY"
fi
install -d -m 0751 -o "$USER_NAME" -g "$USER_NAME" "$STATE"
install -d -m 0755 -o "$USER_NAME" -g "$USER_NAME" "$STATE/sieve"
install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$STATE/quarantine"
# Before this version, `lmtpfilter db upgrade` or `lmtpfilter-janitor run` started by root made
# root's files here (0644): the service, which runs as lmtpfilter, could then not write them.
# Commands now switch to lmtpfilter first (lmtpfilter/privileges.py); repair what is left.
find "$STATE" -xdev ! -user "$USER_NAME" -exec chown -h "$USER_NAME:$USER_NAME" {} +
find "$STATE" -xdev -maxdepth 1 -name 'lmtpfilter.db*' -perm /o=rwx -exec chmod o-rwx {} +

run_as() { runuser -u "$USER_NAME" -- env LMTPFILTER_CONFIG="$CONFIG" "$@"; }
run_as "$PREFIX/venv/bin/lmtpfilter" check-config > /dev/null
run_as "$PREFIX/venv/bin/lmtpfilter" db upgrade
run_as "$PREFIX/venv/bin/lmtpfilter" sieve sync

mkdir -p "$UNITS"
for unit in systemd/*; do
  sed -e "s#/opt/lmtpfilter#$PREFIX#g" -e "s#/etc/lmtpfilter#$ETC#g" \
      -e "s#/var/lib/lmtpfilter#$STATE#g" "$unit" > "$UNITS/$(basename "$unit")"
  chmod 0644 "$UNITS/$(basename "$unit")"
done
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "lmtpfilter installed in $PREFIX ($BIN/lmtpfilter); next: the README's production guide, step 2"
