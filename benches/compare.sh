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
#         tls_hit = the hit over TLS (keep-alive): cardgate's [server.tls] listener on :18094
#                   against the same nginx proxy with `listen ssl` on :18084 (benches/nginx-tls.conf),
#                   one ECDSA P-256 certificate made for the run
#         tls_handshake = the same with `Connection: close`: a full TLS handshake per request
#         haproxy_miss = HAProxy (../shared/bench/haproxy-anchor.cfg, nbthread 1, moved to
#                   :18086) doing the miss path its way: set-method POST, set-header token,
#                   set-path, keep-alive to the same CRM
#         cardgate_miss_nodes = cardgate's miss path with the CRM side switched on: two node
#                   entries for the same CRM (127.0.0.1 and localhost), health checks,
#                   max_inflight, retries (the defaults)
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
for tool in nginx wrk haproxy openssl curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx-light wrk haproxy openssl curl)" >&2; exit 2; }
done
haproxy_cfg=${HAPROXY_CFG:-../shared/bench/haproxy-anchor.cfg}
[ -r "$haproxy_cfg" ] || { echo "needs the HAProxy anchor at $haproxy_cfg (set HAPROXY_CFG)" >&2; exit 2; }
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

# TLS: one certificate (ECDSA P-256) for nginx and cardgate alike.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -keyout "$work/tls-key.pem" -out "$work/tls-cert.pem" 2>/dev/null
mkdir -p "$work/tls"
sed -e "s/CRM_PORT/18081/" -e "s/PROXY_PORT/18084/" -e "s|CERT_FILE|$work/tls-cert.pem|" \
  -e "s|KEY_FILE|$work/tls-key.pem|" benches/nginx-tls.conf >"$work/tls/nginx.conf"
nginx -p "$work/tls" -c "$work/tls/nginx.conf"
cleanup_hooks+=("kill \$(cat $work/tls/nginx.pid)")
TLS_LISTEN=127.0.0.1:18094 TLS_CERT=$work/tls-cert.pem TLS_KEY=$work/tls-key.pem \
  gateway tls 127.0.0.1:18095 127.0.0.1:18096 http://127.0.0.1:18081 60s
gateway cached 127.0.0.1:18090 127.0.0.1:18091 http://127.0.0.1:18081 60s
gateway nocache 127.0.0.1:18092 127.0.0.1:18093 http://127.0.0.1:18081 0s
CRM_URLS='["http://127.0.0.1:18081", "http://localhost:18081"]' \
  gateway nodes 127.0.0.1:18097 127.0.0.1:18098 - 0s
haproxy_start 18086
wait_ports 127.0.0.1:18080 127.0.0.1:18081 127.0.0.1:18082 127.0.0.1:18084 127.0.0.1:18086 127.0.0.1:18090 \
  127.0.0.1:18092 127.0.0.1:18094 127.0.0.1:18097
# The nginx worker processes (not the cache manager and loader, which come and go).
workers() { pgrep -P "$(cat "$1")" -f 'worker process' | tr '\n' ' '; }
anchor_workers=$(workers "$work/anchor/nginx.pid")
proxy_workers=$(workers "$work/proxy/nginx.pid")
tls_workers=$(workers "$work/tls/nginx.pid")

tok=bench-token-1
curl -s -o /dev/null "http://127.0.0.1:18080/rest/chat/client/id/$tok"
curl -s -o /dev/null "http://127.0.0.1:18090/rest/chat/client/id/$tok"
curl -sk -o /dev/null "https://127.0.0.1:18084/rest/chat/client/id/$tok"
curl -sk -o /dev/null "https://127.0.0.1:18094/rest/chat/client/id/$tok"
results=()
results+=("$(run nginx_hit "$anchor_workers" "http://127.0.0.1:18080/rest/chat/client/id/$tok")")
results+=("$(run cardgate_hit "$pid_cached" "http://127.0.0.1:18090/rest/chat/client/id/$tok")")
results+=("$(PREFIX=/nocache/ run nginx_miss "$anchor_workers" http://127.0.0.1:18080 -s benches/unique.lua)")
results+=("$(PREFIX=/nocache/ run nginx_miss_xproc "$proxy_workers" http://127.0.0.1:18082 -s benches/unique.lua)")
results+=("$(run cardgate_miss "$pid_nocache" http://127.0.0.1:18092 -s benches/unique.lua)")
results+=("$(run haproxy_miss "$haproxy_pid" http://127.0.0.1:18086 -s benches/unique.lua)")
results+=("$(run cardgate_miss_nodes "$pid_nodes" http://127.0.0.1:18097 -s benches/unique.lua)")
results+=("$(run ceiling "$anchor_workers" "http://127.0.0.1:18081/rest/chat/client/id/" -H "token: $tok")")
results+=("$(run nginx_tls_hit "$tls_workers" "https://127.0.0.1:18084/rest/chat/client/id/$tok")")
results+=("$(run cardgate_tls_hit "$pid_tls" "https://127.0.0.1:18094/rest/chat/client/id/$tok")")
# A new TLS connection (full handshake, no resumption) per request.
results+=("$(run nginx_tls_handshake "$tls_workers" "https://127.0.0.1:18084/rest/chat/client/id/$tok" -H "Connection: close")")
results+=("$(run cardgate_tls_handshake "$pid_tls" "https://127.0.0.1:18094/rest/chat/client/id/$tok" -H "Connection: close")")

declare -A RPS P99 CPU
printf '%-20s %12s %10s %10s %8s\n' path req/s p50 p99 cpu_us
for line in "${results[@]}"; do
  read -r name rps p50 p99 cpu <<<"$line"
  RPS[$name]=$rps; P99[$name]=$(us "$p99"); CPU[$name]=$cpu
  printf '%-20s %12s %10s %10s %8s\n' "$name" "$rps" "$(us "$p50")" "${P99[$name]}" "$cpu"
done
echo
echo "cache hit : cardgate/nginx req/s $(ratio "${RPS[cardgate_hit]}" "${RPS[nginx_hit]}")," \
  "cardgate/ceiling $(ratio "${RPS[cardgate_hit]}" "${RPS[ceiling]}")," \
  "p99 cardgate/nginx $(ratio "${P99[cardgate_hit]}" "${P99[nginx_hit]}")," \
  "cpu cardgate/nginx $(ratio "${CPU[cardgate_hit]}" "${CPU[nginx_hit]}")"
echo "miss path : cardgate/nginx req/s $(ratio "${RPS[cardgate_miss]}" "${RPS[nginx_miss]}")," \
  "p99 cardgate/nginx $(ratio "${P99[cardgate_miss]}" "${P99[nginx_miss]}")"
echo "TLS hit  : cardgate/nginx req/s $(ratio "${RPS[cardgate_tls_hit]}" "${RPS[nginx_tls_hit]}")," \
  "p99 cardgate/nginx $(ratio "${P99[cardgate_tls_hit]}" "${P99[nginx_tls_hit]}")," \
  "cpu cardgate/nginx $(ratio "${CPU[cardgate_tls_hit]}" "${CPU[nginx_tls_hit]}")"
echo "TLS handshakes/s: cardgate/nginx $(ratio "${RPS[cardgate_tls_handshake]}" "${RPS[nginx_tls_handshake]}")," \
  "cpu per handshake cardgate/nginx $(ratio "${CPU[cardgate_tls_handshake]}" "${CPU[nginx_tls_handshake]}")"
echo "miss path, nginx proxy in its own process: cardgate/nginx req/s" \
  "$(ratio "${RPS[cardgate_miss]}" "${RPS[nginx_miss_xproc]}"), p99 $(ratio "${P99[cardgate_miss]}" "${P99[nginx_miss_xproc]}")," \
  "cpu $(ratio "${CPU[cardgate_miss]}" "${CPU[nginx_miss_xproc]}")"
echo "miss path vs HAProxy: cardgate/haproxy req/s $(ratio "${RPS[cardgate_miss]}" "${RPS[haproxy_miss]}")," \
  "cpu $(ratio "${CPU[cardgate_miss]}" "${CPU[haproxy_miss]}"); with two nodes, health checks, max_inflight:" \
  "req/s $(ratio "${RPS[cardgate_miss_nodes]}" "${RPS[haproxy_miss]}"), cpu $(ratio "${CPU[cardgate_miss_nodes]}" "${CPU[haproxy_miss]}")," \
  "p99 $(ratio "${P99[cardgate_miss_nodes]}" "${P99[haproxy_miss]}")"
