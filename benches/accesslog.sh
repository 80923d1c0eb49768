#!/usr/bin/env bash
# What the access log costs a cache hit: CPU per request of the same gateway with
# `log.access` off and on (lines written to a file through the log writer thread), in
# alternating rounds of one run.
#
#   benches/accesslog.sh [seconds-per-run] [rounds]     (defaults 10 and 3)
#
# Needs wrk on PATH. Everything listens on 127.0.0.1 only; every run is bounded. The CRM
# is the built-in mock (`cardgate mock-crm`); both gateways have one worker thread and
# answer one cached token, so the difference is the log line.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
[ "$secs" -ge 1 ] && [ "$secs" -le 120 ] || { echo "seconds must be 1..120" >&2; exit 2; }
[ "$rounds" -ge 1 ] && [ "$rounds" -le 10 ] || { echo "rounds must be 1..10" >&2; exit 2; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install -y wrk)" >&2; exit 2; }

cargo build --release --quiet
bin=target/release/cardgate
. benches/common.sh

"$bin" mock-crm --listen 127.0.0.1:18191 >"$work/mock.log" 2>&1 &
pids+=($!)
gateway off 127.0.0.1:18193 127.0.0.1:18194 http://127.0.0.1:18191 60s
LOG_ACCESS=true gateway on 127.0.0.1:18195 127.0.0.1:18196 http://127.0.0.1:18191 60s
wait_ports 127.0.0.1:18191 127.0.0.1:18193 127.0.0.1:18195
path=/rest/chat/client/id/bench-token-1
for port in 18193 18195; do
  curl -s -o /dev/null "http://127.0.0.1:$port$path"   # the first request fills the cache
done

echo "round path req/s p50 p99 cpu_us"
for r in $(seq "$rounds"); do
  off=$(run hit_log_off "$pid_off" "http://127.0.0.1:18193$path")
  on=$(run hit_log_on "$pid_on" "http://127.0.0.1:18195$path")
  echo "$r $off"
  echo "$r $on"
  echo "$r cpu_ratio_on_off $(ratio "$(awk '{print $5}' <<<"$on")" "$(awk '{print $5}' <<<"$off")")"
done
lines=$(grep -c '"api":"auth"' "$work/on.log" || true)
echo "access lines written by the logging gateway: $lines"
