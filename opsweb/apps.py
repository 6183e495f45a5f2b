from django.apps import AppConfig


class OpswebConfig(AppConfig):
    name = "opsweb"
    verbose_name = "Releases"
