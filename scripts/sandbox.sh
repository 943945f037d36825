#!/usr/bin/env bash
# A complete local sandbox for trying lmtpfilter on a fresh Debian 12 machine, as root:
# installs the Debian packages and lmtpfilter (virtualenv in /opt/lmtpfilter), starts a
# throwaway Dovecot (LMTP + Sieve) on loopback and lmtpfilter in front of it, sends one test
# message through, and prints how to send more. Nothing of the system's mail setup is used.
#
#   usage: scripts/sandbox.sh [up|down|status]      (state in /var/tmp/lmtpfilter-sandbox)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/debian-packages.sh

ROOT=${LMTPFILTER_SANDBOX:-/var/tmp/lmtpfilter-sandbox}
PREFIX=${LMTPFILTER_PREFIX:-/opt/lmtpfilter}
FILTER_PORT=10024          # where you (or Postfix) talk LMTP to lmtpfilter
DOVECOT_LMTP_PORT=11024    # the sandbox's final delivery server
DOVECOT_SIEVE_PORT=11190
USERS=(alice@example.org bob@example.org)

stop_pidfile() {
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$f"
}

down() {
  stop_pidfile "$ROOT/lmtpfilter.pid"
  stop_pidfile "$ROOT/dovecot/run/master.pid"
  echo "sandbox stopped (state kept in $ROOT)"
}

wait_banner() {  # wait_banner PORT EXPECTED_PREFIX
  for _ in $(seq 200); do
    l=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; IFS= read -r l <&3; printf '%s' \"\$l\"" \
        2>/dev/null || true)
    [[ "$l" == "$2"* ]] && return 0
    sleep 0.1
  done
  echo "nothing answers on 127.0.0.1:$1" >&2
  return 1
}

start_dovecot() {
  local d=$ROOT/dovecot uid gid
  uid=$(id -u nobody); gid=$(getent group nogroup | cut -d: -f3)
  mkdir -p "$d"/{run,state,log,mail,sieve-before,sieve-bin}
  chmod 755 "$ROOT" "$d"
  chown "$uid:$gid" "$d/mail" "$d/sieve-bin"
  : > "$d/users"
  for u in "${USERS[@]}"; do printf '%s:{PLAIN}secret::::::\n' "$u" >> "$d/users"; done
  cat > "$d/dovecot.conf" <<CONF
# lmtpfilter sandbox: a standalone Dovecot on loopback (nothing from /etc/dovecot)
instance_name = lmtpfilter-sandbox
base_dir = $d/run
state_dir = $d/state
log_path = $d/log/dovecot.log
protocols = lmtp sieve
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
hostname = mx.example.org
postmaster_address = postmaster@example.org
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $d/users
}
userdb {
  driver = passwd-file
  args = username_format=%u $d/users
  default_fields = uid=$uid gid=$gid home=$d/mail/%d/%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $DOVECOT_LMTP_PORT
  }
}
service managesieve-login {
  inet_listener sieve {
    address = 127.0.0.1
    port = $DOVECOT_SIEVE_PORT
  }
}
protocol lmtp {
  mail_plugins = \$mail_plugins sieve
}
plugin {
  sieve = file:~/sieve;active=~/.dovecot.sieve
  sieve_before = file:$d/sieve-before/%u.sieve;bindir=$d/sieve-bin/%u
}
CONF
  doveconf -c "$d/dovecot.conf" -n > /dev/null
  setsid dovecot -F -c "$d/dovecot.conf" > "$d/log/stdout" 2>&1 < /dev/null &
  wait_banner "$DOVECOT_LMTP_PORT" 220
}

start_filter() {
  cat > "$ROOT/lmtpfilter.toml" <<CONF
# lmtpfilter sandbox configuration; every key: lmtpfilter check-config --reference
[server]
listen = ["127.0.0.1:$FILTER_PORT"]
hostname = "filter.sandbox.example"

[downstream]
address = "127.0.0.1:$DOVECOT_LMTP_PORT"
CONF
  "$PREFIX/venv/bin/lmtpfilter" check-config -c "$ROOT/lmtpfilter.toml" > /dev/null
  setsid "$PREFIX/venv/bin/lmtpfilter" serve -c "$ROOT/lmtpfilter.toml" \
    >> "$ROOT/lmtpfilter.log" 2>&1 < /dev/null &
  echo $! > "$ROOT/lmtpfilter.pid"
  wait_banner "$FILTER_PORT" 220
}

up() {
  install_debian_packages
  mkdir -p "$PREFIX"
  make_venv "$PREFIX/venv" --upgrade .
  ln -sf "$PREFIX/venv/bin/lmtpfilter" /usr/local/bin/lmtpfilter
  mkdir -p "$ROOT"
  down > /dev/null
  start_dovecot
  start_filter
  count_alice() { find "$ROOT/dovecot/mail/example.org/alice/Maildir/new" -type f 2>/dev/null \
                  | wc -l || true; }
  before=$(count_alice)
  swaks --silent 2 --server "127.0.0.1:$FILTER_PORT" --protocol LMTP \
    --from sandbox@example.net --to alice@example.org --header "Subject: sandbox self-test"
  for _ in $(seq 50); do
    now=$(count_alice)
    [ "$now" -gt "$before" ] && break
    sleep 0.1
  done
  [ "$now" -gt "$before" ] || { echo "self-test message did not arrive" >&2; exit 1; }
  cat <<TXT

lmtpfilter sandbox is running; a self-test message went through to alice's Maildir.

  lmtpfilter  LMTP on 127.0.0.1:$FILTER_PORT   config $ROOT/lmtpfilter.toml
              log $ROOT/lmtpfilter.log
  Dovecot     LMTP on 127.0.0.1:$DOVECOT_LMTP_PORT (users: ${USERS[*]}, password "secret")

Send a message through the filter (one LMTP reply per recipient comes back):
  swaks --server 127.0.0.1:$FILTER_PORT --protocol LMTP --from you@example.net \\
        --to alice@example.org,bob@example.org,nobody@example.org

Where it lands:
  ls $ROOT/dovecot/mail/example.org/alice/Maildir/new/
  tail $ROOT/lmtpfilter.log

Stop it:  scripts/sandbox.sh down
TXT
}

status() {
  for f in "$ROOT/lmtpfilter.pid" "$ROOT/dovecot/run/master.pid"; do
    if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then echo "running: $f"; \
    else echo "stopped: $f"; fi
  done
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
