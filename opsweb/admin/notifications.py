"""Admin for notification channels (configured by users with the model permissions) and their
deliveries (read-only: attempts, status, last error). Changes are recorded in the audit trail.

The secret of a channel is write-only here: the form never renders it, lists show it masked.
"""

from django import forms
from django.contrib import admin

from opsweb.admin.fields import bounded_formfield
from opsweb.admin.lists import OpswebAdmin
from opsweb.models import (
    NotificationChannel,
    NotificationDelivery,
    NotificationEvent,
    SlackMessage,
)
from opsweb.services import audit


class ChannelForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=NotificationEvent.choices, widget=forms.CheckboxSelectMultiple, required=False
    )
    secret = forms.CharField(
        required=False,
        max_length=NotificationChannel._meta.get_field("secret").max_length,
        widget=forms.PasswordInput(render_value=False),
        help_text="Generic webhooks: the HMAC-SHA256 key. Leave empty to keep the current one.",
    )

    class Meta:
        formfield_callback = bounded_formfield
        model = NotificationChannel
        fields = ["name", "environment", "kind", "target", "secret", "events", "enabled"]

    def clean_secret(self):
        # Empty means "keep": the stored secret is never sent to the browser to be posted back.
        return self.cleaned_data["secret"] or (self.instance.secret if self.instance.pk else "")


@admin.register(NotificationChannel)
class NotificationChannelAdmin(OpswebAdmin):
    form = ChannelForm
    list_display = [
        "name",
        "environment",
        "kind",
        "masked_target",
        "masked_secret",
        "event_list",
        "enabled",
    ]
    list_filter = ["kind", "enabled", "environment"]

    @admin.display(description="secret")
    def masked_secret(self, obj):
        return obj.masked_secret

    @admin.display(description="target")
    def masked_target(self, obj):
        return obj.masked_target

    @admin.display(description="events")
    def event_list(self, obj):
        labels = dict(NotificationEvent.choices)
        return ", ".join(labels.get(event, event) for event in obj.events) or "—"

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if not self.has_change_permission(request, obj):
            masked = {"secret": "masked_secret", "target": "masked_target"}
            return [masked.get(f, f) for f in fields]
        return fields

    def get_readonly_fields(self, request, obj=None):
        if not self.has_change_permission(request, obj):
            return ["masked_secret", "masked_target"]
        return []

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        verb = "Changed" if change else "Added"
        changed = ", ".join(form.changed_data) or "nothing"
        # The channel's scope is a shared environment, not a deployment target: named in the
        # message (an audit entry's environment is a target).
        audit(
            request.user,
            "configure_notifications",
            f"{verb} notification channel {obj.name!r} ({changed}) {scope(obj)}",
        )

    def delete_model(self, request, obj):
        audit(
            request.user,
            "configure_notifications",
            f"Deleted notification channel {obj.name!r} {scope(obj)}",
        )
        super().delete_model(request, obj)


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(OpswebAdmin):
    list_display = ["created_at", "event", "channel", "run", "status", "attempts", "last_error"]
    list_filter = ["status", "event", "channel"]
    list_select_related = ["channel", "run"]
    readonly_fields = [
        "channel",
        "event",
        "run",
        "recipients",
        "payload",
        "status",
        "attempts",
        "last_error",
        "next_attempt_at",
        "created_at",
        "updated_at",
    ]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SlackMessage)
class SlackMessageAdmin(OpswebAdmin):
    """Read-only: the Slack messages opsweb keeps updating, what each shows and its last error."""

    list_display = ["created_at", "run", "channel", "ts", "shows", "updated_at", "last_error"]
    list_filter = ["shows"]
    list_select_related = ["run"]
    readonly_fields = list_display + ["delivery"]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def scope(channel) -> str:
    """Where ``channel`` listens, for its audit entries: "for AWS Production, every application"."""
    where = channel.environment.name if channel.environment_id else "every environment"
    which = channel.application.name if channel.application_id else "every application"
    return f"for {where}, {which}"
