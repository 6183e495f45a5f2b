"""Runs: the list, a run's page (status, approvals, event log) and approve / reject / cancel."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.admin.utils import (
    display_for_field,
    display_for_value,
    lookup_field,
    unquote,
)
from django.http import JsonResponse
from django.urls import path, reverse
from django.utils.html import format_html, strip_tags

from opsweb import policy, services
from opsweb.admin.confirm import (
    CommentForm,
    Confirmation,
    ConfirmForm,
    ConfirmingAdmin,
    RequiredCommentForm,
    held_text,
    version_line,
)
from opsweb.admin.images import version_search
from opsweb.admin.lists import (
    ApplicationFilter,
    CheckedChangeList,
    DateRangeFilter,
    TargetFilter,
)
from opsweb.admin.records import ReadOnlyMixin
from opsweb.limits import TEXT_MAX
from opsweb.live import page_etag
from opsweb.metrics import human_duration
from opsweb.models import ImageVersion, Run
from opsweb.reads import change, facts
from opsweb.templatetags.opsweb_format import moment_text


def run_url(run: Run) -> str:
    return reverse("admin:opsweb_run_change", args=[run.pk])


def run_lines(run: Run) -> list[tuple[str, str]]:
    lines = [
        ("Run", f"#{run.pk} {run.get_kind_display()} to {run.environment}"),
        (
            "From",
            version_line(run.from_image, then=("" if run.switched_at else " (what runs now)")),
        ),
        ("To", version_line(run.image)),
        (
            "Requested by",
            f"{services.actor_name(run.requested_by)} at {moment_text(run.created_at)}",
        ),
    ]
    if run.required_approvals:
        lines.append(("Approvals", services.approvals_text(run)))
        lines.append(
            (
                "Approval window",
                f"until {moment_text(services.approval_deadline(run))}",
            )
        )
    if run.freeze_override_reason:
        lines.append(
            (
                "Emergency override",
                f"goes during the freeze: {run.freeze_override_reason} "
                f"({run.override_approvals} approvals from {services.OVERRIDE_GROUP})",
            )
        )
    return lines


def change_lines(user, run: Run) -> list[tuple[str, str]]:
    """What is in the change besides its commits, for the person about to approve it."""
    found = change.change_of(run)
    image = run.image
    fills = services.rule_filled_by(run, user)
    lines = [
        (
            "Build",
            format_html('<a href="{}" rel="noopener">{}</a>', image.build_url, image.build_url)
            if image.build_url
            else "not given when the image was registered",
        ),
        ("Requester's note", run.note or "none"),
    ]
    if found.signoff is not None:
        s = found.signoff
        lines.append(
            (
                "UAT sign-off",
                f"{s.user.get_username()} at {s.created_at:%Y-%m-%d %H:%M} UTC in "
                f"{s.environment}" + (f": {s.note}" if s.note else ""),
            )
        )
    elif run.environment.environment.requires_uat_signoff:
        lines.append(("UAT sign-off", "none recorded"))
    if run.required_approvals:
        lines.append(
            ("Your approval fills", fills or "no rule: it would not count toward the quorum")
        )
    lines.append(("Image scan", image.scan_summary or "not read (no scanner for this registry)"))
    return lines


class RunChangeList(CheckedChangeList):
    """The run list counts approvals for the rows on the page only (one query), joins only
    what its columns show and leaves out the long and JSON columns no column reads (the run
    page's extra joins and a row's logs would otherwise be loaded 100 times per page)."""

    # Read by no column of the list; loading them costs a JSON decode or a long string per row.
    UNUSED = [
        "note",
        "reason",
        "error",
        "signals",
        "backend_ref",
        "freeze_override_reason",
        "stop_reason",
        "task_id",
        "image__commit_message",
        "image__bad_reason",
        "image__build_url",
        "image__scan_counts",
        "image__scan_top_ids",
        "environment__backend_settings",
        "environment__alarms",
    ]

    def get_queryset(self, request, exclude_parameters=None):
        queryset = super().get_queryset(request, exclude_parameters)
        columns = queryset.select_related(None).select_related(*self.list_select_related)
        return columns.defer(*self.UNUSED)

    def get_results(self, request):
        super().get_results(request)
        rows = list(self.result_list)
        counts = services.approval_counts(run.pk for run in rows if run.required_approvals)
        rules = services.rule_counts({run.environment_id: run.environment for run in rows}.values())
        for run in rows:
            run.approvals_given = counts.get(run.pk, 0)
            run.rule_count = rules.get(run.environment_id, 0)
        self.result_list = rows


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

    def lines_for(self, user, run, chosen):
        held = held_text(run.environment, run.kind, override=bool(run.freeze_override_reason))
        after = [("When fully approved", f"it is not started: it is {held}")] if held else []
        return [*run_lines(run), *after, *change_lines(user, run)]

    def changes(self, run, chosen):
        return change.change_of(run).versions

    def compare_url(self, run, chosen):
        return change.change_of(run).compare_url

    def perform(self, user, run, chosen, data, seen):
        done = services.approve_run(user=user, run=run, comment=data["comment"], seen=seen)
        held = held_text(done.environment, done.kind, override=bool(done.freeze_override_reason))
        phrase = f"is {held}" if held and done.status == "queued" else done.status_phrase
        return (
            f"Approved run #{run.pk}: {done.approvals_summary} approvals; it {phrase}."
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


class StopForm(ConfirmForm):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        help_text="Why; shown on the run and in the audit trail.",
        max_length=TEXT_MAX,
    )


class Stop(RunConfirmation):
    """Stop a running deploy at its worker's next safe point."""

    name = "stop"
    form_class = StopForm

    def label(self, run):
        return "Stop"

    def decide(self, user, run, chosen):
        return policy.may_stop_run(user, run)

    def facts(self, run, chosen):
        return facts.stop_facts(run)

    def lines(self, run, chosen):
        return [
            *run_lines(run),
            ("Now", run.step or "running"),
            (
                "What happens",
                "The worker stops at its next safe point: before the switch nothing changes; "
                "during an ECS rollout or between EC2 batches, or just after the local process "
                "started, what ran before is put back; during the health check or the bake, "
                "the new version keeps running. The run ends stopped, showing what really runs.",
            ),
        ]

    def perform(self, user, run, chosen, data, seen):
        services.stop_run(user=user, run=run, reason=data["reason"], seen=seen)
        return (
            f"Asked run #{run.pk} to stop: it stops at its next safe point and its page "
            f"shows what runs then."
        ), run_url(run)


@admin.register(Run)
class RunAdmin(ReadOnlyMixin, ConfirmingAdmin):
    confirmations = [Approve(), Reject(), Cancel(), Stop()]
    # Fits 1366 px beside the navigation: the step shows on the status badge's tooltip.
    list_display = [
        "id",
        "kind",
        "application",
        "environment",
        "image_tag",
        "status_badge",
        "approvals_so_far",
        "requested_by",
        "created_at",
        "took",
    ]
    list_filter = [
        ApplicationFilter.through(targets=["environment"]),
        ("environment", TargetFilter),
        "status",
        "kind",
        DateRangeFilter.on("created_at", "date requested"),
    ]
    list_select_related = [
        "environment__environment",
        "environment__application",
        "image",
        "requested_by",
    ]
    search_fields = ["image__tag"]  # see get_search_results: through the versions' indexes
    search_help_text = "A tag, the start of a commit or digest, or #run id."
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
                    "stop_requested_at",
                    "stop_requested_by",
                    "stop_reason",
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
            .select_related(
                "environment__current_image",
                "environment__environment",
                "environment__application",
                "image",
                "replaces",
                "requested_by",
                "source_environment",
                "triggered_by",
                "stop_requested_by",
            )
        )

    def get_changelist(self, request, **kwargs):
        return RunChangeList

    def get_search_results(self, request, queryset, search_term):
        """Search by run id (``#12``), a tag or its start, a commit's or digest's start: the
        matching versions through their indexes (``version_search``), then their runs through
        ``run_image_newest`` — or, for a start that matches thousands of versions, the newest
        runs checked against them (about 0.2 s at a million runs for "1")."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.startswith("#") and term[1:].isdecimal() and len(term) < 19:
            return queryset.filter(pk=int(term[1:])), False
        return queryset.filter(image__in=ImageVersion.objects.filter(version_search(term))), False

    @admin.display(description="Application")
    def application(self, run):
        return run.environment.application

    @admin.display(description="Image", ordering="image__tag")
    def image_tag(self, run):
        return run.image.tag

    @admin.display(description="Status", ordering="status")
    def status_badge(self, run):
        return format_html(
            '<span class="opsweb-status opsweb-status-{}" title="{}">{}</span>',
            run.status,
            run.step,
            "Stopping" if run.is_stopping else run.get_status_display(),
        )

    @admin.display(description="Took")
    def took(self, run):
        duration = run.duration
        return human_duration(duration.total_seconds()) if duration else "—"

    @admin.display(description="Approvals")
    def approvals_so_far(self, run):
        return services.approvals_text(run, getattr(run, "approvals_given", None)) or "—"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        page_etag(request)  # read before the run: a change made meanwhile shows next refresh
        return super().change_view(request, object_id, form_url, extra_context)

    def page_context(self, request, run):
        approvals = list(run.approvals.select_related("user"))
        may_still = []
        if run.status == "pending":
            decided = {a.user_id for a in approvals}
            may_still = [
                u.get_username()
                for u in services.eligible_approvers(
                    run.environment, requester=run.requested_by, image=run.image
                )
                if u.pk not in decided
            ]
        return {
            "run": run,
            "approvals": approvals,
            "approvals_text": services.approvals_text(run),
            "may_still": may_still,
            "unreachable": services.unreachable_quorum(run),
            "deadline": services.approval_deadline(run) if run.required_approvals else None,
            "events": run.events.all(),
            "live": run.status in ("queued", "running"),
            # A pending run's page follows its approvals and its start (opsweb/live.py).
            "live_etag": page_etag(request) if run.status == "pending" else "",
        }

    def get_urls(self):
        return [
            path(
                "<path:object_id>/live/",
                self.admin_site.admin_view(self.live_view),
                name="opsweb_run_live",
            ),
            *super().get_urls(),
        ]

    # The run page's fields that a run's end sets or changes (what it replaced, its error...).
    ENDED_FIELDS = ["status", "replaces", "error", "step", "switched_at", "finished_at"]

    def ended_fields(self, run) -> dict[str, str]:
        """The text of ``ENDED_FIELDS`` as the run page draws them (read-only fields)."""
        shown = {}
        for name in self.ENDED_FIELDS:
            field, _, value = lookup_field(name, run, self)
            empty = self.get_empty_value_display()
            text = (
                display_for_field(value, field, empty) if field else display_for_value(value, empty)
            )
            shown[name] = strip_tags(str(text))
        return shown

    def live_view(self, request, object_id):
        """The run's status and the events after ``?after=<event id>``, as JSON, for the run
        page to append without reloading (polled every 1.5 s while the run is queued or
        running; nothing polls a pending or finished run)."""
        self.may_view(request)
        run = self.get_object(request, unquote(object_id))
        if run is None:
            return JsonResponse({"error": "no such run"}, status=404)
        after = request.GET.get("after", "0")
        after = int(after) if after.isascii() and after.isdigit() and len(after) < 19 else 0
        events = run.events.filter(pk__gt=after).order_by("id")[:500]
        active = run.status in ("queued", "running")
        return JsonResponse(
            {
                "status": run.status,
                "status_display": "Stopping" if run.is_stopping else run.get_status_display(),
                "step": run.step,
                "active": active,
                # Once it ends, the fields the end sets, so the page does not keep "Error: -".
                "fields": {} if active else self.ended_fields(run),
                "events": [
                    {
                        "id": e.pk,
                        "at": moment_text(e.created_at),
                        "level": e.level,
                        "message": e.message,
                        "took": None
                        if e.duration_seconds is None
                        else human_duration(e.duration_seconds),
                    }
                    for e in events
                ],
            }
        )
