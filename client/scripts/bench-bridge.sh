#!/usr/bin/env bash
# The backend bridge's figures in docs/benchmarks.md ("The backend bridge"): a release
# node, and switchboard-bench serving a minimal backend (it accepts, sends each frame
# back, times its own handling) that the node's --backend-url points at.
# Usage: client/scripts/bench-bridge.sh [memory|frames|hang|django|all]
#   memory: idle RSS per connection, plain and bridged, and connects/s through the backend
#   frames: client frame -> backend -> reply at 1 000 frames/s, beside the backend's own time
#   hang:   the backend stops answering for 30 s under load: publish latency and node RSS
#   django: the real bridge's own cost (tests/django under Gunicorn and Uvicorn; needs
#           the test venv, .venv, that tests/run makes)
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
secret=benchsecret
data=$(mktemp -d)
cargo build --release -p switchboard-node -p switchboard-client >/dev/null
bin=target/release
backend=127.0.0.1:9090

start_node() {
  rm -rf "$data/node"
  "$bin/switchboard" serve --jwt-secret "$secret" --data-dir "$data/node" --resp-listen 127.0.0.1:6391 "$@" \
    >"$data/out" 2>"$data/err" &
  node=$!
  for _ in $(seq 100); do curl -sf localhost:8001/readyz >/dev/null && return; sleep 0.1; done
  echo "node did not become ready" >&2; exit 1
}
stop_node() { kill -TERM "$node"; wait "$node" || true; }
bridged=(--backend-url "http://$backend/switchboard/" --backend-secret bench-backend-secret)

if [[ $what == memory || $what == all ]]; then
  for n in 10000 $(( $(ulimit -Hn) > 60000 ? 50000 : $(ulimit -Hn) - 1000 )); do
    start_node
    echo "== idle $n, plain"
    "$bin/switchboard-bench" idle --jwt-secret "$secret" --connections "$n" --hold 2 --server-pid "$node"
    stop_node
    start_node "${bridged[@]}"
    echo "== idle $n, bridged (every connect through the backend)"
    "$bin/switchboard-bench" bridge --jwt-secret "$secret" --backend-listen "$backend" --connections "$n" \
      --rate 0 --duration 2s --server-pid "$node"
    stop_node
  done
fi

if [[ $what == frames || $what == all ]]; then
  start_node "${bridged[@]}"
  echo "== frames: 100 connections, 1000 frames/s through the backend"
  "$bin/switchboard-bench" bridge --jwt-secret "$secret" --backend-listen "$backend" --connections 100 \
    --rate 1000 --duration 10s --server-pid "$node"
  stop_node
fi

if [[ $what == hang || $what == all ]]; then
  start_node "${bridged[@]}" --backend-timeout-ms 1000
  echo "== hang: 1000 connections, 200 frames/s, 50 publishes/s to all of them; the backend hangs 30 s from 10 s on"
  "$bin/switchboard-bench" bridge --jwt-secret "$secret" --backend-listen "$backend" --resp 127.0.0.1:6391 \
    --connections 1000 --rate 200 --duration 50s --hang-at 10s --hang-for 30s --publish-rate 50 --server-pid "$node"
  stop_node
fi
if [[ $what == django || $what == all ]]; then
  echo "== django: signed bridge calls served by the test project (one process)"
  .venv/bin/pip install -q --no-deps --force-reinstall ./client/python
  .venv/bin/python client/scripts/bench_bridge_django.py
fi
rm -rf "$data"
