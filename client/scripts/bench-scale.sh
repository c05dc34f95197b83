#!/usr/bin/env bash
# How the cluster scales out: for each size in SIZES (default 3 6 12), N local release
# nodes on loopback, then
#  1. CONNS idle clients on node 2 (each its own user and user group): every other node's
#     RSS growth per remote connection, and the bytes it received from its peers per
#     connection registered (presence through Raft, interest);
#  2. PUBLISHES publishes on node 1 to one group with a subscriber on node 3 only: the
#     bytes each node received per publish;
#  3. cross-node delivery latency (200 clients on node 2, publishing on node 1).
# Figures: one line per node, then a summary line per size; docs/benchmarks.md keeps
# them and docs/cluster.md's cost model is built on them.
#
#   SIZES="3 6 12" CONNS=10000 client/scripts/bench-scale.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p switchboard-node -p switchboard-client >/dev/null 2>&1
S=target/release/switchboard
B=target/release/switchboard-bench
CONNS=${CONNS:-10000}
PUBLISHES=${PUBLISHES:-2000}
SECRET=benchsecret
root=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

ws() { echo "127.0.0.1:$((9000 + 10 * $1 + 1))"; }
admin() { echo "127.0.0.1:$((9000 + 10 * $1 + 2))"; }
resp() { echo "127.0.0.1:$((16000 + $1))"; }
peer() { echo "127.0.0.1:$((17000 + $1))"; }
rss() { awk '/VmRSS/{print $2 * 1024}' "/proc/${pids[$1 - 1]}/status"; }
metric() { # metric NODE NAME: the sum of a metric's samples on a node
  curl -sf "http://$(admin "$1")/metrics" | awk -v m="switchboard_$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d\n", s}'
}
status() { $S status --admin "$(admin "$1")" --json; }

# Waits (60 s at most) until `check NODE` succeeds on every node 1..N.
on_all() {
  local n=$1 check=$2 i ok
  for _ in $(seq 600); do
    ok=1
    for i in $(seq "$n"); do $check "$i" || { ok=0; break; }; done
    [[ $ok == 1 ]] && return 0
    sleep 0.1
  done
  echo "timed out waiting for: $check" >&2
  return 1
}

for N in ${SIZES:-3 6 12}; do
  pids=()
  dir=$root/n$N
  mkdir -p "$dir"
  for i in $(seq "$N"); do
    seeds=()
    [[ $i != 1 ]] && seeds=(--seeds "$(peer 1)")
    $S serve --node-id "$i" --jwt-secret $SECRET --cluster-secret scale-bench \
      --ws-listen "$(ws "$i")" --resp-listen "$(resp "$i")" --admin-listen "$(admin "$i")" \
      --peer-listen "$(peer "$i")" --data-dir "$dir/node-$i" "${seeds[@]}" ${FLAGS:-} >"$dir/node-$i.log" 2>&1 &
    pids+=($!)
    [[ $i == 1 ]] && { for _ in $(seq 100); do curl -sf "http://$(ws 1)/readyz" >/dev/null && break; sleep 0.1; done; }
  done
  ready() { curl -sf "http://$(ws "$1")/readyz" >/dev/null && status "$1" | grep -qF "\"members_up\":$N"; }
  on_all "$N" ready
  settled() { status "$1" | grep -qF '"buckets_moving":0'; }
  on_all "$N" settled
  sleep 2 # allocator caches and the first full syncs settle

  declare -A r0 x0 r1 x1 x2
  for i in $(seq "$N"); do r0[$i]=$(rss "$i"); x0[$i]=$(metric "$i" peer_received_bytes_total); done
  $B idle --jwt-secret $SECRET --ws "ws://$(ws 2)/ws/notifications/" --admin "$(admin 2)" \
    --connections "$CONNS" --hold 12 >"$dir/idle.txt" 2>&1 &
  idle=$!
  # The last client (user CONNS) registered, as every node's presence answers.
  registered() { $S presence "$CONNS" --admin "$(admin "$1")" --json 2>/dev/null | grep -qF '"node":2'; }
  on_all "$N" registered
  sleep 4 # every node's tables have settled; allocator caches too
  for i in $(seq "$N"); do r1[$i]=$(rss "$i"); x1[$i]=$(metric "$i" peer_received_bytes_total); done
  wait $idle

  # One group with a subscriber on node 3; publishes on node 1.
  $B fanout --jwt-secret $SECRET --ws "ws://$(ws 3)/ws/notifications/" --admin "$(admin 3)" \
    --resp "$(resp 1)" --connections 1 --groups 1 --rate 1000 --duration "$((PUBLISHES / 1000))" \
    --pipeline 1 --payload-size 64 >"$dir/publish.txt" 2>&1
  for i in $(seq "$N"); do x2[$i]=$(metric "$i" peer_received_bytes_total); done
  published=$(sed -n 's/^published *\([0-9]*\).*/\1/p' "$dir/publish.txt" | head -1)
  published=${published:-$PUBLISHES}

  $B fanout --jwt-secret $SECRET --ws "ws://$(ws 2)/ws/notifications/" --admin "$(admin 2)" \
    --resp "$(resp 1)" --connections 200 --groups 1 --rate 200 --duration 8 \
    --pipeline 1 --payload-size 64 >"$dir/latency.txt" 2>&1
  p50=$(sed -n 's/^latency p50 (ms) *//p' "$dir/latency.txt")
  p99=$(sed -n 's/^latency p99 (ms) *//p' "$dir/latency.txt")

  echo "== $N nodes: $CONNS idle connections on node 2, then $published publishes on node 1 to a subscriber on node 3"
  printf '%-6s %14s %16s %16s\n' node "RSS B/conn" "rx B/connect" "rx B/publish"
  sum=0 others=0 max=0
  for i in $(seq "$N"); do
    per=$(( (r1[$i] - r0[$i]) / CONNS ))
    rx=$(( (x1[$i] - x0[$i]) / CONNS ))
    rxp=$(( (x2[$i] - x1[$i]) / (published > 0 ? published : 1) ))
    printf '%-6s %14d %16d %16d\n' "$i" "$per" "$rx" "$rxp"
    if [[ $i != 2 ]]; then sum=$((sum + per)); others=$((others + 1)); ((per > max)) && max=$per; fi
  done
  echo "per remote connection: mean $((sum / others)) B, max $max B over the $others other nodes"
  echo "cross-node latency (200 clients on node 2, 200 publishes/s on node 1): p50 $p50 ms, p99 $p99 ms"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
done
