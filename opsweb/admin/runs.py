"""Runs: the list, a run's page (status, approvals, event log) and approve / reject / cancel."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from opsweb import policy, services
from opsweb.admin.confirm import (
    CommentForm,
    Confirmation,
    ConfirmingAdmin,
    RequiredCommentForm,
    commits_between,
    version_line,
)
from opsweb.admin.records import ReadOnlyMixin
from opsweb.models import Run
from opsweb.services import facts


def run_url(run: Run) -> str:
    return reverse("admin:opsweb_run_change", args=[run.pk])


def run_lines(run: Run) -> list[tuple[str, str]]:
    lines = [
        ("Run", f"#{run.pk} {run.get_kind_display()} to {run.environment}"),
        ("From", version_line(run.from_image) + ("" if run.switched_at else " (what runs now)")),
        ("To", version_line(run.image)),
        (
            "Requested by",
            f"{services.actor_name(run.requested_by)} at {run.created_at:%Y-%m-%d %H:%M:%S} UTC",
        ),
    ]
    if run.required_approvals:
        lines.append(("Approvals", services.approvals_text(run)))
        lines.append(
            (
                "Approval window",
                f"until {services.base.approval_deadline(run):%Y-%m-%d %H:%M:%S} UTC",
            )
        )
    if run.freeze_override_reason:
        lines.append(
            (
                "Emergency override",
                f"goes during the freeze: {run.freeze_override_reason} "
                f"({run.override_approvals} approvals from {services.base.OVERRIDE_GROUP})",
            )
        )
    return lines


class RunConfirmation(Confirmation):
    def facts(self, run, chosen):
        return facts.run_facts(run)

    def lines(self, run, chosen):
        return run_lines(run)

    def title(self, run, chosen):
        return f"{self.label(run)} run #{run.pk}"


class Approve(RunConfirmation):
    name = "approve"
    form_class = CommentForm

    def label(self, run):
        return "Approve"

    def decide(self, user, run, chosen):
        return policy.may_approve(user, run)

    def changes(self, run, chosen):
        return commits_between(run.from_image, run.image)

    def perform(self, user, run, chosen, data, seen):
        done = services.approve_run(user=user, run=run, comment=data["comment"], seen=seen)
        return (
            f"Approved run #{run.pk}: {services.approvals_text(done)} approvals; it "
            f"{done.status_phrase}."
        ), run_url(run)


class Reject(RunConfirmation):
    name = "reject"
    form_class = RequiredCommentForm

    def label(self, run):
        return "Reject"

    def decide(self, user, run, chosen):
        return policy.may_reject(user, run)

    def perform(self, user, run, chosen, data, seen):
        services.reject_run(user=user, run=run, comment=data["comment"], seen=seen)
        return f"Rejected run #{run.pk}.", run_url(run)


class Cancel(RunConfirmation):
    name = "cancel"
    form_class = CommentForm

    def label(self, run):
        return "Cancel"

    def decide(self, user, run, chosen):
        return policy.may_cancel(user, run)

    def perform(self, user, run, chosen, data, seen):
        services.cancel_run(user=user, run=run, comment=data["comment"], seen=seen)
        return f"Cancelled run #{run.pk}.", run_url(run)


@admin.register(Run)
class RunAdmin(ReadOnlyMixin, ConfirmingAdmin):
    confirmations = [Approve(), Reject(), Cancel()]
    list_display = [
        "id",
        "kind",
        "environment",
        "image_tag",
        "status_badge",
        "approvals_so_far",
        "step",
        "requested_by",
        "created_at",
        "finished_at",
    ]
    list_filter = ["environment", "status", "kind"]
    list_select_related = ["environment", "image", "requested_by"]
    search_fields = ["image__tag", "image__git_sha", "note"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "kind",
                    "status",
                    "environment",
                    "image",
                    "replaces",
                    "requested_by",
                    "reason",
                    "note",
                    "freeze_override_reason",
                    "error",
                ]
            },
        ),
        (
            "Details",
            {
                "classes": ["collapse"],
                "fields": [
                    "step",
                    "source_environment",
                    "triggered_by",
                    "required_approvals",
                    "created_at",
                    "queued_at",
                    "started_at",
                    "switched_at",
                    "finished_at",
                    "heartbeat_at",
                    "task_id",
                    "backend_ref",
                ],
            },
        ),
    ]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("environment__current_image", "image", "replaces", "requested_by")
            .annotate(approvals_given=services.counting_approvals_annotation())
        )

    @admin.display(description="Image", ordering="image__tag")
    def image_tag(self, run):
        return run.image.tag

    @admin.display(description="Status", ordering="status")
    def status_badge(self, run):
        return format_html(
            '<span class="opsweb-status opsweb-status-{}">{}</span>',
            run.status,
            run.get_status_display(),
        )

    @admin.display(description="Approvals")
    def approvals_so_far(self, run):
        return services.approvals_text(run, run.approvals_given) or "—"

    def page_context(self, request, run):
        return {
            "run": run,
            "approvals": run.approvals.select_related("user"),
            "approvals_text": services.approvals_text(run),
            "unreachable": services.unreachable_quorum(run),
            "deadline": services.base.approval_deadline(run) if run.required_approvals else None,
            "events": run.events.all(),
            "refresh": run.status in ("queued", "running"),
        }
