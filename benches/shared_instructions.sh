#!/usr/bin/env bash
# What [shared] (Redis, cards = true) costs an L1 cache hit, in instructions: the same
# gateway without and with it, each under callgrind, which counts instructions per request
# repeatably on a busy machine (user space only; all of the process's threads, the Redis
# background ping included).
#
#   benches/shared_instructions.sh [seconds]     (default 10)
#
# Needs valgrind, redis-server and wrk. Everything listens on 127.0.0.1 only; every run is
# bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
[ "$secs" -ge 1 ] && [ "$secs" -le 120 ] || { echo "seconds must be 1..120" >&2; exit 2; }
for tool in valgrind callgrind_control wrk redis-server; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y valgrind wrk redis-server)" >&2; exit 2; }
done
cargo build --release --quiet
bin=target/release/cardgate
. benches/common.sh

"$bin" mock-crm --listen 127.0.0.1:18391 >"$work/mock.log" 2>&1 &
pids+=($!)
redis-server --bind 127.0.0.1 --port 18379 --save '' --appendonly no --dir "$work" \
  --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
cleanup_hooks+=("kill \$(cat $work/redis.pid)")
wait_ports 127.0.0.1:18391 127.0.0.1:18379
export CARDGATE_SHARED_KEY=bench-shared-secret-0123456789abcdef0123
url=http://127.0.0.1:18393/rest/chat/client/id/bench-token-1
per_request=()
for shared in off on; do
  cat >"$work/g.toml" <<TOML
[server]
listen = "127.0.0.1:18393"
threads = 1
runtime_dir = "$work/run"
[admin]
listen = "127.0.0.1:18394"
[upstream]
url = "http://127.0.0.1:18391"
[log]
access = false
TOML
  if [ $shared = on ]; then
    printf '[shared]\nurl = "redis://127.0.0.1:18379/0"\ncards = true\nencryption_key_env = "CARDGATE_SHARED_KEY"\n' \
      >>"$work/g.toml"
  fi
  read -r reqs ir per < <(callgrind_hits "$shared" "$work/g.toml" "$url")
  per_request+=("$per")
  echo "shared=$shared requests=$reqs instructions=$ir per_request=$per"
done
echo "L1 hit, ratio with/without [shared]: $(ratio "${per_request[1]}" "${per_request[0]}")"
