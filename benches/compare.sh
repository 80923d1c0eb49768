#!/usr/bin/env bash
# Side-by-side throughput, latency and CPU per request of cardgate and the nginx anchor,
# in one run.
#
#   benches/compare.sh [seconds-per-run]      (default 10; every run is bounded by it)
#
# Needs: nginx (Debian: nginx-light) and wrk on PATH; installs nothing itself. Everything
# listens on 127.0.0.1 only. The nginx anchor (../shared/bench/nginx-anchor.sh, or
# $ANCHOR_SH) serves the mock CRM on :18081 and its proxy on :18080; cardgate runs with one
# worker thread against that same CRM (same card body) on :18090 (cache on) and :18092
# (cache off). wrk: one thread, 64 connections, as the anchor's figures were taken.
#
# Paths:  hit     = one token, cached after the first request
#         miss    = a new token on every request (nginx: /nocache/, cardgate: ttl 0)
#         ceiling = the CRM's own `return 200` (the fastest one HTTP/1.1 worker gets here)
# In the anchor, proxy and CRM share one nginx worker, so nginx's miss path never wakes
# another process (and its CPU column includes the CRM's work); cardgate's always does.
# `nginx_miss_xproc` is the same nginx proxy (benches/nginx-proxy.conf) in a process of
# its own on :18082, against the same CRM. cpu_us: user+system CPU of the serving
# process(es) per request, from /proc/PID/stat around the run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
[ "$secs" -ge 1 ] && [ "$secs" -le 120 ] || { echo "seconds must be 1..120" >&2; exit 2; }
anchor=${ANCHOR_SH:-../shared/bench/nginx-anchor.sh}
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx-light wrk)" >&2; exit 2; }
done
[ -x "$anchor" ] || { echo "needs the nginx anchor script at $anchor (set ANCHOR_SH)" >&2; exit 2; }

cargo build --release --quiet
bin=target/release/cardgate
. benches/common.sh

ANCHOR_DIR=$work/anchor "$anchor" start
cleanup_hooks+=("ANCHOR_DIR=$work/anchor $anchor stop")
mkdir -p "$work/proxy"
sed -e "s/CRM_PORT/18081/" -e "s/PROXY_PORT/18082/" benches/nginx-proxy.conf >"$work/proxy/nginx.conf"
nginx -p "$work/proxy" -c "$work/proxy/nginx.conf"
cleanup_hooks+=("kill \$(cat $work/proxy/nginx.pid)")

gateway cached 127.0.0.1:18090 127.0.0.1:18091 http://127.0.0.1:18081 60s
gateway nocache 127.0.0.1:18092 127.0.0.1:18093 http://127.0.0.1:18081 0s
wait_ports 127.0.0.1:18080 127.0.0.1:18081 127.0.0.1:18082 127.0.0.1:18090 127.0.0.1:18092
# The nginx worker processes (not the cache manager and loader, which come and go).
workers() { pgrep -P "$(cat "$1")" -f 'worker process' | tr '\n' ' '; }
anchor_workers=$(workers "$work/anchor/nginx.pid")
proxy_workers=$(workers "$work/proxy/nginx.pid")

tok=bench-token-1
curl -s -o /dev/null "http://127.0.0.1:18080/rest/chat/client/id/$tok"
curl -s -o /dev/null "http://127.0.0.1:18090/rest/chat/client/id/$tok"
results=()
results+=("$(run nginx_hit "$anchor_workers" "http://127.0.0.1:18080/rest/chat/client/id/$tok")")
results+=("$(run cardgate_hit "$pid_cached" "http://127.0.0.1:18090/rest/chat/client/id/$tok")")
results+=("$(PREFIX=/nocache/ run nginx_miss "$anchor_workers" http://127.0.0.1:18080 -s benches/unique.lua)")
results+=("$(PREFIX=/nocache/ run nginx_miss_xproc "$proxy_workers" http://127.0.0.1:18082 -s benches/unique.lua)")
results+=("$(run cardgate_miss "$pid_nocache" http://127.0.0.1:18092 -s benches/unique.lua)")
results+=("$(run ceiling "$anchor_workers" "http://127.0.0.1:18081/rest/chat/client/id/" -H "token: $tok")")

declare -A RPS P99 CPU
printf '%-17s %12s %10s %10s %8s\n' path req/s p50 p99 cpu_us
for line in "${results[@]}"; do
  read -r name rps p50 p99 cpu <<<"$line"
  RPS[$name]=$rps; P99[$name]=$(us "$p99"); CPU[$name]=$cpu
  printf '%-17s %12s %10s %10s %8s\n' "$name" "$rps" "$(us "$p50")" "${P99[$name]}" "$cpu"
done
echo
echo "cache hit : cardgate/nginx req/s $(ratio "${RPS[cardgate_hit]}" "${RPS[nginx_hit]}")," \
  "cardgate/ceiling $(ratio "${RPS[cardgate_hit]}" "${RPS[ceiling]}")," \
  "p99 cardgate/nginx $(ratio "${P99[cardgate_hit]}" "${P99[nginx_hit]}")," \
  "cpu cardgate/nginx $(ratio "${CPU[cardgate_hit]}" "${CPU[nginx_hit]}")"
echo "miss path : cardgate/nginx req/s $(ratio "${RPS[cardgate_miss]}" "${RPS[nginx_miss]}")," \
  "p99 cardgate/nginx $(ratio "${P99[cardgate_miss]}" "${P99[nginx_miss]}")"
echo "miss path, nginx proxy in its own process: cardgate/nginx req/s" \
  "$(ratio "${RPS[cardgate_miss]}" "${RPS[nginx_miss_xproc]}"), p99 $(ratio "${P99[cardgate_miss]}" "${P99[nginx_miss_xproc]}")," \
  "cpu $(ratio "${CPU[cardgate_miss]}" "${CPU[nginx_miss_xproc]}")"
