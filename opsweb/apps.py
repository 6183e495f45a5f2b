from django.apps import AppConfig


class OpswebConfig(AppConfig):
    name = "opsweb"
    verbose_name = "Releases"

    def ready(self):
        # Connects the notification signals and registers their admin pages.
        from opsweb import notifications  # noqa: F401
