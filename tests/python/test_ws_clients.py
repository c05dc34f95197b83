"""A real WebSocket client's view of refusals and ops."""

import asyncio
import json

from conftest import mint
from wsclient import close_code, connect, recv


def test_refusals_carry_the_documented_close_codes(start_node):
    node = start_node("--allowed-origins", "https://app.example")

    async def scenario():
        assert (await close_code(await connect(node.ws_url)))[0] == 4001
        code, reason = await close_code(await connect(node.ws_url, mint(1, exp_in=-5)))
        assert (code, reason) == (4001, "token expired")
        code, reason = await close_code(await connect(node.ws_url, mint(1, secret="wrong")))
        assert (code, reason) == (4001, "bad signature")
        code, _ = await close_code(await connect(node.ws_url, mint(1), origin="https://evil.example"))
        assert code == 4003
        ws = await connect(node.ws_url, mint(1), origin="https://app.example")
        await ws.send(json.dumps({"op": "ping", "id": 5}))
        assert json.loads(await recv(ws)) == {"type": "pong", "id": 5}
        await ws.close()

    asyncio.run(scenario())


def test_bearer_header_and_ops(node):
    async def scenario():
        ws = await connect(node.ws_url, headers={"Authorization": f"Bearer {mint(3, groups=['room_*'])}"})
        await ws.send(json.dumps({"op": "subscribe", "group": "room_1", "id": 1}))
        assert json.loads(await recv(ws)) == {"type": "subscribed", "group": "room_1", "id": 1}
        await ws.send(json.dumps({"op": "subscribe", "group": "admins", "id": 2}))
        reply = json.loads(await recv(ws))
        assert reply["type"] == "error" and reply["code"] == "forbidden" and reply["id"] == 2
        await ws.send(json.dumps({"op": "presence", "id": 3}))
        reply = json.loads(await recv(ws))
        assert reply["type"] == "presence" and reply["user"] == "3"
        await ws.close()

    asyncio.run(scenario())
