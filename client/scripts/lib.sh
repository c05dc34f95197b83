# Shared by the cluster benchmark scripts (sourced, not run): waiting for a local 3-node
# cluster (deploy/local-cluster.sh) to form. Needs S, the switchboard binary.

# Waits (30 s at most) until the three nodes are ready, all three are voters, and each
# node's `status --json` also holds every PATTERN given (e.g. '"buckets_moving":0').
formed() {
  local a p st ok all
  for _ in $(seq 300); do
    ok=0
    for a in 8002 8012 8022; do
      st=$($S status --admin 127.0.0.1:$a --json 2>/dev/null || true)
      all=1
      for p in '"ready":true' '"voters":[1,2,3]' "$@"; do
        grep -qF "$p" <<<"$st" || all=0
      done
      ok=$((ok + all))
    done
    [[ $ok == 3 ]] && return 0
    sleep 0.1
  done
  echo "the cluster did not form (or settle: $*)" >&2
  return 1
}
