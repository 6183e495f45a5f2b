import zoneinfo

from django.utils import timezone

from opsweb.views import healthz


class HealthCheckMiddleware:
    """Answer /healthz before host validation and the HTTPS redirect.

    A load balancer's health check speaks plain HTTP with ``Host: <target ip>:<port>``, which is
    in no ALLOWED_HOSTS list; the page reveals nothing but whether the database answers.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/healthz":
            return healthz(request)
        return self.get_response(request)


SESSION_TIME_ZONE = "opsweb_time_zone"


def remember_time_zone(sender, request, user, **kwargs):
    """At sign-in: keep the user's zone in the session, which every page reads anyway."""
    from opsweb.services.accounts import user_time_zone

    if request is not None and hasattr(request, "session"):
        request.session[SESSION_TIME_ZONE] = user_time_zone(user)


class UserTimeZoneMiddleware:
    """Show times in the signed-in user's own zone (their profile; UTC without one) for the
    length of the request. Only what is rendered changes: stored times, notifications, Slack and
    the API stay UTC. The zone is kept in the session (read at sign-in, set again by the time
    zone page; a session older than this reads it once), so a page costs no query for it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from opsweb.services.accounts import user_time_zone

        user = getattr(request, "user", None)
        # Anonymous pages cost no query; the API answers in UTC whoever asks.
        if user is not None and user.is_authenticated and not request.path.startswith("/api/"):
            zone = request.session.get(SESSION_TIME_ZONE)
            if zone is None:
                zone = request.session[SESSION_TIME_ZONE] = user_time_zone(user)
            try:
                timezone.activate(zoneinfo.ZoneInfo(zone))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                timezone.deactivate()  # a zone this machine's tzdata lost: UTC, not a 500
        else:
            timezone.deactivate()
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()
