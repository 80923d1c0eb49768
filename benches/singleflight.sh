#!/usr/bin/env bash
# Single-flight under a login storm: N concurrent requests (default 1000) for one cold token
# against a slow CRM (cardgate's mock, `lag` tokens answer after 500 ms), through cardgate
# and through nginx with proxy_cache_lock; prints how many calls reached the CRM for each.
#
#   benches/singleflight.sh [N]
#
# Needs nginx (nginx-light) and python3; installs nothing. Loopback only, bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
command -v nginx >/dev/null || { echo "needs nginx (apt-get install -y nginx-light)" >&2; exit 2; }
cargo build --release --quiet
bin=target/release/cardgate
. benches/common.sh
crm=127.0.0.1:18281 gw=127.0.0.1:18290 ngx=127.0.0.1:18280
"$bin" mock-crm --listen $crm >"$work/mock.log" 2>&1 &
pids+=($!)
gateway gw $gw 127.0.0.1:18291 "http://$crm" 60s
mkdir -p "$work/nginx"
sed -e "s/CRM_PORT/${crm##*:}/" -e "s/PROXY_PORT/${ngx##*:}/" benches/nginx-proxy.conf >"$work/nginx/nginx.conf"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf"
cleanup_hooks+=("kill \$(cat $work/nginx/nginx.pid)")
wait_ports $crm $gw $ngx

calls() { # token -> number of CRM calls that carried it
  curl -s "http://$crm/__mock/journal" | python3 -c \
    "import json,sys; print(sum(1 for e in json.load(sys.stdin) if e['headers'].get('token') == sys.argv[1]))" "$1"
}
for who in cardgate nginx; do
  tok="lag-storm-$who-$RANDOM$RANDOM"
  addr=$gw; [ $who = nginx ] && addr=$ngx
  statuses=$(python3 benches/burst.py "$addr" "/rest/chat/client/id/$tok" "$n")
  printf '%-9s %5d concurrent cold requests -> %3d CRM call(s); answers %s\n' "$who" "$n" "$(calls "$tok")" "$statuses"
done
