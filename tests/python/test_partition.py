"""A node cut off from the majority, with network namespaces: three "hosts" (netns
sbp<pid>-1..3) on a bridge, one node each. Cutting host 3's link partitions it: it reports
not ready while the majority stays ready and marks it down; healing the link brings it back.
The test hosts' addresses (10.77.0.0/24) exist only inside namespaces this test makes."""

import json
import os
import subprocess
import tempfile
import urllib.request

import pytest

from conftest import BIN, SECRET, wait_until

CLUSTER = "partition-test-secret"


def sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=check)


class Hosts:
    def __init__(self, n):
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

    def remove(self):
        for ns in self.names:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)


def readyz_inside(hosts, i):
    """The node's /readyz, asked from inside its own host (reachable even when cut off)."""
    out = sh("ip", "netns", "exec", hosts.names[i - 1], "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
             "--max-time", "2", "http://127.0.0.1:8001/readyz", check=False)
    return out.stdout.strip()


def members_up(i):
    with urllib.request.urlopen(f"http://10.77.0.{i}:8002/v1/members", timeout=2) as r:
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
                 "--node-timeout-ms", "1500", "--data-dir", data,
                 "--ws-listen", "0.0.0.0:8001", "--resp-listen", "0.0.0.0:6379",
                 "--admin-listen", "0.0.0.0:8002", "--peer-listen", f"10.77.0.{i}:7001", *seeds],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for i in (1, 2, 3):
            wait_until(lambda i=i: readyz_inside(hosts, i) == "200", what=f"node {i} ready")
            wait_until(lambda i=i: members_up(i) == [1, 2, 3], what=f"node {i} meshed")

        hosts.cut(3)
        wait_until(lambda: readyz_inside(hosts, 3) == "503", what="the cut-off node not ready")
        for i in (1, 2):
            wait_until(lambda i=i: members_up(i) == [1, 2], what=f"node {i} sees 3 down")
            assert readyz_inside(hosts, i) == "200", "the majority stays ready"

        hosts.heal(3)
        for i in (1, 2, 3):
            wait_until(lambda i=i: members_up(i) == [1, 2, 3], timeout=15, what=f"node {i} converged")
        wait_until(lambda: readyz_inside(hosts, 3) == "200", what="node 3 ready again")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
