from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from opsweb import slack, sso, views
from opsweb.admin.accounts import link_slack_page, time_zone_page
from opsweb.api import api
from opsweb.board_views import board_page
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
    path("admin/board/<slug:slug>/", admin.site.admin_view(board_page), name="board"),
    path("admin/dora/", admin.site.admin_view(dora_page), name="dora"),
    path("admin/time-zone/", admin.site.admin_view(time_zone_page), name="time_zone"),
    path("admin/slack/link/", admin.site.admin_view(link_slack_page), name="slack_link"),
    path("sso/authenticate/", sso.SignIn.as_view(), name="oidc_authentication_init"),
    path("sso/callback/", sso.Callback.as_view(), name="oidc_authentication_callback"),
    path("slack/interactions", slack.interactions, name="slack_interactions"),
    path("slack/commands", slack.commands, name="slack_commands"),
    # Before the admin's own: its "Log out" button ends the provider's session too.
    path("admin/logout/", sso.SignOut.as_view(), name="sign_out"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]
