#!/usr/bin/env bash
# Fuzz the LMTP server (and, when atheris is installed, the pure parts) for DURATION seconds
# (default 3600; "30m" and "2h" work too). Issue 16 item 1.
#
# Rounds: each runs tests/fuzz/test_server_stateful.py with the "long" hypothesis profile, then
# each atheris target for a slice of time. Hypothesis keeps its example database in
# .hypothesis/ at the top of the checkout: an example that failed once is replayed first on
# every later run here (plain pytest included), until it passes. Atheris crashes are written to
# .fuzz/crashes/<target>/ with libFuzzer's -artifact_prefix, and its corpus kept in
# .fuzz/corpus/<target>/ between runs. Prints examples run and failures at the end; exits 1 if
# anything failed. Logs of every round are in .fuzz/logs/.
#
# Run it niced on a shared machine: nice -n 10 scripts/fuzz.sh 2h
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$PATH:/usr/sbin:/sbin"

duration=${1:-3600}
case $duration in
  *h) duration=$(( ${duration%h} * 3600 )) ;;
  *m) duration=$(( ${duration%m} * 60 )) ;;
  *s) duration=${duration%s} ;;
esac
[[ $duration =~ ^[0-9]+$ ]] || { echo "usage: $0 [DURATION: seconds, or 30m, 2h]" >&2; exit 2; }

mkdir -p .fuzz/logs .fuzz/crashes .fuzz/corpus
# Never committed by accident, as hypothesis does for .hypothesis/ (its own .gitignore of "*").
[[ -f .fuzz/.gitignore ]] || echo '*' >.fuzz/.gitignore
stats=$(mktemp); trap 'rm -f "$stats"' EXIT
export LMTPFILTER_FUZZ_PROFILE=long LMTPFILTER_FUZZ_STATS=$stats
start=$(date +%s); end=$(( start + duration ))
rounds=0 failures=0 atheris_runs=0 atheris_crashes=0
have_atheris=0
python -c 'import atheris' 2>/dev/null && have_atheris=1
targets=()

while (( $(date +%s) < end )); do
  rounds=$(( rounds + 1 ))
  if (( have_atheris )); then
    mapfile -t targets < <(python -m tests.fuzz.run_atheris --list 2>/dev/null)
  fi
  left=$(( end - $(date +%s) ))
  log=.fuzz/logs/round-$rounds.log
  # The round's own time limit only stops a round that would overrun the budget.
  if ! timeout --signal=INT --kill-after=30 "$left" \
      pytest -q -p no:cacheprovider --timeout=0 tests/fuzz/test_server_stateful.py >"$log" 2>&1; then
    if grep -q -E "Failing test case|failed" "$log"; then
      failures=$(( failures + 1 ))
      echo "round $rounds: FAILURE, see $log"
      grep -E "Violation|Error|state\." "$log" | head -40
    fi
  fi
  for target in "${targets[@]}"; do
    left=$(( end - $(date +%s) ))
    (( left > 5 )) || break
    slice=$(( left < 120 ? left : 120 ))
    mkdir -p ".fuzz/corpus/$target" ".fuzz/crashes/$target"
    alog=.fuzz/logs/atheris-$target-$rounds.log
    timeout --kill-after=30 $(( slice + 30 )) python -m tests.fuzz.run_atheris "$target" \
      ".fuzz/corpus/$target" -max_total_time="$slice" -rss_limit_mb=2048 \
      -artifact_prefix=".fuzz/crashes/$target/" >"$alog" 2>&1
    rc=$?
    runs=$(grep -o -E '^#[0-9]+' "$alog" | tail -1 | tr -d '#')
    atheris_runs=$(( atheris_runs + ${runs:-0} ))
    if (( rc != 0 )); then
      atheris_crashes=$(( atheris_crashes + 1 ))
      echo "atheris $target: crash (rc $rc), see $alog"
      grep -E "Uncaught|Error|Exception|crash-" "$alog" | head -20
    fi
  done
done

examples=$(wc -l <"$stats")
echo "fuzz: $(( $(date +%s) - start )) s, $rounds rounds, $examples server examples," \
     "$failures failing rounds; atheris: ${#targets[@]} targets, $atheris_runs runs," \
     "$atheris_crashes crashes"
(( failures == 0 && atheris_crashes == 0 ))
