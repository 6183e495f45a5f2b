"""Who people are outside opsweb: their identity at the company's OpenID Connect provider, how
its groups map to opsweb's groups, and the Slack users linked to opsweb users."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone


class OidcIdentity(models.Model):
    """One person at one identity provider: the provider's ``issuer`` and its subject ``sub``,
    never the email address (which is reassigned and edited). One opsweb user per identity."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identity"
    )
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now)
    last_sign_in_at = models.DateTimeField(
        default=timezone.now,
        help_text="When the provider last confirmed this person and their groups.",
    )

    class Meta:
        verbose_name = "SSO identity"
        verbose_name_plural = "SSO identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="oidc_identity_unique")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class GroupMapping(models.Model):
    """A group at the identity provider (a value of the groups claim) and the opsweb group its
    members get. Mapped groups are set at every sign-in; groups no mapping names are never
    touched by a sign-in."""

    claim_value = models.CharField(
        max_length=255,
        unique=True,
        help_text="The group as the provider sends it in the groups claim, e.g. engineering-leads.",
    )
    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="+")

    class Meta:
        ordering = ["claim_value"]

    def __str__(self) -> str:
        return f"{self.claim_value} → {self.group}"


class SlackLink(models.Model):
    """A Slack user (workspace ``team_id`` and ``slack_user_id``) who acts in opsweb as ``user``:
    made by the user typing, in Slack, a one-time code opsweb gave them."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="slack_links"
    )
    team_id = models.CharField(max_length=32)
    slack_user_id = models.CharField(max_length=32)
    slack_name = models.CharField(max_length=150, blank=True)
    linked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team_id", "slack_user_id"], name="slack_link_unique")
        ]

    def __str__(self) -> str:
        return f"{self.slack_name or self.slack_user_id} ({self.team_id}) → {self.user}"


class SlackLinkCode(models.Model):
    """A one-time code that links the Slack user who types it to ``user``. Only its SHA-256 is
    stored; it expires after a few minutes and is used at most once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    code_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Slack link code for {self.user}"


class UserProfile(models.Model):
    """A person's own settings, one row per user, made the first time they are needed. The time
    zone is the one every time in the console is shown in for them (notifications, Slack and the
    API stay UTC: they are read by many people at once)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="opsweb_profile"
    )
    time_zone = models.CharField(
        max_length=64,
        default="UTC",
        help_text="An IANA time zone, e.g. Europe/Berlin; times in the console are shown in it.",
    )

    def __str__(self) -> str:
        return f"{self.user} ({self.time_zone})"
