"""Accounts from outside opsweb: group mappings (identity provider → opsweb groups), SSO
identities, Slack links, and the page where a user gets a code to link their Slack account."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpResponseNotAllowed
from django.template.response import TemplateResponse

from opsweb import services
from opsweb.models import GroupMapping, OidcIdentity, SlackLink


@admin.register(GroupMapping)
class GroupMappingAdmin(admin.ModelAdmin):
    list_display = ["claim_value", "group"]
    search_fields = ["claim_value", "group__name"]
    autocomplete_fields = []


@admin.register(OidcIdentity)
class OidcIdentityAdmin(admin.ModelAdmin):
    """Who signed in through the provider. Adding one by hand attaches an existing opsweb
    account to a person at the provider (their issuer and sub) before their first sign-in."""

    list_display = ["user", "subject", "issuer", "last_sign_in_at"]
    search_fields = ["user__username", "subject"]
    readonly_fields = ["created_at", "last_sign_in_at"]
    raw_id_fields = ["user"]

    def get_readonly_fields(self, request, obj=None):
        # Changing who an identity is would hand one person's sign-in to another account.
        return [*self.readonly_fields, "user", "issuer", "subject"] if obj else self.readonly_fields


@admin.register(SlackLink)
class SlackLinkAdmin(admin.ModelAdmin):
    """Linked Slack users; made only from Slack (``/opsweb link CODE``), deleted here."""

    list_display = ["user", "slack_name", "slack_user_id", "team_id", "linked_at"]
    search_fields = ["user__username", "slack_name", "slack_user_id"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def link_slack_page(request):
    """GET: how linking works. POST (CSRF): a one-time code for the signed-in user."""
    if request.method not in ("GET", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    code = None
    if request.method == "POST":
        try:
            code = services.issue_slack_link_code(user=request.user)
        except services.ReleaseError as exc:
            messages.error(request, str(exc))
    context = {
        **admin.site.each_context(request),
        "title": "Link your Slack account",
        "code": code,
        "minutes": 10,
        "slack_configured": bool(settings.SLACK_SIGNING_SECRET),
        "links": SlackLink.objects.filter(user=request.user),
    }
    return TemplateResponse(request, "admin/opsweb/slack_link.html", context)
