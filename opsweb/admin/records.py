"""Records: run events, approvals, sign-offs and the audit trail. Nobody adds, edits or
deletes them here, superusers included."""

from __future__ import annotations

import re

from django.contrib import admin
from django.db import connection
from django.db.models import Q

from opsweb.admin.lists import ApplicationFilter, DateRangeFilter, OpswebAdmin, TargetFilter
from opsweb.metrics import human_duration
from opsweb.models import Approval, AuditEntry, ImageVersion, Run, RunEvent, Signoff, Target


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
    if isinstance(obj, Target):
        return entries.filter(environment=obj)
    if isinstance(obj, ImageVersion):
        return entries.filter(image=obj)
    if isinstance(obj, Run):
        return entries.filter(run=obj)
    return entries.none()


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "run", "level", "message", "took"]
    ordering = ["-created_at", "-id"]  # the newest first, from runevent_newest_first
    list_filter = ["level", "run__environment"]
    list_select_related = [
        "run__environment__environment",
        "run__environment__application",
        "run__image",
    ]
    search_fields = ["message"]

    @admin.display(description="Took", ordering="duration_seconds")
    def took(self, event):
        return "—" if event.duration_seconds is None else human_duration(event.duration_seconds)


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "application_name",
        "run",
        "user",
        "decision",
        "comment",
        "digest",
    ]
    ordering = ["-created_at", "-id"]  # the newest decisions first, from their index
    list_filter = [
        "decision",
        ApplicationFilter.through(applications=["application"]),
        ("run__environment", TargetFilter),
    ]
    list_select_related = [
        "run__environment__environment",
        "run__environment__application",
        "run__image",
        "user",
        "application",
    ]

    @admin.display(description="Application")
    def application_name(self, approval):
        return approval.application or approval.run.environment.application


@admin.register(Signoff)
class SignoffAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "environment", "image", "user", "note"]
    list_select_related = [
        "environment__environment",
        "environment__application",
        "image",
        "user",
    ]


class ActionFilter(admin.SimpleListFilter):
    """The audit list by action. Its choices are the actions recorded so far, read by a skip
    scan of the ``audit_action_newest`` index (one probe per distinct action); Django's
    all-values filter reads every entry of the trail on every page view instead."""

    title = "action"
    parameter_name = "action"

    def lookups(self, request, model_admin):
        return [(action, action.replace("_", " ")) for action in recorded_actions()]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(action=self.value())
        return queryset


def recorded_actions() -> list[str]:
    """The distinct ``AuditEntry.action`` values, sorted: a recursive query that asks the
    index for the next action after the last one (SQLite and PostgreSQL both plan each step
    as one index probe)."""
    table = connection.ops.quote_name(AuditEntry._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            # Built from the model's own table name only.
            f"WITH RECURSIVE actions(action) AS ("  # noqa: S608
            f" SELECT MIN(action) FROM {table}"
            f" UNION ALL"
            f" SELECT (SELECT MIN(action) FROM {table} WHERE action > actions.action)"
            f" FROM actions WHERE actions.action IS NOT NULL"
            f") SELECT action FROM actions WHERE action IS NOT NULL"
        )
        return [row[0] for row in cursor.fetchall()]


RUN_REFERENCE = re.compile(r"(?:run\s*)?#(?P<number>[0-9]{1,18})", re.IGNORECASE)


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor", "application_name", "action_words", "message"]
    list_filter = [
        ActionFilter,
        ApplicationFilter.through(applications=["application"]),
        ("environment", TargetFilter),
        DateRangeFilter.on("created_at", "date"),
    ]
    list_select_related = ["actor", "application"]
    search_fields = ["message"]  # see get_search_results: "run #N" finds that run's entries

    @admin.display(description="Application")
    def application_name(self, entry):
        return entry.application or "—"

    def get_search_results(self, request, queryset, search_term):
        """ "run #42" or "#42" finds the entries of run 42 and those naming "#42" (not "#420")
        in their message. As words ("run" and "#42", both in the message) the search matched what it
        should, but "run" is in nearly every entry: PostgreSQL intersected a trigram bitmap of
        the whole trail with the number's (194 ms at 2.7 million entries against 71 ms at
        13,000); the run's index and the number's trigrams alone stay small."""
        reference = RUN_REFERENCE.fullmatch(search_term.strip())
        if reference is None:
            return super().get_search_results(request, queryset, search_term)
        number = reference["number"]
        # "#29" and no digit after it: not "#290" (the trigram index serves the icontains).
        naming = Q(message__icontains=f"#{number}") & Q(message__regex=rf"#{number}([^0-9]|$)")
        return queryset.filter(Q(run_id=int(number)) | naming), False

    @admin.display(description="Action", ordering="action")
    def action_words(self, entry):
        return entry.action.replace("_", " ")
