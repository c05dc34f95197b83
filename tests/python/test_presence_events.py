"""Presence events: derived from what each Raft entry changed, with ids that are the same
on every node; out through Server-Sent Events on the admin API, the WebSocket op
`presence_subscribe` and `switchboard presence-events`."""

import asyncio
import http.client
import json
import queue
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BIN, DEADLINE, mint, wait_until
from wsclient import connect, recv

# A purge waits for --node-timeout-ms (2 s in these clusters), and a leader change first.
PURGE_DEADLINE = 30.0


class Sse:
    """A Server-Sent Events reader of a node's presence events, in a thread. Each event is
    (raw text, id, parsed data); comments and the `retry:` line are skipped."""

    def __init__(self, node, query="", last_event_id=None):
        self.conn = http.client.HTTPConnection(node.admin, timeout=60)
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.conn.request("GET", f"/v1/presence/events{query}", headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.events = queue.Queue()
        self.ended = threading.Event()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        block = []
        try:
            for _ in range(1_000_000):  # bounded: far more lines than any test sends
                line = self.resp.readline().decode()
                if not line:
                    break
                if line.strip():
                    block.append(line.rstrip("\n"))
                    continue
                fields = dict(l.split(": ", 1) for l in block if not l.startswith(":") and ": " in l)
                if "data" in fields:
                    self.events.put(("\n".join(block), fields["id"], json.loads(fields["data"])))
                block = []
        except (OSError, ValueError, AttributeError, http.client.HTTPException):  # closed under us
            pass
        self.ended.set()

    def take(self, n, timeout=DEADLINE):
        """The next `n` events, waiting at most `timeout` for all of them."""
        got, end = [], time.monotonic() + timeout
        while len(got) < n:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out: {len(got)} of {n} events: {got}")
            try:
                got.append(self.events.get(timeout=left))
            except queue.Empty:
                pass
        return got

    def rest(self, timeout=DEADLINE):
        """Every event until the stream ends (a `follow=0` stream)."""
        assert self.ended.wait(timeout), "the stream did not end"
        got = []
        while not self.events.empty():
            got.append(self.events.get_nowait())
        return got

    def close(self):
        # Shut the socket first: the reading thread holds the response's lock in recv().
        if self.conn.sock is not None:
            try:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.ended.wait(DEADLINE)
        self.conn.close()


def kinds(events):
    return [(e[2]["type"], e[2].get("node")) for e in events]


def ids(events):
    return [tuple(int(x) for x in e[1].split("-")) for e in events]


def test_every_node_streams_the_same_events_and_a_resume_gives_exactly_the_rest(start_cluster):
    a, b, c = start_cluster(3)
    # Streams from the present, opened while nothing changes.
    first, third = Sse(a), Sse(c)
    assert (first.status, third.status) == (200, 200)

    async def scenario():
        seen = []
        on_two = await connect(b.ws_url, mint(42))
        seen += first.take(2)
        on_three = await connect(c.ws_url, mint(42))
        seen += first.take(1)
        await on_two.close()
        seen += first.take(1)
        await on_three.close()
        seen += first.take(2)
        return seen

    seen = asyncio.run(scenario())
    assert kinds(seen) == [("join", 2), ("online", 2), ("join", 3), ("leave", 2), ("leave", 3), ("offline", 3)]
    assert all(e[2]["user"] == "42" and "reason" not in e[2] for e in seen)
    assert ids(seen) == sorted(set(ids(seen))), "ids strictly increase"
    assert [e[0] for e in third.take(6)] == [e[0] for e in seen], "node 1 and node 3 differ"

    # Resume on node 2 after the second event: exactly the rest, by header or by query
    # (node 2 may not have applied the last entries yet: the stream delivers them as it does).
    resumed = Sse(b, last_event_id=seen[1][1])
    assert [e[0] for e in resumed.take(4)] == [e[0] for e in seen[2:]]
    resumed.close()
    by_query = Sse(b, f"?since={seen[1][1]}&follow=0").rest()
    assert [e[0] for e in by_query] == [e[0] for e in seen[2:]]

    # The CLI: the same events, as JSON lines or for people.
    out = subprocess.run([BIN, "presence-events", "--since", seen[1][1], "--admin", b.admin, "--json"],
                         capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr
    assert [json.loads(l) for l in out.stdout.splitlines()] == [e[2] for e in seen[2:]]
    out = subprocess.run([BIN, "presence-events", "--since", seen[1][1], "--admin", b.admin],
                         capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and lines[-1].split()[1] == "offline" and "user=42" in lines[-1], lines

    # --follow prints each new event as it is committed (from the last one seen, so that
    # nothing is missed however soon the CLI connects).
    follow = subprocess.Popen([BIN, "presence-events", "--follow", "--json", "--since", seen[-1][1],
                               "--admin", c.admin], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in follow.stdout], daemon=True).start()

        async def another():
            ws = await connect(a.ws_url, mint(43))
            got = [json.loads(lines.get(timeout=DEADLINE)) for _ in range(2)]
            await ws.close()
            return got

        got = asyncio.run(another())
        assert [(e["type"], e["user"], e["node"]) for e in got] == [("join", "43", 1), ("online", "43", 1)]
    finally:
        follow.kill()
        follow.wait(timeout=DEADLINE)

    # Bad positions are refused with the reason.
    bad = Sse(a, "?since=yesterday")
    assert bad.status == 400 and "not an event id" in bad.resp.read().decode()
    out = subprocess.run([BIN, "presence-events", "--since", "x-1", "--admin", b.admin],
                         capture_output=True, text=True, timeout=DEADLINE)
    assert out.returncode != 0 and "not an event id" in out.stderr
    for s in (first, third):
        s.close()


def test_a_resume_from_further_back_than_the_ring_gets_a_reset_then_the_rest(start_node):
    node = start_node("--presence-events", "4")

    async def scenario():
        clients = [await connect(node.ws_url, mint(u)) for u in (1, 2, 3)]
        wait_until(lambda: len(node.cli("presence", "3")["connections"]) == 1, what="user 3 registered")
        for ws in clients[:2]:
            await ws.close()
        wait_until(lambda: all(node.cli("presence", u)["connections"] == [] for u in ("1", "2")),
                   what="users 1 and 2 gone")
        events = Sse(node, "?since=0-0&follow=0").rest()
        # 6 events for three users, 4 for two leaving: 10 made, 4 kept.
        reset, *rest = events
        assert reset[2]["type"] == "reset"
        assert [c["user"] for c in reset[2]["connections"]] == ["3"]
        assert rest == [], "the reset stands at the newest event"
        # Resuming after the reset's id: nothing more; a new event follows it.
        follow = Sse(node, last_event_id=reset[1])
        await clients[2].close()
        after = follow.take(2)
        assert kinds(after) == [("leave", 1), ("offline", 1)]
        assert ids(after)[0] > tuple(int(x) for x in reset[1].split("-"))
        follow.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("victim", ["follower", "leader"])
def test_a_dead_nodes_connections_leave_with_node_down_alike_on_every_survivor(start_cluster, victim):
    nodes = start_cluster(3)
    leader = nodes[0].cli("status")["leader"]
    dead = next(n for n in nodes if (n.cli("status")["id"] == leader) == (victim == "leader"))
    dead_id = dead.cli("status")["id"]
    alive = [n for n in nodes if n is not dead]
    streams = [Sse(n) for n in alive]

    async def scenario():
        clients = [await connect(dead.ws_url, mint("a")), await connect(dead.ws_url, mint("a")),
                   await connect(dead.ws_url, mint("b")), await connect(alive[0].ws_url, mint("b"))]
        before = [s.take(6) for s in streams]
        dead.proc.send_signal(signal.SIGKILL)
        dead.proc.wait(timeout=DEADLINE)
        after = [s.take(4, timeout=PURGE_DEADLINE) for s in streams]
        for ws in clients:
            ws.transport.abort()
        return before, after

    before, after = asyncio.run(scenario())
    assert [e[0] for e in before[0]] == [e[0] for e in before[1]], "survivors differ before the kill"
    assert sorted(kinds(before[0])).count(("join", dead_id)) == 3
    assert [e[0] for e in after[0]] == [e[0] for e in after[1]], "survivors differ after the kill"
    events = [e[2] for e in after[0]]
    assert sorted((e["type"], e["user"]) for e in events) == [("leave", "a"), ("leave", "a"), ("leave", "b"),
                                                              ("offline", "a")]
    assert [e["type"] for e in events if e["user"] == "a"] == ["leave", "leave", "offline"]
    assert all(e["reason"] == "node_down" and e["node"] == dead_id for e in events)
    whole = ids(before[0] + after[0])
    assert whole == sorted(set(whole)), "ids strictly increase, across the leader change"
    for s in streams:
        s.close()


def test_a_client_follows_a_users_presence_over_the_websocket(start_cluster):
    a, b, c = start_cluster(3)

    async def frames(ws, n):
        return [json.loads(await recv(ws)) for _ in range(n)]

    async def scenario():
        watcher = await connect(a.ws_url, mint(1, extra={"presence": True}))
        await watcher.send(json.dumps({"op": "presence_subscribe", "user": "42", "id": 1}))
        subscribed, reset = await frames(watcher, 2)
        assert subscribed == {"type": "presence_subscribed", "user": "42", "id": 1}
        assert reset["type"] == "presence_event" and reset["event"]["type"] == "reset"
        assert reset["event"]["connections"] == [] and reset["event"]["user"] == "42"

        other = await connect(c.ws_url, mint(7))  # not followed: nothing for it
        user = await connect(c.ws_url, mint(42))
        joined = [f["event"] for f in await frames(watcher, 2)]
        assert [(e["type"], e["user"], e["node"]) for e in joined] == [("join", "42", 3), ("online", "42", 3)]
        await user.close()
        left = [f["event"] for f in await frames(watcher, 2)]
        assert [e["type"] for e in left] == ["leave", "offline"]

        # Another node, resuming after the join: exactly what followed it.
        late = await connect(b.ws_url, mint(2, extra={"presence": True}))
        await late.send(json.dumps({"op": "presence_subscribe", "user": "42", "since": joined[0]["id"]}))
        got = await frames(late, 4)
        assert got[0]["type"] == "presence_subscribed"
        assert [f["event"] for f in got[1:]] == joined[1:] + left

        # Only one's own presence without the claim; bad ids are refused; the connection stays.
        plain = await connect(b.ws_url, mint(5))
        wait_until(lambda: len(b.cli("presence", "5")["connections"]) == 1, what="user 5 registered")
        await plain.send(json.dumps({"op": "presence_subscribe", "user": "42", "id": 2}))
        assert (await frames(plain, 1))[0]["code"] == "forbidden"
        await plain.send(json.dumps({"op": "presence_subscribe", "since": "soon", "id": 3}))
        assert (await frames(plain, 1))[0]["code"] == "bad_request"
        await plain.send(json.dumps({"op": "presence_subscribe", "id": 4}))
        own = await frames(plain, 2)
        assert own[0] == {"type": "presence_subscribed", "user": "5", "id": 4}
        assert own[1]["event"]["type"] == "reset" and len(own[1]["event"]["connections"]) == 1
        await plain.send(json.dumps({"op": "presence_unsubscribe", "id": 5}))
        assert (await frames(plain, 1))[0] == {"type": "presence_unsubscribed", "user": "5", "id": 5}
        # A refreshed token without the claim stops the following of others.
        await watcher.send(json.dumps({"op": "refresh", "token": mint(1), "id": 9}))
        assert (await frames(watcher, 1))[0]["type"] == "refreshed"
        again = await connect(c.ws_url, mint(42))
        wait_until(lambda: len(a.cli("presence", "42")["connections"]) == 1, what="42 seen on node 1")
        await watcher.send(json.dumps({"op": "ping", "id": 10}))
        assert (await frames(watcher, 1))[0] == {"type": "pong", "id": 10}, "still following 42"
        for ws in (watcher, other, late, plain, again):
            await ws.close()

    asyncio.run(scenario())
