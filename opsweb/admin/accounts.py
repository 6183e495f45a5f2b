"""Accounts from outside opsweb: group mappings (identity provider → opsweb groups), SSO
identities, Slack links, and the page where a user gets a code to link their Slack account."""

from __future__ import annotations

from zoneinfo import available_timezones

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone

from opsweb import services
from opsweb.admin.lists import OpswebAdmin
from opsweb.middleware import SESSION_TIME_ZONE
from opsweb.models import GroupMapping, OidcIdentity, SlackLink


class AccountAdmin(OpswebAdmin):
    """Who may act is security configuration: every change and deletion is audited."""

    def history_view(self, request, object_id, extra_context=None):
        # The permission first: an unknown id and a forbidden one look the same.
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        return super().history_view(request, object_id, extra_context)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        verb = "Changed" if change else "Created"
        services.audit(request.user, "configure_accounts", f"{verb} {self.opts.verbose_name} {obj}")

    def delete_model(self, request, obj):
        text = f"Deleted {self.opts.verbose_name} {obj}"
        super().delete_model(request, obj)
        services.audit(request.user, "configure_accounts", text)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)


@admin.register(GroupMapping)
class GroupMappingAdmin(AccountAdmin):
    """Provider group → opsweb group; applied at each sign-in (opsweb/sso.py)."""

    list_display = ["claim_value", "group"]
    search_fields = ["claim_value", "group__name"]
    list_select_related = ["group"]


@admin.register(OidcIdentity)
class OidcIdentityAdmin(AccountAdmin):
    """Who signed in through the provider. Adding one by hand attaches an existing opsweb
    account to a person at the provider (their issuer and sub) before their first sign-in."""

    list_display = ["user", "subject", "issuer", "last_sign_in_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "subject"]
    readonly_fields = ["created_at", "last_sign_in_at"]
    raw_id_fields = ["user"]

    def get_readonly_fields(self, request, obj=None):
        # Changing who an identity is would hand one person's sign-in to another account.
        return [*self.readonly_fields, "user", "issuer", "subject"] if obj else self.readonly_fields


@admin.register(SlackLink)
class SlackLinkAdmin(AccountAdmin):
    """Linked Slack users; made only from Slack (``/opsweb link CODE``), deleted here."""

    list_display = ["user", "slack_name", "slack_user_id", "team_id", "linked_at"]
    list_select_related = ["user"]
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


def time_zone_page(request):
    """GET: the zone the signed-in user reads times in. POST (CSRF): set it."""
    if request.method not in ("GET", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    current = request.session.get(SESSION_TIME_ZONE) or services.user_time_zone(request.user)
    entered = current
    if request.method == "POST":
        entered = request.POST.get("time_zone", "")
        try:
            current = services.set_time_zone(user=request.user, time_zone=entered)
            request.session[SESSION_TIME_ZONE] = current
        except services.ReleaseError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Times are now shown in {current}.")
            return HttpResponseRedirect(request.path)
    context = {
        **admin.site.each_context(request),
        "title": "Your time zone",
        "current": current,
        "entered": entered[:64],
        "zones": sorted(available_timezones()),
        "now": timezone.now(),
    }
    return TemplateResponse(request, "admin/opsweb/time_zone.html", context)
