#!/usr/bin/env bash
# Start or stop a local 3-node Switchboard cluster on loopback, for trying it out.
#
#   deploy/local-cluster.sh start   # builds (release), starts nodes 1-3, prints a URL
#   deploy/local-cluster.sh status  # switchboard members on each node
#   deploy/local-cluster.sh stop    # SIGTERM (drain) all three
#
# Nodes 1, 2, 3 listen on ws 127.0.0.1:8001/8011/8021, RESP 6380/6381/6382, admin
# 8002/8012/8022 and peer (QUIC) 7001/7011/7021, all on 127.0.0.1.
# State and logs go to ${SWITCHBOARD_LOCAL_DIR:-./switchboard-local}. Override the
# binary with SWITCHBOARD_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${SWITCHBOARD_LOCAL_DIR:-./switchboard-local}
secret=${SWITCHBOARD_JWT_SECRET:-local-cluster-dev-secret}
cluster_secret=${SWITCHBOARD_CLUSTER_SECRET:-local-cluster-peer-secret}
# User groups keep their last 100 messages for 10 minutes: a client that comes back
# (?positions=1 and subscribe with since) gets what it missed, on any node.
history=${SWITCHBOARD_HISTORY:-user_*=100,10m}

bin=${SWITCHBOARD_BIN:-}
if [[ -z $bin ]]; then
  cargo build --release --bin switchboard >&2
  bin=target/release/switchboard
fi

ws() { echo "127.0.0.1:80$(( $1 - 1 ))1"; }
resp() { echo "127.0.0.1:638$(( $1 - 1 ))"; }
admin() { echo "127.0.0.1:80$(( $1 - 1 ))2"; }
peer() { echo "127.0.0.1:70$(( $1 - 1 ))1"; }

# Whether a process runs (a killed one not yet reaped is a zombie: not running).
alive() { local state; state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]; }

start() {
  mkdir -p "$dir"
  for n in 1 2 3; do
    if [[ -f $dir/node-$n.pid ]] && alive "$(cat "$dir/node-$n.pid")"; then
      echo "node $n already running" >&2; continue
    fi
    seeds=()
    [[ $n != 1 ]] && seeds=(--seeds "$(peer 1)")
    "$bin" serve --node-id "$n" --jwt-secret "$secret" --cluster-secret "$cluster_secret" \
      --ws-listen "$(ws $n)" --resp-listen "$(resp $n)" --admin-listen "$(admin $n)" \
      --peer-listen "$(peer $n)" --data-dir "$dir/node-$n" --history "$history" "${seeds[@]}" \
      >"$dir/node-$n.log" 2>&1 &
    echo $! >"$dir/node-$n.pid"
  done
  for n in 1 2 3; do
    for _ in $(seq 100); do
      curl -sf "http://$(ws $n)/readyz" >/dev/null && break
      sleep 0.1
    done
    curl -sf "http://$(ws $n)/readyz" >/dev/null || { echo "node $n did not become ready; see $dir/node-$n.log" >&2; exit 1; }
  done
  token=$("$bin" token --secret "$secret" --user 1 --ttl 24h)
  cat <<EOT
Three nodes are up. A client as user 1, on any node:
  ws://$(ws 1)/ws/notifications/?token=$token
  ws://$(ws 2)/ws/notifications/?token=$token
  ws://$(ws 3)/ws/notifications/?token=$token
Publish on any node:  redis-cli -p $(resp 2 | cut -d: -f2) PUBLISH user_1 hello   (or 6380, 6382)
Members:              $bin members --admin $(admin 1)
Kill one:             kill -9 \$(cat $dir/node-3.pid)
Stop all:             deploy/local-cluster.sh stop
EOT
}

stop() {
  for n in 1 2 3; do
    [[ -f $dir/node-$n.pid ]] || continue
    pid=$(cat "$dir/node-$n.pid")
    if alive "$pid"; then
      kill -TERM "$pid"
      for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    fi
    rm -f "$dir/node-$n.pid"
  done
}

status() {
  for n in 1 2 3; do
    echo "== node $n"
    "$bin" members --admin "$(admin $n)" || true
  done
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
