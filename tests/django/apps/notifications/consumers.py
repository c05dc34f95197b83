"""The old deployment's consumer: joins the user's group, answers the frontend's
mark_read, relays send_notification events, and keeps the app's list of live sockets."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .models import Connection, Event, Notification


@database_sync_to_async
def remember(user, channel_name):
    Connection.objects.get_or_create(user=user, channel_name=channel_name)
    Event.objects.create(kind="connect", channel_name=channel_name, user_id=str(user.id))


@database_sync_to_async
def forget(user, channel_name, code):
    Connection.objects.filter(channel_name=channel_name).delete()
    user_id = str(user.id) if user.is_authenticated else ""
    Event.objects.create(kind="disconnect", channel_name=channel_name, user_id=user_id, code=code)


@database_sync_to_async
def mark_read(user, notification_id, channel_name):
    Event.objects.create(kind="receive", channel_name=channel_name, user_id=str(user.id or ""))
    if not user.is_authenticated:
        return False
    return Notification.objects.filter(id=notification_id, user=user).update(read=True) == 1


class NotificationConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope["user"]
        if user.is_anonymous or not user.is_active:
            await self.close()
            return
        self.group_name = f"user_{user.id}"
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()
        await remember(user, self.channel_name)

    async def disconnect(self, close_code):
        await forget(self.scope["user"], self.channel_name, close_code)
        if hasattr(self, "group_name"):
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if content.get("action") == "mark_read":
            if await mark_read(self.scope["user"], content.get("id"), self.channel_name):
                await self.send_json({"type": "marked_read", "id": content.get("id")})
            else:
                await self.send_json({"type": "error", "message": "notification not found"})

    async def send_notification(self, event):
        await self.send_json(event["message"])

    async def force_disconnect(self, event):
        await self.close(code=event.get("code", 4000))
