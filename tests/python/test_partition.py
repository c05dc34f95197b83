"""A node cut off from the majority, with network namespaces: three "hosts" (netns
sbp<pid>-1..3) on a bridge, one node each. Cutting host 3's link partitions it: it reports
not ready and commits nothing while the majority stays ready, marks it down and keeps
committing presence; healing the link brings it back and its replica converges.
The test hosts' addresses (10.77.0.0/24) exist only inside namespaces this test makes."""

import asyncio
import json
import os
import subprocess
import tempfile
import urllib.request

import pytest

from conftest import BIN, SECRET, mint, wait_until
from positions import Follower
from wsclient import connect

CLUSTER = "partition-test-secret"
# The admin port listens beyond loopback here, which needs an admin token.
ADMIN_TOKEN = "partition-test-admin-token"


def sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=check)


class Hosts:
    def __init__(self, n):
        self.remove_stale()
        tag = str(os.getpid() % 100000)
        self.bridge = f"sbbr{tag}"
        self.names = [f"sbp{tag}-{i}" for i in range(1, n + 1)]
        self.links = [f"sbv{tag}{i}" for i in range(1, n + 1)]
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", "10.77.0.254/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, (ns, link) in enumerate(zip(self.names, self.links), start=1):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", link, "master", self.bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"10.77.0.{i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def cut(self, i):
        sh("ip", "link", "set", self.links[i - 1], "down")

    def heal(self, i):
        sh("ip", "link", "set", self.links[i - 1], "up")

    @staticmethod
    def remove_stale():
        """Hosts a killed run left behind would share the subnet: they go first."""
        for ns in sh("ip", "netns", "list").stdout.split():
            if ns.startswith("sbp"):
                sh("ip", "netns", "del", ns, check=False)
        for line in sh("ip", "-br", "link").stdout.splitlines():
            name = line.split()[0].split("@")[0] if line.split() else ""
            if name.startswith(("sbbr", "sbv")):
                sh("ip", "link", "del", name, check=False)

    def remove(self):
        for ns in self.names:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


def readyz_inside(hosts, i):
    """The node's /readyz, asked from inside its own host (reachable even when cut off)."""
    out = sh("ip", "netns", "exec", hosts.names[i - 1], "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
             "--max-time", "2", "http://127.0.0.1:8001/readyz", check=False)
    return out.stdout.strip()


def admin_inside(hosts, i, path):
    """GET on the node's admin API from inside its own host, as JSON."""
    out = sh("ip", "netns", "exec", hosts.names[i - 1], "curl", "-s", "--max-time", "3",
             "-H", f"Authorization: Bearer {ADMIN_TOKEN}", f"http://127.0.0.1:8002{path}", check=False)
    return json.loads(out.stdout) if out.stdout.strip() else None


def presence_inside(hosts, i, user):
    v = admin_inside(hosts, i, f"/v1/presence/{user}")
    return sorted(c["node"] for c in v["connections"]) if v else None


def members_up(i):
    req = urllib.request.Request(f"http://10.77.0.{i}:8002/v1/members",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=2) as r:
        return sorted(m["id"] for m in json.loads(r.read())["members"] if m["up"])


@pytest.fixture
def hosts():
    h = Hosts(3)
    yield h
    h.remove()


def test_a_partitioned_node_is_not_ready_and_converges_after_healing(hosts):
    procs = []
    try:
        for i in (1, 2, 3):
            seeds = [] if i == 1 else ["--seeds", "10.77.0.1:7001"]
            data = tempfile.mkdtemp(prefix=f"sb-part-{i}-")
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", hosts.names[i - 1], os.path.abspath(BIN), "serve",
                 "--node-id", str(i), "--jwt-secret", SECRET, "--cluster-secret", CLUSTER,
                 "--admin-token", ADMIN_TOKEN,
                 "--node-timeout-ms", "1500", "--data-dir", data,
                 "--ws-listen", "0.0.0.0:8001", "--resp-listen", "0.0.0.0:6379",
                 "--admin-listen", "0.0.0.0:8002", "--peer-listen", f"10.77.0.{i}:7001", *seeds],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for i in (1, 2, 3):
            wait_until(lambda i=i: readyz_inside(hosts, i) == "200", what=f"node {i} ready")
            wait_until(lambda i=i: members_up(i) == [1, 2, 3], what=f"node {i} meshed")

        def voter(i):
            status = admin_inside(hosts, i, "/v1/status")
            shards = (status.get("presence_shards") or {}).get("shards", [])
            # With --presence-shards (SWITCHBOARD_PRESENCE_SHARDS), every shard on all three.
            return status["raft"]["voters"] == [1, 2, 3] and all(len(s["voters"]) == 3 for s in shards)

        for i in (1, 2, 3):
            wait_until(lambda i=i: voter(i), what=f"node {i} a voter")

        hosts.cut(3)
        wait_until(lambda: readyz_inside(hosts, 3) == "503", what="the cut-off node not ready")
        for i in (1, 2):
            wait_until(lambda i=i: members_up(i) == [1, 2], what=f"node {i} sees 3 down")
            assert readyz_inside(hosts, i) == "200", "the majority stays ready"
        cut_applied = admin_inside(hosts, 3, "/v1/status")["raft"]["last_applied"]

        async def while_cut():
            # The majority commits a new connection's presence; the cut-off node does not.
            ws = await connect("ws://10.77.0.1:8001/ws/notifications/", mint(77))
            for i in (1, 2):
                wait_until(lambda i=i: presence_inside(hosts, i, "77") == [1], what=f"presence on node {i}")
            assert presence_inside(hosts, 3, "77") == []
            assert admin_inside(hosts, 3, "/v1/status")["raft"]["last_applied"] == cut_applied
            majority_applied = admin_inside(hosts, 1, "/v1/status")["raft"]["last_applied"]
            assert majority_applied > cut_applied

            hosts.heal(3)
            for i in (1, 2, 3):
                wait_until(lambda i=i: members_up(i) == [1, 2, 3], timeout=15, what=f"node {i} converged")
            wait_until(lambda: readyz_inside(hosts, 3) == "200", what="node 3 ready again")
            # Its replica catches up with what was committed while it was away.
            wait_until(lambda: presence_inside(hosts, 3, "77") == [1], what="node 3's replica converged")
            await ws.close()

        asyncio.run(while_cut())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


def publish_inside(hosts, i, group, payload):
    """redis-cli PUBLISH on node i, from inside its host: (ok, reply)."""
    out = sh("ip", "netns", "exec", hosts.names[i - 1], "redis-cli", "-h", "127.0.0.1", "-p", "6379",
             "PUBLISH", group, payload, check=False)
    reply = out.stdout.strip()
    return (reply.lstrip("-").isdigit() and not reply.startswith("-") and "ERR" not in reply), reply


def start_hosts_cluster(hosts, *flags):
    procs = []
    for i in (1, 2, 3):
        seeds = [] if i == 1 else ["--seeds", "10.77.0.1:7001"]
        data = tempfile.mkdtemp(prefix=f"sb-part-{i}-")
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", hosts.names[i - 1], os.path.abspath(BIN), "serve",
             "--node-id", str(i), "--jwt-secret", SECRET, "--cluster-secret", CLUSTER,
             "--admin-token", ADMIN_TOKEN,
             "--node-timeout-ms", "1500", "--data-dir", data,
             "--ws-listen", "0.0.0.0:8001", "--resp-listen", "0.0.0.0:6379",
             "--admin-listen", "0.0.0.0:8002", "--peer-listen", f"10.77.0.{i}:7001", *seeds, *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for i in (1, 2, 3):
        wait_until(lambda i=i: readyz_inside(hosts, i) == "200", what=f"node {i} ready")
        wait_until(lambda i=i: members_up(i) == [1, 2, 3], what=f"node {i} meshed")
    return procs


def test_a_cut_off_history_owner_refuses_publishes_and_positions_never_conflict(hosts):
    procs = start_hosts_cluster(hosts, "--history", "user_*=1000")
    try:
        def settled():
            return all((admin_inside(hosts, i, "/v1/status") or {}).get("history", {}).get("buckets_moving") == 0
                       for i in (1, 2, 3))
        wait_until(settled, timeout=20, what="history assignments settled")
        # A user whose history node 3 owns.
        user = next(u for u in range(1, 500)
                    if admin_inside(hosts, 1, f"/v1/groups/user_{u}")["history"]["owner"] == 3)
        group = f"user_{user}"

        async def scenario():
            watcher = Follower(user, name="on node 1")
            await watcher.connect("ws://10.77.0.1:8001/ws/notifications/")
            wait_until(lambda: admin_inside(hosts, 3, f"/v1/groups/{group}")["connections"] == 1,
                       what="interest on the owner")
            assert publish_inside(hosts, 1, group, "m0")[0]
            await watcher.next()

            hosts.cut(3)
            # The cut-off owner refuses (once it knows it is cut off); never a success
            # it could not replicate.
            wait_until(lambda: "cut off" in publish_inside(hosts, 3, group, "lost")[1], timeout=15,
                       what="the cut-off owner refusing")
            # The majority moves the group to the replica and carries on.
            wait_until(lambda: publish_inside(hosts, 1, group, "m1")[0], timeout=15, what="the majority taking publishes")
            for k in range(2, 5):
                assert publish_inside(hosts, 1, group, f"m{k}")[0]

            hosts.heal(3)
            for i in (1, 2, 3):
                wait_until(lambda i=i: members_up(i) == [1, 2, 3], timeout=15, what=f"node {i} converged")
            wait_until(settled, timeout=20, what="history assignments settled after healing")
            for k in range(5, 8):
                wait_until(lambda k=k: publish_inside(hosts, 1, group, f"m{k}")[0], timeout=10, what=f"m{k}")

            # The watcher may have missed messages while the group moved (4009, or a
            # gap only a recovery shows): it follows, recovering, until it has them all.
            want = [f"m{k}" for k in range(8)]

            def done(f):
                return [d for d in f.datas() if d.startswith("m") and d[1:].isdigit()] == want

            urls = ["ws://10.77.0.1:8001/ws/notifications/", "ws://10.77.0.2:8001/ws/notifications/"]
            await watcher.catch_up(urls, done, timeout=30)
            await watcher.close()
            assert watcher.datas() == want, "the refused publish was never delivered"
            # A client recovering on the healed node from the very start agrees on every position.
            late = Follower(user, name="on node 3")
            first = watcher.received[group][0]
            late.positions[group] = {"epoch": first[0], "offset": first[1] - 1}
            await late.connect("ws://10.77.0.3:8001/ws/notifications/")
            await late.follow(["ws://10.77.0.3:8001/ws/notifications/"], done, timeout=30)
            await late.close()
            assert late.answers[-1]["recovered"] is True
            assert late.received[group] == watcher.received[group], "the same positions on every node"

        asyncio.run(scenario())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
