"""Django Channels publishers, unchanged: channels_redis's core and pub/sub layers.

What the installed channels_redis sends (captured against a real redis-server): every
connection starts with redis-py's `HELLO 3`, `CLIENT MAINT_NOTIFICATIONS ON ...` (its
error is ignored), `CLIENT SETINFO LIB-NAME/LIB-VER`. Then
- core `group_send`: `ZREMRANGEBYSCORE asgi:group:G 0 <t>`, `ZRANGE asgi:group:G 0 -1`,
  and only if that named channels: `MULTI`, `ZREMRANGEBYSCORE <channel key> ...`, `EXEC`,
  `EVAL <group_send script> ...`;
- core `group_add`: `ZADD` + `EXPIRE`; `group_discard`: `ZREM`; `send`: `ZREMRANGEBYSCORE`,
  `ZCOUNT`, `ZADD`, `EXPIRE`; `flush`: `EVAL <keys/del script> 0 asgi*`; `receive`: `EVAL
  <restore script>`, `BZPOPMIN`, ...;
- pub/sub `group_send`: `PUBLISH asgi__group__G <msgpack>`.
"""

import asyncio
import json
import re

import django
import msgpack
import pytest
import redis
from django.conf import settings
from redis.exceptions import ResponseError

from conftest import mint
from wsclient import connect, recv


def core_layer(node, password=None, **config):
    from channels_redis.core import RedisChannelLayer
    if password:
        return RedisChannelLayer(hosts=[f"redis://:{password}@{node.resp_host}:{node.resp_port}/0"], **config)
    return RedisChannelLayer(hosts=[(node.resp_host, node.resp_port)], **config)


def pubsub_layer(node, password=None, **config):
    from channels_redis.pubsub import RedisPubSubChannelLayer
    auth = f":{password}@" if password else ""
    return RedisPubSubChannelLayer(hosts=[{"address": f"redis://{auth}{node.resp_host}:{node.resp_port}"}], **config)


LAYERS = {"core": core_layer, "pubsub": pubsub_layer}


def test_core_layer_group_send_reaches_the_group(node):
    async def scenario():
        ws = await connect(node.ws_url, node.token(42))
        node.wait_group("user_42", 1)
        layer = core_layer(node)
        await layer.group_send("user_42", {"type": "notify", "message": "hi"})
        assert json.loads(await recv(ws)) == {"type": "notify", "message": "hi"}
        # Nobody in the group: no error, nothing delivered anywhere.
        await layer.group_send("user_999", {"type": "notify", "message": "lost"})
        await layer.group_send("user_42", {"type": "notify", "message": "second"})
        assert json.loads(await recv(ws))["message"] == "second"
        await layer.flush()
        await ws.close()

    asyncio.run(scenario())


def test_pubsub_layer_group_send_reaches_the_group(node):
    async def scenario():
        ws = await connect(node.ws_url, mint(43, groups=["news"]))
        node.wait_group("news", 1)
        layer = pubsub_layer(node)
        await layer.group_send("news", {"type": "news.item", "text": "héllo", "n": 3})
        assert json.loads(await recv(ws)) == {"type": "news.item", "text": "héllo", "n": 3}
        await layer.group_send("nobody_here", {"type": "news.item", "text": "lost"})
        await layer.group_send("news", {"type": "news.item", "text": "second"})
        assert json.loads(await recv(ws))["text"] == "second"
        await layer.flush()
        await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", LAYERS)
def test_every_client_of_the_group_gets_every_event_in_order(node, kind):
    async def scenario():
        clients = [await connect(node.ws_url, mint(50 + i, groups=["chat.room-1"])) for i in range(3)]
        node.wait_group("chat.room-1", 3)
        layer = LAYERS[kind](node)
        for i in range(30):
            await layer.group_send("chat.room-1", {"type": "chat.message", "seq": i})
        for ws in clients:
            assert [json.loads(await recv(ws))["seq"] for _ in range(30)] == list(range(30))
        event = {"type": "chat.message", "nested": {"list": [1, 2.5, None, True], "text": "日本語"}, "n": -7}
        await layer.group_send("chat.room-1", event)
        for ws in clients:
            assert json.loads(await recv(ws)) == event
            await ws.close()
        await layer.flush()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", LAYERS)
def test_channels_unwrap_sends_only_the_message(start_node, kind):
    node = start_node("--channels-unwrap", "message")

    async def scenario():
        ws = await connect(node.ws_url, mint(44))
        node.wait_group("user_44", 1)
        layer = LAYERS[kind](node)
        await layer.group_send("user_44", {"type": "notify", "message": "just this"})
        # Exactly what the old consumer's send_json(event["message"]) sent: its JSON.
        assert await recv(ws) == '"just this"'
        # Not a string: its JSON. No such key: the whole event.
        await layer.group_send("user_44", {"type": "notify", "message": {"title": "Hi", "id": 1}})
        assert json.loads(await recv(ws)) == {"title": "Hi", "id": 1}
        await layer.group_send("user_44", {"type": "ping"})
        assert json.loads(await recv(ws)) == {"type": "ping"}
        await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", LAYERS)
def test_a_custom_prefix(start_node, kind):
    node = start_node("--channels-prefix", "myapp")

    async def scenario():
        ws = await connect(node.ws_url, mint(46))
        node.wait_group("user_46", 1)
        layer = LAYERS[kind](node, prefix="myapp")
        await layer.group_send("user_46", {"type": "notify", "message": "prefixed"})
        assert json.loads(await recv(ws)) == {"type": "notify", "message": "prefixed"}
        await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", LAYERS)
def test_layers_with_a_password(start_node, kind):
    node = start_node("--resp-password", "s3cret")

    async def scenario():
        ws = await connect(node.ws_url, mint(47))
        node.wait_group("user_47", 1)
        await LAYERS[kind](node, password="s3cret").group_send("user_47", {"type": "notify", "message": "auth"})
        assert json.loads(await recv(ws)) == {"type": "notify", "message": "auth"}
        await ws.close()

    asyncio.run(scenario())


def test_only_the_layers_channel_names_are_decoded(node):
    """msgpack published to `asgi__group__G` (what the pub/sub layer sends) arrives as JSON;
    the same bytes published to the plain group arrive untouched, as a binary frame."""
    async def scenario():
        ws = await connect(node.ws_url, mint(49))
        node.wait_group("user_49", 1)
        packed = msgpack.packb({"type": "notify", "message": "packed"})
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        assert r.publish("asgi__group__user_49", packed) == 1
        assert json.loads(await recv(ws)) == {"type": "notify", "message": "packed"}
        assert r.publish("user_49", packed) == 1
        assert await recv(ws) == packed
        r.close()
        await ws.close()

    asyncio.run(scenario())


def test_the_rest_of_the_core_layer_answers_and_never_hangs(node):
    """A Django web process also calls group_add/group_discard/send/flush. Groups hold
    WebSocket connections here, so group_add and send of a channel that is not a
    connection's (a worker's own new_channel()) answer an error that names the call,
    never a silent OK; group_discard of it has nothing to remove; receiving is refused at
    once (clients receive over WebSocket), rather than blocking."""
    async def scenario():
        ws = await connect(node.ws_url, mint(48))
        node.wait_group("user_48", 1)
        layer = core_layer(node)
        channel = await layer.new_channel()

        async def within(coro):
            return await asyncio.wait_for(coro, 10)

        with pytest.raises(ResponseError, match=f"group_add of channel '{re.escape(channel)}'.*cannot be honoured"):
            await within(layer.group_add("user_48", channel))
        with pytest.raises(ResponseError, match=f"send to '{re.escape(channel)}' cannot be honoured"):
            await within(layer.send(channel, {"type": "direct"}))
        with pytest.raises(ResponseError, match="send to 'asgiplain.channel' cannot be honoured"):
            await within(layer.send("plain.channel", {"type": "direct"}))
        await within(layer.group_discard("user_48", channel))
        with pytest.raises(ResponseError, match="BZPOPMIN"):
            await within(layer.receive(channel))
        await within(layer.flush())
        # None of that reached the WebSocket client; the group still works.
        await layer.group_send("user_48", {"type": "notify", "message": "still here"})
        assert json.loads(await recv(ws)) == {"type": "notify", "message": "still here"}
        await ws.close()

    asyncio.run(scenario())


def use_settings(channel_layers):
    if not settings.configured:
        settings.configure(CHANNEL_LAYERS={})
        django.setup()
    settings.CHANNEL_LAYERS = channel_layers
    from channels.layers import channel_layers as layers
    layers.backends.clear()


@pytest.mark.parametrize("backend", ["channels_redis.core.RedisChannelLayer",
                                     "channels_redis.pubsub.RedisPubSubChannelLayer"])
def test_the_old_settings_with_only_the_host_changed(node, backend):
    """The CHANNEL_LAYERS block of the old deployment, REDIS_HOST/REDIS_PORT pointed at the
    node, used the way a Django view does: async_to_sync(layer.group_send)."""
    REDIS_HOST, REDIS_PORT = node.resp_host, node.resp_port  # noqa: N806 (the old settings' names)
    use_settings({
        "default": {
            "BACKEND": backend,
            "CONFIG": {"hosts": [(REDIS_HOST, REDIS_PORT)]},
        }
    })
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    def view(user_id, message):
        """A synchronous Django view sending a notification."""
        async_to_sync(get_channel_layer().group_send)(
            f"user_{user_id}", {"type": "send_notification", "message": message})

    async def client():
        ws = await connect(node.ws_url, mint(45))
        node.wait_group("user_45", 1)
        await asyncio.to_thread(view, 45, {"title": "Hi", "id": 1})
        assert json.loads(await recv(ws)) == {"type": "send_notification", "message": {"title": "Hi", "id": 1}}
        await asyncio.to_thread(view, 4500, "nobody")  # no one connected: no error
        await asyncio.to_thread(view, 45, "second")
        assert json.loads(await recv(ws)) == {"type": "send_notification", "message": "second"}
        await ws.close()

    asyncio.run(client())
