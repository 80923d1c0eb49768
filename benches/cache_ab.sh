#!/usr/bin/env bash
# Two builds of cardgate on the card cache's paths, in alternating rounds of one run:
# CPU microseconds per request of each, and their ratio B/A (medians over the rounds).
#
#   benches/cache_ab.sh BIN_A BIN_B [rounds] [seconds-per-run]   (defaults 6 and 3)
#
# Paths:  hit        = one token, cached after the first request
#         full_miss  = a new token on every request into a full cache (cache.max_size
#                      64 MiB, filled before the rounds): a lookup that finds nothing, a
#                      CRM call, and a store that evicts the least recent card
# The CRM is the nginx anchor's `return 200` (../shared/bench, or $ANCHOR_SH) on :18081;
# each build runs with one worker thread. Needs nginx (Debian: nginx-light) and wrk.
# Loopback only; every run is bounded by its seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 BIN_A BIN_B [rounds] [seconds]" >&2; exit 2; }
bin_a=$1 bin_b=$2 rounds=${3:-6} secs=${4:-3}
[ "$rounds" -ge 1 ] && [ "$rounds" -le 50 ] || { echo "rounds must be 1..50" >&2; exit 2; }
[ "$secs" -ge 1 ] && [ "$secs" -le 60 ] || { echo "seconds must be 1..60" >&2; exit 2; }
anchor=${ANCHOR_SH:-../shared/bench/nginx-anchor.sh}
for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx-light wrk curl)" >&2; exit 2; }
done
. benches/common.sh

ANCHOR_DIR=$work/anchor "$anchor" start
cleanup_hooks+=("ANCHOR_DIR=$work/anchor $anchor stop")
bin=$bin_a gateway a_hit 127.0.0.1:18190 127.0.0.1:18191 http://127.0.0.1:18081 60s
bin=$bin_b gateway b_hit 127.0.0.1:18192 127.0.0.1:18193 http://127.0.0.1:18081 60s
CACHE_MAX_SIZE=64MiB bin=$bin_a gateway a_full 127.0.0.1:18194 127.0.0.1:18195 http://127.0.0.1:18081 60m
CACHE_MAX_SIZE=64MiB bin=$bin_b gateway b_full 127.0.0.1:18196 127.0.0.1:18197 http://127.0.0.1:18081 60m
wait_ports 127.0.0.1:18081 127.0.0.1:18190 127.0.0.1:18192 127.0.0.1:18194 127.0.0.1:18196
tok=bench-token-1
for port in 18190 18192; do curl -s -o /dev/null "http://127.0.0.1:$port/rest/chat/client/id/$tok"; done
# Fill both bounded caches past max_size (64 MiB of the anchor's card is some 100 000).
for port in 18194 18196; do
  wrk -t1 -c64 -d20s -s benches/unique.lua "http://127.0.0.1:$port" >/dev/null
done
for port in 18195 18197; do
  curl -s "http://127.0.0.1:$port/metrics" | grep -E '^cardgate_cache_(entries|evictions_total|weighted_bytes) '
done

declare -A CPU
for r in $(seq "$rounds"); do
  for side in a b; do
    eval "h=\$pid_${side}_hit f=\$pid_${side}_full"
    port_hit=$([ "$side" = a ] && echo 18190 || echo 18192)
    port_full=$([ "$side" = a ] && echo 18194 || echo 18196)
    read -r _ _ _ _ cpu <<<"$(run "${side}_hit" "$h" "http://127.0.0.1:$port_hit/rest/chat/client/id/$tok")"
    CPU[${side}_hit]+="$cpu "
    read -r _ _ _ _ cpu <<<"$(run "${side}_full" "$f" "http://127.0.0.1:$port_full" -s benches/unique.lua)"
    CPU[${side}_full]+="$cpu "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf '%-10s %10s %10s %8s  %s\n' path A_cpu_us B_cpu_us B/A rounds
for path in hit full; do
  a=$(median <<<"${CPU[a_$path]}") b=$(median <<<"${CPU[b_$path]}")
  printf '%-10s %10s %10s %8s  A: %s B: %s\n' "$path" "$a" "$b" "$(ratio "$b" "$a")" "${CPU[a_$path]}" "${CPU[b_$path]}"
done
