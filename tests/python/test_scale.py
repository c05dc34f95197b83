"""Scale-out with real processes (docs/cluster.md, "What is gossiped, and why"): a group's
interest is held by the owner and replica of its bucket, and nodes that publish to it
cache its route. While publishers keep publishing to plain groups (no history):
- a fourth node joins (buckets move to it) and is drained and stopped (they move back);
- the owner of the groups' buckets is SIGKILLed;
and every subscriber that was connected before receives every message, in order."""

import asyncio
import signal
import threading

from conftest import CLUSTER_SECRET, Node, mint, up_members, wait_until
from positions import client, holders_of, settled
from wsclient import connect, recv


class Publisher(threading.Thread):
    """Publishes `<group>:<k>` to each of `groups` in turn on `node`, until stopped;
    records what it sent to each group."""

    def __init__(self, node, groups):
        super().__init__(daemon=True)
        self.node, self.groups = node, groups
        self.sent = {g: [] for g in groups}
        self.stop = threading.Event()
        self.errors = []

    def run(self):
        with client(self.node) as r:
            k = 0
            while not self.stop.is_set() and k < 100_000:
                for g in self.groups:
                    payload = f"{g}:{k}"
                    r.publish(g, payload)
                    self.sent[g].append(payload)
                k += 1
                self.stop.wait(0.01)  # pacing: about 100 rounds a second at most

    def rounds(self):
        return min(len(s) for s in self.sent.values())


async def receive_all(subscribers, sent, timeout=30):
    """Reads every subscriber until it has what was sent to its group; returns what each
    received, in order."""
    got = {}
    for group, ws in subscribers:
        received = []
        while len(received) < len(sent[group]):
            received.append(await recv(ws, timeout))
        got[group] = received
    return got


def incomplete(nodes):
    """Routes the nodes gave or used before their holder had every peer's interest in a
    moved bucket (those messages went to every peer)."""
    total = 0
    for node in nodes:
        status, body = Node.http(node.admin, "/metrics")
        assert status == 200, body
        line = next(l for l in body.splitlines() if l.startswith("switchboard_routes_incomplete_total "))
        total += int(line.split()[1])
    return total


async def finish(publisher, subscribers, nodes, when):
    """Twenty more rounds `when`, then the publisher stops, and every subscriber has
    received exactly what was sent to its group, in order. Before it stops, the move is
    over for routing too: ten rounds go by with no route incomplete on any of `nodes`
    (publishes go by the holders' routes again, not to every peer)."""
    at = publisher.rounds()
    wait_until(lambda: publisher.rounds() >= at + 20, what=f"publishing {when}")

    def quiet():
        before, start = incomplete(nodes), publisher.rounds()
        wait_until(lambda: publisher.rounds() >= start + 10, what="ten rounds")
        return incomplete(nodes) == before

    wait_until(quiet, timeout=30, what=f"every route complete again {when}")
    print(f"routes incomplete during the move ({when}): {incomplete(nodes)}")
    publisher.stop.set()
    await asyncio.to_thread(publisher.join, 30)
    assert not publisher.is_alive()
    got = await receive_all(subscribers, publisher.sent)
    for group, _ in subscribers:
        assert got[group] == publisher.sent[group], f"{group}: lost or reordered messages"
    for _, ws in subscribers:
        await ws.close()


def test_subscribers_receive_everything_while_a_node_joins_and_leaves(start_cluster, start_node):
    a, b, c = start_cluster(3)
    wait_until(lambda: settled([a, b, c]), timeout=20, what="assignments settled")
    users = list(range(1, 25))
    groups = [f"user_{u}" for u in users]

    async def scenario():
        nodes = [a, b, c]
        subscribers = []
        for i, u in enumerate(users):
            ws = await connect(nodes[i % 3].ws_url, mint(u))
            subscribers.append((f"user_{u}", ws))
        for i, g in enumerate(groups):
            # Registered where the publisher's node learns of it (a holder, or a lookup).
            wait_until(lambda g=g: a.cli("group", g)["connections"] == 1, what=f"{g} known")
        publisher = Publisher(a, groups)
        publisher.start()
        wait_until(lambda: publisher.rounds() >= 20, what="publishing under way")

        d = start_node("--node-id", "4", "--seeds", a.peer_addr, "--cluster-secret", CLUSTER_SECRET,
                       "--node-timeout-ms", "2000")
        for n in (a, b, c, d):
            wait_until(lambda n=n: up_members(n) == [1, 2, 3, 4], timeout=20, what="node 4 in the mesh")
        wait_until(lambda: settled([a, b, c, d]), timeout=30, what="buckets moved to node 4")
        moved = [g for g in groups if 4 in (holders_of(a, g)["owner"], holders_of(a, g)["replica"])]
        assert moved, "node 4 holds some of the groups"
        at = publisher.rounds()
        wait_until(lambda: publisher.rounds() >= at + 20, what="publishing with node 4 holding")

        d.cli("drain")
        d.stop()
        for n in (a, b, c):
            wait_until(lambda n=n: up_members(n) == [1, 2, 3], timeout=20, what="node 4 gone")
        wait_until(lambda: all(4 not in (holders_of(a, g)["owner"], holders_of(a, g)["replica"])
                               for g in groups), timeout=30, what="buckets back on nodes 1-3")
        await finish(publisher, subscribers, [a, b, c], "after node 4 left")
        return sum(len(s) for s in publisher.sent.values()), len(moved)

    total, moved = asyncio.run(scenario())
    print(f"{total} messages to {len(groups)} groups ({moved} moved to node 4 and back): all delivered in order")


def test_subscribers_receive_everything_while_the_groups_owner_is_killed(start_cluster):
    a, b, c = start_cluster(3)
    wait_until(lambda: settled([a, b, c]), timeout=20, what="assignments settled")
    # Groups owned by node 3, whose subscribers are on nodes 1 and 2; publishing on node 1.
    groups = [g for g in (f"user_{u}" for u in range(1, 200)) if holders_of(a, g)["owner"] == 3][:12]
    assert len(groups) == 12

    async def scenario():
        subscribers = []
        for i, g in enumerate(groups):
            ws = await connect((a, b)[i % 2].ws_url, mint(int(g.split("_")[1])))
            subscribers.append((g, ws))
        for g in groups:
            wait_until(lambda g=g: a.cli("group", g)["connections"] == 1, what=f"{g} known")
        publisher = Publisher(a, groups)
        publisher.start()
        wait_until(lambda: publisher.rounds() >= 20, what="publishing under way")
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait(timeout=10)
        wait_until(lambda: all(holders_of(a, g)["owner"] != 3 for g in groups), timeout=20,
                   what="the replicas taking over")
        await finish(publisher, subscribers, [a, b], "after the takeover")

    asyncio.run(scenario())
