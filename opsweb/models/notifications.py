"""Notification channels (email, Slack, signed webhooks) and the deliveries sent to them."""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from orchestration import outbound

from .environments import Application, Environment, scope_problem
from .runs import Run

# Slack's public and private channel IDs (C…, G…); a direct message's (D…) works too.
SLACK_CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{8,}$")


class NotificationEvent(models.TextChoices):
    """What a notification channel can subscribe to."""

    APPROVAL_NEEDED = "approval_needed", "A run waits for approval"
    RUN_SUCCEEDED = "run_succeeded", "A run succeeded"
    RUN_FAILED = "run_failed", "A run failed"
    RUN_STOPPED = "run_stopped", "A run was stopped"
    ROLLBACK_STARTED = "rollback_started", "A rollback started"
    ROLLBACK_FINISHED = "rollback_finished", "A rollback finished"
    AUTO_DEPLOY_PAUSED = "auto_deploy_paused", "Auto-deploy paused"
    DRIFT_FOUND = "drift_found", "Drift found"
    VERSION_MARKED_BAD = "version_marked_bad", "A version was marked bad"


class NotificationChannel(models.Model):
    """Where notifications of one environment (or of all, when empty) and one application (or
    of all, when empty) go: email addresses, a
    Slack-compatible incoming webhook, or a generic JSON webhook signed with ``secret``.

    The secret is stored to sign requests and is never shown back in full.
    """

    class Kind(models.TextChoices):
        EMAIL = "email", "Email"
        SLACK = "slack", "Slack-compatible webhook"
        WEBHOOK = "webhook", "Generic JSON webhook (HMAC-SHA256 signed)"

    name = models.CharField(max_length=100)
    environment = models.ForeignKey(
        Environment,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="notification_channels",
        help_text="Empty: every environment.",
    )
    application = models.ForeignKey(
        Application,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="notification_channels",
        help_text="Empty: every application.",
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    target = models.TextField(
        help_text="Email: addresses separated by commas. Webhooks: the http(s) URL. Slack: an "
        "incoming-webhook URL, or a channel ID (C0123ABCD) to post with the bot token, so that "
        "opsweb can update the message when the run is decided elsewhere."
    )
    secret = models.CharField(
        max_length=200, blank=True, help_text="Generic webhooks: the key of the HMAC signature."
    )
    events = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def masked_secret(self) -> str:
        """The secret as people may see it: its last four characters at most."""
        if not self.secret:
            return "—"
        return "••••" + (self.secret[-4:] if len(self.secret) >= 16 else "")

    @property
    def masked_target(self) -> str:
        """Addresses as they are; a webhook URL without its path, which often holds a token
        (Slack's incoming-webhook URLs do)."""
        if self.kind == self.Kind.EMAIL or self.slack_channel_id:
            return self.target
        scheme, _, rest = self.target.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}/…{self.target[-4:] if len(rest) > 24 else ''}"

    @property
    def slack_channel_id(self) -> str:
        """The Slack channel ID a Slack channel posts to with the Web API, or "" (a webhook)."""
        target = self.target.strip()
        return target if self.kind == self.Kind.SLACK and SLACK_CHANNEL_RE.match(target) else ""

    @property
    def emails(self) -> list[str]:
        return [part.strip() for part in self.target.split(",") if part.strip()]

    def clean(self):
        from django.core.validators import URLValidator, validate_email

        errors = {}
        if self.kind == self.Kind.EMAIL:
            bad = [a for a in self.emails if not _valid(validate_email, a)] or (
                [] if self.emails else ["(none)"]
            )
            if bad:
                errors["target"] = f"Not an email address: {', '.join(bad)[:200]}."
            elif problem := next(filter(None, map(_mail_domain_problem, self.emails)), None):
                errors["target"] = problem
        elif self.slack_channel_id:
            if not settings.SLACK_BOT_TOKEN:
                errors["target"] = (
                    "Posting to a Slack channel ID needs the bot token "
                    "(OPSWEB_SLACK_BOT_TOKEN); give an incoming-webhook URL otherwise."
                )
        elif not self.target.strip().lower().startswith(("http://", "https://")):
            errors["target"] = "A webhook URL starts with http:// or https:// and names a host."
        elif problem := outbound.url_problem(self.target, what="The webhook URL"):
            errors["target"] = problem
        elif not _valid(URLValidator(schemes=["http", "https"]), self.target.strip()):
            errors["target"] = "A webhook URL starts with http:// or https:// and names a host."
        if self.kind == self.Kind.WEBHOOK and not self.secret:
            errors["secret"] = "A generic webhook needs a secret to sign its requests."  # noqa: S105
        if problem := scope_problem(self.application, self.environment_id):
            errors["application"] = problem
        unknown = [e for e in self.events or [] if e not in NotificationEvent.values]
        if not isinstance(self.events, list) or unknown:
            errors["events"] = f"Unknown events: {', '.join(map(str, unknown))}."
        elif not self.events:
            errors["events"] = (
                "Pick at least one event: a channel with none is never sent anything."
            )
        if errors:
            raise ValidationError(errors)


def _mail_domain_problem(address: str) -> str | None:
    """Why mail to ``address`` would go somewhere opsweb does not send (the relay delivers to
    a domain literal such as ``ops@[10.0.0.5]`` or ``ops@localhost`` directly), or None."""
    domain = address.rsplit("@", 1)[-1]
    if domain.startswith("["):
        return f"{address}: give a domain name, not an address in brackets."
    return outbound.host_problem(domain, what=address)


def _valid(validator, value) -> bool:
    try:
        validator(value)
    except ValidationError:
        return False
    return True


class NotificationDelivery(models.Model):
    """One message to one channel: what was sent, how many attempts, the last error.

    Statuses: pending → sent, or retrying (attempts left, ``next_attempt_at``) → … → failed
    (gave up after the last attempt) or skipped (nobody to send to).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RETRYING = "retrying", "Retrying"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed (gave up)"
        SKIPPED = "skipped", "Skipped"

    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.CharField(max_length=30, choices=NotificationEvent.choices)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    payload = models.JSONField(default=dict)
    recipients = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "notification deliveries"
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.get_event_display()} → {self.channel}"


class SlackMessage(models.Model):
    """A message opsweb posted about a run through Slack's Web API (``chat.postMessage``), kept
    so that it can be rewritten (``chat.update``) when the run is decided outside Slack or ends.

    ``shows`` is the run status the message last showed (claimed with a conditional UPDATE, so a
    second task for the same change sends nothing); ``last_error`` the last update's failure,
    recorded here and never raised into the decision.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="slack_messages")
    delivery = models.OneToOneField(
        NotificationDelivery,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="slack_message",
    )
    channel = models.CharField(max_length=40)
    ts = models.CharField(max_length=40)
    shows = models.CharField(max_length=20, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["channel", "ts"], name="slack_message_once")]

    def __str__(self) -> str:
        return f"Slack message {self.ts} in {self.channel} about run #{self.run_id}"
