from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from opsweb import views
from opsweb.api import api
from opsweb.dora_views import dora_page
from opsweb.login_throttle import LoginForm

admin.site.site_header = "opsweb release console"
admin.site.site_title = "opsweb"
admin.site.index_title = "Releases"
# The board is the admin index itself: a "View site" link would only loop back to it.
admin.site.site_url = None
# Lists need the width at 1366 px (run list, version list); the breadcrumbs and the board lead
# everywhere the navigation sidebar did.
admin.site.enable_nav_sidebar = False
# Inputs bounded by their columns: a 300-character username is a form error, not a 500.
admin.site.login_form = LoginForm

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon),
    path("admin/dora/", admin.site.admin_view(dora_page), name="dora"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]
