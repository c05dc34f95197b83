"""The container for real: deploy/container/build-local.sh builds the node image FROM
scratch out of the built binary with podman (no registry), and a node runs in it as a
third member beside two nodes on the host: its data dir on a volume, a client through it,
a restart of the container (SIGTERM: a drain), and the node back as the same member (a
fresh data dir would be refused: its incarnation is in the volume) with its presence
registry and the group's history: the client recovers what was published while the
container was down, exactly once.

Podman runs as the issue that asked for it found it works on these machines: the vfs
storage driver, runc, cgroupfs, the host's network (every listener on 127.0.0.1), and
explicit ulimits; its storage is a temporary directory of this test."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile

import pytest
import websockets

from conftest import BIN, CLUSTER_SECRET, SECRET, free_port, mint, up_members, wait_until

ROOT = os.path.join(os.path.dirname(__file__), "../..")
HISTORY = "user_*=100,10m"


@pytest.fixture
def podman():
    """The podman command with this test's own storage, removed afterwards."""
    state = tempfile.mkdtemp(prefix="sb-podman-")
    cmd = ["podman", "--root", f"{state}/root", "--runroot", f"{state}/run", "--storage-driver", "vfs",
           "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
    try:
        yield cmd
    finally:
        try:
            subprocess.run([*cmd, "rm", "--all", "--force", "--time", "0"], capture_output=True, timeout=60)
            subprocess.run([*cmd, "system", "reset", "--force"], capture_output=True, timeout=60)
        finally:
            shutil.rmtree(state, ignore_errors=True)


def instructions(path, stage=-1):
    """The instructions of one stage of a Containerfile (continuations joined), without
    the ones that build the file system (FROM, COPY, RUN)."""
    text = open(path).read().replace("\\\n", " ")
    stages = [[]]
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        elif not line.startswith(("COPY ", "RUN ")):
            stages[-1].append(line)
    return stages[stage]


def test_the_local_recipe_keeps_the_shipped_images_user_volume_and_health_check():
    shipped = instructions(os.path.join(ROOT, "deploy/container/Containerfile"))
    local = instructions(os.path.join(ROOT, "deploy/container/Containerfile.local"))
    assert local == shipped
    assert "USER 10001:10001" in local and any(i.startswith("HEALTHCHECK") for i in local)


@pytest.fixture
def scratch():
    """Temporary directories (the volumes), removed afterwards."""
    made = []

    def make():
        made.append(tempfile.mkdtemp(prefix="sb-volume-"))
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def test_a_node_in_a_container_restarts_with_its_state(podman, start_cluster, scratch):
    run = lambda *args, **kw: subprocess.run([*podman, *args], capture_output=True, text=True, timeout=120, **kw)
    built = subprocess.run([os.path.join(ROOT, "deploy/container/build-local.sh"), BIN, "switchboard:test"],
                           env=dict(os.environ, CONTAINER_TOOL=" ".join(podman)),
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    image = json.loads(run("image", "inspect", "switchboard:test").stdout)[0]
    assert image["Config"]["User"] == "10001:10001"
    assert "/var/lib/switchboard/data" in image["Config"]["Volumes"]
    # The health check asks the node's own WebSocket port (SWITCHBOARD_WS_LISTEN).
    assert image["Healthcheck"]["Test"] == ["CMD", "switchboard", "probe", "--path", "/readyz"]
    assert run("run", "--rm", "--network", "host", "--ulimit", "nofile=20000:20000", "--ulimit",
               "nproc=4096:4096", "switchboard:test", "--version").stdout.startswith("switchboard ")

    # A volume the image's user cannot write: the node says so, and whose it must be.
    foreign = scratch()
    refused = run("run", "--rm", "--network", "host", "--ulimit", "nofile=20000:20000", "--ulimit",
                  "nproc=4096:4096", "--volume", f"{foreign}:/var/lib/switchboard/data",
                  "--env", "SWITCHBOARD_WS_LISTEN=127.0.0.1:0", "--env", "SWITCHBOARD_RESP_LISTEN=127.0.0.1:0",
                  "--env", "SWITCHBOARD_ADMIN_LISTEN=127.0.0.1:0", "--env", "SWITCHBOARD_PEER_LISTEN=127.0.0.1:0",
                  "switchboard:test")
    assert refused.returncode != 0
    assert "--data-dir /var/lib/switchboard/data: cannot write in it" in refused.stderr, refused.stderr[-2000:]
    assert "runs as uid 10001" in refused.stderr, refused.stderr[-2000:]

    a, b = start_cluster(2, "--history", HISTORY)
    # The volume: a host directory owned by the image's user (as Kubernetes' fsGroup does).
    volume = scratch()
    os.chown(volume, 10001, 10001)
    ws, resp, admin, peer = free_port(), free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    env = {"SWITCHBOARD_NODE_ID": "3", "SWITCHBOARD_SEEDS": a.peer_addr,
           "SWITCHBOARD_CLUSTER_SECRET": CLUSTER_SECRET, "SWITCHBOARD_JWT_SECRET": SECRET,
           "SWITCHBOARD_NODE_TIMEOUT_MS": "2000", "SWITCHBOARD_HISTORY": HISTORY,
           "SWITCHBOARD_WS_LISTEN": f"127.0.0.1:{ws}", "SWITCHBOARD_RESP_LISTEN": f"127.0.0.1:{resp}",
           "SWITCHBOARD_ADMIN_LISTEN": f"127.0.0.1:{admin}", "SWITCHBOARD_PEER_LISTEN": f"127.0.0.1:{peer}"}
    started = run("run", "--detach", "--name", "sb3", "--network", "host", "--stop-timeout", "20",
                  "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096",
                  "--volume", f"{volume}:/var/lib/switchboard/data",
                  *[arg for k, v in env.items() for arg in ("--env", f"{k}={v}")], "switchboard:test")
    assert started.returncode == 0, started.stderr

    def logs():
        return run("logs", "sb3").stderr

    def ready():
        assert run("inspect", "sb3", "--format", "{{.State.Running}}").stdout.strip() == "true", logs()[-3000:]
        return a.http(f"127.0.0.1:{ws}", "/readyz")[0] == 200

    wait_until(ready, timeout=30, what="the container's node ready")
    wait_until(lambda: up_members(a) == [1, 2, 3], timeout=20, what="the container's node a member")
    # The image's health check is the binary itself (`switchboard probe`).
    assert run("healthcheck", "run", "sb3").returncode == 0, logs()[-2000:]
    incarnation = open(os.path.join(volume, "incarnation")).read()

    url = f"ws://127.0.0.1:{ws}/ws/notifications/"

    def publish(node_resp, payload):
        out = subprocess.run(["redis-cli", "-p", str(node_resp), "PUBLISH", "user_5", payload],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    async def before():
        client = await websockets.connect(f"{url}?token={mint(5)}&positions=1", open_timeout=10)
        await client.send(json.dumps({"op": "subscribe", "group": "user_5"}))
        subscribed = json.loads(await asyncio.wait_for(client.recv(), 10))
        assert subscribed["type"] == "subscribed", subscribed
        wait_until(lambda: a.cli("group", "user_5")["connections"] == 1, what="the client's interest")
        assert publish(resp, "one") == "1"
        message = json.loads(await asyncio.wait_for(client.recv(), 10))
        assert message["data"] == "one", message
        wait_until(lambda: [c["node"] for c in a.cli("presence", "5")["connections"]] == [3],
                   what="the client's presence, committed")
        return client, {"epoch": message["epoch"], "offset": message["offset"]}

    client, seen = asyncio.run(before())

    # Restart: SIGTERM drains (the client is closed with 1012), the process exits, the
    # container starts again on the same volume. Meanwhile two messages are published.
    stopped = run("stop", "sb3")
    assert stopped.returncode == 0, stopped.stderr
    state = json.loads(run("inspect", "sb3").stdout)[0]["State"]
    assert state["ExitCode"] == 0, logs()[-3000:]
    wait_until(lambda: up_members(a) == [1, 2], timeout=20, what="the container's node gone")
    assert publish(a.resp_port, "two") == "0"
    assert publish(b.resp_port, "three") == "0"
    assert run("start", "sb3").returncode == 0
    wait_until(ready, timeout=30, what="the container's node ready again")
    for n in (a, b):
        wait_until(lambda n=n: up_members(n) == [1, 2, 3], timeout=20, what="the same member back")
    assert open(os.path.join(volume, "incarnation")).read() == incarnation
    assert "refused" not in logs(), logs()[-3000:]

    async def after():
        try:
            await client.close()
        except Exception:
            pass
        again = await websockets.connect(f"{url}?token={mint(5)}&positions=1", open_timeout=10)
        await again.send(json.dumps({"op": "subscribe", "group": "user_5", "since": seen}))
        frames = [json.loads(await asyncio.wait_for(again.recv(), 15)) for _ in range(3)]
        assert frames[0]["type"] == "subscribed" and frames[0]["recovered"] is True, frames
        assert [f.get("data") for f in frames[1:]] == ["two", "three"], frames
        # Exactly once: nothing follows them.
        with pytest.raises(TimeoutError):
            extra = await asyncio.wait_for(again.recv(), 1)
            raise AssertionError(f"a frame after the recovery: {extra}")
        # Its presence, through the restarted node's registry and every other.
        for node_admin in (f"127.0.0.1:{admin}", a.admin):
            wait_until(lambda node_admin=node_admin: [c["node"] for c in json.loads(
                a.http(node_admin, "/v1/presence/5")[1])["connections"]] == [3], what="presence after the restart")
        await again.close()

    asyncio.run(after())
