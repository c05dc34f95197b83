"""The drop-in scenario: a Django project's old settings, changed only in REDIS_HOST /
REDIS_PORT, publish with group_send to browsers connected through nginx to any of three
nodes, and that stays true when one node is killed."""

import json
import signal

import django
from django.conf import settings

from conftest import mint, wait_until
from test_deploy import Nginx

def configure_django(host, port):
    """The old deployment's CHANNEL_LAYERS block, with REDIS_HOST/REDIS_PORT pointed at a node."""
    if not settings.configured:
        settings.configure(CHANNEL_LAYERS={})
        django.setup()
    REDIS_HOST, REDIS_PORT = host, port  # noqa: N806 (the names of the old settings)
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [(REDIS_HOST, REDIS_PORT)]},
        },
    }
    from channels.layers import channel_layers
    channel_layers.backends.clear()


def group_send(group, event):
    """What a Django view does (in a thread of its own: playwright's sync API keeps an
    event loop in this one, and async_to_sync refuses to run inside a loop)."""
    from concurrent.futures import ThreadPoolExecutor

    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: async_to_sync(get_channel_layer().group_send)(group, event)).result(timeout=10)


def holder(nodes, user):
    """The node holding the user's only connection, by the cluster's presence."""
    conns = nodes[0].cli("presence", user)["connections"]
    if len(conns) != 1:
        return None
    return next(n for n in nodes if n.cli("status")["id"] == conns[0]["node"])


def test_group_send_reaches_a_browser_through_nginx_and_survives_a_node_kill(start_cluster, page_server, browser):
    nodes = start_cluster(3, "--allowed-origins", page_server)
    nginx = Nginx([n.ws_addr for n in nodes])
    try:
        url = f"ws://{nginx.addr}/ws/notifications/"
        page = browser.new_page()
        page.goto(f"{page_server}/?url={url}&token={mint(42)}")
        page.wait_for_function("window.opened === true", timeout=10_000)
        first = wait_until(lambda: holder(nodes, "42"), what="the browser's node")
        # Django publishes through a node other than the browser's.
        publisher = next(n for n in nodes if n is not first)
        for n in nodes:
            wait_until(lambda n=n: n.cli("group", "user_42")["connections"] == 1, what="interest")
        configure_django(publisher.resp_host, publisher.resp_port)
        group_send("user_42", {"type": "send_notification", "message": {"title": "Bonjour", "id": 1}})
        page.wait_for_function("window.received.length === 1", timeout=10_000)
        assert json.loads(page.evaluate("window.received[0]")) == {
            "type": "send_notification", "message": {"title": "Bonjour", "id": 1}}

        # The browser's node dies hard. The browser sees the close; a reload goes through
        # nginx to a live node, and Django's next group_send reaches it.
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        page.wait_for_function("window.closes.length === 1", timeout=10_000)
        page = browser.new_page()
        page.goto(f"{page_server}/?url={url}&token={mint(42)}")
        page.wait_for_function("window.opened === true", timeout=10_000)
        survivors = [n for n in nodes if n is not first]
        wait_until(lambda: holder(survivors, "42") is not None, timeout=15, what="the reconnected browser")
        wait_until(lambda: publisher.cli("group", "user_42")["connections"] == 1, timeout=15, what="its interest")
        group_send("user_42", {"type": "send_notification", "message": "encore"})
        page.wait_for_function("window.received.length === 1", timeout=10_000)
        assert json.loads(page.evaluate("window.received[0]"))["message"] == "encore"
    finally:
        nginx.stop()


def test_several_hosts_in_config_pointing_at_different_nodes(start_cluster):
    """CONFIG.hosts listing every node: channels_redis shards groups and channel keys over
    the hosts by a consistent hash, so ZRANGE and EVAL for one group_send may go to
    different nodes; each answers from the cluster-wide view."""
    import asyncio

    from channels_redis.core import RedisChannelLayer

    from wsclient import connect, recv

    nodes = start_cluster(3)

    async def scenario():
        users = list(range(100, 112))
        clients = {u: await connect(nodes[u % 3].ws_url, mint(u)) for u in users}
        for n in nodes:
            for u in users:
                wait_until(lambda n=n, u=u: n.cli("group", f"user_{u}")["connections"] == 1, what="interest")
        layer = RedisChannelLayer(hosts=[(n.resp_host, n.resp_port) for n in nodes])
        for u in users:
            await layer.group_send(f"user_{u}", {"type": "notify", "n": u})
        for u, ws in clients.items():
            assert json.loads(await recv(ws)) == {"type": "notify", "n": u}
            await ws.close()

    asyncio.run(scenario())
