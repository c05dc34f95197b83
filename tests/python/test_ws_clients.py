"""A real WebSocket client's view (the `websockets` package): refusals and their close
codes, the ways a token may come, and the JSON ops."""

import asyncio
import base64
import json
import time

import redis

from conftest import mint, wait_until
from wsclient import close_code, connect, recv


def test_refusals_carry_the_documented_close_codes(start_node):
    node = start_node("--allowed-origins", "https://app.example")

    async def refused(token=None, **kwargs):
        return await close_code(await connect(node.ws_url, token, **kwargs))

    async def scenario():
        assert await refused() == (4001, "missing token")
        assert await refused(mint(1, exp_in=-5)) == (4001, "token expired")
        assert await refused(mint(1, secret="wrong")) == (4001, "bad signature")
        assert await refused("not-a-jwt") == (4001, "malformed token")
        assert await refused(mint(1, extra={"token_type": "refresh"})) == (4001, "not an access token")
        assert await refused(mint(1), origin="https://evil.example") == (4003, "origin not allowed")
        # An allowed browser origin, and a client that sends no Origin at all, both get in.
        for origin in ("https://app.example", None):
            ws = await connect(node.ws_url, mint(1), origin=origin)
            await ws.send(json.dumps({"op": "ping", "id": 5}))
            assert json.loads(await recv(ws)) == {"type": "pong", "id": 5}
            await ws.close()

    asyncio.run(scenario())


def test_alg_none_is_refused(node):
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'user_id': 1, 'exp': 4102444800})}."

    async def scenario():
        code, _ = await close_code(await connect(node.ws_url, unsigned))
        assert code == 4001

    asyncio.run(scenario())


def test_bearer_header_and_ops(node):
    async def scenario():
        ws = await connect(node.ws_url, headers={"Authorization": f"Bearer {mint(3, groups=['room_*'])}"})
        await ws.send(json.dumps({"op": "subscribe", "group": "room_1", "id": 1}))
        assert json.loads(await recv(ws)) == {"type": "subscribed", "group": "room_1", "id": 1}
        await ws.send(json.dumps({"op": "subscribe", "group": "admins", "id": 2}))
        reply = json.loads(await recv(ws))
        assert reply["type"] == "error" and reply["code"] == "forbidden" and reply["id"] == 2
        # Presence changes are applied in batches (every 20 ms, docs/architecture.md).
        wait_until(lambda: len(node.cli("presence", "3")["connections"]) == 1, what="the presence entry")
        await ws.send(json.dumps({"op": "presence", "id": 3}))
        reply = json.loads(await recv(ws))
        assert reply["type"] == "presence" and reply["user"] == "3" and reply["id"] == 3
        assert [c["node"] for c in reply["connections"]] == [1]
        await ws.close()

    asyncio.run(scenario())


def test_a_bearer_client_receives_what_is_published(node):
    async def scenario():
        ws = await connect(node.ws_url, headers={"Authorization": f"Bearer {mint(21)}"})
        node.wait_group("user_21", 1)
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        assert r.publish("user_21", "via header") == 1
        assert await recv(ws) == "via header"
        r.close()
        await ws.close()

    asyncio.run(scenario())


def test_the_user_comes_from_user_id_or_sub(node):
    """SimpleJWT's numeric `user_id`, a string `user_id`, or a plain `sub`."""
    async def scenario():
        numeric = await connect(node.ws_url, mint(22))
        text = await connect(node.ws_url, mint("alice"))
        sub = await connect(node.ws_url, mint(None, extra={"sub": "bob"}))
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        for ws, group in ((numeric, "user_22"), (text, "user_alice"), (sub, "user_bob")):
            node.wait_group(group, 1)
            assert r.publish(group, f"to {group}") == 1
            assert await recv(ws) == f"to {group}"
            await ws.close()
        r.close()

    asyncio.run(scenario())


def test_ops_subscribe_unsubscribe_ping_and_errors(node):
    async def scenario():
        ws = await connect(node.ws_url, mint(23, groups=["news", "room_*"]))
        node.wait_group("news", 1)  # joined at connect from the token's groups
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        assert r.publish("news", "headline") == 1
        assert await recv(ws) == "headline"

        await ws.send(json.dumps({"op": "ping"}))
        assert json.loads(await recv(ws)) == {"type": "pong"}
        await ws.send(json.dumps({"op": "subscribe", "group": "room_7", "id": 1}))
        assert json.loads(await recv(ws)) == {"type": "subscribed", "group": "room_7", "id": 1}
        assert r.publish("room_7", "in the room") == 1
        assert await recv(ws) == "in the room"
        await ws.send(json.dumps({"op": "unsubscribe", "group": "room_7", "id": 2}))
        assert json.loads(await recv(ws)) == {"type": "unsubscribed", "group": "room_7", "id": 2}
        assert r.publish("room_7", "gone") == 0

        await ws.send(json.dumps({"op": "explode", "id": 3}))
        reply = json.loads(await recv(ws))
        assert reply["type"] == "error" and reply["code"] == "bad_request"
        await ws.send("not json")
        assert json.loads(await recv(ws))["code"] == "bad_request"
        await ws.send(b"\x00\x01")
        assert json.loads(await recv(ws))["code"] == "bad_request"
        await ws.send(json.dumps({"op": "presence", "user": "someone-else", "id": 4}))
        reply = json.loads(await recv(ws))
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", 4)
        # After all those errors the connection still receives.
        assert r.publish("user_23", "still open") == 1
        assert await recv(ws) == "still open"
        r.close()
        await ws.close()

    asyncio.run(scenario())


def claims(token):
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def test_by_default_an_open_connection_outlives_its_token(node):
    """`--token-expiry connect-only` (the default, as Django Channels): the token is
    checked at connect; past its `exp` the connection stays open and receives, and a new
    connection with it is refused."""
    token = mint(27, exp_in=2)

    async def scenario():
        ws = await connect(node.ws_url, token)
        wait_until(lambda: time.time() >= claims(token)["exp"] + 1, what="the token's expiry")
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        assert r.publish("user_27", "after exp") == 1
        assert await recv(ws) == "after exp"
        r.close()
        assert await close_code(await connect(node.ws_url, token)) == (4001, "token expired")
        await ws.close()

    asyncio.run(scenario())


def test_an_expiring_token_closes_with_4001_unless_refreshed(start_node):
    """With `--token-expiry close`: two connections with tokens valid for 2 s; one
    refreshes. The other is closed with 4001 when its token expires; the refreshed one
    still receives after that."""
    node = start_node("--token-expiry", "close")

    async def scenario():
        stale = await connect(node.ws_url, mint(24, exp_in=2))
        first = mint(25, exp_in=2)
        kept = await connect(node.ws_url, first)
        fresh = mint(25, exp_in=3600)
        await kept.send(json.dumps({"op": "refresh", "token": mint(26), "id": 1}))
        reply = json.loads(await recv(kept))
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "invalid_token", 1)  # another user
        await kept.send(json.dumps({"op": "refresh", "token": fresh, "id": 2}))
        reply = json.loads(await recv(kept))
        assert reply["type"] == "refreshed" and reply["id"] == 2
        assert reply["exp"] == claims(fresh)["exp"]
        assert await close_code(stale) == (4001, "token expired")
        # Past the first token's expiry (whole seconds) by a margin, the refreshed one is open.
        wait_until(lambda: time.time() >= claims(first)["exp"] + 1, what="the first token's expiry")
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        assert r.publish("user_25", "still here") == 1
        assert await recv(kept) == "still here"
        r.close()
        await kept.close()

    asyncio.run(scenario())


def test_health_and_readiness_on_the_websocket_port(node):
    assert node.http(node.ws_addr, "/healthz")[0] == 200
    assert node.http(node.ws_addr, "/readyz")[0] == 200
    assert node.http(node.ws_addr, "/nothing-here")[0] == 404


def test_a_frame_over_the_limit_closes_with_1009(start_node):
    node = start_node("--max-frame-size", "1024")

    async def scenario():
        ws = await connect(node.ws_url, mint(27))
        await ws.send(json.dumps({"op": "ping", "pad": "x" * 900}))  # under the limit: answered
        assert json.loads(await recv(ws))["type"] == "pong"
        await ws.send("x" * 2048)
        code, _ = await close_code(ws)
        assert code == 1009

    asyncio.run(scenario())


def test_a_full_node_answers_1013(start_node):
    node = start_node("--max-connections", "1")

    async def scenario():
        first = await connect(node.ws_url, mint(28))
        node.wait_group("user_28", 1)
        code, reason = await close_code(await connect(node.ws_url, mint(29)))
        assert (code, reason) == (1013, "node full")
        # The first one is unaffected.
        await first.send(json.dumps({"op": "ping"}))
        assert json.loads(await recv(first)) == {"type": "pong"}
        await first.close()

    asyncio.run(scenario())


def test_sigterm_closes_clients_with_1012_and_exits_0(start_node):
    node = start_node()

    async def scenario():
        ws = await connect(node.ws_url, mint(30))
        node.wait_group("user_30", 1)
        stopping = asyncio.get_running_loop().run_in_executor(None, node.stop)  # SIGTERM, expects exit 0
        code, _ = await close_code(ws)
        assert code == 1012
        await stopping
        assert node.proc.returncode == 0

    asyncio.run(scenario())
