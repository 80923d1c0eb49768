#!/usr/bin/env bash
# Run every fuzz target for a bounded time each (default 30 s), with libFuzzer through
# cargo-fuzz; on the stable toolchain RUSTC_BOOTSTRAP=1 enables the sanitizer flags.
#
#   fuzz/run.sh [seconds-per-target] [target...]
#
# Inputs it finds go to fuzz/corpus/<target>/ (ignored by git unless added by hand);
# a crash stops the run with the input in fuzz/artifacts/<target>/. Needs cargo-fuzz
# (`cargo install cargo-fuzz`). A target with a `fuzz/<target>.dict` runs with that
# dictionary. Prints one line of figures per target.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request answer route search_params normalise card_scan config)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  log=$(mktemp)
  dict=()
  [ -r "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
  if ! cargo fuzz run "$t" -- "${dict[@]}" -max_total_time="$secs" -max_len=20000 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "$t: FAILED (see fuzz/artifacts/$t/)" >&2
    rm -f "$log"
    exit 1
  fi
  execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
  rate=$(awk '/stat::average_exec_per_sec/ {print $NF}' "$log")
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  echo "$t: ${execs:-?} executions (${rate:-?}/s), coverage ${cov:-?} edges, no findings"
  rm -f "$log"
done
