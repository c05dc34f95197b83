"""The view the nodes call, and how it runs the project's ASGI application for one event.

One call is one event of one connection. The application gets a scope rebuilt from what
the node sent (the path and query string as the client sent them, the request headers,
the addresses) and exactly one ASGI message: ``websocket.connect``,
``websocket.receive`` or ``websocket.disconnect``. It runs until it asks for the next
message (it has handled this one) or returns; what it sent (``websocket.accept``,
``websocket.send``, ``websocket.close``) and its ``group_add``/``group_discard`` of its
own channel are the answer, in order.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import logging
import os
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import layer, signing

logger = logging.getLogger("switchboard_channels")

#: The call format this bridge speaks (the node's `v`).
VERSION = 1
#: How long a handled disconnect is remembered, to drop the repeats of a node that
#: retried or of a survivor that made it again after a node died.
DEDUPE_SECONDS = 3600
#: Without SWITCHBOARD_CACHE: handled disconnects this process remembers at most (Django's
#: default local-memory cache keeps 300 entries, too few: the oldest would be forgotten
#: while their repeats may still come).
LOCAL_ENTRIES = 1_000_000
#: How long a disconnect being handled holds off a concurrent repeat (answered 409, so
#: that its sender tries again later).
RUNNING_SECONDS = 60


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, os.environ.get(name, default))


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


class Call:
    """One event being served: what the consumer did, in order."""

    def __init__(self, event: dict) -> None:
        self.event = event
        self.channel: str = event["channel"]
        self.kind: str = event["type"]
        self.user_id: str | None = event.get("user")
        self.actions: list[dict] = []

    def record(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "websocket.accept":
            self.actions.append({"type": "accept", "subprotocol": message.get("subprotocol")})
        elif kind == "websocket.send":
            if message.get("text") is not None:
                self.actions.append({"type": "send", "text": message["text"]})
            elif message.get("bytes") is not None:
                encoded = base64.b64encode(message["bytes"]).decode("ascii")
                self.actions.append({"type": "send", "bytes": encoded})
        elif kind == "websocket.close":
            self.actions.append(
                {"type": "close", "code": message.get("code", 1000), "reason": message.get("reason")}
            )
        elif kind == "websocket.http.response.start":
            # The denial response extension: a refusal, as a close before accepting is.
            self.actions.append({"type": "close", "code": message.get("status", 403)})

    async def bind(self, consumer: Any) -> None:
        """The consumer the application made for this event (from its ``new_channel``
        call): after the connect, a user the project's middleware no longer resolves (an
        expired token) is the one the node verified at connect."""
        if self.kind == "connect" or consumer is None or not self.user_id:
            return
        scope = getattr(consumer, "scope", None)
        if not isinstance(scope, dict) or not _setting("SWITCHBOARD_RESTORE_USER", True):
            return
        user = scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            return
        restored = await _user(self.user_id)
        if restored is not None:
            scope["user"] = restored


async def _user(user_id: str) -> Any:
    """The user of ``user_id`` as SimpleJWT finds it (``USER_ID_FIELD``, the primary key
    without SimpleJWT), or None."""
    from channels.db import database_sync_to_async

    @database_sync_to_async
    def find() -> Any:
        from django.apps import apps

        if not apps.is_installed("django.contrib.auth"):
            return None
        from django.contrib.auth import get_user_model

        try:
            from rest_framework_simplejwt.settings import api_settings

            field = api_settings.USER_ID_FIELD
        except Exception:  # noqa: BLE001 - SimpleJWT absent or not configured
            field = "pk"
        model = get_user_model()
        try:
            return model.objects.get(**{field: user_id})
        except (model.DoesNotExist, ValueError, TypeError):
            return None

    return await find()


def scope_of(event: dict) -> dict:
    """The ASGI scope of the event's connection, as Daphne builds it."""
    sent = event.get("scope") or {}
    path = sent.get("path", "/")
    from urllib.parse import unquote

    client = sent.get("client")
    server = sent.get("server") or event.get("server")
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": sent.get("scheme", "ws"),
        "path": unquote(path),
        "raw_path": path.encode("utf-8"),
        "root_path": "",
        "query_string": sent.get("query_string", "").encode("utf-8"),
        "headers": [
            (name.lower().encode("utf-8"), value.encode("utf-8"))
            for name, value in sent.get("headers", [])
        ],
        "client": tuple(client) if client else None,
        "server": tuple(server) if server else None,
        "subprotocols": list(sent.get("subprotocols", [])),
        "switchboard": {
            "connection": event.get("connection"),
            "node": event.get("node"),
            "user": event.get("user"),
            "event": event.get("type"),
            "seq": event.get("seq"),
        },
    }


def message_of(event: dict) -> dict:
    """The one ASGI message of the event."""
    kind = event["type"]
    if kind == "connect":
        return {"type": "websocket.connect"}
    if kind == "receive":
        if event.get("bytes") is not None:
            return {"type": "websocket.receive", "bytes": base64.b64decode(event["bytes"])}
        return {"type": "websocket.receive", "text": event.get("text", "")}
    return {"type": "websocket.disconnect", "code": event.get("code", 1000)}


async def run(application: Any, call: Call, timeout: float) -> str | None:
    """Runs ``application`` for ``call``'s event; the error it raised, if any."""
    pending = [message_of(call.event)]
    handled = asyncio.Event()

    async def receive() -> dict:
        if pending:
            return pending.pop()
        handled.set()
        await asyncio.Event().wait()
        raise asyncio.CancelledError

    async def send(message: dict) -> None:
        call.record(message)

    token = layer.current.set(call)
    try:
        task = asyncio.ensure_future(application(scope_of(call.event), receive, send))
        waiter = asyncio.ensure_future(handled.wait())
        try:
            done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task in done:
            error = task.exception()
            if error is not None:
                logger.error("the consumer raised on %s of %s", call.kind, call.channel, exc_info=error)
                return f"{type(error).__name__}: {error}"
            return None
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as error:  # noqa: BLE001 - it raised while being cancelled
            return f"{type(error).__name__}: {error}"
        return None if handled.is_set() else f"the consumer took more than {timeout} s"
    finally:
        layer.current.reset(token)


class Bridge:
    """The bridge of one application; :meth:`view` is what the URL pattern serves."""

    def __init__(self, application: Any) -> None:
        self._application = application
        self._resolved: Any = None
        self._cache: Any = None

    def application(self) -> Any:
        """The websocket application: imported at the first call when given as a dotted
        path; a ProtocolTypeRouter's ``"websocket"`` entry."""
        if self._resolved is None:
            app = self._application
            if isinstance(app, str):
                module, _, name = app.rpartition(".")
                app = getattr(importlib.import_module(module), name)
            mapping = getattr(app, "application_mapping", None)
            if isinstance(mapping, dict):
                if "websocket" not in mapping:
                    raise RuntimeError("the application's ProtocolTypeRouter has no 'websocket' entry")
                app = mapping["websocket"]
            layer.install()
            self._resolved = app
        return self._resolved

    @property
    def view(self) -> Any:
        bridge = self

        @csrf_exempt
        async def switchboard_bridge(request: HttpRequest) -> HttpResponse:
            return await bridge.serve(request)

        return switchboard_bridge

    async def serve(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return _error(405, "the bridge takes POSTs from Switchboard nodes")
        secret = _setting("SWITCHBOARD_BACKEND_SECRET", None)
        if not secret:
            return _error(503, "SWITCHBOARD_BACKEND_SECRET is not set: the bridge refuses every call")
        body = request.body
        try:
            signing.verify(
                secret.encode() if isinstance(secret, str) else secret,
                body,
                request.headers.get("x-switchboard-signature"),
                float(_setting("SWITCHBOARD_BACKEND_MAX_AGE", 300)),
            )
        except signing.Refused as refused:
            logger.warning("refused a bridge call: %s", refused)
            return _error(401, str(refused))
        try:
            event = json.loads(body)
            if event.get("v") != VERSION or event.get("type") not in ("connect", "receive", "disconnect"):
                raise ValueError(f"not a version {VERSION} call of a known type")
            call = Call(event)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return _error(400, f"malformed call: {e}")
        application = self.application()
        timeout = float(_setting("SWITCHBOARD_EVENT_TIMEOUT", 30))
        if call.kind != "disconnect":
            error = await run(application, call, timeout)
            return JsonResponse({"actions": call.actions, "error": error})
        return await self.disconnect(application, call, timeout)

    def cache(self) -> Any:
        """Where handled disconnects are remembered: the ``SWITCHBOARD_CACHE`` alias (a
        cache the server's processes share), else a local-memory cache of this process
        big enough to remember them all."""
        if self._cache is None:
            alias = _setting("SWITCHBOARD_CACHE", None)
            if alias:
                from django.core.cache import caches

                self._cache = caches[alias]
            else:
                from django.core.cache.backends.locmem import LocMemCache

                self._cache = LocMemCache("switchboard-channels", {"OPTIONS": {"MAX_ENTRIES": LOCAL_ENTRIES}})
        return self._cache

    async def disconnect(self, application: Any, call: Call, timeout: float) -> HttpResponse:
        """A disconnect runs once per connection: a repeat is answered ``duplicate``."""
        cache = self.cache()
        key = f"switchboard_channels:disconnect:{call.event.get('connection')}"
        if not await cache.aadd(key, "running", RUNNING_SECONDS):
            if await cache.aget(key) == "done":
                return JsonResponse({"actions": [], "duplicate": True})
            return _error(409, "this connection's disconnect is being handled; try again later")
        try:
            error = await run(application, call, timeout)
        except BaseException:
            await cache.adelete(key)
            raise
        await cache.aset(key, "done", DEDUPE_SECONDS)
        return JsonResponse({"actions": call.actions, "error": error})
