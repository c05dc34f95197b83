"""Django Channels publishers, unchanged: channels_redis's core and pub/sub layers."""

import asyncio
import json

import django
from django.conf import settings

from conftest import mint
from wsclient import connect, recv


def core_layer(node, **config):
    from channels_redis.core import RedisChannelLayer
    return RedisChannelLayer(hosts=[(node.resp_host, node.resp_port)], **config)


def pubsub_layer(node):
    from channels_redis.pubsub import RedisPubSubChannelLayer
    return RedisPubSubChannelLayer(hosts=[{"address": f"redis://{node.resp_host}:{node.resp_port}"}])


def test_core_layer_group_send_reaches_the_group(node):
    async def scenario():
        ws = await connect(node.ws_url, mint(42))
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
        await layer.flush()
        await ws.close()

    asyncio.run(scenario())


def test_channels_unwrap_sends_only_the_message(start_node):
    node = start_node("--channels-unwrap", "message")

    async def scenario():
        ws = await connect(node.ws_url, mint(44))
        node.wait_group("user_44", 1)
        await core_layer(node).group_send("user_44", {"type": "notify", "message": "just this"})
        assert await recv(ws) == "just this"
        await ws.close()

    asyncio.run(scenario())


def test_the_old_settings_with_only_the_host_changed(node):
    """The CHANNEL_LAYERS block of the old deployment, REDIS_HOST/REDIS_PORT pointed at the
    node, used the way a Django view does: async_to_sync(layer.group_send)."""
    if not settings.configured:
        settings.configure(CHANNEL_LAYERS={})
        django.setup()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [(node.resp_host, node.resp_port)]},
        }
    }
    from asgiref.sync import async_to_sync
    from channels.layers import channel_layers, get_channel_layer
    channel_layers.backends.clear()

    async def client():
        ws = await connect(node.ws_url, mint(45))
        node.wait_group("user_45", 1)
        await asyncio.to_thread(lambda: async_to_sync(get_channel_layer().group_send)(
            "user_45", {"type": "send_notification", "message": {"title": "Hi", "id": 1}}))
        assert json.loads(await recv(ws)) == {"type": "send_notification", "message": {"title": "Hi", "id": 1}}
        await ws.close()

    asyncio.run(client())
