"""The record of decisions: the audit trail and the seals of confirmation pages acted on."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from .environments import Target
from .immutable import ImmutableModel
from .runs import Run
from .versions import ImageVersion


class AuditEntry(ImmutableModel):
    """Who did what, when: every state change a person, CI or opsweb itself makes."""

    created_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    action = models.CharField(max_length=50)
    environment = models.ForeignKey(
        Target, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    image = models.ForeignKey(
        ImageVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # The application of the target or version the entry names (``services.audit``): the
    # audit list filtered by application reads it from its own index, not through a join.
    application = models.ForeignKey(
        "opsweb.Application",
        null=True,
        blank=True,
        db_index=False,  # audit_application_newest leads with it
        on_delete=models.PROTECT,
        related_name="+",
    )
    message = models.TextField()
    # The API token the change came through (the actor is its user), if any.
    token = models.ForeignKey(
        "opsweb.ApiToken", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="audit_newest_first"),
            # The audit list's action filter: its choices by a skip scan, its rows in order.
            models.Index(fields=["action", "-created_at", "-id"], name="audit_action_newest"),
            # The index page's "Your recent actions".
            models.Index(fields=["actor", "-created_at", "-id"], name="audit_actor_newest"),
            models.Index(fields=["environment", "-created_at"], name="audit_environment_newest"),
            models.Index(fields=["image", "-created_at"], name="audit_image_newest"),
            models.Index(fields=["run", "-created_at"], name="audit_run_newest"),
            models.Index(
                fields=["application", "-created_at", "-id"], name="audit_application_newest"
            ),
        ]

    def __str__(self) -> str:
        return self.message[:80]


class UsedSeal(models.Model):
    """A confirmation page's seal that has been acted on once: its nonce is unique, so the same
    page posted again (a replay, a double click) is refused. Written in the transaction of the
    service that acted, so a refusal leaves no row; rows older than the seal's validity
    (OPSWEB_CONFIRMATION_MAX_AGE_SECONDS) can never match again and are pruned."""

    nonce = models.CharField(max_length=64, unique=True)
    page = models.CharField(max_length=50)  # the confirmation's name: approve, rollback, …
    bound_to = models.CharField(max_length=100)  # the object the page was for, "opsweb.run:42"
    used_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"{self.page} of {self.bound_to} at {self.used_at:%Y-%m-%d %H:%M:%S}"
