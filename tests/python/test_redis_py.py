"""redis-py, RESP2 and RESP3, sync and asyncio, as a publisher."""

import asyncio

import pytest
import redis
import redis.asyncio

from conftest import mint
from wsclient import connect, recv


@pytest.mark.parametrize("protocol", [2, 3])
def test_publish_returns_the_routed_count_and_delivers(node, protocol):
    async def scenario():
        a = await connect(node.ws_url, mint(1, groups=["room"]))
        b = await connect(node.ws_url, mint(2, groups=["room"]))
        node.wait_group("room", 2)
        r = redis.Redis(host=node.resp_host, port=node.resp_port, protocol=protocol)
        assert r.ping() is True
        assert r.publish("room", "hi all") == 2
        assert await recv(a) == "hi all"
        assert await recv(b) == "hi all"
        assert r.pubsub_numsub("room") == [(b"room", 2)]
        assert b"room" in r.pubsub_channels()
        assert b"room" in r.pubsub_channels("ro*")
        r.close()
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_pipeline_arrives_in_order(node):
    async def scenario():
        ws = await connect(node.ws_url, mint(5))
        node.wait_group("user_5", 1)
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        pipe = r.pipeline(transaction=False)
        for i in range(100):
            pipe.publish("user_5", f"n{i}")
        assert pipe.execute() == [1] * 100
        for i in range(100):
            assert await recv(ws) == f"n{i}"
        r.close()
        await ws.close()

    asyncio.run(scenario())


def test_binary_payloads_arrive_byte_for_byte(node):
    async def scenario():
        ws = await connect(node.ws_url, mint(6))
        node.wait_group("user_6", 1)
        payload = bytes(range(256)) + b"\xff\xfe"
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        assert r.publish("user_6", payload) == 1
        got = await recv(ws)
        assert isinstance(got, bytes) and got == payload
        r.close()
        await ws.close()

    asyncio.run(scenario())


def test_asyncio_client_with_resp3_and_a_password(start_node):
    node = start_node("--resp-password", "pw")

    async def scenario():
        ws = await connect(node.ws_url, mint(8))
        node.wait_group("user_8", 1)
        r = redis.asyncio.Redis(host=node.resp_host, port=node.resp_port, protocol=3, password="pw")
        assert await r.publish("user_8", "async hello") == 1
        assert await recv(ws) == "async hello"
        await r.aclose()
        bad = redis.asyncio.Redis(host=node.resp_host, port=node.resp_port, password="wrong")
        with pytest.raises(redis.exceptions.AuthenticationError):
            await bad.ping()
        await bad.aclose()
        await ws.close()

    asyncio.run(scenario())
