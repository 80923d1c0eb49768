#!/usr/bin/env bash
# The miss path in instructions: cardgate (one node, ttl 0; two node entries for the same
# CRM with the CRM side switched on, ttl 0; one node with the cache on, ttl 60s) and
# HAProxy (../shared/bench/haproxy-anchor.cfg) each under callgrind, in front of the nginx
# anchor's CRM, a new token per request (wrk, 8 connections, for $secs), counted after a
# warm-up request. Instructions per request are repeatable on a busy machine where CPU
# time is not (user space only, every thread of the process).
#
#   benches/miss_instructions.sh [seconds]     (default 5)
#   PATHS="cardgate_nodes haproxy" benches/miss_instructions.sh    (some of the paths only)
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
CRM_URLS='["http://127.0.0.1:18081", "http://localhost:18081"]' \
  gateway_config cardgate_nodes 127.0.0.1:18396 127.0.0.1:18397 - 0s
gateway_config cardgate_cached 127.0.0.1:18398 127.0.0.1:18399 http://127.0.0.1:18081 60s
haproxy_config 18395

for name in ${PATHS:-cardgate cardgate_nodes cardgate_cached haproxy}; do
  case $name in
    cardgate) url=http://127.0.0.1:18393 ;;
    cardgate_nodes) url=http://127.0.0.1:18396 ;;
    cardgate_cached) url=http://127.0.0.1:18398 ;;
    haproxy) url=http://127.0.0.1:18395 ;;
    *) echo "unknown path $name" >&2; exit 2 ;;
  esac
  if [ $name = haproxy ]; then
    command=(haproxy -f "$work/haproxy.cfg")
  else
    command=("$bin" --config "$work/$name.toml")
  fi
  read -r reqs ir per < <(callgrind_count $name "$url/rest/chat/client/id/warm-up" "$url" -s benches/unique.lua -- "${command[@]}")
  echo "$name requests=$reqs instructions=$ir per_request=$per"
done
