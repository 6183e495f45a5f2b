from django.apps import AppConfig


class OpswebConfig(AppConfig):
    name = "opsweb"
    verbose_name = "Releases"

    def ready(self):
        from opsweb import login_throttle

        login_throttle.connect()
