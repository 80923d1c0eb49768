#!/usr/bin/env bash
# What [shared] (Redis, cards = true) costs, in one run: cardgate with and without it on the
# L1 hit path (one token), the miss path (a new token per request: L1 miss, Redis GET, lock,
# CRM call, sealed write) and the L2 hit path (a 4 KiB L1 that holds almost nothing, over
# 10 000 tokens another replica put in Redis: Redis GET and open per request).
#
#   benches/shared.sh [seconds-per-run]      (default 10; every run is bounded by it)
#
# Needs nginx (nginx-light), redis-server and wrk on PATH; installs nothing. Loopback only.
# The CRM is the nginx anchor's (:18081). One worker thread per cardgate, wrk one thread and
# 64 connections. cpu_us: user+system CPU of the cardgate process per request; redis_us:
# redis-server's, per request of the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
[ "$secs" -ge 1 ] && [ "$secs" -le 120 ] || { echo "seconds must be 1..120" >&2; exit 2; }
anchor=${ANCHOR_SH:-../shared/bench/nginx-anchor.sh}
for tool in nginx wrk redis-server curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx-light wrk redis-server)" >&2; exit 2; }
done
[ -x "$anchor" ] || { echo "needs the nginx anchor script at $anchor (set ANCHOR_SH)" >&2; exit 2; }

cargo build --release --quiet
bin=target/release/cardgate
. benches/common.sh

ANCHOR_DIR=$work/anchor "$anchor" start
cleanup_hooks+=("ANCHOR_DIR=$work/anchor $anchor stop")
redis-server --bind 127.0.0.1 --port 18379 --save '' --appendonly no --dir "$work" \
  --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
cleanup_hooks+=("kill \$(cat $work/redis.pid)")
wait_ports 127.0.0.1:18081 127.0.0.1:18379
redis_pid=$(cat "$work/redis.pid")

crm=http://127.0.0.1:18081
export CARDGATE_SHARED_KEY=bench-shared-secret-0123456789abcdef0123
shared='url = "redis://127.0.0.1:18379/0"
cards = true
encryption_key_env = "CARDGATE_SHARED_KEY"'
gateway local 127.0.0.1:18190 127.0.0.1:18191 $crm 3600s
SHARED_TOML=$shared gateway shared 127.0.0.1:18192 127.0.0.1:18193 $crm 3600s
SHARED_TOML=$shared CACHE_MAX_SIZE=4KiB gateway l2 127.0.0.1:18194 127.0.0.1:18195 $crm 3600s
wait_ports 127.0.0.1:18190 127.0.0.1:18192 127.0.0.1:18194
for admin in 18193 18195; do   # connected to Redis
  for _ in $(seq 100); do
    curl -s "http://127.0.0.1:$admin/metrics" | grep -q '^cardgate_shared_up 1' && break
    sleep 0.1
  done
done

# run, plus redis-server's CPU per request of the same run.
run_r() {
  local before after line reqs_rps
  before=$(cpu_ticks "$redis_pid")
  line=$(run "$@")
  after=$(cpu_ticks "$redis_pid")
  read -r _ reqs_rps _ <<<"$line"
  echo "$line $(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v r="$reqs_rps" -v s="$secs" \
    'BEGIN { if (r > 0) printf "%.1f", t / hz * 1e6 / (r * s); else print "n/a" }')"
}

tok=bench-token-1
curl -s -o /dev/null "http://127.0.0.1:18190/rest/chat/client/id/$tok"
curl -s -o /dev/null "http://127.0.0.1:18192/rest/chat/client/id/$tok"
# The L2 tokens: put in Redis by the `shared` replica (its L1 keeps them too; not measured).
COUNT=10000 wrk -t1 -c16 -d2s -s benches/cycle.lua http://127.0.0.1:18192 >/dev/null
results=()
results+=("$(run_r hit "$pid_local" "http://127.0.0.1:18190/rest/chat/client/id/$tok")")
results+=("$(run_r hit_shared "$pid_shared" "http://127.0.0.1:18192/rest/chat/client/id/$tok")")
results+=("$(run_r miss "$pid_local" http://127.0.0.1:18190 -s benches/unique.lua)")
results+=("$(run_r miss_shared "$pid_shared" http://127.0.0.1:18192 -s benches/unique.lua)")
results+=("$(COUNT=10000 run_r l2_hit "$pid_l2" http://127.0.0.1:18194 -s benches/cycle.lua)")
l2=$(curl -s http://127.0.0.1:18195/metrics | awk '/^cardgate_shared_cards_total\{result="hit"\}/ {print $2}')

declare -A RPS P99 CPU
printf '%-12s %10s %9s %9s %8s %9s\n' path req/s p50 p99 cpu_us redis_us
for line in "${results[@]}"; do
  read -r name rps p50 p99 cpu rcpu <<<"$line"
  RPS[$name]=$rps; P99[$name]=$(us "$p99"); CPU[$name]=$cpu
  printf '%-12s %10s %9s %9s %8s %9s\n' "$name" "$rps" "$(us "$p50")" "${P99[$name]}" "$cpu" "$rcpu"
done
echo
echo "L1 hit : shared/local req/s $(ratio "${RPS[hit_shared]}" "${RPS[hit]}"), cpu $(ratio "${CPU[hit_shared]}" "${CPU[hit]}")"
echo "miss   : shared/local req/s $(ratio "${RPS[miss_shared]}" "${RPS[miss]}"), cpu $(ratio "${CPU[miss_shared]}" "${CPU[miss]}")"
echo "L2 hit : req/s vs the local miss $(ratio "${RPS[l2_hit]}" "${RPS[miss]}"), cpu $(ratio "${CPU[l2_hit]}" "${CPU[miss]}"); Redis hits counted: ${l2:-0}"
