#!/usr/bin/env bash
# A complete local sandbox for trying lmtpfilter on a fresh Debian 12 or 13 machine, as root:
# installs the Debian packages and lmtpfilter (virtualenv in /opt/lmtpfilter), starts a
# throwaway Dovecot (LMTP + Sieve + ManageSieve; 2.3 or 2.4, configured from the files in
# scripts/conf/dovecot-*) on loopback and lmtpfilter in front of it, sends one test
# message through, and prints how to send more. Nothing of the system's mail setup is used.
#
#   usage: scripts/sandbox.sh [up|down|status]      (state in /var/tmp/lmtpfilter-sandbox)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/debian-packages.sh
source scripts/conf/dovecot.sh

ROOT=${LMTPFILTER_SANDBOX:-/var/tmp/lmtpfilter-sandbox}
PREFIX=${LMTPFILTER_PREFIX:-/opt/lmtpfilter}
FILTER_PORT=10024          # where you (or Postfix) talk LMTP to lmtpfilter
DOVECOT_LMTP_PORT=11024    # the sandbox's final delivery server
DOVECOT_SIEVE_PORT=11190   # its ManageSieve, with a master user:
MASTER_USER=admin
MASTER_PASSWORD=adminsecret
SPAMD_PORT=11783
SMTP_PORT=2525             # the sandbox's Postfix: SMTP in, LMTP to lmtpfilter
WEB_PORT=8025              # lmtpfilter web: the quarantine self-service page (plain HTTP here)
USERS=(alice@example.org bob@example.org postmaster@example.org)

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
  if [ -f "$ROOT/postfix/spool/pid/master.pid" ]; then
    pid=$(tr -d ' ' < "$ROOT/postfix/spool/pid/master.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  stop_pidfile "$ROOT/web.pid"
  stop_pidfile "$ROOT/lmtpfilter.pid"
  stop_pidfile "$ROOT/dovecot/run/master.pid"
  stop_pidfile "$ROOT/clamd/clamd.pid"
  stop_pidfile "$ROOT/spamd/spamd.pid"
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
  # The tests' standalone Dovecot (scripts/conf/dovecot-<2.3|2.4>/standalone.conf, for the
  # installed version) with the production snippets beside it, as tests/harness/daemons.py
  # writes them: the sandbox's paths instead of /var/lib/lmtpfilter/sieve and
  # /etc/dovecot/master-users.
  local d=$ROOT/dovecot uid gid conf
  conf=scripts/conf/dovecot-$(dovecot_series)
  uid=$(id -u nobody); gid=$(getent group nogroup | cut -d: -f3)
  mkdir -p "$d"/{run,state,log,mail,sieve-before}
  chmod 755 "$ROOT" "$d"
  chown "$uid:$gid" "$d/mail"
  : > "$d/users"
  for u in "${USERS[@]}"; do printf '%s:{PLAIN}secret::::::\n' "$u" >> "$d/users"; done
  printf '%s:{PLAIN}%s\n' "$MASTER_USER" "$MASTER_PASSWORD" > "$d/masters"
  sed "s#/var/lib/lmtpfilter/sieve#$d/sieve-before#g" "$conf/lmtpfilter-sieve.conf" \
    > "$d/lmtpfilter-sieve.conf"
  sed "s#/etc/dovecot/master-users#$d/masters#g" "$conf/lmtpfilter-master-user.conf" \
    > "$d/lmtpfilter-master-user.conf"
  sed -e "s#{dir}#$d#g" -e "s#{instance}#lmtpfilter-sandbox#g" \
      -e "s#{lmtp_port}#$DOVECOT_LMTP_PORT#g" -e "s#{sieve_port}#$DOVECOT_SIEVE_PORT#g" \
      -e "s#{uid}#$uid#g" -e "s#{gid}#$gid#g" "$conf/standalone.conf" > "$d/dovecot.conf"
  doveconf -c "$d/dovecot.conf" -n > /dev/null
  setsid dovecot -F -c "$d/dovecot.conf" > "$d/log/stdout" 2>&1 < /dev/null &
  wait_banner "$DOVECOT_LMTP_PORT" 220
}

start_clamd() {
  # No signatures can be downloaded in a sandbox: a tiny DB of our own detects the EICAR
  # test string and the files of the clamav-testfiles package.
  local d=$ROOT/clamd eicar
  mkdir -p "$d/db" "$d/tmp"
  eicar='X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'
  printf 'Eicar-Test-Signature:0:*:%s\n' "$(printf '%s' "$eicar" | od -An -tx1 -v | tr -d ' \n')" \
    > "$d/db/sandbox.ndb"
  printf '%s:%s:Clamav.Test.File-6\n' \
    "$(md5sum < /usr/share/clamav-testfiles/clam.exe | cut -d' ' -f1)" \
    "$(stat -c %s /usr/share/clamav-testfiles/clam.exe)" > "$d/db/sandbox.hdb"
  cat > "$d/clamd.conf" <<CONF
Foreground yes
PidFile $d/clamd.pid
LogFile $d/clamd.log
TemporaryDirectory $d/tmp
DatabaseDirectory $d/db
LocalSocket $d/clamd.sock
LocalSocketMode 666
FixStaleSocket yes
StreamMaxLength 50M
SelfCheck 0
Bytecode no
AlertExceedsMax yes
MaxRecursion 40
CONF
  setsid clamd -c "$d/clamd.conf" > "$d/stdout" 2>&1 < /dev/null &
  for _ in $(seq 300); do
    clamdscan --config-file="$d/clamd.conf" --ping 1 > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "clamd did not start; see $d/clamd.log" >&2
  return 1
}

start_spamd() {
  local d=$ROOT/spamd
  mkdir -p "$d/site" "$d/home"
  chown nobody "$d/home"
  cp /etc/spamassassin/*.pre "$d/site/"
  cp scripts/conf/spamd-local.cf "$d/site/local.cf"   # shared with the test harness
  setsid spamd -C /usr/share/spamassassin --siteconfigpath="$d/site" -L -x -u nobody \
    -H "$d/home" -i "127.0.0.1:$SPAMD_PORT" -A 127.0.0.1 --min-children=2 --max-children=2 \
    -r "$d/spamd.pid" -s "$d/spamd.log" > "$d/stderr" 2>&1 < /dev/null &
  for _ in $(seq 600); do
    spamc -d 127.0.0.1 -p "$SPAMD_PORT" -K > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "spamd did not start; see $d/stderr" >&2
  return 1
}

start_postfix() {
  # A second Postfix instance of its own (the system's is neither used nor changed):
  # SMTP on 127.0.0.1:$SMTP_PORT, example.org delivered over LMTP to lmtpfilter, no relaying.
  local d=$ROOT/postfix
  mkdir -p "$d"/{etc,spool,data}
  chmod 755 "$d" "$d/etc"
  chown postfix "$d/data"
  cat > "$d/etc/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $d/spool
data_directory = $d/data
syslog_name = postfix-lmtpfilter-sandbox
maillog_file = $d/maillog
maillog_file_prefixes = $d
myhostname = mx.sandbox.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
smtpd_relay_restrictions = reject_unauth_destination
default_transport = error:5.7.1 outbound delivery disabled in the sandbox
relay_transport = error:5.7.1 outbound delivery disabled in the sandbox
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
virtual_mailbox_domains = example.org
virtual_mailbox_maps = static:OK
virtual_transport = lmtp:inet:127.0.0.1:$FILTER_PORT
queue_run_delay = 10s
minimal_backoff_time = 10s
maximal_backoff_time = 60s
CONF
  # The services are shared with the test harness; only smtpd listens, on loopback.
  sed "s/{listen}/127.0.0.1:$SMTP_PORT/" scripts/conf/postfix-master.cf > "$d/etc/master.cf"
  # Postfix re-reads a main.cf changed less than ~2 s ago until it "cools down": backdate it.
  touch -d "10 seconds ago" "$d"/etc/*
  postfix -c "$d/etc" start > "$d/start.log" 2>&1 || { cat "$d/start.log" >&2; return 1; }
  wait_banner "$SMTP_PORT" 220
}

start_filter() {
  cat > "$ROOT/lmtpfilter.toml" <<CONF
# lmtpfilter sandbox configuration; every key: lmtpfilter check-config --reference
[server]
listen = ["127.0.0.1:$FILTER_PORT"]
hostname = "filter.sandbox.example"

[downstream]
address = "127.0.0.1:$DOVECOT_LMTP_PORT"

[database]
url = "sqlite:///$ROOT/lmtpfilter.db"
policy_cache_ttl = "5s"      # so that \`lmtpfilter user set\` shows quickly

[quarantine]
directory = "$ROOT/quarantine"

[sieve]
method = "directory"
directory = "$ROOT/dovecot/sieve-before"

[notify]
smtp = "127.0.0.1:$SMTP_PORT"
admin = ["postmaster@example.org"]

[clamav]
address = "unix:$ROOT/clamd/clamd.sock"

[spamassassin]
address = "127.0.0.1:$SPAMD_PORT"

[policy]
tag2_level = 5.0
kill_level = 25.0
spam_destiny = "pass"        # GTUBE scores 1000: delivered tagged, so you can look at it
virus_destiny = "discard"    # quarantined, 250 2.7.0

[web]
listen = "127.0.0.1:$WEB_PORT"
base_url = "http://127.0.0.1:$WEB_PORT"   # recipient notices carry a release link
secret_key_file = "$ROOT/web.key"
authenticator = "dovecot"
dovecot_auth_socket = "$ROOT/dovecot/run/auth-client"
admins = ["postmaster@example.org"]
allow_plain_http = true      # a page on localhost only; in production it is behind TLS
CONF
  [ -s "$ROOT/web.key" ] || (umask 077; head -c 32 /dev/urandom > "$ROOT/web.key")
  "$PREFIX/venv/bin/lmtpfilter" check-config -c "$ROOT/lmtpfilter.toml" > /dev/null
  "$PREFIX/venv/bin/lmtpfilter" db upgrade -c "$ROOT/lmtpfilter.toml" > /dev/null
  "$PREFIX/venv/bin/lmtpfilter" sieve sync -c "$ROOT/lmtpfilter.toml" > /dev/null
  setsid "$PREFIX/venv/bin/lmtpfilter" serve -c "$ROOT/lmtpfilter.toml" \
    >> "$ROOT/lmtpfilter.log" 2>&1 < /dev/null &
  echo $! > "$ROOT/lmtpfilter.pid"
  wait_banner "$FILTER_PORT" 220
}

start_web() {
  setsid "$PREFIX/venv/bin/lmtpfilter" web -c "$ROOT/lmtpfilter.toml" \
    >> "$ROOT/web.log" 2>&1 < /dev/null &
  echo $! > "$ROOT/web.pid"
  for _ in $(seq 100); do
    "$PREFIX/venv/bin/python" -c "import urllib.request as u; \
u.urlopen('http://127.0.0.1:$WEB_PORT/login', timeout=2)" 2> /dev/null && return 0
    sleep 0.1
  done
  echo "lmtpfilter web does not answer on 127.0.0.1:$WEB_PORT (see $ROOT/web.log)" >&2
  return 1
}

up() {
  install_debian_packages
  mkdir -p "$PREFIX"
  PYTHON=/usr/bin/python3 make_venv "$PREFIX/venv" --upgrade ".[uvloop]"  # as install.sh
  ln -sf "$PREFIX/venv/bin/lmtpfilter" /usr/local/bin/lmtpfilter
  ln -sf "$PREFIX/venv/bin/lmtpfilter-janitor" /usr/local/bin/lmtpfilter-janitor
  mkdir -p "$ROOT"
  down > /dev/null
  start_dovecot
  start_clamd
  start_spamd
  start_filter
  start_web
  start_postfix
  count_alice() { find "$ROOT/dovecot/mail/example.org/alice/Maildir/new" -type f 2>/dev/null \
                  | wc -l || true; }
  before=$(count_alice)
  swaks --silent 2 --server "127.0.0.1:$SMTP_PORT" \
    --from sandbox@example.net --to alice@example.org --header "Subject: sandbox self-test"
  for _ in $(seq 50); do
    now=$(count_alice)
    [ "$now" -gt "$before" ] && break
    sleep 0.1
  done
  [ "$now" -gt "$before" ] || { echo "self-test message did not arrive" >&2; exit 1; }
  export LMTPFILTER_CONFIG=$ROOT/lmtpfilter.toml
  cat <<TXT

lmtpfilter sandbox is running; a self-test message went through Postfix and lmtpfilter to
alice's Maildir.

  Postfix     SMTP on 127.0.0.1:$SMTP_PORT (example.org only; log $ROOT/postfix/maillog)
  lmtpfilter  LMTP on 127.0.0.1:$FILTER_PORT   config $ROOT/lmtpfilter.toml
              log $ROOT/lmtpfilter.log
  Dovecot     $(dovecot --version | cut -d' ' -f1), LMTP on 127.0.0.1:$DOVECOT_LMTP_PORT   config $ROOT/dovecot/dovecot.conf
              users ${USERS[*]}, password "secret"
              ManageSieve on 127.0.0.1:$DOVECOT_SIEVE_PORT, also as master user $MASTER_USER ("$MASTER_PASSWORD")
  web page    http://127.0.0.1:$WEB_PORT/ (log in as alice@example.org, password "secret";
              postmaster@example.org is an admin)   log $ROOT/web.log
  clamd       $ROOT/clamd/clamd.sock (test signatures: EICAR, clamav-testfiles)
  spamd       127.0.0.1:$SPAMD_PORT

Send mail the way the Internet does, through Postfix:
  swaks --server 127.0.0.1:$SMTP_PORT --from you@example.net --to alice@example.org,bob@example.org
  grep lmtpfilter $ROOT/postfix/maillog      # status=sent (250 ...) per recipient

Or talk LMTP to the filter directly (one reply per recipient comes back):
  swaks --server 127.0.0.1:$FILTER_PORT --protocol LMTP --from you@example.net \\
        --to alice@example.org,bob@example.org,nobody@example.org

Spam (GTUBE scores 1000): X-Spam-Flag: YES, "[SPAM]" in the Subject, filed into Junk by the
generated Sieve script (ls $ROOT/dovecot/mail/example.org/alice/Maildir/.Junk/new/)
  swaks --server 127.0.0.1:$FILTER_PORT --protocol LMTP --to alice@example.org \\
        --body 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X'

A virus (a ClamAV test file attached): quarantined ("250 2.7.0 ... quarantined as ID"),
and postmaster@example.org is told (ls $ROOT/dovecot/mail/example.org/postmaster/Maildir/new/)
  swaks --server 127.0.0.1:$SMTP_PORT --to alice@example.org \\
        --attach @/usr/share/clamav-testfiles/clam.zip
  export LMTPFILTER_CONFIG=$ROOT/lmtpfilter.toml
  lmtpfilter quarantine list; lmtpfilter quarantine show ID; lmtpfilter quarantine release ID
  lmtpfilter log --since 1h
  lmtpfilter user set bob@example.org --virus-destiny pass    # per-user policy
  lmtpfilter user set bob@example.org --junk-destiny inbox     # bob keeps spam in his inbox

Where it lands:
  ls $ROOT/dovecot/mail/example.org/alice/Maildir/new/
  tail $ROOT/lmtpfilter.log

Stop it:  scripts/sandbox.sh down
TXT
}

status() {
  for f in "$ROOT/lmtpfilter.pid" "$ROOT/web.pid" "$ROOT/dovecot/run/master.pid" "$ROOT/clamd/clamd.pid" \
           "$ROOT/spamd/spamd.pid"; do
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
