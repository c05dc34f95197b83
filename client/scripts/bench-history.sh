#!/usr/bin/env bash
# History groups on this machine: what recovery costs and whether it holds under a
# rolling restart. Starts a local 3-node cluster (deploy/local-cluster.sh) with
# --history for user_* and h*_ groups, then:
#
# 1. Latency: switchboard-bench fanout (100 clients in one group, 2 000 msg/s for 10 s),
#    a plain group against a history group, with the publisher on the clients' node
#    (for history: also the group's owner) and across nodes (publisher on node 1, owner on
#    node 2, clients on node 3).
# 2. Rolling restart: switchboard-bench rolling (CLIENTS=300 positioned clients, RATE=200
#    publishes/s for 60 s) while each node in turn is drained, stopped, started again and
#    waited for (ready, history assignments settled). Lost, duplicated, out of order must
#    all be 0.
# 3. Memory: RSS of the three nodes before and after one 100-byte message to each of
#    NGROUPS=100000 history groups (each held by its owner and its replica).
#
#   client/scripts/bench-history.sh                  # all three
#   PARTS=rolling client/scripts/bench-history.sh    # some of: latency rolling memory
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p switchboard-node -p switchboard-client --bins >/dev/null 2>&1
S=target/release/switchboard
B=target/release/switchboard-bench
export SWITCHBOARD_LOCAL_DIR=$(mktemp -d) SWITCHBOARD_BIN=$S SWITCHBOARD_JWT_SECRET=benchsecret
echo "nodes' data and logs: $SWITCHBOARD_LOCAL_DIR" >&2
export SWITCHBOARD_HISTORY='user_*=1000,10m,h*=1000,10m'
trap 'deploy/local-cluster.sh stop >/dev/null 2>&1 || true' EXIT

ws() { echo "ws://127.0.0.1:80$(( $1 - 1 ))1/ws/notifications/"; }
resp() { echo "127.0.0.1:638$(( $1 - 1 ))"; }
admin() { echo "127.0.0.1:80$(( $1 - 1 ))2"; }

# Every node ready, three voters, no history bucket moving.
. client/scripts/lib.sh
settled() { formed '"buckets_moving":0'; }

# A group name with prefix hN_ whose history owner is node $1 (group 0 of fanout).
prefix_owned_by() {
  for i in $(seq 1 200); do
    owner=$($S group "h${i}_0" --admin "$(admin 1)" --json | sed -n 's/.*"owner":\([0-9]*\).*/\1/p')
    [[ $owner == "$1" ]] && { echo "h${i}_"; return; }
  done
  echo "no prefix owned by node $1" >&2
  return 1
}

rss() { curl -s "http://$(admin $1)/metrics" | awk '/^process_resident_memory_bytes/ {print $2}'; }

deploy/local-cluster.sh start >/dev/null
settled

fanout() { # label, publisher node, clients node, group prefix
  echo "-- $1"
  $B fanout --ws "$(ws $3)" --resp "$(resp $2)" --admin "$(admin $3)" --connections 100 \
    --groups 1 --group-prefix "$4" --rate 2000 --duration 10s 2>/dev/null |
    grep -E 'delivered|lost|latency'
}
part() { [[ " ${PARTS:-latency rolling memory} " == *" $1 "* ]]; }

if part latency; then
echo "== latency: plain vs history groups (100 clients, 2 000 msg/s, 10 s)"
fanout "plain, same node" 1 1 plain_
fanout "history, same node (publisher = owner = clients' node)" 1 1 "$(prefix_owned_by 1)"
fanout "plain, cross node (publisher node 1, clients node 3)" 1 3 plain_
fanout "history, cross node (publisher node 1, owner node 2, clients node 3)" 1 3 "$(prefix_owned_by 2)"
fi

if part rolling; then
echo "== rolling restart: ${CLIENTS:-300} clients, ${RATE:-200} publishes/s"
$B rolling --ws "$(ws 1),$(ws 2),$(ws 3)" --resp "$(resp 1),$(resp 2),$(resp 3)" \
  --clients "${CLIENTS:-300}" --rate "${RATE:-200}" --duration 60s --drain 30s \
  >"$SWITCHBOARD_LOCAL_DIR/rolling.out" 2>"$SWITCHBOARD_LOCAL_DIR/rolling.err" &
bench=$!
for _ in $(seq 600); do grep -q publishing "$SWITCHBOARD_LOCAL_DIR/rolling.err" 2>/dev/null && break; sleep 0.1; done
sleep 5
for n in 1 2 3; do
  started=$(date +%s%N)
  $S drain --admin "$(admin $n)" >/dev/null
  pid=$(cat "$SWITCHBOARD_LOCAL_DIR/node-$n.pid")
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  deploy/local-cluster.sh start >/dev/null
  settled
  echo "node $n drained, restarted, settled in $(( ($(date +%s%N) - started) / 1000000 )) ms"
  sleep 5
done
wait "$bench"
cat "$SWITCHBOARD_LOCAL_DIR/rolling.out"
fi

if part memory; then
echo "== memory: ${NGROUPS:-100000} history groups, one 100-byte message each"
before=$(( $(rss 1) + $(rss 2) + $(rss 3) ))
payload=$(printf 'x%.0s' $(seq 100))
for i in $(seq 0 $(( ${NGROUPS:-100000} - 1 ))); do
  printf 'PUBLISH hmem_%s %s\r\n' "$i" "$payload"
done | redis-cli -p 6380 --pipe >/dev/null
after=$(( $(rss 1) + $(rss 2) + $(rss 3) ))
held=0
for n in 1 2 3; do
  held=$(( held + $(curl -s "http://$(admin $n)/metrics" | awk '/^switchboard_history_groups/ {print $2}') ))
done
echo "history groups held (owner + replica copies): $held"
echo "RSS of the 3 nodes: before $((before / 1048576)) MiB, after $((after / 1048576)) MiB"
echo "per group (both copies): $(( (after - before) / ${NGROUPS:-100000} )) bytes"
fi
