#!/usr/bin/env python3
"""Sorts a heaptrack leak report (`heaptrack_print --print-leaks 1 -m 0`) of a node killed
while it held N idle connections into the components that hold the bytes, and prints
bytes per connection for each. "Leaked" here is "still allocated when the node was
killed": the live heap at that moment.

usage: heap-account.py LEAKS.txt CONNECTIONS [--sites K]
"""
import re
import sys
from collections import defaultdict

# (component, test on the report's frames): the first component whose test matches a
# stack gets its bytes. Frames are `file:line` strings, leaf first.
def ours(frames):
    return [f.split()[0] for f in frames if f.startswith("node/src/")]

def has(frames, *needles):
    return any(n in f for f in frames for n in needles)

COMPONENTS = [
    ("socket registration (tokio I/O driver)",
     lambda f, o: has(f[:25], "registration_set.rs", "scheduled_io.rs")),
    ("connection task: its session's future (tokio task)",
     lambda f, o: has(f[:20], "new_task") and o and o[0].startswith("node/src/ingress/ws/")),
    ("WebSocket read buffer and stream state (tungstenite)",
     lambda f, o: o and o[0].startswith("node/src/ingress/ws/mod.rs") and has(f[:40], "tungstenite")),
    ("outbound queue and outlet (hub)", lambda f, o: o and o[0].startswith("node/src/hub.rs")),
    ("broker entries: connection, groups, members (broker)",
     lambda f, o: o and o[0].startswith("node/src/broker/")),
    ("presence record in the replica (presence registry)",
     lambda f, o: o and (o[0].startswith("node/src/presence/registry.rs") or o[0].startswith("node/src/presence/replica.rs"))),
    ("presence event ring (bounded by --presence-events)",
     lambda f, o: o and o[0].startswith("node/src/presence/events.rs")),
    ("presence batcher's live entry",
     lambda f, o: o and (o[0].startswith("node/src/presence/batcher.rs") or o[0].startswith("node/src/presence/queue.rs"))),
    ("Raft log and state machine (raft)", lambda f, o: o and o[0].startswith("node/src/raft/")),
    ("connection id and user group strings (ingress)",
     lambda f, o: o and (o[0].startswith("node/src/ingress/ws/mod.rs") or o[0].startswith("node/src/config.rs"))),
]
OTHER = "everything else (startup, cluster, admin, history)"

SIZE = re.compile(r"^([\d.]+)([KMG]?)B? leaked over (\d+) calls from")


def parse(path):
    blocks, cur, func = [], None, ""
    for line in open(path, errors="replace"):
        m = SIZE.match(line)
        if m:
            mult = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
            cur = [float(m.group(1)) * mult, int(m.group(3)), []]
            blocks.append(cur)
        elif cur is not None and line.strip().startswith("at "):
            cur[2].append(f"{line.strip()[3:]} {func}")
        elif cur is not None and line.strip() and not line.strip().startswith("in "):
            func = line.strip()
    return blocks


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    sites = int(sys.argv[sys.argv.index("--sites") + 1]) if "--sites" in sys.argv else 0
    blocks = parse(path)
    if not blocks:
        sys.exit(f"no leak blocks in {path}")
    by = defaultdict(lambda: [0.0, 0])
    for size, calls, frames in blocks:
        o = ours(frames)
        name = next((c for c, test in COMPONENTS if test(frames, o)), OTHER)
        by[name][0] += size
        by[name][1] += calls
    total = sum(b for b, _ in by.values())
    print(f"{'component':58s} {'bytes/conn':>10s} {'allocs/conn':>11s}")
    for name, _ in COMPONENTS + [(OTHER, None)]:
        size, calls = by.get(name, (0.0, 0))
        print(f"{name:58s} {size / n:10.0f} {calls / n:11.2f}")
    print(f"{'live heap, all of it':58s} {total / n:10.0f}   ({total / 1e6:.1f} MB)")
    if sites:
        print(f"\nthe {sites} largest allocation sites:")
        for size, calls, frames in blocks[:sites]:
            print(f"{size / n:8.0f} B/conn {calls:7d} calls  {' <- '.join(ours(frames)[:3])}")


if __name__ == "__main__":
    main()
