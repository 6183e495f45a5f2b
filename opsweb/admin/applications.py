"""The organisation's environments (the shared flow and its rules) and the applications
deployed into them (repositories, team, targets). Every change is audited."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.http import HttpResponseRedirect

from opsweb import services
from opsweb.admin.environments import ApprovalRuleInline, ChangeWindowInline
from opsweb.admin.fields import BoundedFields
from opsweb.admin.lists import OpswebAdmin
from opsweb.limits import TEXT_MAX
from opsweb.models import Application, ApplicationRepository, ChangeWindow, Environment, Target
from opsweb.overview import environment_now


class AuditedAdmin(OpswebAdmin):
    """Configuration, not state: who changed it and when belongs in the audit trail."""

    audit_action = "configure_environment"

    def has_delete_permission(self, request, obj=None):
        return False  # targets, runs and rules refer to it; history must stay whole

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and not form.changed_data:
            return
        changed = ", ".join(f"{name}={getattr(obj, name)!r}" for name in form.changed_data)
        what = f"{obj._meta.verbose_name} {obj}"
        services.audit(
            request.user,
            self.audit_action,
            f"{'Changed' if change else 'Created'} {what}: {changed or 'no fields'}",
        )

    def save_formset(self, request, form, formset, change):
        instances = formset.save(commit=False)
        for instance in instances:
            if isinstance(instance, ChangeWindow) and instance.pk is None:
                instance.created_by = request.user
        deleted = [str(obj) for obj in formset.deleted_objects]
        with services.changing_windows(user=request.user):
            for obj in formset.deleted_objects:
                obj.delete()
            for instance in instances:
                instance.save()
        formset.save_m2m()
        owner = form.instance
        lines = [f"Added to {owner}: {obj}" for obj in formset.new_objects]
        lines += [
            f"Changed in {owner}: {obj} ({', '.join(fields)})"
            for obj, fields in formset.changed_objects
        ]
        lines += [f"Removed from {owner}: {text}" for text in deleted]
        for line in lines:
            services.audit(request.user, self.audit_action, line)


@admin.register(Environment)
class EnvironmentAdmin(AuditedAdmin):
    """A stage of the organisation's flow, shared by every application, with its rules."""

    list_display = ["name", "position", "upstream", "auto_deploy", "approver_group"]
    list_select_related = ["upstream", "approver_group"]
    ordering = ["position"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [ApprovalRuleInline, ChangeWindowInline]
    # "Now" (what runs here per application) comes first; the configuration below it, the
    # rules folded: the page is read far more often than it is edited.
    fieldsets = [
        ("Place in the flow", {"fields": ["name", "slug", "position", "upstream", "auto_deploy"]}),
        (
            "The organisation's rules",
            {
                "classes": ["collapse"],
                "description": "Approval rules below apply to every application (those with an "
                "application set are that application's own, met as well): all must be met, "
                "and one person's approval counts toward one rule.",
                "fields": [
                    "approver_group",
                    "allow_self_approval",
                    "forbid_author_approval",
                    "requires_uat_signoff",
                    "soak_seconds",
                    "block_severity",
                ],
            },
        ),
    ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        environment = self.get_object(request, unquote(object_id))
        if environment is not None:
            extra_context = {**(extra_context or {}), "now_lines": environment_now(environment)}
        return super().change_view(request, object_id, form_url, extra_context)


class RepositoryInline(BoundedFields, admin.TabularInline):
    model = ApplicationRepository
    extra = 0
    fields = ["repository"]
    verbose_name = "image repository"


class TargetInline(BoundedFields, admin.TabularInline):
    """Where the application is deployed: one row per environment of its flow."""

    model = Target
    extra = 0
    fields = ["environment", "backend", "backend_settings", "health_check_url"]
    show_change_link = True
    verbose_name = "deployment target"

    def get_readonly_fields(self, request, obj=None):
        return ["environment"] if obj is not None else []


class ApplicationAddForm(forms.ModelForm):
    """Adding an application: what ``services.create_application`` takes, the environments to
    deploy into chosen here. The service's checks (``check_application``: a taken slug or
    name, a repository another application releases, an unknown team, a flow out of order)
    answer with their sentence above the form; its targets are made on the local backend."""

    repositories = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        max_length=TEXT_MAX,
        help_text="The image repositories CI registers its versions from, one a line; a "
        "repository belongs to one application.",
    )
    environments = forms.ModelMultipleChoiceField(
        queryset=Environment.objects.order_by("position"),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Where it is deployed, in the order of the flow: one target each on the "
        "local backend (switch a target to ECS or EC2 on its page afterwards).",
    )

    class Meta:
        model = Application
        fields = ["name", "slug", "team", "auto_deploy_branch", "repository_url"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["environments"].initial = list(self.fields["environments"].queryset)

    def validate_unique(self):
        """``check_application`` says which slug, name or repository is taken, as the command
        does; the model's own "already exists" would say it a second time."""

    def clean(self):
        cleaned = super().clean()
        if not self.errors:
            try:
                services.check_application(**self.application_fields())
            except services.ReleaseError as exc:
                raise forms.ValidationError(str(exc)) from None
        return cleaned

    def application_fields(self) -> dict:
        """The keyword arguments of ``check_application`` and ``create_application``."""
        data = self.cleaned_data
        return {
            "slug": data["slug"],
            "name": data["name"],
            "repositories": data["repositories"].splitlines(),
            "environments": [env.slug for env in data["environments"]],
            "team": data["team"].name if data["team"] else "",
            "branch": data["auto_deploy_branch"],
            "repository_url": data["repository_url"],
        }


@admin.register(Application)
class ApplicationAdmin(AuditedAdmin):
    """A service the team releases: its repositories, its team and where it is deployed.
    Adding one goes through ``services.create_application`` (as ``manage.py
    create_application``); editing one is configuration, audited as ``configure_application``."""

    audit_action = "configure_application"
    list_display = ["name", "slug", "team", "auto_deploy_branch", "repository_list"]
    list_filter = ["team"]
    list_select_related = ["team"]
    search_fields = ["name", "slug", "repositories__repository"]
    prepopulated_fields = {"slug": ["name"]}
    fields = ["name", "slug", "team", "auto_deploy_branch", "repository_url"]
    add_fields = [*fields, "repositories", "environments"]
    inlines = [RepositoryInline, TargetInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("repositories")

    def get_fields(self, request, obj=None):
        return self.fields if obj is not None else self.add_fields

    def get_inlines(self, request, obj):
        # Repositories and targets of a new application are the service's to write.
        return self.inlines if obj is not None else []

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ApplicationAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        created = services.create_application(user=request.user, **form.application_fields())
        # The admin goes on with the object it built (its log entry, the redirect): make it
        # the row the service wrote.
        for field in Application._meta.concrete_fields:
            setattr(obj, field.attname, getattr(created, field.attname))
        obj._state.adding, obj._state.db = False, created._state.db

    def add_view(self, request, form_url="", extra_context=None):
        try:
            return super().add_view(request, form_url, extra_context)
        except services.ReleaseError as exc:
            # create_application refused what the form's check let through (another admin
            # claimed the slug or a repository in between, or a permission): the change view's
            # transaction wrote nothing.
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    @admin.display(description="Repositories")
    def repository_list(self, app):
        return ", ".join(r.repository for r in app.repositories.all()) or "—"
