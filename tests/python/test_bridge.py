"""The consumer's other half: the old deployment's own Django project (tests/django:
SimpleJWT, a JWTAuthMiddleware, an AsyncJsonWebsocketConsumer that joins user_<id>,
answers mark_read and relays send_notification) runs unchanged behind Switchboard
through the bridge (client/python, switchboard_channels), and a real WebSocket client
gets the same frames as under Daphne with Redis, run in the same test as the reference.
"""

import asyncio
import json

import pytest
import websockets

from conftest import CLUSTER_SECRET, Node, formed, up_members, wait_until
from django_stack import Listener, NewStack, OldStack, backend_flags
from wsclient import close_code, connect, recv

# What the old consumer's send_json(event["message"]) wrote, for values of every kind:
# nested, unicode (escaped by json.dumps), floats, integers to 64 bits, None/True.
MESSAGES = [
    "test",
    {"title": "Héllo wörld ✓ 😀", "n": 1, "f": 1.5, "nested": {"b": [1, None, True, False]}},
    [0.1, 1e16, 1e-05, -2.5, 123456789.125, 3.0],
    {"big": 2**63 - 1, "neg": -(2**63), "u": 2**64 - 1, "zero": 0},
    {"z": 1, "a": 2, "m": {"y": [], "x": {}}},
    None,
    True,
    "line\nbreak \"quoted\" \\ tab\t",
]


async def frames_until_closed(ws, timeout=10):
    """Every frame until the server closes, then the close code."""
    got = []
    try:
        while True:
            got.append(await asyncio.wait_for(ws.recv(), timeout))
    except websockets.ConnectionClosed as e:
        got.append(("closed", e.rcvd.code if e.rcvd else None))
    return got


async def handshake_status(url):
    """The HTTP status a refused handshake got (None when it was accepted)."""
    try:
        ws = await websockets.connect(url, open_timeout=10)
    except websockets.InvalidStatus as e:
        return e.response.status_code
    await ws.close()
    return None


def scenario(stack, tag):
    """What a real client sees of the old consumer through `stack`: its transcript."""
    api = stack.api
    uid, token = api.user(f"alice-{tag}")
    n = api.call("/api/notifications/", {"user_id": uid, "text": "hi"})["id"]
    seen = []

    async def run():
        ws = await connect(stack.ws_url, token)
        # Connected (and in user_<id>) once the consumer recorded it.
        wait_until(lambda: any(e["kind"] == "connect" for e in api.events()), what="the consumer's connect")
        await ws.send(json.dumps({"action": "mark_read", "id": n}))
        seen.append(await recv(ws))
        await ws.send(json.dumps({"action": "mark_read", "id": 999999}))
        seen.append(await recv(ws))
        # group_add in connect, then group_send: the relayed message, byte for byte.
        for message in MESSAGES:
            api.call("/api/notify/", {"user_id": uid, "message": message})
            seen.append(await recv(ws))
        # group_add(room, channel_name) from a view, later; then group_send to the room.
        assert api.call("/api/rooms/join/", {"user_id": uid, "room": f"room_{tag}"})["joined"] == 1
        api.call("/api/rooms/send/", {"room": f"room_{tag}", "message": {"room": "news"}})
        seen.append(await recv(ws))
        # channel_layer.send(channel_name, ...) from a view.
        assert api.call("/api/direct/", {"user_id": uid, "message": {"direct": "only you"}})["sent"] == 1
        seen.append(await recv(ws))
        # A kick with 4000.
        stack.kick(uid, 4000)
        seen.append(await frames_until_closed(ws))
        # A revocation: 4001.
        ws = await connect(stack.ws_url, token)
        wait_until(lambda: len(api.events("connect")) == 2, what="the second connect")
        stack.revoke(uid)
        seen.append(await frames_until_closed(ws))
        # A connect the consumer refuses (an inactive user): HTTP 403 before the handshake.
        bad_uid, bad_token = api.user(f"mallory-{tag}")
        api.call(f"/api/users/{bad_uid}/", {"is_active": False}, method="PATCH")
        seen.append(await handshake_status(f"{stack.ws_url}?token={bad_token}"))

    asyncio.run(run())
    return seen


def consumer_events(api, expected):
    """What the consumer saw of each connection, (kind, code) in order, the connections
    in the order they first appear; once it has recorded `expected` disconnects."""
    wait_until(lambda: len(api.events("disconnect")) >= expected, what=f"{expected} disconnects recorded")
    by_channel = {}
    for e in api.events():
        by_channel.setdefault(e["channel_name"], []).append((e["kind"], e["code"]))
    return list(by_channel.values())


def test_the_old_consumer_runs_unchanged_behind_switchboard_as_under_daphne(start_node):
    old = OldStack()
    try:
        reference = scenario(old, "old")
        reference_events = consumer_events(old.api, 3)
    finally:
        old.stop()
    port = Listener()
    node = start_node(*backend_flags(port), secret=None)
    new = NewStack(port, client_node=node, publisher_node=node)
    try:
        got = scenario(new, "new")
        got_events = consumer_events(new.api, 3)
    finally:
        new.stop()
    assert got == reference
    # Spot checks of the reference itself, so that a broken Daphne run cannot pass.
    assert reference[0] == '{"type": "marked_read", "id": 1}'
    assert reference[2] == '"test"'
    assert "\\u00e9" in reference[3]
    assert reference[-3][-1] == ("closed", 4000)
    assert reference[-2][-1] == ("closed", 4001)
    assert reference[-1] == 403
    # The consumer saw the same events of each connection: connect, the two frames, the
    # kick's disconnect; the second connect and its disconnect; the refused one's 1006.
    assert got_events == reference_events
    assert reference_events == [
        [("connect", None), ("receive", None), ("receive", None), ("disconnect", 4000)],
        [("connect", None), ("disconnect", 4001)],
        [("disconnect", 1006)],
    ]


def test_three_nodes_client_and_publisher_on_different_nodes(start_node):
    port = Listener()
    common = (*backend_flags(port), "--cluster-secret", CLUSTER_SECRET, "--node-timeout-ms", "2000")
    first = start_node("--node-id", "1", *common, secret=None)
    nodes = [first] + [start_node("--node-id", str(i), "--seeds", first.peer_addr, *common, secret=None)
                       for i in (2, 3)]
    for n in nodes:
        wait_until(lambda n=n: up_members(n) == [1, 2, 3], what="a full mesh")
        wait_until(lambda n=n: formed(n, [1, 2, 3]), what="the Raft membership")
    old = OldStack()
    try:
        reference = scenario(old, "old3")
    finally:
        old.stop()
    # Clients on node 1; Django's channel layer on node 2; the admin commands on node 3.
    new = NewStack(port, client_node=nodes[0], publisher_node=nodes[1], nodes=nodes)
    new.node = nodes[2]
    new.ws_url = nodes[0].ws_url
    try:
        got = scenario(new, "new3")
    finally:
        new.stop()
    assert got == reference


def test_a_frame_after_the_token_expired_still_reaches_the_consumer_as_its_user(start_node):
    """Django Channels resolves the user once, at connect; an open socket outlives its
    5-minute SimpleJWT token. The bridge does the same: when the middleware no longer
    resolves the user (expired token), the consumer sees the user the node verified."""
    port = Listener()
    node = start_node(*backend_flags(port), secret=None)
    new = NewStack(port, client_node=node, publisher_node=node, access_token_seconds=2)
    try:
        uid, token = new.api.user("short-lived")
        n = new.api.call("/api/notifications/", {"user_id": uid, "text": "hi"})["id"]

        async def run():
            ws = await connect(new.ws_url, token)
            wait_until(lambda: new.api.events("connect"), what="the connect")
            # Past the token's exp (the project's middleware checks it at every call).
            wait_until(lambda: token_expired(token), timeout=10, what="the token to expire")
            await ws.send(json.dumps({"action": "mark_read", "id": n}))
            assert await recv(ws) == json.dumps({"type": "marked_read", "id": n})
            await ws.close()

        asyncio.run(run())
        assert consumer_events(new.api, 1) == [[("connect", None), ("receive", None), ("disconnect", 1000)]]
        # Its user was known at the disconnect too.
        assert [e["user_id"] for e in new.api.events("disconnect")] == [str(uid)]
    finally:
        new.stop()


def token_expired(token):
    import base64
    import time
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return time.time() > claims["exp"] + 0.5


@pytest.mark.parametrize("scope", ["bad-signature", "stale", "unsigned"])
def test_the_bridge_refuses_calls_not_signed_by_a_node(start_node, scope):
    import time
    import urllib.error
    import urllib.request

    from django_stack import BACKEND_SECRET
    from switchboard_channels.signing import sign

    port = Listener()
    node = start_node(*backend_flags(port), secret=None)
    new = NewStack(port, client_node=node, publisher_node=node)
    try:
        body = json.dumps({"v": 1, "type": "connect", "connection": "1-a-1", "channel": "switchboard.conn!1-a-1",
                           "node": 1, "user": "1", "seq": 0, "scope": {"path": "/ws/notifications/"}}).encode()
        headers = {"content-type": "application/json"}
        if scope == "bad-signature":
            headers["x-switchboard-signature"] = sign(b"not the secret", body)
        elif scope == "stale":
            headers["x-switchboard-signature"] = sign(BACKEND_SECRET.encode(), body, int(time.time()) - 3600)
        req = urllib.request.Request(new.api.base + "/switchboard/", data=body, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 401
        reason = json.loads(refused.value.read())["error"]
        assert {"bad-signature": "bad signature", "stale": "stale", "unsigned": "unsigned"}[scope] in reason
        assert new.api.events() == [], "the consumer never ran"
    finally:
        new.stop()


def start_bridged_cluster(start_node, listener, n=3, *flags):
    """Nodes 1..n with the bridge at `listener`, a 2 s node timeout; once formed."""
    common = (*backend_flags(listener), "--cluster-secret", CLUSTER_SECRET, "--node-timeout-ms", "2000", *flags)
    first = start_node("--node-id", "1", *common, secret=None)
    nodes = [first] + [start_node("--node-id", str(i), "--seeds", first.peer_addr, *common, secret=None)
                       for i in range(2, n + 1)]
    for node in nodes:
        wait_until(lambda node=node: up_members(node) == list(range(1, n + 1)), what="a full mesh")
        wait_until(lambda node=node: formed(node, list(range(1, n + 1))), what="the Raft membership")
    return nodes


CONNECTIONS = 1000


async def open_many(url, tokens, count, concurrency=50):
    """`count` connections to `url`, the tokens used in turn, `concurrency` handshakes
    at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i):
        async with gate:
            return await connect(url, tokens[i % len(tokens)])

    return await asyncio.gather(*(one(i) for i in range(count)))


def owed_everywhere(nodes):
    return sum(n.cli("status")["backend"]["owed"] for n in nodes)


@pytest.mark.parametrize("how", ["sigkill", "drain"])
def test_every_disconnect_is_made_once_when_a_node_with_1000_bridged_connections_goes(start_node, how):
    """The consumer hears every connection's disconnect once (after the bridge's dedupe):
    a killed node's from a survivor, out of the committed purge; a drained node's from
    the node itself."""
    import time

    listener = Listener()
    # A drained node makes its own disconnect calls before it leaves, within its grace.
    nodes = start_bridged_cluster(start_node, listener, 3, "--shutdown-grace", "60")
    # The victim is not the Raft leader: the leader makes the calls a dead node owes.
    leader = nodes[0].cli("status")["leader"]
    victim = next(n for n in nodes if n.cli("status")["id"] != leader)
    survivors = [n for n in nodes if n is not victim]
    new = NewStack(listener, client_node=victim, publisher_node=survivors[0], nodes=nodes)
    try:
        tokens = [new.api.user(f"many-{how}-{i}")[1] for i in range(10)]

        async def run():
            sockets = await open_many(victim.ws_url, tokens, CONNECTIONS)
            wait_until(lambda: len(new.api.events("connect")) == CONNECTIONS, timeout=60,
                       what=f"{CONNECTIONS} connects recorded")
            started = time.monotonic()
            if how == "sigkill":
                victim.proc.kill()
                victim.proc.wait(timeout=10)
            else:
                victim.cli("drain")
            wait_until(lambda: len(new.api.events("disconnect")) >= CONNECTIONS, timeout=60,
                       what=f"{CONNECTIONS} disconnects recorded")
            took = time.monotonic() - started
            print(f"\n{how}: {CONNECTIONS} disconnects recorded {took:.1f} s after")
            for ws in sockets:
                ws.transport.abort()
            return took

        asyncio.run(run())
        # Nothing is owed any more, anywhere, and nothing was recorded twice.
        wait_until(lambda: owed_everywhere(survivors) == 0, timeout=30, what="no disconnect owed")
        disconnects = new.api.events("disconnect")
        channels = [e["channel_name"] for e in disconnects]
        assert len(channels) == CONNECTIONS
        assert len(set(channels)) == CONNECTIONS
        connects = {e["channel_name"] for e in new.api.events("connect")}
        assert set(channels) == connects
        expected_code = 1006 if how == "sigkill" else 1012
        assert {e["code"] for e in disconnects} == {expected_code}
        # Each with its user: the consumer's middleware resolved it from the scope.
        assert all(e["user_id"] for e in disconnects)
    finally:
        new.stop()


class BadBackend:
    """A backend that misbehaves on purpose (a real HTTP server on loopback): `garbage`
    (200 with something that is not a bridge answer), `500`, `hang` (never answers), or
    `down` (nothing listens)."""

    def __init__(self, mode):
        import http.server
        import threading

        self.mode = mode
        self.calls = 0
        self.listener = Listener()
        if mode == "down":
            self.listener.close()
            return
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                backend.calls += 1
                self.rfile.read(int(self.headers.get("content-length", 0)))
                if backend.mode == "hang":
                    import time
                    time.sleep(30)
                    return
                status, body = (500, b"oops") if backend.mode == "500" else (200, b"<html>not json")
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self):
                self.socket = backend.listener.sock
                self.server_address = self.socket.getsockname()

            def server_activate(self):
                pass

        self.server = Server(("127.0.0.1", self.listener.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        if self.mode != "down":
            self.server.shutdown()


def bad_node(start_node, backend, *flags):
    return start_node("--jwt-secret", "s", "--backend-url", f"http://127.0.0.1:{backend.listener.port}/switchboard/",
                      "--backend-secret", "k", "--backend-timeout-ms", "500", *flags, secret=None)


@pytest.mark.parametrize("mode", ["down", "garbage", "500", "hang"])
def test_a_backend_that_fails_never_stalls_the_node(start_node, mode):
    import redis
    import time

    from conftest import mint

    backend = BadBackend(mode)
    try:
        refusing = bad_node(start_node, backend)
        accepting = bad_node(start_node, backend, "--backend-unavailable", "accept")

        async def run():
            # Refused: the handshake completes, then 1013 says why.
            ws = await connect(refusing.ws_url, mint(1, secret="s"))
            assert await close_code(ws) == (1013, "backend unavailable, try again later")
            # Accepted without the consumer's connect: published messages still arrive at
            # once, and a frame for the consumer gets `unavailable`, the socket open.
            ws = await connect(accepting.ws_url, mint(2, secret="s"))
            other = await connect(accepting.ws_url, mint(3, secret="s"))
            accepting.wait_group("user_3", 1)
            await ws.send(json.dumps({"action": "mark_read", "id": 1}))
            r = redis.Redis(host=accepting.resp_host, port=accepting.resp_port)
            started = time.monotonic()
            assert r.publish("user_3", "still here") == 1
            assert await recv(other) == "still here"
            # The publish path did not wait for the backend (500 ms timeouts).
            assert time.monotonic() - started < 0.5 or mode != "hang"
            error = json.loads(await recv(ws))
            assert (error["type"], error["code"]) == ("error", "unavailable")
            await ws.send(json.dumps({"op": "ping", "id": 1}))
            assert json.loads(await recv(ws)) == {"type": "pong", "id": 1}
            r.close()
            await ws.close()
            await other.close()

        asyncio.run(run())
        metrics = Node.http(accepting.admin, "/metrics")[1]
        reason = {"down": "unreachable", "garbage": "garbage", "500": "status", "hang": "timeout"}[mode]
        failures = [line for line in metrics.splitlines()
                    if line.startswith(f'switchboard_backend_call_failures_total{{reason="{reason}"}}')]
        assert failures and int(failures[0].split()[-1]) >= 2
    finally:
        backend.stop()


def test_a_client_flooding_the_consumer_is_told_then_closed(start_node):
    backend = BadBackend("hang")
    try:
        node = bad_node(start_node, backend, "--backend-unavailable", "accept", "--backend-frames-per-sec", "5")

        async def run():
            from conftest import mint
            ws = await connect(node.ws_url, mint(9, secret="s"))
            codes = []
            for i in range(200):
                try:
                    await ws.send(json.dumps({"action": "spam", "n": i}))
                except websockets.ConnectionClosed:
                    break
            got = await frames_until_closed(ws)
            for frame in got[:-1]:
                codes.append(json.loads(frame)["code"])
            return codes, got[-1]

        codes, closed = asyncio.run(run())
        assert "rate_limited" in codes
        assert closed == ("closed", 1008)
    finally:
        backend.stop()


def test_the_consumer_behind_the_bridge_with_the_pubsub_layer(start_node):
    """channels_redis's pub/sub layer: the consumer's own group_add works (the bridge
    takes it), group_send and send(channel_name) from anywhere reach the connection; a
    view's group_add of a connection's channel is refused by the layer itself (it can only
    SUBSCRIBE its own process), never a silent OK."""
    import urllib.error

    listener = Listener()
    node = start_node(*backend_flags(listener), secret=None)
    new = NewStack(listener, client_node=node, publisher_node=node, layer="pubsub")
    try:
        uid, token = new.api.user("pubsub")
        n = new.api.call("/api/notifications/", {"user_id": uid, "text": "hi"})["id"]

        async def run():
            ws = await connect(new.ws_url, token)
            wait_until(lambda: new.api.events("connect"), what="the consumer's connect")
            await ws.send(json.dumps({"action": "mark_read", "id": n}))
            assert await recv(ws) == json.dumps({"type": "marked_read", "id": n})
            new.api.call("/api/notify/", {"user_id": uid, "message": {"via": "pubsub group_send"}})
            assert await recv(ws) == '{"via": "pubsub group_send"}'
            assert new.api.call("/api/direct/", {"user_id": uid, "message": "only you"})["sent"] == 1
            assert await recv(ws) == '"only you"'
            with pytest.raises(urllib.error.HTTPError) as refused:
                new.api.call("/api/rooms/join/", {"user_id": uid, "room": "room_ps"})
            assert refused.value.code == 500
            await ws.close()

        asyncio.run(run())
        assert consumer_events(new.api, 1) == [[("connect", None), ("receive", None), ("disconnect", 1000)]]
    finally:
        new.stop()
