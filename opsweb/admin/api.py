"""API tokens and CI trust policies. A token is created through ``services.create_api_token``
(its secret is shown once, in the message after saving) and revoked through
``services.revoke_api_token``; it is never edited or deleted, so its audit trail stays whole."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.utils import timezone

from opsweb import services
from opsweb.admin.applications import AuditedAdmin
from opsweb.admin.lists import OpswebAdmin
from opsweb.models import SCOPES, ApiToken, Application, TrustPolicy


class ApiTokenForm(forms.ModelForm):
    scope_choices = forms.MultipleChoiceField(
        label="Scopes",
        choices=list(SCOPES.items()),
        widget=forms.CheckboxSelectMultiple,
        initial=["read"],
    )

    class Meta:
        model = ApiToken
        fields = ["user", "name", "application", "expires_at"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "user" in self.fields:  # the add form; a saved token is shown read-only
            self.fields["user"].queryset = get_user_model()._default_manager.filter(is_active=True)
            self.fields["application"].queryset = Application.objects.order_by("name")

    def clean_expires_at(self):
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry is in the past: give a date in the future.")
        return expires_at


@admin.register(ApiToken)
class ApiTokenAdmin(OpswebAdmin):
    """Tokens for CI and tools: what each may do, for whom, when last used."""

    form = ApiTokenForm
    list_display = ["name", "prefix", "user", "scopes", "application", "state", "last_used_at"]
    list_select_related = ["user", "application"]
    search_fields = ["name", "prefix", "user__username"]
    actions = ["revoke"]

    @admin.display(description="State")
    def state(self, token: ApiToken) -> str:
        return token.problem() or "active"

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False  # audit entries name it

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return [f.name for f in ApiToken._meta.fields if f.name != "secret_hash"]

    def save_model(self, request, obj, form, change):
        token, secret = services.create_api_token(
            user=request.user,
            owner=form.cleaned_data["user"],
            name=form.cleaned_data["name"],
            scopes=" ".join(form.cleaned_data["scope_choices"]),
            application=form.cleaned_data["application"],
            expires_at=form.cleaned_data["expires_at"],
        )
        obj.pk = token.pk
        self.message_user(
            request,
            f"Created {token}. Copy its secret now, it is not shown again: {secret}",
            messages.WARNING,
        )

    def log_addition(self, request, obj, message):
        return None  # the service wrote the audit entry

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        for token in queryset:
            try:
                services.revoke_api_token(user=request.user, token=token)
            except services.ReleaseError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, f"Revoked {token}.")

    def has_revoke_permission(self, request):
        return request.user.has_perm("opsweb.change_apitoken")


@admin.register(TrustPolicy)
class TrustPolicyAdmin(AuditedAdmin):
    """ "CI tokens from this issuer, for this audience, whose claims match, act as this service
    account" (docs/design.md, HTTP API)."""

    audit_action = "configure_api"
    list_display = ["name", "issuer", "audience", "user", "application", "scopes", "enabled"]
    list_select_related = ["user", "application"]
