from django.conf import settings
from django.db import models


class Notification(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    text = models.CharField(max_length=200)
    read = models.BooleanField(default=False)


class Connection(models.Model):
    """The app's own list of its users' live sockets (their channel names), so that
    views can reach them: group_add(room, channel_name), channel_layer.send(...)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    channel_name = models.CharField(max_length=100, unique=True)


class Event(models.Model):
    """What the consumer saw: its connects, frames and disconnects."""

    kind = models.CharField(max_length=20)
    channel_name = models.CharField(max_length=100)
    user_id = models.CharField(max_length=50, blank=True)
    code = models.IntegerField(null=True)
    at = models.DateTimeField(auto_now_add=True)
