#!/usr/bin/env bash
# What the access log costs a cache hit, in instructions: the same gateway with
# `log.access` off and on (lines to a file), each under callgrind, which counts
# instructions per request repeatably on a busy machine (user space only: the writer
# thread's write(2) calls are not counted; they were about 1% of the CPU in perf).
#
#   benches/accesslog_instructions.sh [seconds]     (default 10)
#
# Needs valgrind and wrk. Everything listens on 127.0.0.1 only; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
[ "$secs" -ge 1 ] && [ "$secs" -le 120 ] || { echo "seconds must be 1..120" >&2; exit 2; }
for tool in valgrind callgrind_control wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y valgrind wrk)" >&2; exit 2; }
done
cargo build --release --quiet
bin=target/release/cardgate
. benches/common.sh

"$bin" mock-crm --listen 127.0.0.1:18291 >"$work/mock.log" 2>&1 &
pids+=($!)
wait_ports 127.0.0.1:18291
url=http://127.0.0.1:18293/rest/chat/client/id/bench-token-1
per_request=()
for access in false true; do
  cat >"$work/g.toml" <<TOML
[server]
listen = "127.0.0.1:18293"
threads = 1
runtime_dir = "$work/run"
[admin]
listen = "127.0.0.1:18294"
[upstream]
url = "http://127.0.0.1:18291"
[log]
access = $access
file = "$work/access.log"
TOML
  read -r reqs ir per < <(callgrind_hits "$access" "$work/g.toml" "$url")
  per_request+=("$per")
  echo "log.access=$access requests=$reqs instructions=$ir per_request=$per"
done
echo "ratio on/off: $(ratio "${per_request[1]}" "${per_request[0]}")"
