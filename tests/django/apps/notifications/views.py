"""The API the frontend and the tests call; the publishers are plain channel-layer calls."""

import json

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .models import Connection, Event, Notification


def body(request):
    return json.loads(request.body or b"{}")


@csrf_exempt
def signup(request):
    data = body(request)
    user = get_user_model().objects.create_user(username=data["username"], password=data["password"])
    return JsonResponse({"id": user.id})


@csrf_exempt
def user(request, user_id):
    """PATCH {"is_active": false}: an admin deactivates a user."""
    data = body(request)
    get_user_model().objects.filter(id=user_id).update(is_active=data.get("is_active", True))
    return JsonResponse({"ok": True})


@csrf_exempt
def create_notification(request):
    data = body(request)
    n = Notification.objects.create(user_id=data["user_id"], text=data.get("text", ""))
    return JsonResponse({"id": n.id})


@csrf_exempt
def notify(request):
    data = body(request)
    async_to_sync(get_channel_layer().group_send)(
        f"user_{data['user_id']}", {"type": "send_notification", "message": data["message"]}
    )
    return JsonResponse({"ok": True})


@csrf_exempt
def join_room(request):
    data = body(request)
    layer = get_channel_layer()
    channels = list(Connection.objects.filter(user_id=data["user_id"]).values_list("channel_name", flat=True))
    for channel in channels:
        async_to_sync(layer.group_add)(data["room"], channel)
    return JsonResponse({"joined": len(channels)})


@csrf_exempt
def send_room(request):
    data = body(request)
    async_to_sync(get_channel_layer().group_send)(
        data["room"], {"type": "send_notification", "message": data["message"]}
    )
    return JsonResponse({"ok": True})


@csrf_exempt
def direct(request):
    data = body(request)
    layer = get_channel_layer()
    channels = list(Connection.objects.filter(user_id=data["user_id"]).values_list("channel_name", flat=True))
    for channel in channels:
        async_to_sync(layer.send)(channel, {"type": "send_notification", "message": data["message"]})
    return JsonResponse({"sent": len(channels)})


@csrf_exempt
def kick(request):
    """The old stack's kick: the consumer closes itself on a channel-layer event."""
    data = body(request)
    async_to_sync(get_channel_layer().group_send)(
        f"user_{data['user_id']}", {"type": "force_disconnect", "code": data.get("code", 4000)}
    )
    return JsonResponse({"ok": True})


def events(request):
    rows = Event.objects.order_by("id").values("kind", "channel_name", "user_id", "code")
    kind = request.GET.get("kind")
    if kind:
        rows = rows.filter(kind=kind)
    return JsonResponse({"events": list(rows)})
