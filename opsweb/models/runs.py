"""Runs and what happens to them: statuses and allowed transitions, the live log (RunEvent),
approvals and UAT sign-offs."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .environments import Target
from .immutable import ImmutableModel
from .versions import ImageVersion, validate_digest


class RunKind(models.TextChoices):
    DEPLOY = "deploy", "Deploy"
    PROMOTION = "promotion", "Promotion"
    ROLLBACK = "rollback", "Rollback"


class RunStatus(models.TextChoices):
    PENDING = "pending", "Pending approval"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    REJECTED = "rejected", "Rejected"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"
    SUPERSEDED = "superseded", "Superseded"
    STOPPED = "stopped", "Stopped"


TERMINAL_STATUSES = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.REJECTED,
        RunStatus.CANCELLED,
        RunStatus.EXPIRED,
        RunStatus.SUPERSEDED,
        RunStatus.STOPPED,
    }
)
# How a status reads in a sentence: "Run #8 succeeded", "Run #9 is pending approval".
STATUS_PHRASES = {
    "pending": "is pending approval",
    "queued": "is queued",
    "running": "is running",
    "succeeded": "succeeded",
    "failed": "failed",
    "rejected": "was rejected",
    "cancelled": "was cancelled",
    "expired": "expired",
    "superseded": "was superseded",
    "stopped": "was stopped",
}
ACTIVE_STATUSES = frozenset({RunStatus.PENDING, RunStatus.QUEUED, RunStatus.RUNNING})
ALLOWED_TRANSITIONS = {
    RunStatus.PENDING: {
        RunStatus.QUEUED,
        RunStatus.REJECTED,
        RunStatus.CANCELLED,
        RunStatus.EXPIRED,
        RunStatus.SUPERSEDED,
    },
    RunStatus.QUEUED: {
        RunStatus.RUNNING,
        RunStatus.CANCELLED,
        RunStatus.FAILED,
        RunStatus.SUPERSEDED,
        RunStatus.EXPIRED,  # approved, then held by a freeze past the approval window
    },
    # Stopped: someone asked (``stop_requested_at``) and the worker stopped at a safe point.
    RunStatus.RUNNING: {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED},
}


class RollbackReason(models.TextChoices):
    """The seed's trigger conditions for a rollback."""

    CRITICAL_ERRORS = "critical_errors", "Critical errors"
    PERFORMANCE_DEGRADATION = "performance_degradation", "Performance degradation"
    SECURITY_VULNERABILITY = "security_vulnerability", "Security vulnerability"
    OTHER = "other", "Other"


class Run(models.Model):
    """One deploy, promotion or rollback of one image version into one deployment target: an
    application in an environment. ``environment`` is that target (a ``Target``, which reads
    like the environment it is in: name, rules, upstream); ``environment.application`` and
    ``environment.environment`` are its application and shared environment.

    Statuses: pending → queued → running → succeeded | failed; also rejected, cancelled,
    expired, superseded (the environment moved past its version before it started) and stopped
    (someone stopped it while it ran: ``stop_requested_at``/``_by``/``stop_reason`` record the
    request; the run stays ``running``, "stopping", until its worker reaches a safe point). A
    terminal run never changes status again. ``replaces`` is what the environment ran when this
    run switched versions (empty until then). A rollback with ``resolve_at_start`` was asked for
    while another run was switching versions: what it restores is decided when it starts. At most one run per target is
    running, which the database guarantees with a partial unique index.
    """

    kind = models.CharField(max_length=20, choices=RunKind.choices)
    environment = models.ForeignKey(
        Target,
        on_delete=models.PROTECT,
        related_name="runs",
        help_text="Where the run deploys: its application's target in an environment.",
    )
    source_environment = models.ForeignKey(
        Target, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    image = models.ForeignKey(ImageVersion, on_delete=models.PROTECT, related_name="runs")
    replaces = models.ForeignKey(
        ImageVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Empty when opsweb itself started the run (an automatic rollback).",
    )
    reason = models.CharField(max_length=30, choices=RollbackReason.choices, blank=True)
    note = models.TextField(blank=True)
    triggered_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.PENDING)
    step = models.CharField(max_length=200, blank=True)
    required_approvals = models.PositiveSmallIntegerField(
        default=0, validators=[MinValueValidator(0)]
    )
    created_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    switched_at = models.DateTimeField(
        null=True, blank=True, help_text="When the backend started running this version."
    )
    signals = models.JSONField(
        default=dict,
        blank=True,
        help_text="The bake as last read: its end, the alarms' states and the decision.",
    )
    resolve_at_start = models.BooleanField(
        default=False,
        help_text="A rollback asked for during another run's switch: its target is chosen "
        "when it starts.",
    )
    freeze_override_reason = models.TextField(
        blank=True,
        help_text="An emergency override of a freeze: why. Empty for a run that waits for the "
        "freeze to end.",
    )
    override_approvals = models.PositiveSmallIntegerField(
        default=0, help_text="Approvals the override needs from the override approvers."
    )
    stop_requested_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Someone asked to stop this running run; its worker stops at its next safe "
        "point.",
    )
    stop_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    stop_reason = models.TextField(blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    backend_ref = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("request_deploy", "Can deploy a chosen version to Local or Dev"),
            ("request_promotion", "Can request a promotion"),
            ("cancel_run", "Can cancel any pending or queued run"),
            ("override_freeze", "Can request an emergency override of a freeze"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["environment"],
                condition=Q(status="running"),
                name="one_running_run_per_environment",
                violation_error_message="Another run is already in progress in this environment.",
            ),
            models.CheckConstraint(
                condition=Q(status__in=[s.value for s in RunStatus]),
                name="run_status_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["environment", "status"], name="opsweb_run_environ_373a86_idx"),
            models.Index(fields=["status", "heartbeat_at"]),
            # The run list: its default order, and that order within a status or an environment
            # filter, read from an index instead of sorting the history.
            models.Index(fields=["-created_at", "-id"], name="run_newest_first"),
            models.Index(fields=["status", "-created_at", "-id"], name="run_status_newest"),
            models.Index(
                fields=["environment", "-created_at", "-id"], name="run_environment_newest"
            ),
            models.Index(fields=["image", "-created_at", "-id"], name="run_image_newest"),
            # The board and the environment list: what waits or runs, never the whole history.
            models.Index(
                fields=["environment", "status"],
                condition=Q(status__in=["pending", "queued", "running"]),
                name="run_active_by_environment",
            ),
            # The DORA figures: runs of an environment by finish time, and "was this version
            # rolled back here later?" for each of them.
            models.Index(fields=["environment", "finished_at"], name="run_environment_finished"),
            models.Index(
                fields=["replaces", "environment", "created_at"],
                condition=Q(kind="rollback"),
                name="run_rollback_of_version",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_kind_display()} {self.image} → {self.environment}"

    def save(self, *args, **kwargs):
        old = getattr(self, "_loaded_status", None)
        if old is not None and old != self.status:
            check_transition(old, self.status)
        super().save(*args, **kwargs)
        self._loaded_status = self.status

    @classmethod
    def from_db(cls, db, field_names, values, *args, **kwargs):
        instance = super().from_db(db, field_names, values, *args, **kwargs)
        instance._loaded_status = instance.__dict__.get("status")
        return instance

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def status_phrase(self) -> str:
        """The status as a sentence reads it: "Run #8 succeeded", "Run #9 is queued"."""
        return STATUS_PHRASES[self.status]

    @property
    def from_image(self):
        """What this run replaces: recorded at the switch; until then what runs now."""
        if self.switched_at is not None:
            return self.replaces
        return self.environment.current_image

    @property
    def is_automatic(self) -> bool:
        """Started by opsweb itself (an automatic rollback), not by a person."""
        return self.requested_by_id is None

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_stopping(self) -> bool:
        """Running, and someone asked to stop it: the worker stops at its next safe point."""
        return self.status == RunStatus.RUNNING and self.stop_requested_at is not None

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @property
    def restore_seconds(self) -> float | None:
        """For a rollback: from the click to the previous version healthy again."""
        if self.kind == RunKind.ROLLBACK and self.status == RunStatus.SUCCEEDED:
            return (self.finished_at - self.created_at).total_seconds()
        return None


def check_transition(old: str, new: str) -> None:
    """Raise ValidationError unless a run may go from status ``old`` to ``new``."""
    if old in TERMINAL_STATUSES:
        raise ValidationError(f"This run {STATUS_PHRASES[old]}; a finished run cannot change.")
    if new not in ALLOWED_TRANSITIONS.get(old, set()):
        raise ValidationError(
            f"A run cannot go from {RunStatus(old).label.lower()} to {RunStatus(new).label.lower()}."
        )


class RunEvent(ImmutableModel):
    """One line of a run's live log: what happened, when, and how long the step took."""

    class Level(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="events")
    created_at = models.DateTimeField(default=timezone.now)
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.INFO)
    message = models.TextField()
    duration_seconds = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # A run's log in order, and the event list newest first.
            models.Index(fields=["run", "created_at", "id"], name="runevent_run_order"),
            models.Index(fields=["-created_at", "-id"], name="runevent_newest_first"),
        ]

    def __str__(self) -> str:
        return self.message[:80]


class Approval(ImmutableModel):
    """One approver's decision on one run, bound to the digest they saw. Never edited."""

    class Decision(models.TextChoices):
        APPROVE = "approve", "Approved"
        REJECT = "reject", "Rejected"

    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="approvals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    digest = models.CharField(max_length=71, validators=[validate_digest])
    created_at = models.DateTimeField(default=timezone.now)
    # The run's application, copied when the decision is recorded: the approval list filtered
    # by application reads it from its own index, not through the runs.
    application = models.ForeignKey(
        "Application",
        null=True,
        blank=True,
        db_index=False,  # approval_application_newest leads with it
        on_delete=models.PROTECT,
        related_name="+",
    )

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # The approval list, newest first (ApprovalAdmin.ordering).
            models.Index(fields=["-created_at", "-id"], name="approval_newest_first"),
            models.Index(
                fields=["application", "-created_at", "-id"], name="approval_application_newest"
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "user"],
                name="one_decision_per_user_per_run",
                violation_error_message="You have already decided on this run.",
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.get_decision_display().lower()} run #{self.run_id}"

    def save(self, *args, **kwargs):
        if self.application_id is None:
            self.application_id = self.run.environment.application_id
        super().save(*args, **kwargs)


class Signoff(ImmutableModel):
    """ "UAT passed for image X in environment Y": what Production promotion waits for."""

    environment = models.ForeignKey(Target, on_delete=models.PROTECT, related_name="signoffs")
    image = models.ForeignKey(ImageVersion, on_delete=models.PROTECT, related_name="signoffs")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("sign_off_uat", "Can record a UAT sign-off")]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "image", "user"],
                name="one_signoff_per_user",
                violation_error_message="You have already signed off this version here.",
            )
        ]

    def __str__(self) -> str:
        return f"UAT passed: {self.image} in {self.environment}"
