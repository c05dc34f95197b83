#!/usr/bin/env bash
# Reproduces the figures in docs/benchmarks.md on one machine: a release node, the
# switchboard-bench load generator, and redis-server (Debian) for the side-by-side.
# Usage: client/scripts/bench.sh [idle|fanout|raw|publish|http|all]
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
secret=benchsecret
data=$(mktemp -d)
cargo build --release -p switchboard-node -p switchboard-client >/dev/null
bin=target/release

start_node() {
  "$bin/switchboard" serve --jwt-secret "$secret" --data-dir "$data" --resp-listen 127.0.0.1:6391 "$@" \
    >"$data/out" 2>"$data/err" &
  node=$!
  for _ in $(seq 100); do curl -sf localhost:8001/readyz >/dev/null && return; sleep 0.1; done
  echo "node did not become ready" >&2; exit 1
}
stop_node() { kill -TERM "$node"; wait "$node" || true; }

if [[ $what == idle || $what == all ]]; then
  # The per-process open-file limit bounds the count: the node and the bench each need
  # one descriptor per connection (`ulimit -Hn` was 20000 on the benchmark machine).
  limit=$(ulimit -Hn)
  for n in 10000 $(( limit > 60000 ? 50000 : limit - 1000 )); do
    start_node
    echo "== idle $n"
    "$bin/switchboard-bench" idle --jwt-secret "$secret" --connections "$n" --hold 2 --server-pid "$node"
    stop_node
  done
fi

if [[ $what == fanout || $what == all ]]; then
  start_node
  echo "== fanout: 10k clients in one group, publishing as fast as replies allow"
  "$bin/switchboard-bench" fanout --jwt-secret "$secret" --resp 127.0.0.1:6391 --connections 10000 \
    --groups 1 --rate 0 --duration 10 --pipeline 1 --payload-size 64
  stop_node
  start_node
  echo "== fanout: 10k clients, 60 msg/s (600k deliveries/s, about half the maximum)"
  "$bin/switchboard-bench" fanout --jwt-secret "$secret" --resp 127.0.0.1:6391 --connections 10000 \
    --groups 1 --rate 60 --duration 10 --pipeline 1 --payload-size 64
  stop_node
fi

if [[ $what == raw || $what == all ]]; then
  # Fan-out as a ratio of the machine's limit: the same clients and readers, served by a
  # bare writer (no broker, no queues) and then by a node, in one run. 9 000, not 10 000:
  # the bare server lives in the bench process, which then needs two descriptors per
  # connection (`ulimit -Hn` is 20 000 here).
  echo "== raw: a bare server writes one frame to 9k connections in turn, as fast as it can"
  for batch in 1 16; do
    echo "-- $batch frame(s) per write"
    "$bin/switchboard-bench" raw --jwt-secret "$secret" --connections 9000 --batch $batch --duration 10 --payload-size 64
  done
  start_node
  echo "== fanout (the node): 9k clients in one group, 16 publishes in flight"
  "$bin/switchboard-bench" fanout --jwt-secret "$secret" --resp 127.0.0.1:6391 --connections 9000 \
    --groups 1 --rate 0 --duration 10 --pipeline 16 --payload-size 64
  stop_node
  echo "== raw latency floor: one frame to one connection, 1000 a second"
  "$bin/switchboard-bench" raw --jwt-secret "$secret" --connections 1 --rate 1000 --duration 5 --payload-size 64
  start_node
  echo "== the node: one client, 1000 publishes a second"
  "$bin/switchboard-bench" fanout --jwt-secret "$secret" --resp 127.0.0.1:6391 --connections 1 \
    --groups 1 --rate 1000 --duration 5 --pipeline 1 --payload-size 64
  stop_node
fi

if [[ $what == publish || $what == all ]]; then
  command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
  start_node
  redis-server --port 6392 --bind 127.0.0.1 --save '' --appendonly no >"$data/redis.log" 2>&1 &
  redis=$!
  for _ in $(seq 100); do redis-cli -p 6392 ping >/dev/null 2>&1 && break; sleep 0.1; done
  for mode in "4 32" "8 1"; do
    set -- $mode
    for round in 1 2; do
      for port in 6391 6392; do
        name=$([[ $port == 6391 ]] && echo switchboard || echo redis-server)
        ops=$("$bin/switchboard-bench" publish --resp 127.0.0.1:$port --clients "$1" --pipeline "$2" \
          --duration 5 --payload-size 64 | awk '/PUBLISH ops\/s/ {print $3}')
        echo "publish clients=$1 pipeline=$2 round=$round $name: $ops ops/s"
      done
    done
  done
  kill "$redis"; wait "$redis" || true
  stop_node
fi
if [[ $what == http || $what == all ]]; then
  # HTTP publish (keep-alive, one request in flight per connection) beside RESP PUBLISH
  # with one command in flight per connection, same node, same run; then keyed HTTP
  # publishes (one Raft commit each).
  start_node
  for clients in 1 16; do
    for kind in resp http http-keyed; do
      case $kind in
        resp) rate=$("$bin/switchboard-bench" publish --resp 127.0.0.1:6391 --clients "$clients" --pipeline 1 \
                --duration 5 --payload-size 64 | awk '/PUBLISH ops\/s/ {print $3}') ;;
        http) rate=$("$bin/switchboard-bench" http --clients "$clients" --duration 5 --payload-size 64 |
                awk '/^publishes\/s/ {print $2}') ;;
        http-keyed) rate=$("$bin/switchboard-bench" http --keyed --clients "$clients" --duration 5 --payload-size 64 |
                awk '/^publishes\/s/ {print $2}') ;;
      esac
      echo "publish over $kind, $clients connection(s), one in flight each: $rate /s"
    done
  done
  stop_node
fi
rm -rf "$data"
