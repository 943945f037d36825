#!/usr/bin/env bash
# lmtpfilter beside amavisd-new 2.13 (Debian's package) and FuGlu 1.7 (PyPI, in a venv), under
# the same smtp-source load with the same clamd and spamd; prints one table (bench/compare.py).
#
#   usage: bench/compare.sh [--markdown FILE] [--modes none,clamav,full] [--sessions 1,16]
#                           [--sizes 10,100] [--products lmtpfilter,lmtpfilter-uvloop,amavisd,fuglu,direct]
#
# Run as root on Debian 12, from anywhere. It installs what it needs, idempotently: the test
# suite's Debian packages, amavisd-new (never started as a service: everything runs on
# loopback in a temporary directory and is stopped at the end), a venv for FuGlu in
# $FUGLU_VENV (default /var/tmp/lmtpfilter-bench/fuglu-venv) and the project's .venv.
# The full matrix takes about 25 minutes on 2 CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/debian-packages.sh

install_debian_packages

install_unstarted_packages amavisd-new

FUGLU_VENV=${FUGLU_VENV:-/var/tmp/lmtpfilter-bench/fuglu-venv}
export FUGLU_VENV
if ! "$FUGLU_VENV/bin/python" -c 'import fuglu, sys; sys.exit(not fuglu.__version__.startswith("1.7."))' 2>/dev/null; then
  mkdir -p "$(dirname "$FUGLU_VENV")"
  make_venv "$FUGLU_VENV" 'fuglu==1.7.*'
fi

make_venv .venv -e ".[test]"
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin:/sbin"
exec .venv/bin/python bench/compare.py "$@"
