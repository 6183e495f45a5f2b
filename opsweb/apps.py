from django.apps import AppConfig


class OpswebConfig(AppConfig):
    name = "opsweb"
    verbose_name = "Releases"

    def ready(self):
        # Connects the notification signals and the login-throttle audit hook.
        from opsweb import login_throttle, notifications  # noqa: F401

        login_throttle.connect()
