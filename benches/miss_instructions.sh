#!/usr/bin/env bash
# The miss path in instructions: cardgate (one node, ttl 0) and HAProxy
# (../shared/bench/haproxy-anchor.cfg) each under callgrind, in front of the nginx
# anchor's CRM, a new token per request (wrk, 8 connections, for $secs), counted after a
# warm-up request. Instructions per request are repeatable on a busy machine where CPU
# time is not (user space only, every thread of the process).
#
#   benches/miss_instructions.sh [seconds]     (default 5)
#
# Needs valgrind, nginx, haproxy, wrk, curl. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
[ "$secs" -ge 1 ] && [ "$secs" -le 60 ] || { echo "seconds must be 1..60" >&2; exit 2; }
anchor=${ANCHOR_SH:-../shared/bench/nginx-anchor.sh}
haproxy_cfg=${HAPROXY_CFG:-../shared/bench/haproxy-anchor.cfg}
for tool in valgrind callgrind_control nginx haproxy wrk curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
cargo build --release --quiet
bin=target/release/cardgate
. benches/common.sh

ANCHOR_DIR=$work/anchor "$anchor" start
cleanup_hooks+=("ANCHOR_DIR=$work/anchor $anchor stop")
wait_ports 127.0.0.1:18081
gateway_config cardgate 127.0.0.1:18393 127.0.0.1:18394 http://127.0.0.1:18081 0s
haproxy_config 18395

for name in cardgate haproxy; do
  if [ $name = cardgate ]; then
    url=http://127.0.0.1:18393
    command=("$bin" --config "$work/cardgate.toml")
  else
    url=http://127.0.0.1:18395
    command=(haproxy -f "$work/haproxy.cfg")
  fi
  read -r reqs ir per < <(callgrind_count $name "$url/rest/chat/client/id/warm-up" "$url" -s benches/unique.lua -- "${command[@]}")
  echo "$name requests=$reqs instructions=$ir per_request=$per"
done
