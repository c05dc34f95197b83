"""redis-py, RESP2 and RESP3, sync and asyncio, as a publisher."""

import asyncio

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from conftest import mint
from wsclient import connect, recv


def client(node, **kwargs):
    return redis.Redis(host=node.resp_host, port=node.resp_port, socket_timeout=10, **kwargs)


def refused_client(node, **kwargs):
    """A client expected to be refused: redis-py 8 retries a failed connect with backoff
    for seconds by default (against redis-server too); here it fails at once."""
    return client(node, retry=Retry(NoBackoff(), 0), **kwargs)


@pytest.mark.parametrize("protocol", [2, 3])
def test_publish_returns_the_routed_count_and_delivers(node, protocol):
    async def scenario():
        a = await connect(node.ws_url, mint(1, groups=["room"]))
        b = await connect(node.ws_url, mint(2, groups=["room"]))
        node.wait_group("room", 2)
        r = client(node, protocol=protocol)
        assert r.ping() is True
        assert r.publish("room", "hi all") == 2
        assert await recv(a) == "hi all"
        assert await recv(b) == "hi all"
        assert r.publish("user_1", "just one") == 1
        assert await recv(a) == "just one"
        assert r.publish("empty_room", "nobody") == 0
        assert r.spublish("room", "sharded") == 2
        assert await recv(a) == "sharded"
        assert await recv(b) == "sharded"
        assert r.pubsub_numsub("room", "empty_room") == [(b"room", 2), (b"empty_room", 0)]
        channels = r.pubsub_channels()
        assert {b"room", b"user_1", b"user_2"} <= set(channels), channels
        assert sorted(r.pubsub_channels("user_*")) == [b"user_1", b"user_2"]
        assert r.pubsub_numpat() == 0
        info = r.info()
        assert info["redis_version"] and info["websocket_connections"] == 2, info
        r.close()
        await a.close()
        await b.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("transaction", [False, True], ids=["plain", "multi-exec"])
def test_a_pipeline_arrives_in_order(node, transaction):
    async def scenario():
        ws = await connect(node.ws_url, mint(5))
        node.wait_group("user_5", 1)
        r = client(node)
        pipe = r.pipeline(transaction=transaction)
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
        r = client(node)
        assert r.publish("user_6", payload) == 1
        got = await recv(ws)
        assert isinstance(got, bytes) and got == payload
        # Valid UTF-8 arrives as a text frame, invalid as binary, each unchanged.
        assert r.publish("user_6", "naïve ☃".encode()) == 1
        assert await recv(ws) == "naïve ☃"
        assert r.publish("user_6", b"\xc3") == 1
        assert await recv(ws) == b"\xc3"
        r.close()
        await ws.close()

    asyncio.run(scenario())


def test_the_largest_payload_arrives_and_a_larger_one_is_refused(node):
    """--max-payload (default 1 MiB): a payload of exactly that arrives intact; one byte
    more is a protocol error that closes that RESP connection (docs/protocol.md), and
    nothing of it reaches the client."""
    async def scenario():
        ws = await connect(node.ws_url, mint(13))
        node.wait_group("user_13", 1)
        r = client(node)
        big = bytes(i % 251 for i in range(1024 * 1024))
        assert r.publish("user_13", big) == 1
        got = await asyncio.wait_for(ws.recv(), 20)
        assert isinstance(got, bytes) and got == big
        with pytest.raises(redis.exceptions.ResponseError, match="Protocol error"):
            r.publish("user_13", b"x" * (1024 * 1024 + 1))
        # redis-py reconnects; the next publish is the next thing the client sees.
        assert r.publish("user_13", "after") == 1
        assert await recv(ws) == "after"
        r.close()
        await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", [2, 3])
def test_password_with_the_sync_client(start_node, protocol):
    node = start_node("--resp-password", "pw")

    async def scenario():
        ws = await connect(node.ws_url, mint(14))
        node.wait_group("user_14", 1)
        r = client(node, protocol=protocol, password="pw")
        assert r.publish("user_14", f"auth over resp{protocol}") == 1
        assert await recv(ws) == f"auth over resp{protocol}"
        r.close()
        named = client(node, protocol=protocol, username="default", password="pw")
        assert named.publish("user_14", "as default") == 1
        assert await recv(ws) == "as default"
        named.close()
        with pytest.raises(redis.exceptions.AuthenticationError):
            refused_client(node, protocol=protocol, password="wrong").publish("user_14", "refused")
        anonymous = refused_client(node, protocol=2)
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.publish("user_14", "refused")
        anonymous.close()
        assert r.publish("user_14", "last") == 1
        assert await recv(ws) == "last"  # neither refused publish was delivered
        await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", [2, 3])
def test_asyncio_client(node, protocol):
    async def scenario():
        ws = await connect(node.ws_url, mint(15, groups=["news"]))
        node.wait_group("news", 1)
        r = redis.asyncio.Redis(host=node.resp_host, port=node.resp_port, protocol=protocol)
        assert await r.ping() is True
        assert await r.publish("news", "async hello") == 1
        assert await recv(ws) == "async hello"
        async with r.pipeline(transaction=True) as pipe:
            for i in range(10):
                pipe.publish("user_15", f"a{i}")
            assert await pipe.execute() == [1] * 10
        for i in range(10):
            assert await recv(ws) == f"a{i}"
        assert await r.pubsub_numsub("news") == [(b"news", 1)]
        # Concurrent publishers over a pool: every message arrives exactly once.
        counts = await asyncio.gather(*(r.publish("news", f"c{i}") for i in range(20)))
        assert counts == [1] * 20
        got = sorted([await recv(ws) for _ in range(20)])
        assert got == sorted(f"c{i}" for i in range(20))
        await r.aclose()
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
        bad = redis.asyncio.Redis(host=node.resp_host, port=node.resp_port, password="wrong",
                                  retry=AsyncRetry(NoBackoff(), 0))
        with pytest.raises(redis.exceptions.AuthenticationError):
            await bad.ping()
        await bad.aclose()
        await ws.close()

    asyncio.run(scenario())


def test_commands_a_publisher_may_send(node):
    r = client(node, protocol=3, client_name="django-web")
    assert r.client_getname() == b"django-web"
    assert isinstance(r.client_id(), int)
    assert r.echo("é") == "é".encode()
    assert r.client_info()["lib-name"] == "redis-py"
    with pytest.raises(redis.exceptions.ResponseError, match="unknown command 'GET'"):
        r.get("key")
    # The connection is still usable after an error.
    assert r.ping() is True
    with pytest.raises(redis.exceptions.ResponseError, match="DB index is out of range"):
        refused_client(node, db=1).ping()
    r.close()


def test_a_transaction_with_a_bad_command_publishes_nothing(node):
    async def scenario():
        ws = await connect(node.ws_url, mint(16))
        try:
            node.wait_group("user_16", 1)
            r = client(node)
            pipe = r.pipeline(transaction=True)
            pipe.publish("user_16", "in an aborted transaction")
            pipe.execute_command("FROB", "x")
            with pytest.raises(redis.exceptions.ResponseError):
                pipe.execute()
            assert r.publish("user_16", "next") == 1
            assert await recv(ws) == "next"
            r.close()
        finally:
            await ws.close()

    asyncio.run(scenario())
