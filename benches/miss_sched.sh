#!/usr/bin/env bash
# The miss path's scheduling, HAProxy against cardgate, in alternating rounds: per request,
# how often the CRM (nginx), the client (wrk) and the proxy were woken, how often wrk was
# preempted, and the task switches on the core that wrk and the CRM share. On a noisy
# machine these counts hold steady where req/s ratios spread by ±20 % or more, and they are
# what the throughput of this two-core set-up follows: every extra wake-up of the CRM
# preempts wrk on the same core.
#
#   benches/miss_sched.sh [rounds] [seconds-per-run]     (default 3 rounds of 3 s)
#
# Same set-up as benches/miss_rounds.sh: HAProxy (../shared/bench/haproxy-anchor.cfg) and
# cardgate with two node entries for the same CRM (health checks, max_inflight, no card
# kept) on CPU 0, the nginx anchor's CRM and wrk on CPU 1, a new token per request. In each
# run, one second in the middle is recorded (perf, sched_switch and sched_wakeup, all CPUs:
# root or kernel.perf_event_paranoid <= -1), and its counts are divided by the run's
# req/s: per-request figures to about the precision of that second. "client_preempted"
# counts wrk switched out while runnable, whoever took its core. Needs nginx, haproxy, wrk,
# taskset, pgrep, perf and two cores. Loopback only; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-3}
[ "$rounds" -ge 1 ] && [ "$rounds" -le 20 ] || { echo "rounds must be 1..20" >&2; exit 2; }
[ "$secs" -ge 3 ] && [ "$secs" -le 30 ] || { echo "seconds must be 3..30" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "needs two cores" >&2; exit 2; }
anchor=${ANCHOR_SH:-../shared/bench/nginx-anchor.sh}
haproxy_cfg=${HAPROXY_CFG:-../shared/bench/haproxy-anchor.cfg}
for tool in nginx wrk haproxy taskset pgrep perf python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
perf record -q -e sched:sched_switch -a -o /dev/null -- true >/dev/null 2>&1 ||
  { echo "perf cannot record scheduler events on all CPUs (root or perf_event_paranoid -1)" >&2; exit 2; }
cargo build --release --quiet
bin=target/release/cardgate
. benches/common.sh

ANCHOR_DIR=$work/anchor "$anchor" start
cleanup_hooks+=("ANCHOR_DIR=$work/anchor $anchor stop")
CRM_URLS='["http://127.0.0.1:18081", "http://localhost:18081"]' \
  gateway nodes 127.0.0.1:18194 127.0.0.1:18195 - 0s
haproxy_start 18086
wait_ports 127.0.0.1:18081 127.0.0.1:18086 127.0.0.1:18194
pin_miss_path "$haproxy_pid" "$pid_nodes"

for round in $(seq "$rounds"); do
  order=(haproxy cardgate)
  [ $((round % 2)) = 0 ] && order=(cardgate haproxy)
  for who in "${order[@]}"; do
    case $who in
      haproxy) url=http://127.0.0.1:18086 ;;
      cardgate) url=http://127.0.0.1:18194 ;;
    esac
    taskset -c 1 wrk -t1 -c64 -d"${secs}s" -s benches/unique.lua "$url" >"$work/wrk.out" &
    load=$!
    sleep 1
    perf record -q -e sched:sched_switch,sched:sched_wakeup -a -o "$work/sched.data" -- sleep 1 \
      >/dev/null
    # Only the load is waited for: a bare `wait` would also wait for the gateway.
    wait "$load"
    rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
    if [ -z "$rps" ] || grep -q "Non-2xx" "$work/wrk.out"; then
      echo "$who: the run failed or had errors:" >&2
      cat "$work/wrk.out" >&2
      exit 1
    fi
    perf script -i "$work/sched.data" -F comm,cpu,event,trace 2>/dev/null |
      python3 -c '
import re, sys
round_, who, rps = sys.argv[1], sys.argv[2], float(sys.argv[3])
n = dict(crm_wake=0, client_wake=0, proxy_wake=0, crm_core_switch=0, client_preempted=0)
for line in sys.stdin:
    m = re.match(r"\s*(.+?)\s+\[(\d+)\]\s+(\S+):\s*(.*)", line)
    if not m:
        continue
    comm, cpu, event, trace = m.groups()
    if "sched_wakeup" in event:
        woken = re.search(r"comm=(\S+)", trace).group(1)
        if woken.startswith("nginx"):
            n["crm_wake"] += 1
        elif woken.startswith("wrk"):
            n["client_wake"] += 1
        elif woken.startswith(("haproxy", "cardgate")):
            n["proxy_wake"] += 1
    elif "sched_switch" in event and int(cpu) == 1:
        n["crm_core_switch"] += 1
        if re.search(r"prev_comm=wrk .*prev_state=R", trace):
            n["client_preempted"] += 1
print(round_, who, int(rps), *("%.4f" % (v / rps) for v in n.values()))
' "$round" "$who" "$rps"
  done
done | tee "$work/rounds"
python3 - "$work/rounds" <<'PY'
import collections, statistics as st, sys
cols = ["req/s", "crm_wake", "client_wake", "proxy_wake", "crm_core_switch", "client_preempted"]
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r, who, *vals = line.split()
    rows[who].append([float(v) for v in vals])
print("medians, per request (one second of each run):")
print(f"{'':10}" + "".join(f"{c:>17}" for c in cols))
for who, runs in rows.items():
    med = [st.median(v[i] for v in runs) for i in range(len(cols))]
    print(f"{who:10}" + f"{med[0]:17.0f}" + "".join(f"{m:17.3f}" for m in med[1:]))
PY
