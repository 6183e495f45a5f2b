import functools

from django.apps import AppConfig
from django.conf import settings

from orchestration import outbound


class OpswebConfig(AppConfig):
    name = "opsweb"
    verbose_name = "Releases"

    def ready(self):
        # Connects the notification signals and the login-throttle audit hook.
        from opsweb import login_throttle, notifications  # noqa: F401

        login_throttle.connect()
        from django.contrib.auth.signals import user_logged_in

        from opsweb.middleware import remember_time_zone

        user_logged_in.connect(remember_time_zone, dispatch_uid="opsweb-time-zone")
        outbound.configure(outbound_allow)


def outbound_allow() -> outbound.AllowList:
    """OPSWEB_OUTBOUND_ALLOW as an ``AllowList``, read from the settings at each call."""
    return _parsed(tuple(settings.OPSWEB_OUTBOUND_ALLOW))


@functools.lru_cache(maxsize=8)
def _parsed(entries: tuple[str, ...]) -> outbound.AllowList:
    return outbound.AllowList.parse(entries)
