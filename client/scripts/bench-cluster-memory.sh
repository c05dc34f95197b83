#!/usr/bin/env bash
# What a connection on ANOTHER node costs a node: a local 3-node release cluster
# (deploy/local-cluster.sh), N idle clients (each its own user and user group) connected to
# node 2 only; the RSS growth of node 1 and node 3, which hold only the gossiped interest
# and the Raft presence replica for them, divided by N; and node 2's own growth per local
# connection beside it. The figures feed the cluster cost model in docs/cluster.md.
#
#   CONNS=10000 client/scripts/bench-cluster-memory.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p switchboard-node -p switchboard-client >/dev/null 2>&1
N=${CONNS:-10000}
S=target/release/switchboard
B=target/release/switchboard-bench
dir=$(mktemp -d)
export SWITCHBOARD_LOCAL_DIR=$dir SWITCHBOARD_BIN=$S SWITCHBOARD_JWT_SECRET=benchsecret
trap 'deploy/local-cluster.sh stop >/dev/null 2>&1 || true' EXIT
deploy/local-cluster.sh start >/dev/null
. client/scripts/lib.sh
formed
rss() { awk '/VmRSS/{print $2 * 1024}' "/proc/$(cat "$dir/node-$1.pid")/status"; }
presence() { $S status --admin "127.0.0.1:$1" --json | sed -n 's/.*"presence_entries":\([0-9]*\).*/\1/p'; }
r1=$(rss 1) r2=$(rss 2) r3=$(rss 3)
# Hold long enough for gossip and the presence commits to reach nodes 1 and 3, then
# sample all three while the connections are still open.
$B idle --jwt-secret benchsecret --ws ws://127.0.0.1:8011/ws/notifications/ --admin 127.0.0.1:8012 \
  --connections "$N" --hold 8 --server-pid "$(cat "$dir/node-1.pid")" >"$dir/idle.txt" &
bench=$!
for _ in $(seq 600); do
  [[ $(presence 8002) -ge $N && $(presence 8022) -ge $N ]] && break
  sleep 0.05
done
sleep 4 # the registry and interest tables have settled; let allocator caches settle too
a1=$(rss 1) a2=$(rss 2) a3=$(rss 3)
e1=$(presence 8002) e2=$(presence 8012) e3=$(presence 8022)
wait $bench
echo "== $N idle connections on node 2 (each its own user and group)"
printf '%-34s %10s %10s %10s\n' "" node-1 node-2 node-3
printf '%-34s %10s %10s %10s\n' "presence entries" "$e1" "$e2" "$e3"
printf '%-34s %10d %10d %10d\n' "RSS growth (bytes)" $((a1 - r1)) $((a2 - r2)) $((a3 - r3))
printf '%-34s %10d %10d %10d\n' "RSS growth / connection (bytes)" $(((a1 - r1) / N)) $(((a2 - r2) / N)) $(((a3 - r3) / N))
echo "(node 2 holds the connections; nodes 1 and 3 only their interest and presence)"
grep -E "connected|connect rate" "$dir/idle.txt" || true
