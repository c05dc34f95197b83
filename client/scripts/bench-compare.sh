#!/usr/bin/env bash
# The regression set, two binaries alternated in one run (the machine is noisy: compare
# within a run, never across runs): fan-out on one node, fan-out over three nodes,
# cross-node latency, and the backpressure case (a flat-out publisher on node 1,
# subscribers on nodes 2 and 3). One line per run; ratios go to docs/benchmarks.md.
#
#   client/scripts/bench-compare.sh OLD_SWITCHBOARD NEW_SWITCHBOARD [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
old=$1 new=$2 rounds=${3:-2}
cargo build --release -p switchboard-client >/dev/null 2>&1
B=target/release/switchboard-bench
secret=benchsecret
pick() { grep -E "^$1 " | sed -E "s|^$1 +||"; }

one_node() { # one_node BIN: fan-out to 5 000 clients of one group on one node
  local d
  d=$(mktemp -d)
  "$1" serve --jwt-secret $secret --data-dir "$d" --resp-listen 127.0.0.1:6391 >"$d/log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf localhost:8001/readyz >/dev/null && break; sleep 0.1; done
  $B fanout --jwt-secret $secret --resp 127.0.0.1:6391 --connections 5000 --groups 1 --rate 0 \
    --duration 6 --pipeline 16 --payload-size 64 >"$d/out" 2>&1
  echo "one node fan-out, deliveries/s: $(pick 'delivered msgs/s' <"$d/out"), lost $(pick lost <"$d/out")"
  kill -TERM $pid
  wait $pid || true
}

three_nodes() { # three_nodes BIN
  local d
  d=$(mktemp -d)
  SWITCHBOARD_LOCAL_DIR=$d SWITCHBOARD_BIN=$1 SWITCHBOARD_JWT_SECRET=$secret deploy/local-cluster.sh start >/dev/null
  S=$1
  . client/scripts/lib.sh
  formed '"buckets_moving":0'
  $B fanout --jwt-secret $secret --ws ws://127.0.0.1:8001/ws/notifications/,ws://127.0.0.1:8011/ws/notifications/,ws://127.0.0.1:8021/ws/notifications/ \
    --admin 127.0.0.1:8002 --resp 127.0.0.1:6380 --connections 3000 --groups 1 --rate 0 --duration 6 \
    --pipeline 16 --payload-size 64 >"$d/fan" 2>&1
  echo "3 nodes fan-out, deliveries/s: $(pick 'delivered msgs/s' <"$d/fan"), lost $(pick lost <"$d/fan")"
  $B fanout --jwt-secret $secret --ws ws://127.0.0.1:8011/ws/notifications/ --admin 127.0.0.1:8012 \
    --resp 127.0.0.1:6380 --connections 1000 --groups 1 --rate 200 --duration 6 --pipeline 1 \
    --payload-size 64 >"$d/lat" 2>&1
  echo "cross-node 1000 clients at 200 msg/s: p50 $(pick 'latency p50 \(ms\)' <"$d/lat") ms, p99 $(pick 'latency p99 \(ms\)' <"$d/lat") ms, lost $(pick lost <"$d/lat")"
  $B fanout --jwt-secret $secret --ws ws://127.0.0.1:8011/ws/notifications/,ws://127.0.0.1:8021/ws/notifications/ \
    --admin 127.0.0.1:8012 --resp 127.0.0.1:6380 --connections 200 --groups 1 --rate 0 --duration 6 \
    --pipeline 64 --payload-size 512 --drain 60s >"$d/bp" 2>&1
  echo "flat-out publisher, 200 remote clients: publishes/s $(pick 'publish rate \(msg/s\)' <"$d/bp"), lost $(pick lost <"$d/bp"), closed $(pick 'closed by server' <"$d/bp")"
  SWITCHBOARD_LOCAL_DIR=$d SWITCHBOARD_BIN=$1 deploy/local-cluster.sh stop >/dev/null
}

for round in $(seq "$rounds"); do
  for which in old new; do
    bin=$old
    [[ $which == new ]] && bin=$new
    echo "== round $round, $which ($bin)"
    one_node "$bin"
    three_nodes "$bin"
  done
done
