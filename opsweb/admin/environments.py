"""Environments: what runs where, and the buttons that change it (promote, deploy, roll back,
resume auto-deploy, UAT sign-off, freeze)."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from opsweb import policy, services
from opsweb.admin.confirm import (
    Choice,
    CommentForm,
    Confirmation,
    ConfirmForm,
    ConfirmingAdmin,
    chosen_image,
    commits_between,
    held_text,
    image_option,
    version_line,
)
from opsweb.admin.fields import BoundedFields, ExactSplitDateTime, bounded_formfield
from opsweb.admin.lists import OpswebAdmin
from opsweb.limits import TEXT_MAX
from opsweb.models import (
    ApprovalRule,
    ChangeWindow,
    ImageVersion,
    RollbackReason,
    Run,
    RunStatus,
    Signoff,
    Target,
)
from opsweb.reading import notices, read_configuration, running_run
from opsweb.reads import facts
from opsweb.templatetags.opsweb_format import moment_text
from opsweb.windows import (
    MAX_DURATION_SECONDS,
    describe_window,
    freeze_status,
    hand_freezes,
    next_occurrences,
    wall_text,
)

# A constant: format_html() without arguments is refused by Django 6.1 (a 500 on the list).
BAD_BADGE = mark_safe(' <span class="opsweb-bad">BAD</span>')  # noqa: S308


def run_url(run) -> str:
    from django.urls import reverse

    return reverse("admin:opsweb_run_change", args=[run.pk])


def env_url(env) -> str:
    from django.urls import reverse

    return reverse("admin:opsweb_target_change", args=[env.pk])


class NoteForm(ConfirmForm):
    note = forms.CharField(required=False, max_length=TEXT_MAX)


class OverrideForm(NoteForm):
    """Promote or deploy while a freeze applies: only with an emergency override and a reason."""

    override = forms.BooleanField(
        required=False,
        label="Emergency override",
        help_text="Go during the freeze; it also needs the override approvers' approvals.",
    )
    override_reason = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        max_length=TEXT_MAX,
        label="Why it cannot wait",
    )

    def clean(self):
        data = super().clean()
        if data.get("override") and not (data.get("override_reason") or "").strip():
            self.add_error("override_reason", "Say why this cannot wait for the freeze to end.")
        return data


def override_reason(data) -> str:
    return data.get("override_reason", "").strip() if data.get("override") else ""


def _freeze_lines(env: Target) -> list[tuple[str, str]]:
    status = freeze_status(env, timezone.now())
    if not status.frozen:
        return []
    return [
        ("Freeze", status.sentence),
        ("Without an override", f"refused; a run already asked for is {held_text(env, 'deploy')}"),
        (
            "Emergency override",
            f"tick it and say why: the run then also needs {policy.override_approvals()} "
            f"approvals from {services.OVERRIDE_GROUP}, people other than you",
        ),
    ]


class RollbackForm(ConfirmForm):
    # No default: the person says which of the seed's trigger conditions they saw.
    reason = forms.ChoiceField(choices=[("", "— choose the reason —"), *RollbackReason.choices])
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=TEXT_MAX
    )


def _approvals_line(env: Target) -> tuple[str, str]:
    rules = env.rules
    if not rules:
        return "Approvals needed", "none (it starts at once)"
    return (
        "Approvals needed",
        " and ".join(f"{rule.count} from {rule.group}" for rule in rules)
        + (", one rule per person" if len(rules) > 1 else "")
        + ("" if env.allow_self_approval else ", not including you"),
    )


def offered(images, chosen, target) -> Choice:
    """The version picker of a promote or deploy page: the newest 50 of ``images`` that are not
    older than what ``target`` runs (they would be refused: going back is a rollback) nor what
    it runs already, with a note saying how many of the newest 100 were left out. ``chosen``
    stays on offer even if older, so that its refusal is shown."""
    newest = list(images[:100])
    older = services.older_than(newest, target.current_image, target)
    older.add(target.current_image_id)  # what runs there already is not a promotion
    options = [image_option(i) for i in newest if i.pk not in older or i == chosen][:50]
    left_out = len(
        older & {i.pk for i in newest} - {chosen.pk if chosen else None, target.current_image_id}
    )
    note = ""
    if left_out:
        note = (
            f"{left_out} version{'' if left_out == 1 else 's'} older than what {target} runs "
            f"({target.current_image.tag}) {'is' if left_out == 1 else 'are'} not offered: "
            f"going back is a rollback."
        )
    return Choice("image", "Version", options, str(chosen.pk) if chosen else "", note)


class Promote(Confirmation):
    """Shown on the source environment: promote what it runs (or a chosen earlier success)
    one step along the flow."""

    name = "promote"
    form_class = NoteForm

    def form_for(self, env):
        target = getattr(env, "downstream", None)
        return OverrideForm if target and target.is_frozen else NoteForm

    def label(self, env):
        return f"Promote to {env.downstream}"

    def title(self, env, chosen):
        return f"Promote {chosen.tag if chosen else 'a version'} from {env} to {env.downstream}"

    def images(self, env):
        # Bad versions are not offered: they cannot be promoted anywhere.
        return (
            ImageVersion.objects.filter(
                runs__environment=env, runs__status=RunStatus.SUCCEEDED, is_bad=False
            )
            .distinct()
            .order_by("-registered_at", "-id")
        )

    def choose(self, env, request):
        if getattr(env, "downstream", None) is None:
            return None, None
        images = self.images(env)
        chosen = chosen_image(request, "image", images)
        current = env.current_image
        # Not what the next environment runs already: promoting it again would be refused.
        if chosen is None and current and not current.is_bad:
            chosen = current if current.pk != env.downstream.current_image_id else None
        return offered(images, chosen, env.downstream), chosen

    def decide(self, user, env, chosen):
        target = getattr(env, "downstream", None)
        if target is None:
            return policy.not_applicable(f"Nothing comes after {env} in the flow.")
        if chosen is None and env.current_image is not None and env.current_image.is_bad:
            return policy.refuse(
                f"Version {env.current_image} is marked bad; choose another version to promote."
            )
        if chosen is None and env.current_image is not None:
            return policy.refuse(
                f"{target} already runs {env.current_image}, what {env} runs; choose another "
                "version to promote."
            )
        return policy.may_promote(user, target, chosen, override=True)

    def facts(self, env, chosen):
        return facts.promotion_facts(env.downstream, chosen)

    def lines(self, env, chosen):
        target = env.downstream
        lines = [
            ("Environment", f"{target} (promoted from {env})"),
            ("From", version_line(target.current_image, then=" (what it runs now)")),
            ("To", version_line(chosen) if chosen else "choose a version above"),
            _approvals_line(target),
            *_freeze_lines(target),
            ("Image scan", scan_line(chosen, target)),
        ]
        if target.requires_uat_signoff and chosen is not None:
            signers = ", ".join(
                so.user.get_username()
                for so in Signoff.objects.filter(environment=env, image=chosen).select_related(
                    "user"
                )
            )
            lines.append(
                (
                    "UAT sign-off",
                    f"given in {env} by {signers}"
                    if signers
                    else f"MISSING: {chosen.tag} needs a UAT sign-off in {env} first",
                )
            )
        return lines

    def changes(self, env, chosen):
        return commits_between(env.downstream.current_image, chosen)

    def perform(self, user, env, chosen, data, seen):
        run = services.request_promotion(
            user=user,
            target=env.downstream,
            source=env,
            image=chosen,
            note=data["note"],
            override_reason=override_reason(data),
            seen=seen,
        )
        return f"Run #{run.pk} requested: it {run.status_phrase}.", run_url(run)


class Deploy(Confirmation):
    name = "deploy"
    form_class = NoteForm

    def form_for(self, env):
        return OverrideForm if env.is_frozen else NoteForm

    def label(self, env):
        return "Deploy a version"

    def title(self, env, chosen):
        return f"Deploy {chosen.tag if chosen else 'a version'} to {env}"

    def choose(self, env, request):
        images = ImageVersion.objects.filter(is_bad=False).order_by("-registered_at", "-id")
        if env.current_image_id:
            images = images.exclude(pk=env.current_image_id)
        chosen = chosen_image(request, "image", images)
        return offered(images, chosen, env), chosen

    def decide(self, user, env, chosen):
        return policy.may_deploy(user, env, chosen, override=True)

    def facts(self, env, chosen):
        return facts.environment_facts(env)

    def lines(self, env, chosen):
        return [
            ("Environment", str(env)),
            ("From", version_line(env.current_image, then=" (what it runs now)")),
            ("To", version_line(chosen) if chosen else "choose a version above"),
            _approvals_line(env),
            *_freeze_lines(env),
            ("Image scan", scan_line(chosen, None)),
        ]

    def changes(self, env, chosen):
        return commits_between(env.current_image, chosen)

    def perform(self, user, env, chosen, data, seen):
        if chosen is None:
            raise services.ReleaseError("Choose the version to deploy first.")
        run = services.request_deploy(
            user=user,
            environment=env,
            image=chosen,
            note=data["note"],
            override_reason=override_reason(data),
            seen=seen,
        )
        return f"Run #{run.pk} requested: it {run.status_phrase}.", run_url(run)


def scan_line(image, environment) -> str:
    """The chosen version's scan findings and whether a promotion into ``environment`` (None:
    not a promotion) refuses them."""
    if image is None:
        return "choose a version above"
    if not image.scan_checked_at:
        return "not read yet (ECR repositories are read at registration and every 30 minutes)"
    refusal = policy.scan_refusal(environment, image) if environment else ""
    return image.scan_summary + (f" — REFUSED: {refusal}" if refusal else "")


class RollBack(Confirmation):
    name = "rollback"
    form_class = RollbackForm

    def label(self, env):
        return "Roll back"

    def title(self, env, chosen):
        return f"Roll back {env}"

    def decide(self, user, env, chosen):
        return policy.may_roll_back(user, env)

    def facts(self, env, chosen):
        return facts.rollback_facts(env)

    def lines(self, env, chosen):
        seen = facts.rollback_facts(env)
        target = services.previous_stable_version(env, exclude=env.current_image)
        lines = [
            ("Environment", str(env)),
            (
                "From",
                version_line(
                    env.current_image, then=" — will be marked bad when the rollback starts"
                ),
            ),
            ("To", version_line(target) if target else "no earlier stable version"),
            ("Approvals needed", "none: your click is the approval; it goes ahead of queued runs"),
            ("RTO target", f"{env.rto_seconds} s"),
        ]
        if seen["deploy in progress"] != "none":
            # What the rollback does then is decided when it starts (services.resolve_rollback).
            lines[1:3] = [
                ("From", f"what {seen['deploy in progress']} deploys — will be marked bad"),
                ("To", version_line(env.current_image, then=" (what ran before it)")),
            ]
            lines.append(
                (
                    "Deploy in progress",
                    f"{seen['deploy in progress']} is switching versions: the rollback stops "
                    f"it at its next safe point, then starts and restores the version that ran "
                    f"before it",
                )
            )
        if env.auto_deploy_branch:
            lines.append(
                ("Auto-deploy", f"paused for {env.auto_deploy_branch} from its start until resumed")
            )
        return lines

    def perform(self, user, env, chosen, data, seen):
        run = services.roll_back(
            user=user, environment=env, reason=data["reason"], note=data["note"], seen=seen
        )
        return f"Rollback run #{run.pk} queued.", run_url(run)


class Resume(Confirmation):
    name = "resume"
    form_class = ConfirmForm

    def label(self, env):
        return "Resume auto-deploy"

    def title(self, env, chosen):
        return f"Resume auto-deploy in {env}"

    def decide(self, user, env, chosen):
        return policy.may_resume(user, env)

    def facts(self, env, chosen):
        return facts.environment_facts(env)

    def lines(self, env, chosen):
        return [
            ("Environment", str(env)),
            ("Paused because", env.paused_reason or "—"),
            ("After this", f"versions CI registers on {env.auto_deploy_branch} deploy again"),
        ]

    def perform(self, user, env, chosen, data, seen):
        services.resume_auto_deploy(user=user, environment=env, seen=seen)
        return f"Auto-deploy resumed in {env}.", env_url(env)


class SignOff(Confirmation):
    name = "signoff"
    form_class = CommentForm

    def label(self, env):
        image = env.current_image
        return f"UAT passed for {image.tag}" if image else "UAT passed"

    def title(self, env, chosen):
        return f"UAT passed for {chosen.tag if chosen else 'nothing'} in {env}"

    def choose(self, env, request):
        # The version is the one the page showed, posted back; never what runs at POST time.
        if request is not None and request.method == "POST":
            return None, chosen_image(request, "image", ImageVersion.objects.all())
        return None, env.current_image

    def decide(self, user, env, chosen):
        return policy.may_sign_off(user, env, chosen)

    def facts(self, env, chosen):
        return facts.signoff_facts(env, chosen) if chosen else {"what it runs": "nothing"}

    def lines(self, env, chosen):
        return [
            ("Environment", str(env)),
            ("Version", version_line(chosen)),
            ("Unlocks", f"promotion of {chosen.tag if chosen else '—'} to {env.downstream}"),
        ]

    def perform(self, user, env, chosen, data, seen):
        if chosen is None:
            raise services.ReleaseError(f"Nothing runs in {env}, so there is nothing to sign off.")
        services.sign_off_uat(
            user=user, environment=env, image=chosen, note=data["comment"], seen=seen
        )
        return f"UAT sign-off recorded for {chosen.tag} in {env}.", env_url(env)


class FreezeForm(ConfirmForm):
    # A freeze's comment becomes the reason of the window it opens.
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        max_length=ChangeWindow._meta.get_field("reason").max_length,
    )


class Freeze(Confirmation):
    name = "freeze"
    form_class = FreezeForm

    def label(self, env):
        return "Unfreeze" if env.is_frozen else "Freeze"

    def title(self, env, chosen):
        return f"{self.label(env)} {env}"

    def decide(self, user, env, chosen):
        return policy.may_freeze(user, env)

    def facts(self, env, chosen):
        return facts.freeze_facts(env)

    def lines(self, env, chosen):
        lines = [
            ("Environment", str(env)),
            (
                "After this",
                "the freeze set by hand ends (windows on the environment page still apply)"
                if env.is_frozen
                else "only rollbacks start here until someone unfreezes it",
            ),
        ]
        if env.is_frozen:
            lines.append(held_runs_line(env))
        return lines

    def perform(self, user, env, chosen, data, seen):
        freeze = seen.get("frozen") != "yes"
        services.set_frozen(
            user=user, environment=env, frozen=freeze, reason=data["comment"], seen=seen
        )
        return f"{env} {'frozen' if freeze else 'unfrozen'}.", env_url(env)


def held_runs_line(env: Target) -> tuple[str, str]:
    """What Unfreeze sets going: the queued runs the freeze holds, which start at once (in
    queue order) unless another window still freezes ``env``."""
    now = timezone.now()
    held = facts.held_runs(env)
    names = "; ".join(f"#{run.pk} {run.get_kind_display()} of {run.image.tag}" for run in held)
    lifting = {window.pk for window in hand_freezes(env, now)}
    after = freeze_status(env, now, lifting=lifting)
    if after.frozen:
        return "Held runs", f"{names or 'none'}: still held, {after.sentence}"
    return (
        "Held runs that start now",
        f"{names}: they start at once, one after another" if names else "none",
    )


class ApprovalRuleInline(BoundedFields, admin.TabularInline):
    """ "N approvals from group G": all of an environment's rules must be met."""

    model = ApprovalRule
    extra = 0
    fields = ["application", "group", "count"]
    verbose_name = "approval rule"


class ChangeWindowForm(forms.ModelForm):
    """A change window's fields, bounded by what the windows functions take (``window_errors``
    says the rest: a cron that never fires, an RRULE recurring more than hourly)."""

    duration_seconds = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_DURATION_SECONDS,
        help_text="Recurring: how long each occurrence lasts (wall clock), at most 366 days.",
    )

    class Meta:
        formfield_callback = bounded_formfield
        model = ChangeWindow
        fields = [
            "kind",
            "starts_at",
            "ends_at",
            "rrule",
            "cron",
            "duration_seconds",
            "time_zone",
            "reason",
        ]
        widgets = {"starts_at": ExactSplitDateTime, "ends_at": ExactSplitDateTime}


class ChangeWindowInline(BoundedFields, admin.StackedInline):
    """This environment's change windows (those for every environment are under *Change
    windows*), each in plain words with its next occurrences."""

    model = ChangeWindow
    form = ChangeWindowForm
    extra = 0
    fields = [
        "application",
        "kind",
        ("starts_at", "ends_at"),
        ("rrule", "cron", "duration_seconds"),
        "time_zone",
        "reason",
        "in_words",
        "created_by",
    ]
    readonly_fields = ["in_words", "created_by"]

    @admin.display(description="In words")
    def in_words(self, window):
        return window_text(window) if window.pk else "—"


def window_text(window: ChangeWindow) -> str:
    """ "every Friday 16:00 → Monday 08:00, Europe/Berlin; next: Fri 04 Dec 2026 16:00 …"."""
    now = timezone.now()
    upcoming = [
        f"{wall_text(start, window.time_zone)}"
        + (f" → {wall_text(end, window.time_zone)}" if end else "")
        for start, end in next_occurrences(window, now)
    ]
    return describe_window(window) + (f"; next: {'; '.join(upcoming)}" if upcoming else "")


@admin.register(ChangeWindow)
class ChangeWindowAdmin(OpswebAdmin):
    """All change windows, including those for every environment (no environment set)."""

    form = ChangeWindowForm
    fields = ["environment", "application", *ChangeWindowForm.Meta.fields]
    list_display = [
        "__str__",
        "kind",
        "environment",
        "application",
        "next_occurrences",
        "reason",
        "created_by",
    ]
    list_filter = ["environment", "application"]
    list_select_related = ["environment", "application", "created_by"]

    @admin.display(description="Next occurrences")
    def next_occurrences(self, window):
        return window_text(window)

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        with services.changing_windows(user=request.user):
            super().save_model(request, obj, form, change)
        services.audit(
            request.user,
            "configure_change_window",
            f"{'Changed' if change else 'Added'} change window {obj}",
        )

    def delete_model(self, request, obj):
        text = str(obj)
        with services.changing_windows(user=request.user):
            super().delete_model(request, obj)
        services.audit(request.user, "configure_change_window", f"Removed change window {text}")

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)


@admin.register(Target)
class TargetAdmin(ConfirmingAdmin):
    """An application in an environment: what runs there and the buttons that change it. The
    environment's own rules (approvals, windows) are on the environment's page."""

    confirmations = [Promote(), Deploy(), RollBack(), Resume(), SignOff(), Freeze()]
    list_display = [
        "__str__",
        "application",
        "current_version",
        "current_since",
        "waiting_runs",
        "approvals_needed",
        "flags",
        "backend",
    ]
    list_filter = ["application", "environment"]
    list_select_related = ["application", "environment", "current_image"]
    ordering = ["application__name", "environment__position"]
    readonly_fields = [
        "current_image",
        "current_since",
        "health",
        "service",
        "auto_deploy_state",
        "paused_reason",
        "freeze",
        "drift",
        "drift_checked_at",
        "security_alert",
    ]
    fieldsets = [
        (
            "Now",
            {
                "fields": [
                    "current_image",
                    "current_since",
                    "health",
                    "service",
                    "drift",
                    "drift_checked_at",
                    "security_alert",
                    "auto_deploy_state",
                    "paused_reason",
                    "freeze",
                ]
            },
        ),
        (
            "Application and environment",
            {
                "description": "Approvals, UAT sign-off, soak time and scans are the "
                "environment's rules (with the application's own approval rules added).",
                "fields": ["application", "environment"],
            },
        ),
        (
            "Deploying",
            {
                # Configuration, read less often than "Now": folded (the page was 3,400 px).
                "classes": ["collapse"],
                "fields": [
                    "backend",
                    "backend_settings",
                    "health_check_url",
                    "health_check_window_seconds",
                    "auto_rollback",
                    "rto_seconds",
                ],
            },
        ),
        (
            "Alarms and scans (docs/alarms.md)",
            {
                "classes": ["collapse"],
                "fields": [
                    "bake_seconds",
                    "alarms",
                    "roll_back_on_vulnerability",
                ],
            },
        ),
    ]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("application", "environment", "current_image")
            .annotate(
                # A subquery per environment over the active-runs index, not a join with the
                # whole history.
                waiting=Coalesce(
                    Subquery(
                        Run.objects.filter(
                            environment=OuterRef("pk"),
                            status__in=[RunStatus.PENDING, RunStatus.QUEUED],
                        )
                        .values("environment")
                        .annotate(n=Count("id"))
                        .values("n")
                    ),
                    0,
                )
            )
        )

    def has_delete_permission(self, request, obj=None):
        return False  # runs and approvals refer to it; history must stay whole

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return [*fields, "application", "environment"] if obj is not None else fields

    def changelist_view(self, request, extra_context=None):
        # Each row's flags and rules come from one read of every environment's windows, rules
        # and running run, not a few queries per row.
        with services.one_reading():
            environments = list(
                Target.objects.select_related("application", "environment", "current_image")
            )
            read_configuration(environments)
            response = super().changelist_view(request, extra_context)
            # A TemplateResponse renders after this returns: render it inside the reading.
            return response.render() if hasattr(response, "render") else response

    def save_model(self, request, obj, form, change):
        # Approval rules and backends are configuration, not state, but who changed them and
        # when belongs in the audit trail with everything else.
        super().save_model(request, obj, form, change)
        if change and not form.changed_data:
            return
        changed = ", ".join(f"{name}={getattr(obj, name)!r}" for name in form.changed_data)
        services.record_configuration(
            user=request.user,
            environment=obj,
            message=f"{'Changed' if change else 'Created'} {obj}: {changed or 'no fields'}",
        )

    @admin.display(description="Current version", ordering="current_image__tag")
    def current_version(self, env):
        image = env.current_image
        if image is None:
            return "—"
        return format_html(
            "<strong>{}</strong> <code>{}</code> {}{}",
            image.tag,
            image.short_digest,
            image.short_sha,
            BAD_BADGE if image.is_bad else "",
        )

    @admin.display(description="Waiting runs", ordering="waiting")
    def waiting_runs(self, env):
        return env.waiting

    def save_formset(self, request, form, formset, change):
        # Rules and windows decide who approves and when runs start: every change is audited
        # like the environment's own fields.
        instances = formset.save(commit=False)
        for instance in instances:
            if isinstance(instance, ChangeWindow) and instance.pk is None:
                instance.created_by = request.user
        formset.save_m2m()
        deleted = [str(obj) for obj in formset.deleted_objects]
        with services.changing_windows(user=request.user):
            for obj in formset.deleted_objects:
                obj.delete()
            for instance in instances:
                instance.save()
        env = form.instance
        for obj in formset.new_objects:
            self._record(request, env, f"Added to {env}: {obj}")
        for obj, fields in formset.changed_objects:
            self._record(request, env, f"Changed in {env}: {obj} ({', '.join(fields)})")
        for text in deleted:
            self._record(request, env, f"Removed from {env}: {text}")

    def _record(self, request, env, message):
        services.record_configuration(user=request.user, environment=env, message=message)

    @admin.display(description="Approvals")
    def approvals_needed(self, env):
        return " + ".join(str(rule) for rule in services.approval_rules(env)) or "none"

    @admin.display(description="Health")
    def health(self, env):
        """What the last finished run here says about the service (no probe from a page)."""
        last = (
            env.runs.exclude(finished_at=None)
            .only("pk", "status", "finished_at", "kind")
            .order_by("-finished_at", "-id")
            .first()
        )
        if last is None:
            return "not known yet: nothing has run here"
        words = f"run #{last.pk} {last.status_phrase}, {moment_text(last.finished_at)}"
        if last.status == RunStatus.SUCCEEDED:
            return f"healthy: its health check passed ({words})"
        return format_html('<span class="opsweb-attention">{}</span>', f"look: {words}")

    @admin.display(description="Service")
    def service(self, env):
        if not env.service_url:
            return "—"
        return format_html(
            '<a href="{}" rel="noopener" target="_blank">{}</a>', env.service_url, env.service_url
        )

    @admin.display(description="Auto deploy")
    def auto_deploy_state(self, env):
        # Words, not Django's boolean icon: a green tick beside "paused" reads as "fine".
        if env.auto_deploy_paused:
            return format_html('<span class="opsweb-attention">{}</span>', "Paused")
        return "Deploys new builds" if env.environment.auto_deploy else "Off (deploys on request)"

    @admin.display(description="Freeze")
    def freeze(self, env):
        status = freeze_status(env, timezone.now())
        return status.sentence if status.frozen else "not frozen: runs start when approved"

    @admin.display(description="Flags")
    def flags(self, env):
        return ", ".join(environment_flags(env)) or "—"

    def page_context(self, request, env):
        return {
            "recent_runs": env.runs.select_related("image", "requested_by")[:10],
            "flags": environment_flags(env),
        }


def environment_flags(env: Target) -> list[str]:
    """What a person must notice about an environment, in words (``reading.notices``)."""
    return notices(
        env,
        freeze_status(env, timezone.now()),
        behind=services.behind_sentence(env),
        running=running_run(env),
    )
