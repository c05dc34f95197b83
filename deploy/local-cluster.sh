#!/usr/bin/env bash
# Start or stop a local 3-node Switchboard cluster on loopback, for trying it out.
#
#   deploy/local-cluster.sh start   # builds (release), starts nodes 1-3, prints a URL
#                                   # (again: brings back the nodes that are not running)
#   deploy/local-cluster.sh status  # switchboard members on each node
#   deploy/local-cluster.sh stop    # SIGTERM (drain) all three (SIGKILL after 15 s)
#
# A port already taken (a node started by hand on 8001, say) is named with what holds
# it, and nothing is started; a node that does not become ready stops the nodes this run
# started, and its log's last lines are shown.
#
# Nodes 1, 2, 3 listen on ws 127.0.0.1:8001/8011/8021, RESP 6380/6381/6382, admin
# 8002/8012/8022 and peer (QUIC) 7001/7011/7021, all on 127.0.0.1.
# State and logs go to ${SWITCHBOARD_LOCAL_DIR:-./switchboard-local}. Override the
# binary with SWITCHBOARD_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${SWITCHBOARD_LOCAL_DIR:-./switchboard-local}
secret=${SWITCHBOARD_JWT_SECRET:-local-cluster-development-jwt-secret}
cluster_secret=${SWITCHBOARD_CLUSTER_SECRET:-local-cluster-development-peer-secret}
# User groups keep their last 100 messages for 10 minutes: a client that comes back
# (?positions=1 and subscribe with since) gets what it missed, on any node.
history=${SWITCHBOARD_HISTORY:-user_*=100,10m}

bin=${SWITCHBOARD_BIN:-target/release/switchboard}

# Only `start` builds (when SWITCHBOARD_BIN is not given).
build() {
  if [[ -z ${SWITCHBOARD_BIN:-} ]]; then
    cargo build --release --bin switchboard >&2
  fi
}

ws() { echo "127.0.0.1:80$(( $1 - 1 ))1"; }
resp() { echo "127.0.0.1:638$(( $1 - 1 ))"; }
admin() { echo "127.0.0.1:80$(( $1 - 1 ))2"; }
peer() { echo "127.0.0.1:70$(( $1 - 1 ))1"; }

# Whether a process runs (a killed one not yet reaped is a zombie: not running).
alive() { local state; state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $state != Z* ]]; }

running() { [[ -f $dir/node-$1.pid ]] && alive "$(cat "$dir/node-$1.pid")"; }

# What holds a port, if anything: "tcp 127.0.0.1:8001 (pid 123: switchboard serve ...)".
holder() {
  local proto=$1 addr=$2 line pid
  if [[ $proto == tcp ]]; then
    line=$(ss -Hltnp "sport = :${addr##*:}" 2>/dev/null | head -1) || true
    [[ -z $line ]] && (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null && line="in use"
  else
    line=$(ss -Hlunp "sport = :${addr##*:}" 2>/dev/null | head -1) || true
  fi
  [[ -z $line ]] && return 1
  pid=$(grep -o 'pid=[0-9]*' <<<"$line" | head -1 | cut -d= -f2) || true
  if [[ -n $pid ]]; then
    echo "$proto $addr (pid $pid: $(ps -o args= -p "$pid" 2>/dev/null | cut -c1-80))"
  else
    echo "$proto $addr"
  fi
}

start() {
  mkdir -p "$dir"
  # Every port of every node this run would start must be free: say what holds one.
  local taken=()
  for n in 1 2 3; do
    running "$n" && continue
    for spec in "tcp $(ws $n) WebSocket" "tcp $(resp $n) RESP" "tcp $(admin $n) admin" "udp $(peer $n) peer"; do
      read -r proto addr what <<<"$spec"
      if held=$(holder "$proto" "$addr"); then
        taken+=("node $n's $what port: $held")
      fi
    done
  done
  if ((${#taken[@]})); then
    echo "cannot start: ports taken (stop what holds them; a node from \`switchboard serve\`" >&2
    echo "on the default ports holds node 1's):" >&2
    printf '  %s\n' "${taken[@]}" >&2
    exit 1
  fi
  build
  local started=()
  for n in 1 2 3; do
    if running "$n"; then
      echo "node $n already running" >&2; continue
    fi
    seeds=()
    [[ $n != 1 ]] && seeds=(--seeds "$(peer 1)")
    "$bin" serve --node-id "$n" --jwt-secret "$secret" --cluster-secret "$cluster_secret" \
      --ws-listen "$(ws $n)" --resp-listen "$(resp $n)" --admin-listen "$(admin $n)" \
      --peer-listen "$(peer $n)" --data-dir "$dir/node-$n" --history "$history" "${seeds[@]}" \
      >>"$dir/node-$n.log" 2>&1 &
    echo $! >"$dir/node-$n.pid"
    started+=("$n")
  done
  for n in 1 2 3; do
    for _ in $(seq 100); do
      curl -sf "http://$(ws $n)/readyz" >/dev/null && break
      sleep 0.1
    done
    if ! curl -sf "http://$(ws $n)/readyz" >/dev/null; then
      echo "node $n did not become ready; the end of $dir/node-$n.log:" >&2
      tail -5 "$dir/node-$n.log" | sed 's/^/  /' >&2
      for m in "${started[@]}"; do
        [[ $m == "$n" ]] || { echo "the end of $dir/node-$m.log:" >&2; tail -2 "$dir/node-$m.log" | sed 's/^/  /' >&2; }
      done
      echo "stopping the nodes this run started (${started[*]})" >&2
      stop_nodes "${started[@]}"
      exit 1
    fi
  done
  token=$("$bin" token --secret "$secret" --user 1 --ttl 24h)
  cat <<EOT
Three nodes are up. A client as user 1, on any node:
  ws://$(ws 1)/ws/notifications/?token=$token
  ws://$(ws 2)/ws/notifications/?token=$token
  ws://$(ws 3)/ws/notifications/?token=$token
Publish on any node:  redis-cli -p $(resp 2 | cut -d: -f2) PUBLISH user_1 hello   (or 6380, 6382)
Members:              switchboard members   (node 1's; --admin $(admin 2) for node 2's)
Kill one:             kill -9 \$(cat $dir/node-3.pid)
Bring it back:        $0 start
Stop all:             $0 stop
Tokens for this cluster are signed with its secret, $secret:
  switchboard token --secret $secret --user 42
EOT
}

stop_nodes() {
  for n in "$@"; do
    [[ -f $dir/node-$n.pid ]] || continue
    pid=$(cat "$dir/node-$n.pid")
    if alive "$pid"; then
      kill -TERM "$pid"
      # A drain takes up to --shutdown-grace (10 s) and leaving: wait past it, then kill.
      for _ in $(seq 150); do alive "$pid" || break; sleep 0.1; done
      if alive "$pid"; then
        echo "node $n (pid $pid) still running 15 s after SIGTERM: killing it" >&2
        kill -KILL "$pid"
        for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
      fi
    fi
    rm -f "$dir/node-$n.pid"
  done
}

stop() { stop_nodes 1 2 3; }

status() {
  command -v "$bin" >/dev/null || { echo "no binary at $bin: run '$0 start' first" >&2; exit 1; }
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
