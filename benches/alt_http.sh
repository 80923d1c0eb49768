#!/usr/bin/env bash
# Our HTTP/1 against off-the-shelf HTTP/1 in the same binary and the same run:
#   hit  path: our listener vs hyper 1.x's server on the Pingora stream (CARDGATE_ALT_HTTP=hyper)
#   miss path: our client   vs Pingora's HTTP/1 client session over our pool (=pingora-client)
#
#   benches/alt_http.sh [seconds-per-run] [rounds]      (defaults 10 and 3)
#
# Builds with `--features alt-http`. The CRM is the nginx anchor's `return 200` on :18081
# (../shared/bench/nginx-anchor.sh). Rounds alternate the order of each pair; the table
# gives every round and the median ratio. cpu_us: user+system CPU of the gateway process
# per request. Needs nginx (nginx-light) and wrk; loopback only; bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
[ "$secs" -ge 1 ] && [ "$secs" -le 120 ] || { echo "seconds must be 1..120" >&2; exit 2; }
[ "$rounds" -ge 1 ] && [ "$rounds" -le 9 ] || { echo "rounds must be 1..9" >&2; exit 2; }
anchor=${ANCHOR_SH:-../shared/bench/nginx-anchor.sh}
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y nginx-light wrk)" >&2; exit 2; }
done

cargo build --release --quiet --features alt-http
bin=target/release/cardgate
. benches/common.sh
ANCHOR_DIR=$work/anchor "$anchor" start
cleanup_hooks+=("ANCHOR_DIR=$work/anchor $anchor stop")

crm=http://127.0.0.1:18081
gateway ours_hit 127.0.0.1:18490 127.0.0.1:18491 $crm 60s
gateway hyper_hit 127.0.0.1:18492 127.0.0.1:18493 $crm 60s CARDGATE_ALT_HTTP=hyper
gateway ours_miss 127.0.0.1:18494 127.0.0.1:18495 $crm 0s
gateway pingora_miss 127.0.0.1:18496 127.0.0.1:18497 $crm 0s CARDGATE_ALT_HTTP=pingora-client
wait_ports 127.0.0.1:18081 127.0.0.1:18490 127.0.0.1:18492 127.0.0.1:18494 127.0.0.1:18496
tok=bench-token-1
for port in 18490 18492; do curl -s -o /dev/null "http://127.0.0.1:$port/rest/chat/client/id/$tok"; done

hit() { run "$1" "$2" "http://127.0.0.1:$3/rest/chat/client/id/$tok"; }
miss() { run "$1" "$2" "http://127.0.0.1:$3" -s benches/unique.lua; }
printf '%-6s %-13s %10s %8s %8s\n' round impl req/s p99_us cpu_us
rps_ratios=() cpu_ratios=()
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then
    a=$(hit ours_hit "$pid_ours_hit" 18490); b=$(hit hyper_hit "$pid_hyper_hit" 18492)
    c=$(miss ours_miss "$pid_ours_miss" 18494); d=$(miss pingora_miss "$pid_pingora_miss" 18496)
  else
    b=$(hit hyper_hit "$pid_hyper_hit" 18492); a=$(hit ours_hit "$pid_ours_hit" 18490)
    d=$(miss pingora_miss "$pid_pingora_miss" 18496); c=$(miss ours_miss "$pid_ours_miss" 18494)
  fi
  for line in "$a" "$b" "$c" "$d"; do
    read -r name rps _p50 p99 cpu <<<"$line"
    printf '%-6s %-13s %10s %8s %8s\n' "$r" "$name" "$rps" "$(us "$p99")" "$cpu"
  done
  read -r _ ar _ _ ac <<<"$a"; read -r _ br _ _ bc <<<"$b"
  read -r _ cr _ _ cc <<<"$c"; read -r _ dr _ _ dc <<<"$d"
  rps_ratios+=("hyper/ours hit req/s $(ratio "$br" "$ar") cpu $(ratio "$bc" "$ac");" \
    "pingora/ours miss req/s $(ratio "$dr" "$cr") cpu $(ratio "$dc" "$cc")")
done
echo
for line in "${rps_ratios[@]}"; do echo "$line"; done
