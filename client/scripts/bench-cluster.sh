#!/usr/bin/env bash
# Cross-node vs same-node delivery on a local 3-node cluster (deploy/local-cluster.sh),
# then cluster deliveries/s (clients spread over the three nodes) against one node with
# the same clients, side by side.
# Usage: CONNS=1000 HALF=200 ALL=3000 client/scripts/bench-cluster.sh
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
S=target/release/switchboard
for rate in 0 ${HALF:-200}; do
echo "== cross-node: ${CONNS:-1000} clients on node 2, publishing on node 1, rate $rate"
$B fanout --jwt-secret benchsecret --ws ws://127.0.0.1:8011/ws/notifications/ --admin 127.0.0.1:8012 --resp 127.0.0.1:6380 --connections ${CONNS:-1000} --groups 1 --rate $rate --duration 8 --pipeline 1 --payload-size 64 | grep -E "delivered|lost|p50|p99|order|publish rate"
echo "== same node: ${CONNS:-1000} clients on node 2, publishing on node 2, rate $rate"
$B fanout --jwt-secret benchsecret --ws ws://127.0.0.1:8011/ws/notifications/ --admin 127.0.0.1:8012 --resp 127.0.0.1:6381 --connections ${CONNS:-1000} --groups 1 --rate $rate --duration 8 --pipeline 1 --payload-size 64 | grep -E "delivered|lost|p50|p99|order|publish rate"
done
ALL=${ALL:-3000}
echo "== cluster: $ALL clients spread over 3 nodes, publishing on node 1, max rate"
$B fanout --jwt-secret benchsecret --ws ws://127.0.0.1:8001/ws/notifications/,ws://127.0.0.1:8011/ws/notifications/,ws://127.0.0.1:8021/ws/notifications/ --admin 127.0.0.1:8002 --resp 127.0.0.1:6380 --connections $ALL --groups 1 --rate 0 --duration 8 --pipeline 16 --payload-size 64 | grep -E "delivered|lost|p50|p99|order|publish rate"
deploy/local-cluster.sh stop
single=$(mktemp -d)
$S serve --node-id 1 --jwt-secret benchsecret --ws-listen 127.0.0.1:8101 --resp-listen 127.0.0.1:6390 \
  --admin-listen 127.0.0.1:8102 --peer-listen 127.0.0.1:7101 --data-dir "$single" >"$single/log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:8101/readyz >/dev/null && break; sleep 0.1; done
echo "== single node: $ALL clients, publishing on it, max rate"
$B fanout --jwt-secret benchsecret --ws ws://127.0.0.1:8101/ws/notifications/ --admin 127.0.0.1:8102 --resp 127.0.0.1:6390 --connections $ALL --groups 1 --rate 0 --duration 8 --pipeline 16 --payload-size 64 | grep -E "delivered|lost|p50|p99|order|publish rate"
kill -TERM $pid; wait $pid || true
