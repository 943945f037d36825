#!/usr/bin/env bash
# The README's two commands, run for real on another Debian release, as root: builds a
# chroot of that release (debootstrap, from the Debian mirror apt already uses), copies this
# checkout in, and runs `scripts/sandbox.sh up` (its self-test message must arrive), then
# `scripts/sandbox.sh down`, then `scripts/run-tests.sh [pytest arguments]`. At the end it
# prints the release, the versions of Dovecot, Postfix, ClamAV, SpamAssassin, PostgreSQL and
# Python inside, and pytest's summary line. Exit status: 0 only if both commands passed.
#
#   usage: scripts/test-on-release.sh [--fresh] [--rebuild] [--keep] trixie|bookworm [pytest args...]
#     --fresh    start from the bare debootstrap: the sandbox installs the Debian packages itself
#                (as on a fresh machine) instead of using the cached package layer
#     --rebuild  rebuild the cached base and package layer of that release first
#     --keep     keep the run's overlay (upper dir) in the cache's runs/ directory afterwards
#
# Cache, in $LMTPFILTER_CHROOT_CACHE (default /var/cache/lmtpfilter-chroots):
#   <release>-base/          pristine `debootstrap --variant=minbase --include=ca-certificates`
#   <release>-base.id        what built it and when (part of the package layer's key)
#   <release>-pkgs-<key>/    an overlay layer on top of the base with scripts/debian-packages.sh's
#                            packages installed; <key> hashes the base id and that script, so a
#                            changed package list gets a new layer (older ones are deleted). It is
#                            rebuilt when older than $LMTPFILTER_CHROOT_MAX_AGE_DAYS (default 7),
#                            so it does not fall behind the release's updates for long.
#   <release>-pip-cache/     pip's download cache, bind-mounted at /root/.cache/pip
#   runs/<release>.<pid>/    this run's writable overlay on top: every run starts clean
# Logs (sandbox.log, tests.log, summary.txt) in /var/tmp/lmtpfilter-test-on-release/.
#
# The chroot shares the host's network: the sandbox listens on its fixed loopback ports (see
# scripts/sandbox.sh), so it must not run on the host (or in another chroot) at the same time;
# this script checks that those ports are free. The test suite picks free ports itself.
set -euo pipefail
# The whole script is one block, read before it runs: editing the file during a run (a long
# one) does not change what that run executes.
{
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${LMTPFILTER_CHROOT_CACHE:-/var/cache/lmtpfilter-chroots}
MAX_AGE_DAYS=${LMTPFILTER_CHROOT_MAX_AGE_DAYS:-7}
LOG_BASE=${LMTPFILTER_RELEASE_LOGS:-/var/tmp/lmtpfilter-test-on-release}
SRC_IN_CHROOT=/work/lmtpfilter
SANDBOX_STATE=/var/tmp/lmtpfilter-sandbox   # sandbox.sh's default, inside the chroot

usage() {
  sed -n 's/^#   usage: //p' "$0" >&2
  exit 2
}

FRESH=0 REBUILD=0 KEEP=0
while [ $# -gt 0 ]; do
  case $1 in
    --fresh) FRESH=1; shift ;;
    --rebuild) REBUILD=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || usage
RELEASE=$1; shift
case $RELEASE in trixie|bookworm) ;; *) echo "release must be trixie or bookworm" >&2; usage ;; esac
PYTEST_ARGS=("$@")

[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (debootstrap, mount, chroot)" >&2; exit 1; }
for tool in debootstrap chroot findmnt flock git; do
  command -v "$tool" > /dev/null || { echo "$0: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

log() { printf '[test-on-release %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
secs_since() { echo $(( $(date +%s) - $1 )); }

# --------------------------------------------------------------------------- the mirror

# The Debian mirror apt already uses: the URIs of the deb source for the host's own suite
# (deb822 *.sources first, then the one-line sources.list), and its security archive.
host_sources() {  # prints "URI SUITE..." per enabled deb source
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush() { if (types ~ /(^| )deb( |$)/ && enabled != "no")
                           for (i = 1; i <= nu; i++) print uri[i], suites
                         types = ""; suites = ""; enabled = ""; nu = 0 }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      { key = tolower($1); sub(/:$/, "", key); $1 = "" ; sub(/^ /, "") }
      key == "types" { types = $0 } key == "suites" { suites = $0 }
      key == "enabled" { enabled = tolower($0) }
      key == "uris" { nu = split($0, uri, " ") }
      END { flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [options] URI SUITE COMPONENTS...
    sed -E -n 's/^[ \t]*deb[ \t]+(\[[^]]*\][ \t]+)?([^ \t]+)[ \t]+([^ \t]+).*/\2 \3/p' "$f"
  done
}

find_mirrors() {
  local host_suite sources
  host_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  sources=$(host_sources)
  MIRROR=${LMTPFILTER_DEBIAN_MIRROR:-$(awk -v s="$host_suite" \
    '{ for (i = 2; i <= NF; i++) if ($i == s) { print $1; exit } }' <<< "$sources")}
  [ -n "$MIRROR" ] || MIRROR=$(awk '$0 !~ /-security/ { print $1; exit }' <<< "$sources")
  [ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt; set LMTPFILTER_DEBIAN_MIRROR"
  SECURITY_MIRROR=${LMTPFILTER_DEBIAN_SECURITY_MIRROR:-$(awk \
    '{ for (i = 2; i <= NF; i++) if ($i ~ /-security$/) { print $1; exit } }' <<< "$sources")}
  [ -n "$SECURITY_MIRROR" ] || SECURITY_MIRROR=http://deb.debian.org/debian-security
  MIRROR=${MIRROR%/} SECURITY_MIRROR=${SECURITY_MIRROR%/}
}

# --------------------------------------------------------------------------- mounts & cleanup

# Everything this run mounts lies under one of these directories; cleanup unmounts whatever is
# still mounted under them (deepest first) and removes the scratch directories, but only once
# nothing is mounted there any more (rm never crosses into a mounted /dev).
MOUNT_ROOTS=()
SCRATCH=()
CHILD=

mounts_under() {  # DIR: mount points at or under DIR, deepest first
  findmnt -rn -o TARGET | awk -v d="$1" '$0 == d || index($0, d "/") == 1' | sort -r
}

chroot_pids() {  # DIR: processes whose root directory is DIR (i.e. running in that chroot)
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    [ "$r" = "$1" ] && echo "${p#/proc/}"
  done
  return 0
}

kill_chroot_procs() {  # DIR [quiet]: TERM, then KILL, everything still running in the chroot
  local pids n
  pids=$(chroot_pids "$1")
  [ -n "$pids" ] || return 0
  if [ -z "${2:-}" ]; then
    log "still running in the chroot, stopping them:"
    # shellcheck disable=SC2086
    ps -o pid=,comm= -p $(echo $pids | tr ' ' ,) >&2 2>/dev/null || true
  fi
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for n in $(seq 50); do
    [ -z "$(chroot_pids "$1")" ] && return 0
    sleep 0.1
  done
  pids=$(chroot_pids "$1")
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  sleep 0.5
}

umount_under() {  # DIR: unmount everything at or under DIR; returns 1 if something remains
  local m tries
  for tries in 1 2 3; do
    while read -r m; do
      [ -n "$m" ] || continue
      umount "$m" 2>/dev/null || true
    done < <(mounts_under "$1")
    [ -z "$(mounts_under "$1")" ] && return 0
    kill_chroot_procs "$1" quiet
    sleep 1
  done
  while read -r m; do  # last resort: detach (gone from the mount table at once)
    [ -n "$m" ] && umount -l "$m" 2>/dev/null || true
  done < <(mounts_under "$1")
  [ -z "$(mounts_under "$1")" ]
}

cleanup() {
  local rc=$? d ok=1 left
  # Nothing may stop the cleanup half-way: not a second Ctrl-C, not a closed output pipe (the
  # log's tee, or the terminal's); its output goes to the original stderr.
  trap '' INT TERM HUP PIPE
  trap - EXIT
  set +e
  exec 1>&7 2>&7
  case $rc in 130) log "interrupted" ;; 129|141|143) log "terminated (exit $rc)" ;; esac
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then kill -TERM "$CHILD" 2>/dev/null; fi
  for d in "${MOUNT_ROOTS[@]}"; do
    kill_chroot_procs "$d"
    umount_under "$d" || { ok=0; log "could not unmount under $d:"; mounts_under "$d" >&2; }
  done
  if [ "$ok" -eq 1 ]; then
    for d in "${SCRATCH[@]}"; do
      [ -e "$d" ] && rm -rf --one-file-system "$d"
    done
    [ "$KEEP" -eq 0 ] || [ -z "${RUN:-}" ] || log "kept this run's overlay: $RUN/upper"
    if [ ${#MOUNT_ROOTS[@]} -gt 0 ]; then
      left=$(mounts_under "$CACHE" | grep -E "^$CACHE/(runs|$RELEASE-(base|pkgs)[^/]*)(/|$)")
      if [ -z "$left" ]; then log "unmounted everything: no mount of this script is left"
      else log "mounts left behind:"; echo "$left" >&2; rc=1; fi
    fi
  else
    log "NOT removing ${SCRATCH[*]}: something is still mounted there"
    rc=1
  fi
  exit "$rc"
}
exec 7>&2   # the original stderr, for the cleanup
trap cleanup EXIT
# Handlers, not "ignore": the commands this script runs get the default dispositions back.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

# Runs a command in the background and waits for it, so that a signal to this script runs the
# trap at once (bash defers traps while a foreground child runs).
run_bg() {
  "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=
  return "$rc"
}

# mount_chroot ROOT UPPER WORK LOWER...: the overlay, then proc, sys, dev, dev/pts, dev/shm
mount_chroot() {
  local root=$1 upper=$2 work=$3; shift 3
  local lower
  lower=$(IFS=:; echo "$*")
  mkdir -p "$root" "$upper" "$work"
  MOUNT_ROOTS+=("$root")
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root" \
    || die "cannot mount an overlay on $root (this script needs overlayfs)"
  mount --make-private "$root"
  mkdir -p "$root"/{proc,sys,dev}
  mount -t proc proc "$root/proc"
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys" \
    || mount --bind -o ro /sys "$root/sys"
  mount --bind /dev "$root/dev"          # not recursive: pts and shm are mounted below
  mount --make-private "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"
  mount --make-private "$root/dev/pts"
  # PostgreSQL's dynamic shared memory lives in /dev/shm: a tmpfs of the chroot's own.
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
}

# The chroot's view of the system: resolver, /etc/hosts (localhost), apt sources with updates
# and security, and a policy-rc.d that keeps package scripts from starting any service.
setup_chroot() {
  local root=$1
  rm -f "$root/etc/resolv.conf" "$root/etc/hosts"   # may be dangling symlinks
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  cp -L /etc/hosts "$root/etc/hosts"
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $RELEASE $RELEASE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $RELEASE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  printf '#!/bin/sh\n# test-on-release.sh: the project scripts start their own daemons\nexit 101\n' \
    > "$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
}

# The CAs the host trusts beyond those Debian ships (in its bundle, but in no file of
# /usr/share/ca-certificates): e.g. a TLS-inspecting proxy's. pip must reach PyPI in the chroot
# as it does on the host.
host_local_cas() {
  local shipped=()
  mapfile -t shipped < <(find /usr/share/ca-certificates -name '*.crt' 2> /dev/null)
  [ -f /etc/ssl/certs/ca-certificates.crt ] || return 0
  awk -v bundle=/etc/ssl/certs/ca-certificates.crt '
    { gsub(/[ \t\r]/, "") }
    /^-----BEGINCERTIFICATE-----$/ { c = ""; inside = 1 }
    inside { c = c $0 "\n" }
    /^-----ENDCERTIFICATE-----$/ {
      inside = 0
      if (FILENAME != bundle) known[c] = 1
      else if (!(c in known) && !(c in seen)) { seen[c] = 1; printf "%s", c }
    }' "${shipped[@]}" /etc/ssl/certs/ca-certificates.crt \
    | sed 's/^-----BEGINCERTIFICATE-----$/-----BEGIN CERTIFICATE-----/;
           s/^-----ENDCERTIFICATE-----$/-----END CERTIFICATE-----/'
}

add_host_cas() {  # ROOT
  local root=$1 dir=$1/usr/local/share/ca-certificates
  rm -f "$dir"/test-on-release-host-*.crt
  mkdir -p "$dir"
  host_local_cas | awk -v d="$dir" '
    /-----BEGIN CERTIFICATE-----/ { n++ } { print > (d "/test-on-release-host-" n ".crt") }'
  if ls "$dir"/test-on-release-host-*.crt > /dev/null 2>&1; then
    in_chroot "$root" update-ca-certificates > /dev/null 2>&1 \
      || log "warning: update-ca-certificates failed in the chroot"
  fi
}

in_chroot() {  # ROOT COMMAND...: a clean environment (no host PIP_*, no host pip.conf)
  local root=$1; shift
  chroot "$root" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
    TERM="${TERM:-dumb}" LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" 7>&- 8>&- 9>&-
}

# --------------------------------------------------------------------------- the caches

mkdir -p "$CACHE/runs"
CACHE=$(cd "$CACHE" && pwd -P)   # as /proc/PID/root and findmnt spell it
# One run per release at a time (held to the end: a --rebuild must not pull the layers from
# under a running chroot); runs for different releases may go on side by side.
exec 9> "$CACHE/.$RELEASE.lock"
flock -n 9 || die "another test-on-release.sh run for $RELEASE is in progress"
find_mirrors
log "release $RELEASE, mirror $MIRROR (security $SECURITY_MIRROR)"

BASE=$CACHE/$RELEASE-base
BASE_ID=$CACHE/$RELEASE-base.id
T_START=$(date +%s)
TIMES=()

if [ "$REBUILD" -eq 1 ]; then
  log "--rebuild: removing the cached $RELEASE base and package layers"
  rm -rf --one-file-system "$BASE" "$BASE_ID" "$CACHE/$RELEASE"-pkgs-*
fi

if [ ! -f "$BASE_ID" ] || [ ! -x "$BASE/bin/sh" ]; then
  t=$(date +%s)
  tmp=$CACHE/$RELEASE-base.tmp.$$
  SCRATCH+=("$tmp"); MOUNT_ROOTS+=("$tmp")   # debootstrap mounts proc/sys in there itself
  rm -rf --one-file-system "$BASE" "$BASE_ID"
  log "debootstrap $RELEASE (minbase + ca-certificates) into $BASE"
  run_bg debootstrap --variant=minbase --include=ca-certificates "$RELEASE" "$tmp" "$MIRROR" \
    > "$CACHE/$RELEASE-base.debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/$RELEASE-base.debootstrap.log" >&2; die "debootstrap failed"; }
  umount_under "$tmp" || die "debootstrap left mounts under $tmp"
  mv "$tmp" "$BASE"
  printf 'release=%s mirror=%s variant=minbase include=ca-certificates built=%s debootstrap=%s\n' \
    "$RELEASE" "$MIRROR" "$(date -u +%FT%TZ)" \
    "$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')" > "$BASE_ID"
  TIMES+=("debootstrap: $(secs_since "$t") s")
fi

LOWER=("$BASE")
if [ "$FRESH" -eq 0 ]; then
  key=$( { cat "$BASE_ID"; cat "$REPO/scripts/debian-packages.sh"; \
           declare -f setup_chroot; echo "$MIRROR $SECURITY_MIRROR"; } | sha256sum | cut -c1-12)
  PKGS=$CACHE/$RELEASE-pkgs-$key
  if [ -f "$PKGS/ok" ] && [ -n "$(find "$PKGS/ok" -mtime "+$MAX_AGE_DAYS")" ]; then
    log "package layer $PKGS is older than $MAX_AGE_DAYS days: rebuilding it"
    rm -rf --one-file-system "$PKGS"
  fi
  if [ ! -f "$PKGS/ok" ]; then
    t=$(date +%s)
    tmp=$CACHE/$RELEASE-pkgs.tmp.$$
    SCRATCH+=("$tmp")
    rm -rf --one-file-system "$PKGS"
    log "building the package layer $PKGS (scripts/debian-packages.sh)"
    mount_chroot "$tmp/root" "$tmp/layer" "$tmp/work" "$BASE"
    setup_chroot "$tmp/root"
    cp "$REPO/scripts/debian-packages.sh" "$tmp/root/tmp/debian-packages.sh"
    run_bg in_chroot "$tmp/root" bash -c \
      'set -euo pipefail; source /tmp/debian-packages.sh; install_debian_packages; install_unstarted_packages "${LMTPFILTER_MIGRATION_TEST_PACKAGES[@]}"; apt-get clean' \
      > "$CACHE/$RELEASE-pkgs.log" 2>&1 \
      || { tail -30 "$CACHE/$RELEASE-pkgs.log" >&2; die "installing the packages failed" \
           "(log: $CACHE/$RELEASE-pkgs.log)"; }
    rm -f "$tmp/root/tmp/debian-packages.sh"
    kill_chroot_procs "$tmp/root"
    umount_under "$tmp/root" || die "cannot unmount $tmp/root"
    mkdir -p "$PKGS"
    mv "$tmp/layer" "$PKGS/layer"
    mv "$CACHE/$RELEASE-pkgs.log" "$PKGS/install.log"
    rm -rf --one-file-system "$tmp"
    date -u +%FT%TZ > "$PKGS/ok"
    for old in "$CACHE/$RELEASE"-pkgs-*; do   # layers of other keys are stale now
      [ "$old" = "$PKGS" ] || [ ! -d "$old" ] || rm -rf --one-file-system "$old"
    done
    TIMES+=("package layer: $(secs_since "$t") s")
  else
    log "using the cached package layer $PKGS (built $(cat "$PKGS/ok"))"
  fi
  LOWER=("$PKGS/layer" "$BASE")
fi

# --------------------------------------------------------------------------- this run

RUN=$CACHE/runs/$RELEASE.$$
ROOT=$RUN/root
[ "$KEEP" -eq 1 ] || SCRATCH+=("$RUN")
LOGDIR=$LOG_BASE/$RELEASE-$(date +%Y%m%d-%H%M%S)
mkdir -p "$LOGDIR"
mount_chroot "$ROOT" "$RUN/upper" "$RUN/work" "${LOWER[@]}"
setup_chroot "$ROOT"
add_host_cas "$ROOT"
mkdir -p "$CACHE/$RELEASE-pip-cache" "$ROOT/root/.cache/pip"
mount --bind "$CACHE/$RELEASE-pip-cache" "$ROOT/root/.cache/pip"

t=$(date +%s)
mkdir -p "$ROOT$SRC_IN_CHROOT"
# The committed and working-tree files (not .venv, build/, caches: .gitignore's business);
# files deleted in the working tree are left out.
git -C "$REPO" ls-files -co --exclude-standard -z \
  | (cd "$REPO" && tar --null -T - --ignore-failed-read -cf - 2>/dev/null) \
  | tar -xf - -C "$ROOT$SRC_IN_CHROOT"
# And the repository itself, as in a clone: ruff honours .gitignore only inside a git repository
# (without it, it lints the build/ that sandbox.sh's `pip install .` leaves behind).
if [ -d "$REPO/.git" ]; then
  tar -C "$REPO" -cf - .git | tar -xf - -C "$ROOT$SRC_IN_CHROOT"
else
  git -C "$ROOT$SRC_IN_CHROOT" init -q
fi
COPIED=$(git -C "$REPO" describe --always --dirty 2> /dev/null)  # what the run tests, not HEAD at the end
log "copied the checkout $COPIED ($(git -C "$REPO" ls-files -co --exclude-standard | wc -l) files) to $SRC_IN_CHROOT"
TIMES+=("copy: $(secs_since "$t") s")

# 1. The sandbox: up (it sends itself a test message and fails if it does not arrive), down.
sandbox_ports() {
  grep -oE '^[A-Z_]+_PORT=[0-9]+' "$ROOT$SRC_IN_CHROOT/scripts/sandbox.sh" | cut -d= -f2
}

sandbox_phase() {  # prints to stdout; returns non-zero if up, the self-test or down failed
  local rc=0 p busy=() new n f left
  for p in $(sandbox_ports); do
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2> /dev/null && busy+=("$p")
  done
  if [ ${#busy[@]} -gt 0 ]; then
    echo "sandbox ports already in use on this machine: ${busy[*]}" \
         "(a sandbox running on the host? scripts/sandbox.sh down)"
    return 1
  fi
  echo "== scripts/sandbox.sh up"
  run_bg in_chroot "$ROOT" bash -c "cd $SRC_IN_CHROOT && scripts/sandbox.sh up" || rc=$?
  # The self-test: the message sandbox.sh sent through Postfix must be in alice's Maildir.
  new=$ROOT$SANDBOX_STATE/dovecot/mail/example.org/alice/Maildir/new
  n=$(find "$new" -type f 2> /dev/null | wc -l)
  echo "== self-test: $n message(s) in alice's Maildir/new (sandbox.sh up exit $rc)"
  if [ "$n" -gt 0 ]; then
    grep -h -E '^(Subject|X-Virus-Scanned|X-Spam-(Flag|Score|Status)):' \
      "$(find "$new" -type f | head -1)" || true
  else
    [ "$rc" -ne 0 ] || rc=1
    for f in lmtpfilter.log postfix/maillog dovecot/log/dovecot.log dovecot/log/stdout \
             clamd/clamd.log spamd/stderr; do
      [ -s "$ROOT$SANDBOX_STATE/$f" ] || continue
      echo "-- tail $SANDBOX_STATE/$f"; tail -15 "$ROOT$SANDBOX_STATE/$f"
    done
  fi
  echo "== scripts/sandbox.sh down"
  run_bg in_chroot "$ROOT" bash -c "cd $SRC_IN_CHROOT && scripts/sandbox.sh down" \
    || { [ "$rc" -ne 0 ] || rc=1; }
  left=$(chroot_pids "$ROOT")
  if [ -n "$left" ]; then
    # shellcheck disable=SC2046,SC2086
    echo "left running after 'sandbox.sh down':" $(ps -o comm= -p $(echo $left | tr ' ' ,))
    kill_chroot_procs "$ROOT" quiet
  fi
  return "$rc"
}

# The output to the terminal and a log. Ctrl-C goes to the whole process group: tee must
# outlive it, so that this script can still write while it cleans up.
tee_to() { trap '' INT TERM HUP; exec tee "$1"; }

SANDBOX_RC=0
t=$(date +%s)
exec 8> "$CACHE/.sandbox-ports.lock"   # one sandbox at a time among these runs
flock 8
sandbox_phase > >(tee_to "$LOGDIR/sandbox.log") 2>&1 || SANDBOX_RC=$?
flock -u 8
sleep 0.2   # let tee catch up
TIMES+=("sandbox up/down: $(secs_since "$t") s")

# 2. The whole suite, as CI runs it.
TESTS_RC=0
t=$(date +%s)
log "== scripts/run-tests.sh$(printf " %q" "${PYTEST_ARGS[@]}")"
run_bg in_chroot "$ROOT" bash -c "cd $SRC_IN_CHROOT && exec scripts/run-tests.sh \"\$@\"" \
  run-tests "${PYTEST_ARGS[@]}" > >(tee_to "$LOGDIR/tests.log") 2>&1 || TESTS_RC=$?
sleep 0.2
TIMES+=("run-tests.sh: $(secs_since "$t") s")
left=$(chroot_pids "$ROOT")
if [ -n "$left" ]; then
  # shellcheck disable=SC2046,SC2086
  echo "left running after run-tests.sh:" $(ps -o comm= -p $(echo $left | tr ' ' ,)) \
    | tee -a "$LOGDIR/tests.log"
  kill_chroot_procs "$ROOT" quiet
fi

# 3. What ran: the release and the versions inside, and pytest's summary line.
in_chroot "$ROOT" bash -c '
  pkg() { dpkg-query -W -f="\${Version}" "$1" 2> /dev/null || echo "not installed"; }
  . /etc/os-release
  echo "release:      Debian $VERSION_ID ($VERSION_CODENAME), /etc/debian_version $(cat /etc/debian_version)"
  echo "Dovecot:      $(dovecot --version 2> /dev/null) (dovecot-core $(pkg dovecot-core))"
  echo "Postfix:      $(postconf -d -h mail_version 2> /dev/null) (postfix $(pkg postfix))"
  echo "ClamAV:       $(clamd --version 2> /dev/null) (clamav-daemon $(pkg clamav-daemon))"
  echo "SpamAssassin: $(spamassassin --version 2> /dev/null | head -1) (spamassassin $(pkg spamassassin))"
  pg=$(ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V | tail -1)
  echo "PostgreSQL:   $([ -n "$pg" ] && "$pg/postgres" --version) (postgresql $(pkg postgresql))"
  echo "Python:       $(python3 --version 2> /dev/null) (python3 $(pkg python3))"
' > "$LOGDIR/versions.txt" 2>&1 || true

summary=$(grep -E '^=+ .* in [0-9.]+s( \([0-9:]+\))? =+$' "$LOGDIR/tests.log" | tail -1 \
          | sed -E 's/^=+ (.*) =+$/\1/' || true)
if [ -z "$summary" ]; then
  if grep -q '^== pytest' "$LOGDIR/tests.log"; then summary="(pytest printed no summary line)"
  else summary="(pytest did not run: see $LOGDIR/tests.log; ruff, mypy or the setup failed)"; fi
fi
result() { [ "$1" -eq 0 ] && echo "passed" || echo "FAILED (exit $1)"; }
{
  echo
  echo "==== scripts/test-on-release.sh $RELEASE: $(date -u +%FT%TZ) on $(uname -m), checkout ${COPIED:-not copied}"
  cat "$LOGDIR/versions.txt"
  echo "sandbox:      $(result "$SANDBOX_RC") (scripts/sandbox.sh up, self-test, down)"
  echo "run-tests.sh: $(result "$TESTS_RC")"
  echo "pytest:       $summary"
  echo "times:        $(IFS=,; echo "${TIMES[*]}" | sed 's/,/, /g'), total $(secs_since "$T_START") s"
  echo "logs:         $LOGDIR"
} | tee "$LOGDIR/summary.txt"

if [ "$SANDBOX_RC" -eq 0 ] && [ "$TESTS_RC" -eq 0 ]; then exit 0; else exit 1; fi
}
