from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from opsweb import views
from opsweb.dora_views import dora_page

admin.site.site_header = "opsweb release console"
admin.site.site_title = "opsweb"
admin.site.index_title = "Releases"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("admin/dora/", admin.site.admin_view(dora_page), name="dora"),
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]
