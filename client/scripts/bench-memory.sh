#!/usr/bin/env bash
# The memory account of an idle connection: a release node run under heaptrack (Debian's
# `heaptrack`, installed if missing), N idle clients from `switchboard-bench idle` (each
# its own user and user group), then the node killed while it holds them, so that what
# is still allocated is the live heap at that moment. heap-account.py sorts it into
# components (bytes and allocations per connection); the node's RSS growth per
# connection is printed beside it from a second run without heaptrack.
#
#   CONNS=5000 client/scripts/bench-memory.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${CONNS:-5000}
command -v heaptrack >/dev/null || { apt-get update -qq && apt-get install -y -qq heaptrack >/dev/null; }
cargo build --release -p switchboard-node -p switchboard-client >/dev/null 2>&1
S=$PWD/target/release/switchboard
B=$PWD/target/release/switchboard-bench
dir=$(mktemp -d)
secret=benchsecret
trap 'pkill -KILL -f "$S serve" 2>/dev/null || true' EXIT

ready() {
  for _ in $(seq 300); do curl -sf localhost:8001/readyz >/dev/null && return; sleep 0.1; done
  echo "node did not become ready" >&2; exit 1
}
# The node's own pid (under heaptrack, its parent is heaptrack's shell).
node_pid() { for p in $(pgrep -f "$S serve"); do [[ $(readlink "/proc/$p/exe") == "$S" ]] && echo "$p"; done; }
connections() { curl -s localhost:8002/metrics | awk '/^switchboard_connections /{print $2}'; }

echo "== RSS: $N idle connections, no profiler"
"$S" serve --jwt-secret "$secret" --data-dir "$dir/rss" --resp-listen 127.0.0.1:6391 >"$dir/rss.log" 2>&1 &
ready
$B idle --jwt-secret "$secret" --connections "$N" --hold 2 --server-pid "$(node_pid)" 2>&1 | grep -E "RSS|connect rate"
pkill -TERM -f "$S serve"; wait

echo "== heap: $N idle connections under heaptrack"
heaptrack -o "$dir/heap" "$S" serve --jwt-secret "$secret" --data-dir "$dir/heap-data" \
  --resp-listen 127.0.0.1:6391 >"$dir/heap.log" 2>&1 &
profiler=$!
ready
$B idle --jwt-secret "$secret" --connections "$N" --hold 120 >"$dir/idle.txt" 2>&1 &
bench=$!
for _ in $(seq 600); do [[ $(connections) == "$N" ]] && break; sleep 0.1; done
[[ $(connections) == "$N" ]] || { echo "the node never held $N connections" >&2; exit 1; }
# heaptrack streams through a buffer that a SIGKILL loses: push the connections'
# records through it with some allocating requests first.
for _ in $(seq 300); do curl -s localhost:8002/metrics >/dev/null; done
kill -KILL "$(node_pid)"
wait "$profiler" || true
kill "$bench" 2>/dev/null || true
wait "$bench" 2>/dev/null || true
heaptrack_print -f "$dir"/heap.*zst --print-leaks 1 --print-peaks 0 --print-allocators 0 \
  --print-temporary 0 -n 1000 -m 0 >"$dir/leaks.txt" 2>/dev/null
# Divide by the connections heaptrack saw: one session task each.
seen=$(python3 client/scripts/heap-account.py "$dir/leaks.txt" 1 | awk -F'  +' '/^connection task/{print int($3 + 0.5)}')
echo "(heaptrack recorded $seen of the $N connections before the kill)"
python3 client/scripts/heap-account.py "$dir/leaks.txt" "${seen:-$N}" --sites "${SITES:-0}"
