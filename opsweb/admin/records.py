"""Records: run events, approvals, sign-offs and the audit trail. Nobody adds, edits or
deletes them here, superusers included."""

from __future__ import annotations

from django.contrib import admin

from opsweb.admin.lists import OpswebAdmin
from opsweb.models import Approval, AuditEntry, Environment, ImageVersion, Run, RunEvent, Signoff


class ReadOnlyMixin:
    """For records: nobody adds, edits or deletes them here, superusers included."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(ReadOnlyMixin, OpswebAdmin):
    pass


def audit_entries_for(obj):
    """The audit trail of an environment, a version or a run, newest first."""
    entries = AuditEntry.objects.select_related("actor").order_by("-created_at", "-id")
    if isinstance(obj, Environment):
        return entries.filter(environment=obj)
    if isinstance(obj, ImageVersion):
        return entries.filter(image=obj)
    if isinstance(obj, Run):
        return entries.filter(run=obj)
    return entries.none()


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "run", "level", "message", "duration_seconds"]
    list_filter = ["level", "run__environment"]
    list_select_related = ["run__environment", "run__image"]
    search_fields = ["message"]


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "run", "user", "decision", "comment", "digest"]
    list_filter = ["decision", "run__environment"]
    list_select_related = ["run__environment", "run__image", "user"]


@admin.register(Signoff)
class SignoffAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "environment", "image", "user", "note"]
    list_select_related = ["environment", "image", "user"]


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor", "action", "message"]
    list_filter = ["action", "environment"]
    list_select_related = ["actor"]
    search_fields = ["message"]
