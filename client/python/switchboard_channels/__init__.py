"""Switchboard's backend bridge: a Django project's own Channels consumers, unchanged,
behind a Switchboard cluster.

A Django project mounts it once, next to its other URLs::

    path("switchboard/", include(switchboard_channels.urls("config.asgi.application")))

where the argument is the project's ASGI application (its ``ProtocolTypeRouter``, whose
``"websocket"`` entry is used: its middleware and ``URLRouter``, consumers unchanged), or
that entry itself, or the dotted path to either (imported at the first call). The
setting ``SWITCHBOARD_BACKEND_SECRET`` holds the key the nodes sign their calls with
(``--backend-secret``); calls that are unsigned, wrongly signed or older than
``SWITCHBOARD_BACKEND_MAX_AGE`` seconds (300) are refused.

Every node started with ``--backend-url`` pointing here calls the bridge for each event
of its WebSocket connections: ``connect`` (after the node checked the JWT), ``receive``
(a client frame that is not a Switchboard op) and ``disconnect`` (at least once per
connection, also when its node died; repeats are dropped, see ``SWITCHBOARD_CACHE``).
For each call the bridge runs the application with that connection's scope and the one
ASGI message, as Daphne would, and answers what the consumer did: accept or close (with
its code), the frames it sent, and ``group_add``/``group_discard`` of its own
``self.channel_name`` (``switchboard.conn!<connection id>``), which the node turns into
cluster-wide subscriptions. Its other channel-layer calls go to the project's layer
(channels_redis pointed at the cluster) as before.

Settings (all optional but the secret):

- ``SWITCHBOARD_BACKEND_SECRET``: the signing key (also read from the environment).
- ``SWITCHBOARD_BACKEND_MAX_AGE``: seconds a call stays valid (300).
- ``SWITCHBOARD_EVENT_TIMEOUT``: seconds a consumer may take for one event (30).
- ``SWITCHBOARD_CACHE``: the alias of the cache that remembers handled disconnects for an
  hour. Unset: a local-memory cache of the process (a million entries). Several server
  processes need a cache they share (database, Memcached), with room for an hour of
  disconnects, for repeats to be dropped across them.
- ``SWITCHBOARD_RESTORE_USER``: after the connect, when the project's middleware no
  longer resolves a user (the query string's token expired, as SimpleJWT's access tokens
  do after 5 minutes), set ``scope["user"]`` to the user the node verified at connect,
  looked up by SimpleJWT's ``USER_ID_FIELD`` (True).
"""

from __future__ import annotations

from typing import Any

__all__ = ["urls", "CHANNEL_PREFIX"]

#: The prefix of a connection's channel name.
CHANNEL_PREFIX = "switchboard.conn!"


def urls(application: Any) -> list:
    """The URL patterns to ``include()``: one view, at the include's root, that the
    nodes POST each event to. ``application`` is the project's ASGI application, its
    ``"websocket"`` entry, or the dotted path to either."""
    from django.urls import path

    from .bridge import Bridge

    return [path("", Bridge(application).view, name="switchboard-bridge")]
