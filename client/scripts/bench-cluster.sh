#!/usr/bin/env bash
# Cross-node vs same-node delivery on a local 3-node cluster (deploy/local-cluster.sh).
# Usage: CONNS=1000 HALF=200 client/scripts/bench-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p switchboard-node -p switchboard-client >/dev/null
export SWITCHBOARD_LOCAL_DIR=$(mktemp -d) SWITCHBOARD_BIN=target/release/switchboard SWITCHBOARD_JWT_SECRET=benchsecret
deploy/local-cluster.sh start >/dev/null
# Wait (bounded) for the full mesh before measuring.
for _ in $(seq 100); do
  up=$(target/release/switchboard members --admin 127.0.0.1:8012 --json | grep -o '"up":true' | wc -l)
  [[ $up == 3 ]] && break
  sleep 0.1
done
B=target/release/switchboard-bench
for rate in 0 ${HALF:-200}; do
echo "== cross-node: ${CONNS:-1000} clients on node 2, publishing on node 1, rate $rate"
$B fanout --jwt-secret benchsecret --ws ws://127.0.0.1:8011/ws/notifications/ --admin 127.0.0.1:8012 --resp 127.0.0.1:6380 --connections ${CONNS:-1000} --groups 1 --rate $rate --duration 8 --pipeline 1 --payload-size 64 | grep -E "delivered|lost|p50|p99|order|publish rate"
echo "== same node: ${CONNS:-1000} clients on node 2, publishing on node 2, rate $rate"
$B fanout --jwt-secret benchsecret --ws ws://127.0.0.1:8011/ws/notifications/ --admin 127.0.0.1:8012 --resp 127.0.0.1:6381 --connections ${CONNS:-1000} --groups 1 --rate $rate --duration 8 --pipeline 1 --payload-size 64 | grep -E "delivered|lost|p50|p99|order|publish rate"
done
deploy/local-cluster.sh stop
