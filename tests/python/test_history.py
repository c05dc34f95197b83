"""History and recovery with real processes (docs/cluster.md, "History"): positioned
frames, recovery on any node after the client's node died, drained or closed it (4008),
the owner killed under load, subscribe-with-since racing a publish, and the cases that
must answer `recovered: false` (overflow, TTL, a restarted single owner)."""

import asyncio
import json
import signal
import threading

import websockets

from conftest import CLUSTER_SECRET, mint, up_members, wait_until
from positions import Follower, client, history_of, placed, settled


# ---------------------------------------------------------------- one node

def test_positioned_frames_and_plain_clients_side_by_side(start_node):
    n = start_node("--history", "user_*=100")

    async def scenario():
        plain = await websockets.connect(f"{n.ws_url}?token={mint(5, groups=['news'])}")
        f = Follower(5, groups=["news"])
        await f.connect(n.ws_url)
        start = f.positions["user_5"]
        assert start["offset"] == 0, "a fresh group starts at offset 0"
        assert "news" not in f.positions, "news keeps no history: no position"
        n.wait_group("user_5", 2)
        with client(n) as r:
            assert r.publish("user_5", "hello") == 2
            assert r.publish("news", "extra") == 2
            assert r.publish("user_5", b"\xff\xfe") == 2
        first = await f.next()
        assert first == {"type": "message", "group": "user_5", "data": "hello",
                         "epoch": start["epoch"], "offset": 1}
        assert await f.next() == {"type": "message", "group": "news", "data": "extra"}
        binary = await f.next()
        assert binary["b64data"] == "//4=" and binary["offset"] == 2 and "data" not in binary
        # Without positions=1 nothing changes: the raw payloads.
        assert await asyncio.wait_for(plain.recv(), 5) == "hello"
        assert await asyncio.wait_for(plain.recv(), 5) == "extra"
        assert await asyncio.wait_for(plain.recv(), 5) == b"\xff\xfe"
        await plain.close()
        await f.close()

        # Recovery on a new connection: exactly what was missed, then live messages.
        with client(n) as r:
            for i in range(5):
                r.publish("user_5", f"missed {i}")
        await f.connect(n.ws_url)
        assert f.answers[-1]["recovered"] is True
        assert f.answers[-1]["offset"] == 7
        while len(f.received["user_5"]) < 7:
            await f.next()
        assert f.datas()[2:] == [f"missed {i}" for i in range(5)]
        with client(n) as r:
            r.publish("user_5", "live")
        assert (await f.next())["data"] == "live"
        await f.close()

    asyncio.run(scenario())


def test_recovery_needs_positions_and_errors_are_clear(start_node):
    n = start_node("--history", "user_*=10")

    async def scenario():
        ws = await websockets.connect(f"{n.ws_url}?token={mint(8)}")
        await ws.send(json.dumps({"op": "subscribe", "group": "user_8", "since": {"epoch": 1, "offset": 0}}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["type"] == "error" and "positions=1" in reply["message"]
        await ws.send(json.dumps({"op": "subscribe", "group": "user_8", "since": {"epoch": "x"}}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["type"] == "error" and reply["code"] == "bad_request"
        await ws.close()

    asyncio.run(scenario())


def test_overflow_ttl_and_a_restarted_owner_answer_not_recovered(start_node):
    n = start_node("--history", "user_*=5,5s")

    async def scenario():
        f = Follower(9)
        await f.connect(n.ws_url)
        n.wait_group("user_9", 1)
        with client(n) as r:
            r.publish("user_9", "seen")
        await f.next()
        await f.close()
        with client(n) as r:
            for i in range(8):  # more than SIZE (5) missed
                r.publish("user_9", f"m{i}")
        await f.connect(n.ws_url)
        answer = f.answers[-1]
        assert answer["recovered"] is False and answer["offset"] == 9
        assert f.datas() == ["seen"], "nothing replayed when not recovered"
        # From the top, later messages follow.
        with client(n) as r:
            r.publish("user_9", "after")
        assert (await f.next())["offset"] == 10

        # An idle client at the top after its messages expired: recovered, nothing to replay.
        await f.close()
        top = dict(f.positions["user_9"])

        async def recovers_from(position):
            probe = Follower(9)
            probe.positions["user_9"] = dict(position)
            await probe.connect(n.ws_url)
            await probe.close()
            return probe.answers[-1]

        # TTL: a client one message behind recovers until the message expires (5 s).
        behind = {"epoch": top["epoch"], "offset": top["offset"] - 1}
        assert (await recovers_from(behind))["recovered"] is True
        deadline = asyncio.get_running_loop().time() + 15
        while (await recovers_from(behind))["recovered"]:
            assert asyncio.get_running_loop().time() < deadline, "the TTL never expired the message"
            await asyncio.sleep(0.2)
        at_top = await recovers_from(top)
        assert at_top["recovered"] is True and at_top["offset"] == top["offset"]
        return top

    top = asyncio.run(scenario())

    # The single owner restarts: its history is gone, a new epoch starts.
    n.stop()
    again = start_node("--history", "user_*=5,5s", "--data-dir", n.dir)

    async def after_restart():
        f = Follower(9)
        f.positions["user_9"] = dict(top)
        await f.connect(again.ws_url)
        answer = f.answers[-1]
        assert answer["recovered"] is False
        assert answer["epoch"] != top["epoch"]
        await f.close()

    asyncio.run(after_restart())


# ---------------------------------------------------------------- three nodes

HISTORY = ("--history", "user_*=5000,10m")


def test_a_client_recovers_on_another_node_after_its_node_died_drained_or_dropped_it(start_cluster, start_node):
    a, b, c = start_cluster(3, *HISTORY, "--client-queue-bytes", "65536")
    wait_until(lambda: settled([a, b, c]), timeout=20, what="history assignments settled")
    # Users whose history node 2 neither owns nor replicates: node 2 can go.
    killed_user = placed(a, lambda o, r: 2 not in (o, r), prefix="k")
    drained_user = placed(a, lambda o, r: 2 not in (o, r), prefix="d")
    slow_user = placed(a, lambda o, r: True, prefix="s")

    async def positioned_on(node, user, rcvbuf=None):
        f = Follower(user)
        await f.connect(node.ws_url, rcvbuf=rcvbuf)
        # The group's owner, wherever it is, must know the interest: every live node.
        for n in [a, c, node] + ([b] if b.proc.poll() is None else []):
            n.wait_group(f.groups[0], 1)
        with client(a) as r:
            assert r.publish(f.groups[0], "before") == 1
        assert (await f.next())["data"] == "before"
        return f

    async def moves(f, to, count, tag):
        """`count` messages published on node 1 while `f` is away; it reconnects to
        `to` and gets exactly those, in order, recovered."""
        with client(a) as r:
            for i in range(count):
                r.publish(f.groups[0], f"{tag} {i}")
        f.ws = None
        await f.connect(to.ws_url)
        answer = f.answers[-1]
        assert answer["recovered"] is True, answer
        while len(f.datas()) < count + 1:
            await f.next()
        assert f.datas() == ["before"] + [f"{tag} {i}" for i in range(count)]
        await f.close()

    async def slow_consumer():
        # 4008: a client that stops reading overflows its queue; it recovers on node 1.
        slow = await positioned_on(c, slow_user, rcvbuf=4096)
        payload = "x" * 4096
        sent = 0
        with client(a) as r:
            while c.group_size(slow.groups[0]) != 0:
                assert sent < 4000, "the slow client was never closed"
                for _ in range(50):
                    r.publish(slow.groups[0], f"{sent} {payload}")
                    sent += 1
        assert await slow.close_code() == 4008
        slow.ws = None
        await slow.connect(a.ws_url)
        assert slow.answers[-1]["recovered"] is True
        while len(slow.datas()) < sent + 1:
            await slow.next()
        assert [d.split(" ")[0] for d in slow.datas()[1:]] == [str(i) for i in range(sent)]
        await slow.close()
        return sent

    sent = asyncio.run(slow_consumer())
    print(f"slow consumer closed with 4008 after {sent} messages; all recovered")

    # SIGKILL: the client's node dies; it recovers on node 3.
    killed = asyncio.run(positioned_on(b, killed_user))
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(timeout=10)
    asyncio.run(moves(killed, c, 50, "missed"))

    # Node 2 comes back (same id and data dir); a drain closes its client with 1012,
    # which recovers on node 3.
    again = start_node("--node-id", "2", "--seeds", a.peer_addr, "--cluster-secret", CLUSTER_SECRET,
                       "--node-timeout-ms", "2000", *HISTORY, "--client-queue-bytes", "65536",
                       "--data-dir", b.dir)
    for n in (a, c, again):
        wait_until(lambda n=n: up_members(n) == [1, 2, 3], timeout=15, what="node 2 back in the mesh")
    wait_until(lambda: settled([a, c, again]), timeout=20, what="history assignments settled again")

    async def drained():
        f = await positioned_on(again, drained_user)
        again.cli("drain")
        assert await f.close_code() == 1012
        await moves(f, c, 50, "drained")

    asyncio.run(drained())


def test_a_recovery_asked_while_the_owner_is_dead_waits_for_the_takeover(start_cluster):
    """The owner dies and the client recovers at once, before the takeover commits (the
    node timeout is 2 s): the node asks again until the replica has taken over, and the
    client gets everything it missed, `recovered: true`, not a premature `false`."""
    a, b, c = start_cluster(3, *HISTORY)
    wait_until(lambda: settled([a, b, c]), timeout=20, what="history assignments settled")
    user = placed(a, lambda o, r: o == 3 and r in (1, 2))

    async def scenario():
        f = Follower(user)
        await f.connect(a.ws_url)
        for n in (a, b, c):  # the owner (node 3) must know node 1's interest
            n.wait_group(f.groups[0], 1)
        with client(a) as r:
            assert r.publish(f.groups[0], "before") == 1
        assert (await f.next())["data"] == "before"
        await f.close()
        with client(a) as r:
            for i in range(20):
                r.publish(f.groups[0], f"missed {i}")
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait(timeout=10)
        assert history_of(a, f.groups[0])["owner"] == 3, "asked before the takeover"
        await f.connect(b.ws_url, timeout=20)
        assert f.answers[-1]["recovered"] is True, f.answers[-1]
        while len(f.datas()) < 21:
            await f.next()
        assert f.datas() == ["before"] + [f"missed {i}" for i in range(20)]
        await f.close()

    asyncio.run(scenario())


def test_the_owner_killed_under_load_loses_no_acknowledged_message(start_cluster):
    nodes = start_cluster(3, *HISTORY)
    a, b, c = nodes
    wait_until(lambda: settled(nodes), timeout=20, what="history assignments settled")
    # A user whose owner is node 3 and whose replica is node 1 or 2.
    user = placed(a, lambda o, r: o == 3)
    group = f"user_{user}"
    total, batch, publishers = 1000, 25, 4
    acked, failed = [], []

    def publish(k):
        """Publisher k of 4 on node 1: its quarter of the messages, pipelined."""
        mine = range(k, total, publishers)
        with client(a) as r:
            for start in range(0, len(mine), batch):
                chunk = mine[start:start + batch]
                pipe = r.pipeline(transaction=False)
                for i in chunk:
                    pipe.publish(group, f"p{i}")
                results = pipe.execute(raise_on_error=False)
                for i, result in zip(chunk, results):
                    (failed if isinstance(result, Exception) else acked).append(f"p{i}")

    async def scenario():
        followers = [Follower(user, name=f"on node {i}") for i in (1, 2, 3)]
        for f, n in zip(followers, nodes):
            await f.connect(n.ws_url)
        for n in nodes:
            n.wait_group(group, 3)
        urls = {1: [a.ws_url, b.ws_url], 2: [b.ws_url, a.ws_url], 3: [a.ws_url, b.ws_url]}
        threads = [threading.Thread(target=publish, args=(k,)) for k in range(publishers)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 200, timeout=30, what="200 acknowledged publishes")
        c.proc.send_signal(signal.SIGKILL)
        c.proc.wait(timeout=10)
        for t in threads:
            await asyncio.to_thread(t.join, 120)
            assert not t.is_alive()
        assert len(acked) + len(failed) == total
        assert len(acked) > 200, "the survivors took publishes again after the takeover"
        wait_until(lambda: history_of(a, group)["owner"] != 3, timeout=15, what="a new owner")
        ordered = set(acked)
        for f, i in zip(followers, (1, 2, 3)):
            def done(f):
                return ordered.issubset(f.datas())
            await f.catch_up(urls[i], done, timeout=30)
            await f.close()
        positions = {}
        for f in followers:
            datas = f.datas()
            assert len(datas) == len(set(datas)), f"{f.name}: a message delivered twice"
            for (epoch, offset, data) in f.received[group]:
                assert positions.setdefault((epoch, offset), data) == data, \
                    f"two payloads at ({epoch}, {offset})"
            assert all(answer["recovered"] for answer in f.answers), f"{f.name}: {f.answers}"
        assert followers[2].closes, "the client on the killed node had to move"
        return len(acked), len(failed)

    acks, fails = asyncio.run(scenario())
    print(f"owner killed under load: {acks} acknowledged, {fails} refused")


def test_subscribe_with_since_racing_a_publish_loses_nothing(start_cluster):
    a, b, c = start_cluster(3, *HISTORY)
    wait_until(lambda: settled([a, b, c]), timeout=20, what="history assignments settled")

    async def scenario():
        with client(a) as r:
            for u in range(20):
                user = f"race{u}"
                # A position, learned on node 1 and kept.
                f = Follower(user)
                await f.connect(a.ws_url)
                await f.close()
                a.wait_group(f"user_{user}", 0)
                # On node 3 (no interest in the group yet): subscribe with since, and
                # publish on node 1 at once, without waiting for anything.
                ws = await websockets.connect(f"{c.ws_url}?token={f.token}&positions=1")
                await ws.send(json.dumps({"op": "subscribe", "group": f"user_{user}",
                                          "since": f.positions[f"user_{user}"]}))
                r.publish(f"user_{user}", f"raced {u}")
                f.ws = ws
                frame = await f.next()
                assert frame["type"] == "subscribed" and frame["recovered"] is True, frame
                while not f.datas():
                    await f.next()
                assert f.datas() == [f"raced {u}"]
                await f.close()

    asyncio.run(scenario())
