#!/usr/bin/env bash
# Runs every fuzz target (node/fuzz and proto/fuzz) for RUNS executions each (default 10
# million), one after the other, and prints each target's executions and time. Needs the
# nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The sanitizer is off:
# the project's code forbids `unsafe`, so what is looked for is panics, overflows (debug
# assertions are on) and runaway allocations, and it runs several times faster.
# Usage: node/fuzz/run-all.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-10000000}
run() {
  local dir=$1 target=$2
  local out
  out=$(cd "$dir" && cargo +nightly fuzz run --sanitizer none "$target" -- \
    -runs="$runs" -max_len=4096 -rss_limit_mb=2048 -print_final_stats=1 2>&1) || {
    echo "$out" | tail -30
    echo "$target: FAILED"
    return 1
  }
  echo "$target: $(echo "$out" | grep -E '^Done [0-9]+ runs' | tail -1)"
}
for target in resp_session http_head admin_request jwt peer_frame client_op; do
  run node "$target"
done
run proto resp_decoder
