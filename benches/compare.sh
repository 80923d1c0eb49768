#!/usr/bin/env bash
# Side-by-side throughput and latency of cardgate and the nginx anchor, in one run.
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
# another process; cardgate's always does. `nginx_miss_xproc` is the same nginx proxy
# (benches/nginx-proxy.conf) in a process of its own on :18082, against the same CRM.
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
work=$(mktemp -d /tmp/cardgate-compare.XXXXXX)
chmod 755 "$work"   # nginx workers (another user when run as root) write the cache here
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  ANCHOR_DIR=$work/anchor "$anchor" stop >/dev/null 2>&1 || true
  [ -f "$work/proxy/nginx.pid" ] && kill "$(cat "$work/proxy/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ANCHOR_DIR=$work/anchor "$anchor" start
mkdir -p "$work/proxy"
sed -e "s/CRM_PORT/18081/" -e "s/PROXY_PORT/18082/" benches/nginx-proxy.conf >"$work/proxy/nginx.conf"
nginx -p "$work/proxy" -c "$work/proxy/nginx.conf"

gateway() { # name listen admin ttl
  cat >"$work/$1.toml" <<TOML
[server]
listen = "$2"
threads = 1
grace_period = "1s"
upgrade_sock = "$work/$1.sock"
[admin]
listen = "$3"
[upstream]
url = "http://127.0.0.1:18081"
[cache]
ttl = "$4"
[log]
access = false
TOML
  "$bin" --config "$work/$1.toml" >"$work/$1.log" 2>&1 &
  pids+=($!)
}
gateway cached 127.0.0.1:18090 127.0.0.1:18091 60s
gateway nocache 127.0.0.1:18092 127.0.0.1:18093 0s
for port in 18080 18081 18082 18090 18092; do
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done

# run NAME URL [wrk args...] -> "NAME req/s p50 p99"
run() {
  local name=$1 url=$2; shift 2
  local out
  out=$(wrk -t1 -c64 -d"${secs}s" --latency "$@" "$url")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local non2xx
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  [ -z "$non2xx" ] || echo "warning: $name had $non2xx non-2xx answers" >&2
  echo "$name $rps $p50 $p99"
}

tok=bench-token-1
curl -s -o /dev/null "http://127.0.0.1:18080/rest/chat/client/id/$tok"
curl -s -o /dev/null "http://127.0.0.1:18090/rest/chat/client/id/$tok"
results=()
results+=("$(run nginx_hit "http://127.0.0.1:18080/rest/chat/client/id/$tok")")
results+=("$(run cardgate_hit "http://127.0.0.1:18090/rest/chat/client/id/$tok")")
results+=("$(PREFIX=/nocache/ run nginx_miss http://127.0.0.1:18080 -s benches/unique.lua)")
results+=("$(PREFIX=/nocache/ run nginx_miss_xproc http://127.0.0.1:18082 -s benches/unique.lua)")
results+=("$(run cardgate_miss http://127.0.0.1:18092 -s benches/unique.lua)")
results+=("$(run ceiling "http://127.0.0.1:18081/rest/chat/client/id/" -H "token: $tok")")

# Latency to microseconds, for the ratios.
us() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'; }
declare -A RPS P50 P99
printf '%-14s %12s %10s %10s\n' path req/s p50 p99
for line in "${results[@]}"; do
  read -r name rps p50 p99 <<<"$line"
  RPS[$name]=$rps; P50[$name]=$(us "$p50"); P99[$name]=$(us "$p99")
  printf '%-14s %12s %10s %10s\n' "$name" "$rps" "$p50" "$p99"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "cache hit : cardgate/nginx req/s $(ratio "${RPS[cardgate_hit]}" "${RPS[nginx_hit]}")," \
  "cardgate/ceiling $(ratio "${RPS[cardgate_hit]}" "${RPS[ceiling]}")," \
  "p99 cardgate/nginx $(ratio "${P99[cardgate_hit]}" "${P99[nginx_hit]}")"
echo "miss path : cardgate/nginx req/s $(ratio "${RPS[cardgate_miss]}" "${RPS[nginx_miss]}")," \
  "p99 cardgate/nginx $(ratio "${P99[cardgate_miss]}" "${P99[nginx_miss]}")"
echo "miss path, nginx proxy in its own process: cardgate/nginx req/s" \
  "$(ratio "${RPS[cardgate_miss]}" "${RPS[nginx_miss_xproc]}"), p99 $(ratio "${P99[cardgate_miss]}" "${P99[nginx_miss_xproc]}")"
