"""Image versions: the list (bad ones in red), a version's page and Mark bad."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html

from opsweb import policy, services
from opsweb.admin.confirm import Confirmation, ConfirmForm, ConfirmingAdmin, version_line
from opsweb.admin.lists import ApplicationFilter
from opsweb.admin.records import ReadOnlyMixin
from opsweb.limits import TEXT_MAX
from opsweb.models import ImageVersion, Target
from opsweb.reads import facts


class MarkBadForm(ConfirmForm):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=TEXT_MAX)


class MarkBad(Confirmation):
    name = "mark-bad"
    form_class = MarkBadForm

    def label(self, image):
        return "Mark bad"

    def title(self, image, chosen):
        return f"Mark {image} bad"

    def decide(self, user, image, chosen):
        return policy.may_mark_bad(user, image)

    def facts(self, image, chosen):
        return facts.image_facts(image)

    def lines(self, image, chosen):
        seen = facts.image_facts(image)
        return [
            ("Version", version_line(image)),
            ("Runs now in", seen["where it runs"]),
            ("After this", "it cannot be deployed or promoted anywhere"),
            ("Waiting runs cancelled", seen["waiting runs"]),
        ]

    def perform(self, user, image, chosen, data, seen):
        services.mark_bad(user=user, image=image, reason=data["reason"], seen=seen)
        return f"{image} marked bad.", reverse("admin:opsweb_imageversion_change", args=[image.pk])


class LiftBadMarkForm(ConfirmForm):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=TEXT_MAX,
        help_text="Why it is no longer bad; kept in the audit trail.",
    )


class LiftBadMark(Confirmation):
    name = "lift-bad-mark"
    form_class = LiftBadMarkForm

    def label(self, image):
        return "Lift bad mark"

    def title(self, image, chosen):
        return f"Lift the bad mark of {image}"

    def decide(self, user, image, chosen):
        return policy.may_lift_bad_mark(user, image)

    def facts(self, image, chosen):
        return facts.image_facts(image)

    def lines(self, image, chosen):
        seen = facts.image_facts(image)
        environment = policy.bad_mark_environment(image)
        by = services.actor_name(image.marked_bad_by) if image.marked_bad_at else "opsweb"
        when = f" at {image.marked_bad_at:%Y-%m-%d %H:%M:%S} UTC" if image.marked_bad_at else ""
        return [
            ("Version", version_line(image)),
            ("Marked bad", f"by {by}{when}: {image.bad_reason or 'no reason given'}"),
            ("Answered for by", f"approvers of {environment}" if environment else "nobody"),
            ("Runs now in", seen["where it runs"]),
            ("After this", "it can be deployed and promoted again"),
            (
                "Not changed",
                "auto-deploy stays paused where a rollback paused it (resume it there), and no "
                "run starts by itself",
            ),
        ]

    def perform(self, user, image, chosen, data, seen):
        services.lift_bad_mark(user=user, image=image, reason=data["reason"], seen=seen)
        return (
            f"The bad mark of {image} was lifted; auto-deploy stays as it was.",
            reverse("admin:opsweb_imageversion_change", args=[image.pk]),
        )


def version_search(term: str) -> Q:
    """What a search for ``term`` matches among versions, each through an index (never a scan
    of every version): a tag that starts with it, or, for 4 or more hex digits (with or
    without "sha256:"), a commit or digest that starts with them. Raises nothing."""
    query = Q(tag__startswith=term)
    bare = term.lower().removeprefix("sha256:")
    if len(bare) >= 4 and all(c in "0123456789abcdef" for c in bare):
        query |= Q(git_sha__startswith=bare) | Q(digest__startswith=f"sha256:{bare}")
    return query


class AutoDeployBranchFilter(admin.SimpleListFilter):
    """Versions from a branch some environment auto-deploys (read from the environments, a
    handful of rows), or from any other branch."""

    title = "branch"
    parameter_name = "branch"
    OTHER = "__other__"

    def lookups(self, request, model_admin):
        branches = sorted(
            set(
                Target.objects.auto_deploying().values_list(
                    "application__auto_deploy_branch", flat=True
                )
            )
        )
        return [(b, b) for b in branches] + [(self.OTHER, "other branches")]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if value == self.OTHER:
            auto = Target.objects.auto_deploying().values("application__auto_deploy_branch")
            return queryset.exclude(branch__in=auto)
        return queryset.filter(branch=value)


@admin.register(ImageVersion)
class ImageVersionAdmin(ReadOnlyMixin, ConfirmingAdmin):
    confirmations = [MarkBad(), LiftBadMark()]
    list_display = [
        "tag",
        "application",
        "bad",
        "short_digest",
        "short_sha",
        "branch",
        "repository_name",
        "registered_at",
        "registered_by",
    ]
    # Not Django's all-values filters on branch and repository: each is a SELECT DISTINCT over
    # every version on every page view.
    list_filter = [
        ApplicationFilter.through(applications=["application"]),
        "is_bad",
        AutoDeployBranchFilter,
    ]
    list_select_related = ["registered_by", "application"]
    search_fields = ["tag"]  # see get_search_results: through the versions' indexes
    search_help_text = "A tag or its start, or the start of a commit or digest."

    @admin.display(description="Bad", ordering="is_bad")
    def bad(self, image):
        # Not a boolean icon: a green tick for "bad" reads as "fine".
        if not image.is_bad:
            return "—"
        return format_html('<span class="opsweb-bad" title="{}">BAD</span>', image.bad_reason)

    @admin.display(description="Repository", ordering="repository")
    def repository_name(self, image):
        # An ECR URI is long: its last part names the image; the whole is in the tooltip.
        return format_html(
            '<span title="{}">{}</span>', image.repository, image.repository.rsplit("/", 1)[-1]
        )

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(version_search(term)), False

    def page_context(self, request, image):
        return {
            "runs_here": Target.objects.filter(current_image=image).select_related(
                "application", "environment"
            ),
            "recent_runs": image.runs.select_related(
                "environment__environment", "environment__application", "requested_by"
            )[:20],
        }
