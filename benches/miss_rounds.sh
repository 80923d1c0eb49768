#!/usr/bin/env bash
# The miss path against HAProxy, in alternating rounds: each round runs HAProxy
# (../shared/bench/haproxy-anchor.cfg, nbthread 1, on :18086), cardgate with one node,
# cardgate with the CRM side switched on (two node entries for the same CRM, health
# checks, max_inflight, retries), and cardgate with one node and the cache on (ttl 60s,
# the default 256 MiB: every card is stored, and once the cache is full each one evicts
# another), one after the other, each against the nginx anchor's CRM (:18081) with a new
# token per request. The first two keep no card (ttl 0), as HAProxy keeps none. It prints
# each round and the medians: req/s and CPU per request (user, system, total, from
# /proc/PID/stat) and the per-round ratios to HAProxy. Alternating rounds and medians are
# what make a ratio readable on a noisy machine.
#
#   benches/miss_rounds.sh [rounds] [seconds-per-run]     (default 8 rounds of 3 s)
#
# With two cores or more the serving processes run on CPU 0 and the CRM and wrk on CPU 1
# (taskset), the same for HAProxy and cardgate. Needs nginx, haproxy, wrk, taskset.
# Everything listens on 127.0.0.1 only; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-8}
secs=${2:-3}
[ "$rounds" -ge 1 ] && [ "$rounds" -le 50 ] || { echo "rounds must be 1..50" >&2; exit 2; }
[ "$secs" -ge 1 ] && [ "$secs" -le 60 ] || { echo "seconds must be 1..60" >&2; exit 2; }
anchor=${ANCHOR_SH:-../shared/bench/nginx-anchor.sh}
haproxy_cfg=${HAPROXY_CFG:-../shared/bench/haproxy-anchor.cfg}
for tool in nginx wrk haproxy taskset python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
cargo build --release --quiet
bin=target/release/cardgate
. benches/common.sh

ANCHOR_DIR=$work/anchor "$anchor" start
cleanup_hooks+=("ANCHOR_DIR=$work/anchor $anchor stop")
gateway miss 127.0.0.1:18192 127.0.0.1:18193 http://127.0.0.1:18081 0s
CRM_URLS='["http://127.0.0.1:18081", "http://localhost:18081"]' \
  gateway nodes 127.0.0.1:18194 127.0.0.1:18195 - 0s
gateway cached 127.0.0.1:18196 127.0.0.1:18197 http://127.0.0.1:18081 60s
haproxy_start 18086
wait_ports 127.0.0.1:18081 127.0.0.1:18086 127.0.0.1:18192 127.0.0.1:18194 127.0.0.1:18196
pin=()
if [ "$(nproc)" -ge 2 ]; then
  pin_miss_path "$haproxy_pid" "$pid_miss" "$pid_nodes" "$pid_cached"
  pin=(taskset -c 1)
fi
split() { awk '{print $14, $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for round in $(seq "$rounds"); do
  for who in haproxy_miss cardgate_miss cardgate_miss_nodes cardgate_miss_cached; do
    case $who in
      haproxy_miss) p=$haproxy_pid; url=http://127.0.0.1:18086 ;;
      cardgate_miss) p=$pid_miss; url=http://127.0.0.1:18192 ;;
      cardgate_miss_nodes) p=$pid_nodes; url=http://127.0.0.1:18194 ;;
      cardgate_miss_cached) p=$pid_cached; url=http://127.0.0.1:18196 ;;
    esac
    read -r u0 s0 < <(split "$p")
    n=$("${pin[@]}" wrk -t1 -c64 -d"${secs}s" -s benches/unique.lua "$url" | awk '/requests in/ {print $1}')
    read -r u1 s1 < <(split "$p")
    awk -v r="$round" -v w="$who" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v secs="$secs" -v hz="$hz" \
      'BEGIN { printf "%d %s %d %.2f %.2f %.2f\n", r, w, n / secs, u / hz * 1e6 / n, s / hz * 1e6 / n, (u + s) / hz * 1e6 / n }'
  done
done | tee "$work/rounds"
python3 - "$work/rounds" <<'PY'
import collections, statistics as st, sys
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, who, rps, user, sys_, cpu = line.split()
    rows[who][r] = (float(rps), float(user), float(sys_), float(cpu))
h = rows["haproxy_miss"]
print("path                  req/s  user_us  sys_us  cpu_us   cpu/haproxy (range)   req/s/haproxy (range)")
for who, runs in rows.items():
    med = [st.median(v[i] for v in runs.values()) for i in range(4)]
    line = f"{who:20} {med[0]:7.0f} {med[1]:8.2f} {med[2]:7.2f} {med[3]:7.2f}"
    if who != "haproxy_miss":
        cpu = [runs[r][3] / h[r][3] for r in runs]
        rps = [runs[r][0] / h[r][0] for r in runs]
        line += f"   {st.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f})   {st.median(rps):.2f} ({min(rps):.2f}-{max(rps):.2f})"
    print(line)
PY
