import os

from django.urls import include, path
from rest_framework_simplejwt.views import TokenObtainPairView

from apps.notifications import views

urlpatterns = [
    path("api/token/", TokenObtainPairView.as_view()),
    path("api/signup/", views.signup),
    path("api/users/<int:user_id>/", views.user),
    path("api/notifications/", views.create_notification),
    path("api/notify/", views.notify),
    path("api/rooms/join/", views.join_room),
    path("api/rooms/send/", views.send_room),
    path("api/direct/", views.direct),
    path("api/kick/", views.kick),
    path("api/events/", views.events),
]

if os.environ.get("SWITCHBOARD_BACKEND_SECRET"):
    # The one line the migration adds (docs/migration.md).
    import switchboard_channels

    urlpatterns.append(
        path("switchboard/", include(switchboard_channels.urls("config.asgi.application")))
    )
