"""The channel layer a consumer sees while the bridge runs it.

The project's own layer (channels_redis pointed at the cluster, usually) stays in charge
of everything, but for the consumer the bridge is running: its ``new_channel()`` is the
connection's channel name, its ``receive()`` on that channel never returns (an instance
handles the one event it was made for), and ``group_add``/``group_discard`` of that
channel become actions the node carries out on the connection, cluster-wide. Outside a
bridge call (views, tasks, other consumers) every call goes to the project's layer
unchanged.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any

from channels.layers import BaseChannelLayer

#: The call the current task is serving (set by the bridge around each event).
current: contextvars.ContextVar[Any] = contextvars.ContextVar("switchboard_call", default=None)

# Name checks as the layers make them.
_names = BaseChannelLayer()


class BridgeLayer:
    """See the module header. ``inner`` is the project's layer, or None when it has
    none configured (then only the consumer's own-channel calls work)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if self._inner is None:
            raise AttributeError(
                f"no channel layer is configured (CHANNEL_LAYERS), so {name} is not available"
            )
        return getattr(self._inner, name)

    def _layer(self, what: str) -> Any:
        if self._inner is None:
            raise RuntimeError(
                f"channel_layer.{what}() needs CHANNEL_LAYERS: point channels_redis at "
                "the Switchboard cluster's RESP port"
            )
        return self._inner

    @property
    def inner(self) -> Any:
        """The project's own layer."""
        return self._inner

    async def new_channel(self, prefix: str = "specific.") -> str:
        call = current.get()
        if call is None:
            return await self._layer("new_channel").new_channel(prefix)
        # Called from AsyncConsumer.__call__: its frame holds the consumer, whose scope
        # the bridge may complete (the user) before it dispatches the event.
        frame = sys._getframe(1)
        consumer = frame.f_locals.get("self") if frame is not None else None
        await call.bind(consumer)
        return call.channel

    async def receive(self, channel: str) -> Any:
        call = current.get()
        if call is not None and channel == call.channel:
            # An instance the bridge runs handles one event; the next comes in another.
            await asyncio.Event().wait()
        return await self._layer("receive").receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        call = current.get()
        if call is not None and channel == call.channel:
            _names.require_valid_group_name(group)
            call.actions.append({"type": "group_add", "group": group})
            return
        await self._layer("group_add").group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        call = current.get()
        if call is not None and channel == call.channel:
            _names.require_valid_group_name(group)
            call.actions.append({"type": "group_discard", "group": group})
            return
        await self._layer("group_discard").group_discard(group, channel)

    async def send(self, channel: str, message: dict) -> None:
        await self._layer("send").send(channel, message)

    async def group_send(self, group: str, message: dict) -> None:
        await self._layer("group_send").group_send(group, message)


def install() -> None:
    """Puts a :class:`BridgeLayer` in front of every configured layer alias (and
    ``default``), once. ``get_channel_layer()`` then returns it everywhere; outside a
    bridge call it is the project's layer."""
    from channels import DEFAULT_CHANNEL_LAYER
    from channels.layers import channel_layers
    from django.conf import settings

    aliases = set(getattr(settings, "CHANNEL_LAYERS", None) or {}) | {DEFAULT_CHANNEL_LAYER}
    for alias in aliases:
        if isinstance(channel_layers.backends.get(alias), BridgeLayer):
            continue
        try:
            inner = channel_layers[alias]
        except (KeyError, ValueError):
            inner = None
        channel_layers.backends[alias] = BridgeLayer(inner)
