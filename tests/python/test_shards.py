"""Presence sharded over several Raft groups (`--presence-shards`): each shard is a group
of 3 voters placed over the nodes, a node holds only the shards it votes in, and every
node still answers for every user (through the user's shard), follows every shard's
events, and survives a shard's leader being killed, a node joining and a node leaving."""

import asyncio
import json
import signal
import subprocess
import urllib.error
import urllib.request

from conftest import BIN, DEADLINE, mint, wait_until
from test_presence_events import Sse
from wsclient import connect, recv

SHARDS = 4
PURGE_DEADLINE = 30.0


def shard_of(user, shards=SHARDS):
    """The node's rule (FNV-1a of the user id, modulo the shard count)."""
    h = 0xCBF29CE484222325
    for b in str(user).encode():
        h ^= b
        h = (h * 0x100000001B3) % (1 << 64)
    return h % shards


def users_of(shard, n, shards=SHARDS):
    """The first `n` numeric user ids in `shard`."""
    return [u for u in range(1, 10_000) if shard_of(u, shards) == shard][:n]


def shards(node):
    return node.cli("status")["presence_shards"]["shards"]


def hosted(node):
    return {s["shard"] for s in shards(node) if s["hosted"]}


def presence_nodes(node, user):
    out = node.cli("presence", str(user), "--linearizable")
    return sorted(c["node"] for c in out["connections"])


def node_id(node):
    return node.cli("status")["id"]


def test_every_node_answers_for_every_user_and_holds_only_its_shards(start_cluster):
    nodes = start_cluster(4, "--presence-shards", str(SHARDS))
    ids = [node_id(n) for n in nodes]
    # Each shard has 3 voters, the same on every node; a node hosts the shards it votes in.
    recorded = {s["shard"]: sorted(s["voters"]) for s in shards(nodes[0])}
    assert sorted(recorded) == list(range(SHARDS)) and all(len(v) == 3 for v in recorded.values())
    for n, nid in zip(nodes, ids):
        wait_until(lambda n=n, nid=nid: hosted(n) == {k for k, v in recorded.items() if nid in v},
                   what="a node hosting exactly the shards it votes in")
    assert sum(len(hosted(n)) for n in nodes) == 3 * SHARDS
    assert any(len(hosted(n)) < SHARDS for n in nodes), "some node holds less than everything"

    async def scenario():
        # Two users per shard, each connected to two nodes.
        users = [u for k in range(SHARDS) for u in users_of(k, 2)]
        clients, where = [], {}
        for i, user in enumerate(users):
            on = [nodes[i % 4], nodes[(i + 1) % 4]]
            where[user] = sorted(node_id(n) for n in on)
            clients += [await connect(n.ws_url, mint(user)) for n in on]
        # Every node answers for every user, hosting its shard or not.
        for n in nodes:
            for user in users:
                wait_until(lambda n=n, user=user: presence_nodes(n, user) == where[user],
                           what=f"user {user} seen from node {node_id(n)}")
        # A shard's connections are held by its voters only.
        for n, nid in zip(nodes, ids):
            held = n.cli("status")["presence_entries"]
            expected = sum(len(where[u]) for u in users if nid in recorded[shard_of(u)])
            assert held == expected, (nid, held, expected)
        # The WebSocket `presence` op, on a node that does not host the user's shard.
        outsider = next(n for n in nodes if any(k not in hosted(n) for k in range(SHARDS)))
        user = next(u for u in users if shard_of(u) not in hosted(outsider))
        ws = await connect(outsider.ws_url, mint(user, extra={"presence": True}))
        where[user] = sorted(where[user] + [node_id(outsider)])
        wait_until(lambda: presence_nodes(outsider, user) == where[user], what="the watcher registered")
        await ws.send(json.dumps({"op": "presence", "user": str(user), "id": 1}))
        reply = json.loads(await recv(ws))
        assert reply["type"] == "presence" and reply["id"] == 1
        assert sorted(c["node"] for c in reply["connections"]) == where[user]
        for c in clients + [ws]:
            await c.close()
        # Disconnects are committed in every shard too.
        for n in nodes:
            for user in users:
                wait_until(lambda n=n, user=user: presence_nodes(n, user) == [], what="everyone gone")

    asyncio.run(scenario())


def test_a_shards_leader_killed_its_shard_keeps_working_and_purges_the_dead(start_cluster):
    nodes = start_cluster(4, "--presence-shards", str(SHARDS))
    # A shard led by a node other than the control leader (so that the kill tests the
    # shard's own failover), and a user of that shard.
    control_leader = nodes[0].cli("status")["leader"]
    led = {}
    for n in nodes:
        for s in shards(n):
            if s["hosted"] and s["hosted"]["role"] == "leader":
                led[s["shard"]] = n
    shard, victim = next(((k, n) for k, n in sorted(led.items()) if node_id(n) != control_leader),
                         sorted(led.items())[0])
    victim_id = node_id(victim)
    survivors = [n for n in nodes if n is not victim]
    before, after = users_of(shard, 2)
    sse = Sse(survivors[0])

    async def scenario():
        on_victim = await connect(victim.ws_url, mint(before))
        elsewhere = await connect(survivors[1].ws_url, mint(before))
        for n in nodes:
            wait_until(lambda n=n: presence_nodes(n, before) == sorted([victim_id, node_id(survivors[1])]),
                       what="the user on the victim and elsewhere")
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=DEADLINE)
        # The shard elects another leader among its two other voters and purges the dead
        # node's connections after --node-timeout-ms.
        for n in survivors:
            wait_until(lambda n=n: presence_nodes(n, before) == [node_id(survivors[1])],
                       timeout=PURGE_DEADLINE, what="the dead node's connection purged")
        new_leaders = {s["hosted"]["leader"] for n in survivors for s in shards(n)
                       if s["shard"] == shard and s["hosted"]}
        assert new_leaders and victim_id not in new_leaders, new_leaders
        # New writes in that shard commit under its new leader.
        late = await connect(survivors[2].ws_url, mint(after))
        for n in survivors:
            wait_until(lambda n=n: presence_nodes(n, after) == [node_id(survivors[2])],
                       what="a write in the shard after its leader died")
        for ws in (on_victim, elsewhere, late):
            ws.transport.abort()

    asyncio.run(scenario())
    # The stream saw the purge: a leave from node_down, with the shard's id prefix.
    events = [e[2] for e in sse.take(6, timeout=PURGE_DEADLINE)]
    purged = [e for e in events if e["type"] == "leave" and e["node"] == victim_id]
    assert purged and purged[0]["reason"] == "node_down" and purged[0]["id"].startswith(f"{shard}:"), events
    sse.close()


def test_sharded_events_carry_their_shard_and_resume_from_a_cursor(start_cluster):
    nodes = start_cluster(4, "--presence-shards", str(SHARDS))
    # The stream on a node that hosts not every shard: it follows the others remotely.
    reader = next(n for n in nodes if len(hosted(n)) < SHARDS)
    missing = next(k for k in range(SHARDS) if k not in hosted(reader))
    users = [users_of(missing, 1)[0]] + [users_of(k, 1)[0] for k in range(SHARDS) if k != missing]
    sse = Sse(reader)
    assert sse.status == 200

    async def scenario():
        clients = [await connect(nodes[i % 4].ws_url, mint(u)) for i, u in enumerate(users)]
        got = sse.take(2 * len(users))
        by_user = {}
        for raw, cursor, event in got:
            shard = shard_of(event["user"])
            assert event["id"].startswith(f"{shard}:"), event
            assert event["id"] in cursor.split(","), (cursor, event)
            by_user.setdefault(event["user"], []).append(event["type"])
        assert by_user == {str(u): ["join", "online"] for u in users}
        # Resume from the cursor after the first event: every later event, and only those.
        resumed = Sse(nodes[0], f"?follow=0&since={got[0][1]}").rest()
        assert sorted(e[2]["id"] for e in resumed) == sorted(e[2]["id"] for e in got[1:])
        again = Sse(nodes[1], "?follow=0", last_event_id=got[-1][1]).rest()
        assert again == [], "nothing after the last cursor"
        # A plain (unsharded) id is refused with the reason.
        bad = Sse(reader, "?since=12-0")
        assert bad.status == 400 and "sharded" in bad.resp.read().decode()

        # A WebSocket client follows a user of a shard its node does not host.
        user = users[0]
        watcher = await connect(reader.ws_url, mint(999, extra={"presence": True}))
        await watcher.send(json.dumps({"op": "presence_subscribe", "user": str(user), "id": 1}))
        subscribed = json.loads(await recv(watcher))
        reset = json.loads(await recv(watcher))["event"]
        assert subscribed["type"] == "presence_subscribed"
        assert reset["type"] == "reset" and reset["shard"] == missing and len(reset["connections"]) == 1
        await clients[0].close()
        left = [json.loads(await recv(watcher))["event"] for _ in range(2)]
        assert [(e["type"], e["user"]) for e in left] == [("leave", str(user)), ("offline", str(user))]
        assert all(e["id"].startswith(f"{missing}:") for e in left)
        # Resuming from the reset's position on another node: exactly the two events.
        late = await connect(nodes[0].ws_url, mint(998, extra={"presence": True}))
        await late.send(json.dumps({"op": "presence_subscribe", "user": str(user), "since": reset["id"]}))
        assert json.loads(await recv(late))["type"] == "presence_subscribed"
        assert [json.loads(await recv(late))["event"] for _ in range(2)] == left
        # A position of another shard is refused.
        other = f"{(missing + 1) % SHARDS}:1-0"
        await late.send(json.dumps({"op": "presence_subscribe", "user": str(user), "since": other, "id": 5}))
        refused = json.loads(await recv(late))
        assert refused["code"] == "bad_request" and "shard" in refused["message"], refused
        for ws in (watcher, late, *clients[1:]):
            await ws.close()

    asyncio.run(scenario())
    sse.close()


def test_a_node_added_and_removed_while_clients_are_connected(start_cluster, start_node):
    from conftest import CLUSTER_SECRET, up_members
    nodes = start_cluster(3, "--presence-shards", "6")
    users = [users_of(k, 1, 6)[0] for k in range(6)]

    async def scenario():
        clients = [await connect(nodes[i % 3].ws_url, mint(u)) for i, u in enumerate(users)]
        where = {u: [node_id(nodes[i % 3])] for i, u in enumerate(users)}
        # Node 4 joins: it takes seats in some shards (their leaders move them over).
        fourth = start_node("--node-id", "4", "--seeds", nodes[0].peer_addr, "--cluster-secret", CLUSTER_SECRET,
                            "--node-timeout-ms", "2000", "--presence-shards", "6")
        wait_until(lambda: any(4 in s["voters"] for s in shards(nodes[0])) and
                   all(len(s["voters"]) == 3 for s in shards(nodes[0])), timeout=30,
                   what="shards converged onto node 4")
        wait_until(lambda: hosted(fourth) == {s["shard"] for s in shards(fourth) if 4 in s["voters"]},
                   what="node 4 hosting its shards")
        everyone = nodes + [fourth]
        for n in everyone:
            for u in users:
                wait_until(lambda n=n, u=u: presence_nodes(n, u) == where[u], what="presence after the join")
        extra = await connect(fourth.ws_url, mint(users[0]))
        where[users[0]] = sorted(where[users[0]] + [4])
        for n in everyone:
            wait_until(lambda n=n: presence_nodes(n, users[0]) == where[users[0]], what="node 4's client seen")
        # Node 4 drains and stops, and is removed for good: its seats move back.
        await extra.close()
        fourth.stop()
        where[users[0]].remove(4)
        assert nodes[1].cli("remove", "4") == {"id": 4, "removed": True}
        wait_until(lambda: all(4 not in s["voters"] and len(s["voters"]) == 3 for s in shards(nodes[0])),
                   timeout=30, what="shards converged off node 4")
        for n in nodes:
            wait_until(lambda n=n: up_members(n) == [1, 2, 3], what="node 4 gone")
            for u in users:
                wait_until(lambda n=n, u=u: presence_nodes(n, u) == where[u], what="presence after the removal")
        for ws in clients:
            await ws.close()

    asyncio.run(scenario())


def test_nodes_with_another_shard_count_are_refused(start_cluster, start_node):
    from conftest import CLUSTER_SECRET
    nodes = start_cluster(2, "--presence-shards", "2")
    odd = start_node("--node-id", "3", "--seeds", nodes[0].peer_addr, "--cluster-secret", CLUSTER_SECRET,
                     "--presence-shards", "3", wait_ready=False)
    wait_until(lambda: any("--presence-shards 3" in line and "--presence-shards 2" in line
                           for line in list(odd.log_tail) + list(nodes[0].log_tail)),
               what="a refusal naming both shard counts")
    assert all(m["id"] != 3 for m in nodes[0].cli("members")["members"])


def test_a_shard_that_lost_its_majority_answers_unavailable_not_what_it_last_knew(start_cluster):
    nodes = start_cluster(5, "--presence-shards", str(SHARDS))
    ids = [node_id(n) for n in nodes]
    by_id = dict(zip(ids, nodes))
    control_leader = nodes[0].cli("status")["leader"]
    recorded = {s["shard"]: sorted(s["voters"]) for s in shards(nodes[0])}
    # A shard two of whose voters can die while the control group keeps its majority
    # (3 of 5): neither is the control leader. Its last voter is its leader where that can
    # be arranged (openraft keeps a leader that lost its quorum as leader: the case that
    # answered stale entries), else a follower (which turns candidate).
    leaders = {s["shard"]: s["hosted"]["leader"] for n in nodes for s in shards(n) if s["hosted"]}
    candidates = [(k, [v for v in voters if v not in (control_leader, leaders.get(k))][:2])
                  for k, voters in sorted(recorded.items())]
    candidates += [(k, [v for v in voters if v != control_leader][:2]) for k, voters in sorted(recorded.items())]
    shard, doomed = next((k, d) for k, d in candidates if len(d) == 2)
    last_voter = by_id[next(v for v in recorded[shard] if v not in doomed)]
    outsider = by_id[next(i for i in ids if i not in recorded[shard])]
    user = users_of(shard, 1)[0]

    def read(n):
        """GET /v1/presence/USER with room for a read that tries the dead voters first."""
        req = urllib.request.Request(f"http://{n.admin}/v1/presence/{user}")
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    async def scenario():
        ws = await connect(last_voter.ws_url, mint(user))
        for n in (last_voter, outsider):
            wait_until(lambda n=n: read(n)[0] == 200 and len(json.loads(read(n)[1])["connections"]) == 1,
                       what="the user seen")
        for i in doomed:
            by_id[i].proc.send_signal(signal.SIGKILL)
            by_id[i].proc.wait(timeout=DEADLINE)
        # Its last voter, and a node that asks it, say the shard cannot be read now.
        for n in (last_voter, outsider):
            wait_until(lambda n=n: read(n)[0] == 503, timeout=PURGE_DEADLINE,
                       what=f"node {node_id(n)} answering 503 for a shard without a majority")
            status, body = read(n)
            assert status == 503 and "presence shard unreachable" in body, (status, body)
        ws.transport.abort()

    asyncio.run(scenario())
