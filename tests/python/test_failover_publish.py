"""Publishing to a history group through failures and a planned drain (docs/cluster.md,
"Publishing"): a publisher that retries on every error, as a careful application does,
never delivers a message twice, and every message acknowledged is recovered by a client
exactly once; the drain gives no error at all.

Three nodes, 2 s node timeout. The group's owner is node 3 and its replica node 2; the
publisher is on node 1. In turn: the owner is SIGKILLed (the replica takes over) and comes
back (a planned hand-over brings the bucket back to it); the replica is SIGKILLed (the
owner gets a new one) and comes back; the owner is drained (it hands the bucket over
before it leaves)."""

import asyncio
import signal
import threading
import time

import redis

from conftest import CLUSTER_SECRET, up_members, wait_until
from positions import Follower, client, history_of, placed, settled

HISTORY = ("--history", "user_*=5000,10m")
# Attempts one message gets from the publisher (each answered within the node's patience,
# three node timeouts): a bound, not an expectation.
ATTEMPTS = 10


class Publisher(threading.Thread):
    """Publishes m0, m1, ... on one node, retrying a message on every error until it is
    acknowledged; records the errors (with the phase they fell in) and each message's
    wait from its first attempt to its acknowledgement."""

    def __init__(self, node, group):
        super().__init__(daemon=True)
        self.node, self.group = node, group
        self.phase = "steady"
        self.acked, self.errors, self.waits = [], [], []
        self.stop = threading.Event()

    def run(self):
        with client(self.node) as r:
            i = 0
            while not self.stop.is_set():
                payload, start = f"m{i}", time.monotonic()
                for _ in range(ATTEMPTS):
                    try:
                        r.publish(self.group, payload)
                    except redis.ResponseError as e:
                        self.errors.append((self.phase, str(e)))
                        continue
                    self.acked.append(payload)
                    self.waits.append((self.phase, time.monotonic() - start))
                    break
                else:
                    raise AssertionError(f"{payload} not acknowledged in {ATTEMPTS} attempts: {self.errors[-3:]}")
                i += 1
                self.stop.wait(0.005)  # pacing: about 100 publishes a second at most

    def count(self):
        return len(self.acked)


def test_a_retrying_publisher_through_kills_and_a_drain_delivers_each_message_once(start_cluster, start_node):
    nodes = start_cluster(3, *HISTORY)
    a, b, c = nodes
    wait_until(lambda: settled(nodes), timeout=20, what="history assignments settled")
    user = placed(a, lambda o, r: o == 3 and r == 2)
    group = f"user_{user}"

    def restart(node):
        """Node `node` (killed) starts again with its id and data dir."""
        again = start_node("--node-id", str(nodes.index(node) + 1), "--seeds", a.peer_addr,
                           "--cluster-secret", CLUSTER_SECRET, "--node-timeout-ms", "2000",
                           *HISTORY, "--data-dir", node.dir)
        nodes[nodes.index(node)] = again
        for n in nodes:
            wait_until(lambda n=n: up_members(n) == [1, 2, 3], timeout=20, what="the node back in the mesh")
        wait_until(lambda: settled(nodes), timeout=30, what="history assignments settled again")
        return again

    def kill(node):
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=10)

    def progress(publisher, more=20):
        """Waits until `more` further messages are acknowledged."""
        target = publisher.count() + more
        wait_until(lambda: publisher.count() >= target, timeout=30, what=f"{more} more acknowledgements")

    async def scenario():
        follower = Follower(user, name="follower")
        await follower.connect(a.ws_url)
        for n in nodes:
            n.wait_group(group, 1)
        publisher = Publisher(a, group)
        publisher.start()
        progress(publisher)

        publisher.phase = "owner killed"
        kill(nodes[2])
        wait_until(lambda: history_of(a, group)["owner"] == 2, timeout=20, what="the replica taking over")
        progress(publisher)
        publisher.phase = "owner back"
        restart(nodes[2])
        assert history_of(a, group)["owner"] == 3, "handed back to its desired owner"
        progress(publisher)

        publisher.phase = "replica killed"
        kill(nodes[1])
        wait_until(lambda: history_of(a, group)["replica"] == 1, timeout=20, what="a new replica")
        progress(publisher)
        publisher.phase = "replica back"
        restart(nodes[1])
        progress(publisher)

        publisher.phase = "owner drained"
        nodes[2].cli("drain")
        wait_until(lambda: history_of(a, group)["owner"] == 2, timeout=20, what="the drained owner's hand-over")
        wait_until(lambda: 3 not in up_members(a), timeout=20, what="the drained node gone")
        progress(publisher)
        publisher.stop.set()
        await asyncio.to_thread(publisher.join, 60)
        assert not publisher.is_alive()

        acked = set(publisher.acked)
        await follower.catch_up([a.ws_url, nodes[1].ws_url], lambda f: acked.issubset(f.datas()), timeout=60)
        await follower.close()
        datas = follower.datas()
        assert len(datas) == len(set(datas)), "a message delivered twice"
        assert set(datas) == acked, "delivered without an acknowledgement, or lost"
        assert all(answer["recovered"] for answer in follower.answers), follower.answers
        return publisher

    publisher = asyncio.run(scenario())
    drain_errors = [e for (phase, e) in publisher.errors if phase == "owner drained"]
    assert not drain_errors, f"the planned drain gave publish errors: {drain_errors}"
    worst = {}
    for phase, wait in publisher.waits:
        worst[phase] = max(worst.get(phase, 0.0), wait)
    print(f"{len(publisher.acked)} acknowledged, {len(publisher.errors)} errors "
          f"({sorted({p for p, _ in publisher.errors})}); longest wait per phase (s): "
          + ", ".join(f"{p} {w:.2f}" for p, w in worst.items()))
