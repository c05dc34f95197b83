#!/usr/bin/env bash
# The Raft presence registry on this machine: presence churn and leader fail-over.
#
#   client/scripts/bench-raft.sh            # WORKERS=1500 HOLD=100ms RUNS=3
#
# 1. Registry capacity without WebSocket handshakes: node/examples/raft_churn.rs, one node
#    and three nodes side by side (presence changes committed per second).
# 2. Real WebSocket churn against a local 3-node cluster (deploy/local-cluster.sh): workers
#    connect, hold, close and reconnect; committed presence changes per second,
#    cluster-wide, from every node's /metrics.
# 3. Leader fail-over, RUNS times: churn on a follower, kill -9 the leader, time until the
#    follower sees a new term and until its presence writes commit again. The killed node
#    is restarted (with its data dir) between runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p switchboard-node -p switchboard-client --bins --examples >/dev/null 2>&1
S=target/release/switchboard
B=target/release/switchboard-bench

echo "== registry capacity (in-process nodes, real QUIC, no WebSocket)"
for nodes in 1 3; do
  echo "-- $nodes node(s)"
  target/release/examples/raft_churn 5 "$nodes" 2>/dev/null
done

export SWITCHBOARD_LOCAL_DIR=$(mktemp -d) SWITCHBOARD_BIN=$S SWITCHBOARD_JWT_SECRET=benchsecret
trap 'deploy/local-cluster.sh stop >/dev/null 2>&1 || true' EXIT
. client/scripts/lib.sh
deploy/local-cluster.sh start >/dev/null
formed

WS=ws://127.0.0.1:8001/ws/notifications/,ws://127.0.0.1:8011/ws/notifications/,ws://127.0.0.1:8021/ws/notifications/
echo "== WebSocket churn, 3 nodes: ${WORKERS:-1500} workers, hold ${HOLD:-100ms}"
$B churn --ws "$WS" --admins 127.0.0.1:8002,127.0.0.1:8012,127.0.0.1:8022 \
  --workers "${WORKERS:-1500}" --hold "${HOLD:-100ms}" --duration 10s

for run in $(seq "${RUNS:-3}"); do
  leader=$($S status --admin 127.0.0.1:8002 --json | sed -n 's/.*"leader":\([0-9]*\).*/\1/p' | head -1)
  survivor=$(( leader % 3 + 1 ))
  port=$(( (survivor - 1) * 10 ))
  echo "== fail-over run $run: leader $leader killed, churn on node $survivor"
  $B failover --ws "ws://127.0.0.1:80$(printf %02d $((port + 1)))/ws/notifications/" \
    --admin "127.0.0.1:80$(printf %02d $((port + 2)))" \
    --leader-pid "$(cat "$SWITCHBOARD_LOCAL_DIR/node-$leader.pid")"
  deploy/local-cluster.sh start >/dev/null
  formed
done
