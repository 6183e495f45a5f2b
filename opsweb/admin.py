"""Stock ModelAdmins. Buttons open a confirmation page that says exactly what will happen and
posts (with CSRF) to a view that checks permission itself and calls a service; nothing here
changes a status by itself."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from opsweb import services
from opsweb.models import (
    Approval,
    AuditEntry,
    Environment,
    ImageVersion,
    RollbackReason,
    Run,
    RunEvent,
    RunStatus,
    Signoff,
)
from opsweb.services import NotAllowed, ReleaseError


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records: nobody adds, edits or deletes them here, superusers included."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# -- what a user may do (the services enforce the same rules again) --------------------------


def can_promote(user, env: Environment) -> bool:
    return user.has_perm("opsweb.request_promotion") and hasattr(env, "downstream")


def can_deploy(user, env: Environment) -> bool:
    return user.has_perm("opsweb.request_deploy") and env.accepts_direct_deploys


def can_roll_back(user, env: Environment) -> bool:
    return (
        env.current_image_id is not None
        and services.is_approver(user, env)
        and services.previous_stable_version(env, exclude=env.current_image) is not None
    )


def can_resume(user, env: Environment) -> bool:
    return env.auto_deploy_paused and (
        services.is_approver(user, env) or user.has_perm("opsweb.resume_auto_deploy")
    )


def can_sign_off(user, env: Environment) -> bool:
    downstream = getattr(env, "downstream", None)
    return bool(
        user.has_perm("opsweb.sign_off_uat")
        and downstream is not None
        and downstream.requires_uat_signoff
        and env.current_image_id
    )


def can_freeze(user, env: Environment) -> bool:
    return user.has_perm("opsweb.freeze_environment")


def can_decide(user, run: Run) -> bool:
    return (
        run.status == RunStatus.PENDING
        and services.is_approver(user, run.environment)
        and not run.approvals.filter(user=user).exists()
    )


def is_run_approver(user, run: Run) -> bool:
    """Guards the approve/reject pages: a run that left `pending` meanwhile gets the service's
    explanation, not a bare 403."""
    return services.is_approver(user, run.environment)


def can_cancel(user, run: Run) -> bool:
    return run.status in (RunStatus.PENDING, RunStatus.QUEUED) and services.can_cancel(user, run)


def can_mark_bad(user, image: ImageVersion) -> bool:
    return not image.is_bad and user.has_perm("opsweb.mark_bad")


# -- forms ----------------------------------------------------------------------------------


class CommentForm(forms.Form):
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


class RequiredCommentForm(forms.Form):
    comment = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), help_text="Say why; the requester sees it."
    )


class RollbackForm(forms.Form):
    reason = forms.ChoiceField(choices=RollbackReason.choices)
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    # What the confirmation page showed: the rollback happens only if it is still true.
    expected_current = forms.ModelChoiceField(
        ImageVersion.objects.all(), widget=forms.HiddenInput, required=False
    )
    expected_target = forms.ModelChoiceField(
        ImageVersion.objects.all(), widget=forms.HiddenInput, required=False
    )


class MarkBadForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}))


class ImageChoiceForm(forms.Form):
    image = forms.ModelChoiceField(queryset=ImageVersion.objects.none())
    note = forms.CharField(required=False)

    def __init__(self, *args, images, initial_image=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["image"].queryset = images
        self.fields["image"].label_from_instance = lambda i: (
            f"{i.tag}  {i.short_digest}  "
            + ("[BAD] " if i.is_bad else "")
            + (i.commit_message.splitlines()[0][:60] if i.commit_message else "")
        )
        if initial_image is not None:
            self.fields["image"].initial = initial_image.pk


class ConfirmMixin:
    """One confirmation page for every button: GET shows what will happen, POST does it."""

    def confirm(self, request, *, obj, title, lines, form, perform, back, changes=()):
        if request.method == "POST" and form.is_valid():
            try:
                message, target = perform(form.cleaned_data)
            except NotAllowed as exc:
                raise PermissionDenied(str(exc)) from None
            except ReleaseError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return redirect(back)
            self.message_user(request, message, messages.SUCCESS)
            return redirect(target)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "object": obj,
            "title": title,
            "lines": lines,
            "changes": changes,
            "form": form,
            "back": back,
        }
        return TemplateResponse(request, "admin/opsweb/confirm.html", context)

    def guard(self, allowed: bool, reason: str) -> None:
        """403 with a sentence: the page the button leads to is not for this user (or no
        longer applies: a stale tab)."""
        if not allowed:
            raise PermissionDenied(reason)


def run_url(run: Run) -> str:
    return reverse("admin:opsweb_run_change", args=[run.pk])


def commits_between(old: ImageVersion | None, new: ImageVersion) -> list[ImageVersion]:
    """The versions a promotion carries: registered after what runs now, up to the new one."""
    qs = ImageVersion.objects.filter(
        repository=new.repository, registered_at__lte=new.registered_at
    )
    if old is not None:
        if old.registered_at > new.registered_at:
            return [new]  # going back in time: only the target is meaningful
        qs = qs.filter(registered_at__gt=old.registered_at)
    return list(qs.order_by("-registered_at")[:20])


def version_line(image: ImageVersion | None) -> str:
    if image is None:
        return "nothing"
    first = image.commit_message.splitlines()[0] if image.commit_message else ""
    return f"{image.tag} ({image.digest}) {image.short_sha} {first}".strip()


# -- environments ---------------------------------------------------------------------------


@admin.register(Environment)
class EnvironmentAdmin(ConfirmMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "current_version",
        "current_since",
        "waiting_runs",
        "upstream",
        "approvals_needed",
        "flags",
        "backend",
    ]
    list_select_related = ["upstream", "current_image", "approver_group"]
    ordering = ["position"]
    readonly_fields = [
        "current_image",
        "current_since",
        "auto_deploy_paused",
        "paused_reason",
        "is_frozen",
        "drift",
        "drift_checked_at",
    ]
    prepopulated_fields = {"slug": ["name"]}
    fieldsets = [
        (
            "Now",
            {
                "fields": [
                    "current_image",
                    "current_since",
                    "drift",
                    "drift_checked_at",
                    "auto_deploy_paused",
                    "paused_reason",
                    "is_frozen",
                ]
            },
        ),
        ("Place in the flow", {"fields": ["name", "slug", "position", "upstream"]}),
        (
            "Approvals",
            {
                "fields": [
                    "required_approvals",
                    "approver_group",
                    "allow_self_approval",
                    "requires_uat_signoff",
                ]
            },
        ),
        (
            "Deploying",
            {
                "fields": [
                    "backend",
                    "backend_settings",
                    "auto_deploy_branch",
                    "health_check_url",
                    "health_check_window_seconds",
                    "auto_rollback",
                    "rto_seconds",
                    "soak_seconds",
                ]
            },
        ),
    ]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("downstream")
            .annotate(
                waiting=Count(
                    "runs", filter=Q(runs__status__in=[RunStatus.PENDING, RunStatus.QUEUED])
                )
            )
        )

    def has_delete_permission(self, request, obj=None):
        return False  # runs and approvals refer to it; history must stay whole

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
            "<strong>{}</strong> <code>{}</code> {}", image.tag, image.short_digest, image.short_sha
        )

    @admin.display(description="Waiting runs", ordering="waiting")
    def waiting_runs(self, env):
        return env.waiting

    @admin.display(description="Approvals")
    def approvals_needed(self, env):
        return env.required_approvals

    @admin.display(description="Flags")
    def flags(self, env):
        flags = []
        if env.is_frozen:
            flags.append("frozen")
        if env.auto_deploy_paused:
            flags.append("auto-deploy paused")
        if env.drift:
            flags.append(f"DRIFT: {env.drift}")
        return ", ".join(flags) or "—"

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/promote/", view(self.promote_view), name="opsweb_environment_promote"),
            path("<int:pk>/deploy/", view(self.deploy_view), name="opsweb_environment_deploy"),
            path(
                "<int:pk>/rollback/", view(self.rollback_view), name="opsweb_environment_rollback"
            ),
            path("<int:pk>/resume/", view(self.resume_view), name="opsweb_environment_resume"),
            path("<int:pk>/signoff/", view(self.signoff_view), name="opsweb_environment_signoff"),
            path("<int:pk>/freeze/", view(self.freeze_view), name="opsweb_environment_freeze"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        env = self.get_object(request, unquote(object_id))
        if env is None:  # the stock view says "doesn't exist" and redirects
            return super().change_view(request, object_id, form_url, extra_context)
        user = request.user
        buttons = []
        if can_promote(user, env):
            buttons.append(("promote", f"Promote to {env.downstream}"))
        if can_deploy(user, env):
            buttons.append(("deploy", "Deploy a version"))
        if can_roll_back(user, env):
            buttons.append(("rollback", "Roll back"))
        if can_resume(user, env):
            buttons.append(("resume", "Resume auto-deploy"))
        if can_sign_off(user, env):
            buttons.append(("signoff", f"UAT passed for {env.current_image.tag}"))
        if can_freeze(user, env):
            buttons.append(("freeze", "Unfreeze" if env.is_frozen else "Freeze"))
        extra_context = {
            **(extra_context or {}),
            "buttons": [
                (reverse(f"admin:opsweb_environment_{n}", args=[env.pk]), label)
                for n, label in buttons
            ],
            "recent_runs": env.runs.select_related("image", "requested_by")[:10],
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def _env(self, pk):
        return get_object_or_404(
            Environment.objects.select_related("downstream", "upstream", "current_image"), pk=pk
        )

    def promote_view(self, request, pk):
        env = self._env(pk)
        self.guard(
            can_promote(request.user, env),
            f"You may not request promotions from {env}, or nothing comes after it.",
        )
        target = env.downstream
        # Bad versions stay in the list, labelled, so that choosing one gets the reason.
        images = ImageVersion.objects.filter(
            runs__environment=env, runs__status=RunStatus.SUCCEEDED
        ).distinct()
        form = ImageChoiceForm(request.POST or None, images=images, initial_image=env.current_image)
        chosen = env.current_image
        if form.is_bound and form.is_valid():
            chosen = form.cleaned_data["image"]
        to = version_line(chosen) + " (the version chosen below; by default what runs now)"
        if chosen is not None and chosen.is_bad:
            to = f"{version_line(chosen)} — MARKED BAD ({chosen.bad_reason}): it cannot be promoted"
        lines = [
            ("Environment", f"{target} (promoted from {env})"),
            ("From", version_line(target.current_image)),
            ("To", to),
            (
                "Approvals needed",
                f"{target.required_approvals} from {target.approver_group}"
                + ("" if target.allow_self_approval else ", not including you"),
            ),
        ]
        if target.requires_uat_signoff and chosen is not None:
            signers = ", ".join(
                str(so.user) for so in Signoff.objects.filter(environment=env, image=chosen)
            )
            lines.append(
                (
                    "UAT sign-off",
                    f"given in {env} by {signers}"
                    if signers
                    else f"MISSING: {chosen.tag} needs a UAT sign-off in {env} first",
                )
            )

        def perform(data):
            run = services.request_promotion(
                user=request.user, target=target, source=env, image=data["image"], note=data["note"]
            )
            return f"Run #{run.pk} requested: {run.get_status_display().lower()}.", run_url(run)

        return self.confirm(
            request,
            obj=env,
            title=f"Promote {env} → {target}",
            lines=lines,
            form=form,
            perform=perform,
            back=reverse("admin:opsweb_environment_change", args=[env.pk]),
            changes=commits_between(target.current_image, chosen) if chosen else [],
        )

    def deploy_view(self, request, pk):
        env = self._env(pk)
        self.guard(
            can_deploy(request.user, env),
            f"{env} takes promotions only, or you may not deploy to it.",
        )
        images = ImageVersion.objects.filter(is_bad=False)
        form = ImageChoiceForm(request.POST or None, images=images)
        lines = [
            ("Environment", str(env)),
            ("From", version_line(env.current_image)),
            ("To", "the version you choose below"),
            (
                "Approvals needed",
                str(env.required_approvals)
                + (" (it starts at once)" if not env.required_approvals else ""),
            ),
        ]

        def perform(data):
            run = services.request_deploy(
                user=request.user, environment=env, image=data["image"], note=data["note"]
            )
            return f"Run #{run.pk} requested: {run.get_status_display().lower()}.", run_url(run)

        return self.confirm(
            request,
            obj=env,
            title=f"Deploy a version to {env}",
            lines=lines,
            form=form,
            perform=perform,
            back=reverse("admin:opsweb_environment_change", args=[env.pk]),
        )

    def rollback_view(self, request, pk):
        env = self._env(pk)
        self.guard(
            can_roll_back(request.user, env),
            f"Only members of {env.approver_group or 'its approver group'} roll back {env}, and only when an earlier "
            f"stable version exists.",
        )
        target = services.previous_stable_version(env, exclude=env.current_image)
        lines = [
            ("Environment", str(env)),
            ("From", version_line(env.current_image) + " — will be marked bad"),
            ("To", version_line(target) if target else "no earlier stable version"),
            ("Approvals needed", "none: your click is the approval; it goes ahead of queued runs"),
            ("RTO target", f"{env.rto_seconds}s"),
        ]
        if env.auto_deploy_branch:
            lines.append(("Auto-deploy", f"paused for {env.auto_deploy_branch} until resumed"))

        def perform(data):
            run = services.roll_back(
                user=request.user,
                environment=env,
                reason=data["reason"],
                note=data["note"],
                expected_current=data["expected_current"],
                expected_target=data["expected_target"],
            )
            return f"Rollback run #{run.pk} queued.", run_url(run)

        return self.confirm(
            request,
            obj=env,
            title=f"Roll back {env}",
            lines=lines,
            form=RollbackForm(
                request.POST or None,
                initial={
                    "expected_current": env.current_image_id,
                    "expected_target": target.pk if target else None,
                },
            ),
            perform=perform,
            back=reverse("admin:opsweb_environment_change", args=[env.pk]),
        )

    def resume_view(self, request, pk):
        env = self._env(pk)
        self.guard(
            can_resume(request.user, env),
            f"Auto-deploy is not paused in {env}, or you may not resume it.",
        )
        lines = [
            ("Environment", str(env)),
            ("Paused because", env.paused_reason or "—"),
            ("After this", f"versions CI registers on {env.auto_deploy_branch} deploy again"),
        ]

        def perform(data):
            services.resume_auto_deploy(user=request.user, environment=env)
            return f"Auto-deploy resumed in {env}.", reverse(
                "admin:opsweb_environment_change", args=[env.pk]
            )

        return self.confirm(
            request,
            obj=env,
            title=f"Resume auto-deploy in {env}",
            lines=lines,
            form=forms.Form(request.POST or None),
            perform=perform,
            back=reverse("admin:opsweb_environment_change", args=[env.pk]),
        )

    def signoff_view(self, request, pk):
        env = self._env(pk)
        self.guard(
            can_sign_off(request.user, env),
            f"You may not record UAT sign-offs, or {env} has no UAT step.",
        )
        image = env.current_image
        lines = [
            ("Environment", str(env)),
            ("Version", version_line(image)),
            ("Unlocks", f"promotion of {image.tag} to {env.downstream}"),
        ]

        def perform(data):
            services.sign_off_uat(
                user=request.user, environment=env, image=image, note=data["comment"]
            )
            return f"UAT sign-off recorded for {image.tag} in {env}.", reverse(
                "admin:opsweb_environment_change", args=[env.pk]
            )

        return self.confirm(
            request,
            obj=env,
            title=f"UAT passed for {image.tag} in {env}",
            lines=lines,
            form=CommentForm(request.POST or None),
            perform=perform,
            back=reverse("admin:opsweb_environment_change", args=[env.pk]),
        )

    def freeze_view(self, request, pk):
        env = self._env(pk)
        self.guard(can_freeze(request.user, env), "You may not freeze or unfreeze environments.")
        freeze = not env.is_frozen
        lines = [
            ("Environment", str(env)),
            ("After this", "only rollbacks start here" if freeze else "runs start again"),
        ]

        def perform(data):
            services.set_frozen(
                user=request.user, environment=env, frozen=freeze, reason=data["comment"]
            )
            return f"{env} {'frozen' if freeze else 'unfrozen'}.", reverse(
                "admin:opsweb_environment_change", args=[env.pk]
            )

        return self.confirm(
            request,
            obj=env,
            title=f"{'Freeze' if freeze else 'Unfreeze'} {env}",
            lines=lines,
            form=CommentForm(request.POST or None),
            perform=perform,
            back=reverse("admin:opsweb_environment_change", args=[env.pk]),
        )


# -- image versions -------------------------------------------------------------------------


@admin.register(ImageVersion)
class ImageVersionAdmin(ConfirmMixin, ReadOnlyAdmin):
    list_display = [
        "tag",
        "is_bad",
        "short_digest",
        "short_sha",
        "branch",
        "repository",
        "registered_at",
        "registered_by",
    ]
    list_filter = ["is_bad", "branch", "repository"]
    list_select_related = ["registered_by"]
    search_fields = ["tag", "git_sha", "^digest", "commit_message"]

    def get_search_results(self, request, queryset, search_term):
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip().lower()
        if term and not term.startswith("sha256:") and all(c in "0123456789abcdef" for c in term):
            # A digest prefix as people copy it, without "sha256:".
            queryset |= self.model.objects.filter(digest__startswith=f"sha256:{term}")
        return queryset, may_have_duplicates

    def get_urls(self):
        return [
            path(
                "<int:pk>/mark-bad/",
                self.admin_site.admin_view(self.mark_bad_view),
                name="opsweb_imageversion_mark_bad",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        image = self.get_object(request, unquote(object_id))
        if image is None:
            return super().change_view(request, object_id, form_url, extra_context)
        buttons = []
        if can_mark_bad(request.user, image):
            buttons.append(
                (reverse("admin:opsweb_imageversion_mark_bad", args=[image.pk]), "Mark bad")
            )
        extra_context = {
            **(extra_context or {}),
            "buttons": buttons,
            "runs_here": Environment.objects.filter(current_image=image),
            "recent_runs": image.runs.select_related("environment", "requested_by")[:20],
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def mark_bad_view(self, request, pk):
        image = get_object_or_404(ImageVersion, pk=pk)
        self.guard(
            can_mark_bad(request.user, image),
            f"{image} is already marked bad, or you may not mark versions bad.",
        )
        waiting = image.runs.filter(status__in=[RunStatus.PENDING, RunStatus.QUEUED]).count()
        lines = [
            ("Version", version_line(image)),
            ("After this", "it cannot be deployed or promoted anywhere"),
            ("Waiting runs cancelled", str(waiting)),
        ]

        def perform(data):
            services.mark_bad(user=request.user, image=image, reason=data["reason"])
            return f"{image} marked bad.", reverse(
                "admin:opsweb_imageversion_change", args=[image.pk]
            )

        return self.confirm(
            request,
            obj=image,
            title=f"Mark {image} bad",
            lines=lines,
            form=MarkBadForm(request.POST or None),
            perform=perform,
            back=reverse("admin:opsweb_imageversion_change", args=[image.pk]),
        )


# -- runs -----------------------------------------------------------------------------------


@admin.register(Run)
class RunAdmin(ConfirmMixin, ReadOnlyAdmin):
    list_display = [
        "id",
        "kind",
        "environment",
        "image_tag",
        "status",
        "approvals_so_far",
        "step",
        "requested_by",
        "created_at",
        "finished_at",
    ]
    list_filter = ["environment", "status", "kind"]
    list_select_related = ["environment", "image", "requested_by"]
    search_fields = ["image__tag", "image__git_sha", "note"]
    date_hierarchy = "created_at"
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
            .annotate(approvals_given=services.counting_approvals_annotation())
        )

    @admin.display(description="Image", ordering="image__tag")
    def image_tag(self, run):
        return run.image.tag

    @admin.display(description="Approvals")
    def approvals_so_far(self, run):
        if not run.required_approvals:
            return "—"
        return f"{run.approvals_given} of {run.required_approvals}"

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/approve/", view(self.approve_view), name="opsweb_run_approve"),
            path("<int:pk>/reject/", view(self.reject_view), name="opsweb_run_reject"),
            path("<int:pk>/cancel/", view(self.cancel_view), name="opsweb_run_cancel"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, unquote(object_id))
        if run is None:
            return super().change_view(request, object_id, form_url, extra_context)
        buttons = []
        if can_decide(request.user, run):
            buttons += [
                (reverse("admin:opsweb_run_approve", args=[run.pk]), "Approve"),
                (reverse("admin:opsweb_run_reject", args=[run.pk]), "Reject"),
            ]
        if can_cancel(request.user, run):
            buttons.append((reverse("admin:opsweb_run_cancel", args=[run.pk]), "Cancel"))
        extra_context = {
            **(extra_context or {}),
            "run": run,
            "buttons": buttons,
            "approvals": run.approvals.select_related("user"),
            "approvals_count": services.approvals_count(run),
            "events": run.events.all(),
            "refresh": run.is_active,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def _run_lines(self, run):
        return [
            ("Run", f"#{run.pk} {run.get_kind_display()} to {run.environment}"),
            ("From", version_line(run.replaces or run.environment.current_image)),
            ("To", version_line(run.image)),
            (
                "Requested by",
                f"{services.actor_name(run.requested_by)} at {run.created_at:%Y-%m-%d %H:%M} UTC",
            ),
            ("Approvals", f"{services.approvals_count(run)} of {run.required_approvals}"),
        ]

    def _run(self, pk):
        return get_object_or_404(
            Run.objects.select_related("environment", "image", "replaces", "requested_by"), pk=pk
        )

    def approve_view(self, request, pk):
        run = self._run(pk)
        self.guard(
            is_run_approver(request.user, run),
            f"Only members of {run.environment.approver_group or 'its approver group'} decide on runs in "
            f"{run.environment}.",
        )

        def perform(data):
            done = services.approve_run(user=request.user, run=run, comment=data["comment"])
            return (
                f"Approved run #{run.pk}: {services.approvals_count(done)} of "
                f"{done.required_approvals}, now {done.get_status_display().lower()}."
            ), run_url(run)

        return self.confirm(
            request,
            obj=run,
            title=f"Approve run #{run.pk}",
            lines=self._run_lines(run),
            form=CommentForm(request.POST or None),
            perform=perform,
            back=run_url(run),
            changes=commits_between(run.replaces, run.image),
        )

    def reject_view(self, request, pk):
        run = self._run(pk)
        self.guard(
            is_run_approver(request.user, run),
            f"Only members of {run.environment.approver_group or 'its approver group'} decide on runs in "
            f"{run.environment}.",
        )

        def perform(data):
            services.reject_run(user=request.user, run=run, comment=data["comment"])
            return f"Rejected run #{run.pk}.", run_url(run)

        return self.confirm(
            request,
            obj=run,
            title=f"Reject run #{run.pk}",
            lines=self._run_lines(run),
            form=RequiredCommentForm(request.POST or None),
            perform=perform,
            back=run_url(run),
        )

    def cancel_view(self, request, pk):
        run = self._run(pk)
        self.guard(
            can_cancel(request.user, run),
            f"Run #{run.pk} is {run.get_status_display().lower()}; only a pending or queued run "
            f"can be cancelled, by its requester or an approver.",
        )

        def perform(data):
            services.cancel_run(user=request.user, run=run, comment=data["comment"])
            return f"Cancelled run #{run.pk}.", run_url(run)

        return self.confirm(
            request,
            obj=run,
            title=f"Cancel run #{run.pk}",
            lines=self._run_lines(run),
            form=CommentForm(request.POST or None),
            perform=perform,
            back=run_url(run),
        )


# -- records --------------------------------------------------------------------------------


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
