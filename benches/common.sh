# Shared by the benchmark scripts (sourced, not run): a work folder cleaned up on exit,
# cardgate instances with one worker, waiting for ports, and wrk runs that also report
# the CPU the serving process spent per request. Loopback only; every run is bounded.

work=$(mktemp -d /tmp/cardgate-bench.XXXXXX)
chmod 755 "$work"   # nginx workers (another user when run as root) write here
pids=()
cleanup_hooks=()
cleanup() {
  for hook in "${cleanup_hooks[@]}"; do eval "$hook" >/dev/null 2>&1 || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# gateway_config NAME LISTEN ADMIN CRM_URL TTL: write $work/NAME.toml, a cardgate with one
# worker; access log off unless LOG_ACCESS=true; with TLS_LISTEN, TLS_CERT and TLS_KEY
# set, a TLS listener too; with CRM_URLS (a TOML list) several nodes instead of CRM_URL;
# CACHE_MAX_SIZE sets cache.max_size; SHARED_TOML is the body of a [shared] section.
gateway_config() {
  local name=$1 listen=$2 admin=$3 url=$4 ttl=$5
  cat >"$work/$name.toml" <<TOML
[server]
listen = "$listen"
threads = 1
grace_period = "1s"
upgrade_sock = "$work/$name.sock"
[admin]
listen = "$admin"
[upstream]
$(if [ -n "${CRM_URLS:-}" ]; then echo "urls = $CRM_URLS"; else echo "url = \"$url\""; fi)
[cache]
ttl = "$ttl"
$([ -z "${CACHE_MAX_SIZE:-}" ] || echo "max_size = \"$CACHE_MAX_SIZE\"")
[log]
access = ${LOG_ACCESS:-false}
TOML
  if [ -n "${SHARED_TOML:-}" ]; then
    printf '[shared]\n%s\n' "$SHARED_TOML" >>"$work/$name.toml"
  fi
  if [ -n "${TLS_LISTEN:-}" ]; then
    cat >>"$work/$name.toml" <<TOML
[server.tls]
listen = "$TLS_LISTEN"
cert_file = "$TLS_CERT"
key_file = "$TLS_KEY"
TOML
  fi
}

# gateway NAME LISTEN ADMIN CRM_URL TTL [ENV=VALUE...]: start cardgate ($bin) with
# gateway_config's NAME.toml (its output goes to $work/NAME.log); its pid is $pid_NAME.
gateway() {
  local name=$1
  gateway_config "$@"
  shift 5
  env "$@" "$bin" --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
}

# haproxy_config PORT: $work/haproxy.cfg, the HAProxy anchor config ($haproxy_cfg, which
# the script sets) listening on 127.0.0.1:PORT instead of the anchor's own port.
haproxy_config() {
  sed -e "s/127.0.0.1:18084/127.0.0.1:$1/" "$haproxy_cfg" >"$work/haproxy.cfg"
}

# haproxy_start PORT: run haproxy_config's HAProxy in the background; its pid is $haproxy_pid.
haproxy_start() {
  haproxy_config "$1"
  haproxy -f "$work/haproxy.cfg" -D -p "$work/haproxy.pid"
  cleanup_hooks+=("kill \$(cat $work/haproxy.pid)")
  haproxy_pid=$(cat "$work/haproxy.pid")
}

# wait_ports HOST:PORT...: until each accepts a connection (10 s at most each).
wait_ports() {
  local hp
  for hp in "$@"; do
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null && break
      sleep 0.1
    done
  done
}

# cpu_ticks PID...: user+system clock ticks used so far by these processes.
cpu_ticks() {
  local total=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

# run NAME "PIDS" URL [wrk args...] -> "NAME req/s p50 p99 cpu-us-per-request"
# PIDS: the serving process(es), whose CPU is charged to the run ("-": none).
run() {
  local name=$1 serving=$2 url=$3
  shift 3
  local before=0 after=0 out
  [ "$serving" = - ] || before=$(cpu_ticks $serving)
  out=$(wrk -t1 -c64 -d"${secs}s" --latency "$@" "$url")
  [ "$serving" = - ] || after=$(cpu_ticks $serving)
  local rps p50 p99 reqs non2xx
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  [ -z "$non2xx" ] || echo "warning: $name had $non2xx non-2xx answers" >&2
  local cpu=n/a
  [ "$serving" = - ] || cpu=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$reqs" \
    'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "n/a" }')
  echo "$name $rps $p50 $p99 $cpu"
}

# callgrind_count NAME WARM_URL URL [WRK_ARG...] -- COMMAND...: run COMMAND under callgrind,
# wait until WARM_URL answers, count instructions over a wrk run of $secs (8 connections,
# the WRK_ARGs) against URL, and print "requests instructions per-request" (user space,
# every thread of the process).
callgrind_count() {
  local name=$1 warm=$2 url=$3 vg reqs ir
  shift 3
  local wrk_args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do wrk_args+=("$1"); shift; done
  shift
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$name.%p" "$@" >"$work/cg.$name.out" 2>&1 &
  vg=$!
  pids+=($vg)
  for _ in $(seq 100); do curl -s -o /dev/null "$warm" && break; sleep 0.3; done
  callgrind_control -z "$vg" >/dev/null      # count from here: warmed up
  reqs=$(wrk -t1 -c8 -d"${secs}s" "${wrk_args[@]}" "$url" | awk '/requests in/ {print $1}')
  callgrind_control -d "$vg" >/dev/null
  sleep 1
  kill "$vg"; wait "$vg" 2>/dev/null || true
  ir=$(grep -h '^summary:' "$work"/cg."$name".*.1 | awk '{s += $2} END {print s}')
  echo "$reqs $ir $(awk -v i="$ir" -v n="$reqs" 'BEGIN { printf "%.0f", i / n }')"
}

# callgrind_hits NAME CONFIG URL: callgrind_count of $bin with CONFIG, URL warmed (the card
# is cached) and then run.
callgrind_hits() {
  callgrind_count "$1" "$3" "$3" -- "$bin" --config "$2"
}

# Latency to microseconds; a ratio of two numbers.
us() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# pin_miss_path PID...: the serving processes (all their threads) on CPU 0, the nginx
# anchor's workers ($work/anchor) on CPU 1, where the wrk of the caller runs too.
pin_miss_path() {
  local p
  [ -s "$work/anchor/nginx.pid" ] || { echo "the nginx anchor is not running" >&2; return 1; }
  for p in "$@"; do taskset -a -p -c 0 "$p" >/dev/null; done
  for p in $(pgrep -P "$(cat "$work/anchor/nginx.pid")"); do taskset -p -c 1 "$p" >/dev/null; done
}
