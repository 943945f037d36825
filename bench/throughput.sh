#!/usr/bin/env bash
# Throughput of lmtpfilter as a pure LMTP proxy (no checks), beside the same load sent
# straight to the sink:
#
#   smtp-source -L (2 recipients/message) --> lmtpfilter --> smtp-sink -L
#   smtp-source -L (2 recipients/message) --------------------> smtp-sink -L
#
# at 1 and 16 concurrent sessions, 10 KB and 100 KB messages. Prints messages/s for both,
# their ratio, and lmtpfilter's peak RSS (VmHWM).
#   usage: bench/throughput.sh            (env: MESSAGES=2000 to change the count per run)
# Needs postfix (smtp-source, smtp-sink) and lmtpfilter on PATH (or .venv/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
MESSAGES=${MESSAGES:-2000}
DIR=$(mktemp -d /tmp/lmtpf-bench-XXXXXX)
chmod 755 "$DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_banner() {
  for _ in $(seq 200); do
    l=$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1; IFS= read -r l <&3; printf '%s' \"\$l\"" 2>/dev/null || true)
    [[ "$l" == 220* ]] && return 0
    sleep 0.05
  done
  echo "nothing on port $1" >&2; exit 1
}

SINK_PORT=$(free_port); FILTER_PORT=$(free_port)
smtp-sink -u nobody -L -m 1024 "127.0.0.1:$SINK_PORT" 1024 > "$DIR/sink.log" 2>&1 &
pids+=($!)
cat > "$DIR/lmtpfilter.toml" <<CONF
[server]
listen = ["127.0.0.1:$FILTER_PORT"]
hostname = "bench.example"
[downstream]
address = "127.0.0.1:$SINK_PORT"
max_idle_connections = 32
CONF
lmtpfilter serve -c "$DIR/lmtpfilter.toml" --log-level WARNING > "$DIR/filter.log" 2>&1 &
FILTER_PID=$!
pids+=("$FILTER_PID")
wait_banner "$SINK_PORT"; wait_banner "$FILTER_PORT"

run() {  # run PORT SESSIONS SIZE COUNT -> messages/s
  local start end
  start=$(date +%s.%N)
  smtp-source -L -d -s "$2" -m "$4" -l "$3" -r 2 -f sender@example.net \
    -t rcpt@example.org "127.0.0.1:$1" > "$DIR/source.log" 2>&1
  end=$(date +%s.%N)
  python3 -c "print(f'{$4 / ($end - $start):.0f}')"
}

printf '%-9s %-8s %14s %14s %7s\n' sessions size "direct msg/s" "filter msg/s" ratio
for size in 10240 102400; do
  for sessions in 1 16; do
    count=$MESSAGES
    [ "$sessions" = 1 ] && count=$((MESSAGES / 4))
    [ "$size" = 102400 ] && count=$((count / 2))
    run "$FILTER_PORT" "$sessions" "$size" 50 > /dev/null   # warm-up
    direct=$(run "$SINK_PORT" "$sessions" "$size" "$count")
    filtered=$(run "$FILTER_PORT" "$sessions" "$size" "$count")
    printf '%-9s %-8s %14s %14s %7s\n' "$sessions" "$((size / 1024))KB" "$direct" "$filtered" \
      "$(python3 -c "print(f'{$filtered / $direct:.2f}')")"
  done
done
echo "lmtpfilter peak RSS: $(grep VmHWM /proc/$FILTER_PID/status | awk '{print $2/1024 " MB"}')"
if grep -q "ERROR\|Traceback" "$DIR/filter.log"; then
  echo "lmtpfilter logged errors:"; grep -m5 "ERROR\|Traceback" "$DIR/filter.log"
fi
