"""The release domain: environments, image versions, runs and the record of every decision.

Models hold one-row invariants (a valid digest, a terminal run stays terminal, an approval is
never edited). Everything that spans rows or has side effects lives in ``opsweb.services``.
"""

from __future__ import annotations

import math
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from orchestration import outbound
from orchestration.base import BACKEND_CHOICES, SettingsError, backend_class

DIGEST_RE = r"^sha256:[0-9a-f]{64}\Z"
# \Z, not $: $ also matches before a trailing newline.
# Full 40-hex commit ids only: a short sha is ambiguous over time, and CI always has the full one.
GIT_SHA_RE = r"^[0-9a-f]{40}\Z"
# Docker's tag grammar: up to 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'.
TAG_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z"
# Docker's repository grammar (lowercase path components, optional registry host and port).
REPOSITORY_RE = (
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z"
)

validate_digest = RegexValidator(
    DIGEST_RE, "A digest is 'sha256:' followed by 64 lowercase hex characters.", "invalid_digest"
)
validate_git_sha = RegexValidator(
    GIT_SHA_RE, "A git sha is the full 40-character lowercase hex commit id.", "invalid_git_sha"
)
validate_tag = RegexValidator(
    TAG_RE,
    "A tag is 1–128 letters, digits, '_', '.' or '-', not starting with '.' or '-'.",
    "invalid_tag",
)
validate_repository = RegexValidator(
    REPOSITORY_RE,
    "A repository is a lowercase image name such as 'registry.example.com/team/app'.",
    "invalid_repository",
)


class ImmutableQuerySet(models.QuerySet):
    """Refuses bulk update and delete: the rows it holds are a record, not state."""

    def update(self, **kwargs):
        raise PermissionError(f"{self.model._meta.verbose_name_plural} cannot be changed.")

    def delete(self):
        raise PermissionError(f"{self.model._meta.verbose_name_plural} cannot be deleted.")


class ImmutableModel(models.Model):
    """A row written once and never edited or deleted, superusers included."""

    objects = ImmutableQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise PermissionError(f"A {self._meta.verbose_name} cannot be changed once recorded.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError(f"A {self._meta.verbose_name} cannot be deleted.")


class Environment(models.Model):
    """A place the application runs, in promotion order: Local → AWS Dev → Staging → Production.

    ``upstream`` is the environment a version is promoted from; Local and Dev have none (Dev's
    source is the ``auto_deploy_branch``). ``current_image`` is what the backend last switched
    to, set only by services when a run reaches the backend.
    """

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=50, unique=True)
    position = models.PositiveSmallIntegerField(unique=True, help_text="Order in the flow.")
    upstream = models.OneToOneField(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="downstream",
        help_text="The environment versions are promoted from.",
    )
    backend = models.CharField(max_length=20, choices=BACKEND_CHOICES, default="local")
    backend_settings = models.JSONField(default=dict, blank=True)
    auto_deploy_branch = models.CharField(
        max_length=200, blank=True, help_text="Deploy every version CI registers on this branch."
    )
    auto_deploy_paused = models.BooleanField(default=False)
    paused_reason = models.CharField(max_length=300, blank=True)
    approver_group = models.ForeignKey(
        Group,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Its members roll back and cancel here. How many approvals a run needs, and "
        "from whom, are the approval rules below.",
    )
    allow_self_approval = models.BooleanField(default=True)
    forbid_author_approval = models.BooleanField(
        default=False,
        help_text="The author of a version's commit (matched by email) cannot approve it.",
    )
    requires_uat_signoff = models.BooleanField(
        default=False, help_text="Promotion here needs a UAT sign-off in the upstream environment."
    )
    health_check_url = models.URLField(blank=True)
    health_check_window_seconds = models.PositiveIntegerField(
        default=30, help_text="How long to keep retrying the health check after a deploy."
    )
    auto_rollback = models.BooleanField(
        default=True, help_text="Roll back by itself when a deploy fails its health check."
    )
    rto_seconds = models.PositiveIntegerField(
        default=300, help_text="Recovery time objective for a rollback."
    )
    soak_seconds = models.PositiveIntegerField(
        default=0, help_text="How long a version must have run here before it can move on."
    )
    current_image = models.ForeignKey(
        "ImageVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    current_since = models.DateTimeField(null=True, blank=True)
    bake_seconds = models.PositiveIntegerField(
        default=0,
        blank=True,  # empty in the admin means no bake (clean makes it 0)
        help_text="After the health check passes, keep watching the alarms this long before the "
        "run succeeds.",
    )
    alarms = models.JSONField(
        default=list,
        blank=True,
        help_text='Watched during the bake. ECS/EC2: [{"name": "app-5xx", "kind": "errors"}] '
        '(CloudWatch alarms). Local: [{"url": "http://127.0.0.1:8001/metrics", "field": '
        '"errors", "threshold": 5, "kind": "errors"}]. Kinds: errors, latency, saturation.',
    )
    block_severity = models.CharField(
        max_length=13,
        choices=[
            ("", "none"),
            ("LOW", "LOW"),
            ("MEDIUM", "MEDIUM"),
            ("HIGH", "HIGH"),
            ("CRITICAL", "CRITICAL"),
        ],
        blank=True,
        help_text="Refuse versions whose image scan has findings at or above this severity.",
    )
    roll_back_on_vulnerability = models.BooleanField(
        default=False,
        help_text="When a re-read scan finds a blocking vulnerability in the running version, "
        "roll back to the newest stable version without one.",
    )
    security_alert = models.CharField(
        max_length=500,
        blank=True,
        help_text="Set by opsweb: the running version has blocking findings and nothing safe "
        "to roll back to.",
    )
    drift = models.CharField(max_length=500, blank=True)
    drift_checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["position"]
        permissions = [
            ("resume_auto_deploy", "Can resume auto-deploy"),
            ("freeze_environment", "Can freeze and unfreeze an environment"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=~Q(upstream=models.F("id")), name="environment_not_own_upstream"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        try:
            self.backend_settings = backend_class(self.backend).validate_settings(
                self.backend_settings or {}
            )
        except SettingsError as exc:
            raise ValidationError(
                {"backend_settings": [f"{k}: {v}" for k, v in exc.errors.items()]}
            ) from None
        if self.health_check_url and (
            problem := outbound.url_problem(
                self.health_check_url, allow=self.outbound_allow, what="The health check URL"
            )
        ):
            raise ValidationError({"health_check_url": problem})
        if self.requires_uat_signoff and not self.upstream_id:
            raise ValidationError(
                {"requires_uat_signoff": "A UAT sign-off needs an upstream environment."}
            )
        if self.alarms is None:  # an empty admin field
            self.alarms = []
        if self.bake_seconds is None:
            self.bake_seconds = 0
        problems = alarm_problems(self.alarms, self.backend)
        if problems:
            raise ValidationError({"alarms": problems})
        if self.alarms and not self.bake_seconds:
            raise ValidationError(
                {"bake_seconds": "Alarms are watched during the bake: set a bake time."}
            )

    @property
    def outbound_allow(self) -> outbound.AllowList:
        """Where this environment's health check and HTTP alarms may point: the allow-list
        (OPSWEB_OUTBOUND_ALLOW), plus loopback on the local backend, whose processes run on
        the worker's machine (started by its ``command`` setting, so reaching loopback gives
        whoever edits it nothing more)."""
        allow = outbound.current_allow()
        return allow.with_loopback() if self.backend == "local" else allow

    @property
    def required_approvals(self) -> int:
        """How many approvals a run here needs: the sum of its approval rules."""
        return sum(rule.count for rule in self.rules)

    @property
    def rules(self) -> list[ApprovalRule]:
        """Its approval rules, group names loaded (all must be met)."""
        if self.pk is None:
            return []
        return list(self.approval_rules.select_related("group").order_by("id"))

    @property
    def is_frozen(self) -> bool:
        """Whether a change window stops runs from starting here now (rollbacks still go)."""
        from opsweb.windows import freeze_status

        return freeze_status(self, timezone.now()).frozen

    @property
    def accepts_direct_deploys(self) -> bool:
        """Local and Dev take chosen versions; the rest only take promotions."""
        return self.upstream_id is None


ALARM_KINDS = ("errors", "latency", "saturation")


def alarm_problems(alarms, backend: str) -> list[str]:
    """Sentences for each wrong entry of an environment's ``alarms``; [] when valid. The
    local backend reads a number from an HTTP endpoint; ECS and EC2 name CloudWatch alarms."""
    if not isinstance(alarms, list):
        return ["Alarms are a JSON list of objects."]
    problems = []
    for i, alarm in enumerate(alarms, 1):
        if not isinstance(alarm, dict):
            problems.append(f"Alarm {i} is not an object.")
            continue
        if alarm.get("kind", "errors") not in ALARM_KINDS:
            problems.append(f"Alarm {i}: kind is one of {', '.join(ALARM_KINDS)}.")
        if backend == "local":
            url = str(alarm.get("url", ""))
            if not url.startswith(("http://", "https://")):
                problems.append(f"Alarm {i}: url is the http(s) address of a JSON metric.")
            elif problem := outbound.url_problem(
                url, allow=outbound.current_allow().with_loopback(), what=f"Alarm {i}'s url"
            ):
                problems.append(problem)
            if not alarm.get("field"):
                problems.append(f"Alarm {i}: field names the number to read, e.g. 'errors'.")
            try:
                # NaN and infinity compare so that the alarm never fires; a huge integer
                # overflows a float.
                finite = math.isfinite(float(alarm.get("threshold")))
            except (TypeError, ValueError, OverflowError):
                finite = False
            if not finite:
                problems.append(f"Alarm {i}: threshold is a number (above it is ALARM).")
        elif not str(alarm.get("name", "")).strip():
            problems.append(f"Alarm {i}: name is the CloudWatch alarm's name.")
    return problems


class ImageVersion(models.Model):
    """One built image of the application: immutable by digest, identified by tag for people.

    A version marked bad can no longer be deployed or promoted anywhere.
    """

    repository = models.CharField(max_length=255, validators=[validate_repository])
    tag = models.CharField(max_length=128, validators=[validate_tag])
    digest = models.CharField(max_length=71, validators=[validate_digest])
    git_sha = models.CharField(max_length=40, blank=True, validators=[validate_git_sha])
    branch = models.CharField(max_length=255, blank=True)
    commit_message = models.TextField(blank=True)
    committed_at = models.DateTimeField(null=True, blank=True)
    build_url = models.URLField(blank=True, max_length=500)
    author_email = models.EmailField(
        blank=True, help_text="The commit's author, who cannot approve it where that is forbidden."
    )
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    registered_at = models.DateTimeField(default=timezone.now)
    is_bad = models.BooleanField("marked bad", default=False)
    bad_reason = models.TextField(blank=True)
    marked_bad_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    marked_bad_at = models.DateTimeField(null=True, blank=True)
    scan_checked_at = models.DateTimeField(null=True, blank=True)
    scan_status = models.CharField(max_length=40, blank=True)
    scan_counts = models.JSONField(default=dict, blank=True)
    scan_top_ids = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-registered_at", "-id"]
        permissions = [("mark_bad", "Can mark an image version bad")]
        constraints = [
            models.UniqueConstraint(
                fields=["repository", "digest"],
                name="unique_digest_per_repository",
                violation_error_message="This repository already has a version with that digest.",
            ),
            models.UniqueConstraint(
                fields=["repository", "tag"],
                name="unique_tag_per_repository",
                violation_error_message="This repository already has a version with that tag; "
                "tags are immutable.",
            ),
            models.CheckConstraint(
                condition=Q(digest__regex=DIGEST_RE),
                name="digest_is_sha256",
                violation_error_message=validate_digest.message,
            ),
            models.CheckConstraint(
                condition=Q(git_sha="") | Q(git_sha__regex=GIT_SHA_RE),
                name="git_sha_is_full_hex",
                violation_error_message=validate_git_sha.message,
            ),
        ]
        indexes = [
            models.Index(fields=["git_sha"]),
            models.Index(fields=["-registered_at", "-id"], name="image_newest_first"),
            # A tag or its start (also the equality a tag search needs).
            models.Index(
                fields=["tag"], name="image_tag_prefix", opclasses=["varchar_pattern_ops"]
            ),
            # Prefix search ("sha256:ab12…", a short commit) through an index on PostgreSQL,
            # whose default collation cannot use a plain b-tree for LIKE 'x%'.
            models.Index(
                fields=["digest"], name="image_digest_prefix", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(
                fields=["git_sha"], name="image_git_sha_prefix", opclasses=["varchar_pattern_ops"]
            ),
        ]

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def short_digest(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    @property
    def short_sha(self) -> str:
        return self.git_sha[:7]

    @property
    def scan_summary(self) -> str:
        """'CRITICAL 1, HIGH 3 (CVE-2024-1, …)', 'no findings', or '' when never read."""
        if not self.scan_checked_at:
            return ""
        if not self.scan_counts:
            return "no findings" if self.scan_status == "COMPLETE" else self.scan_status.lower()
        order = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED"]
        counts = ", ".join(f"{s} {self.scan_counts[s]}" for s in order if self.scan_counts.get(s))
        ids = ", ".join(self.scan_top_ids[:5])
        return counts + (f" ({ids})" if ids else "")


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
    """One deploy, promotion or rollback of one image version into one environment.

    Statuses: pending → queued → running → succeeded | failed; also rejected, cancelled,
    expired, superseded (the environment moved past its version before it started) and stopped
    (someone stopped it while it ran: ``stop_requested_at``/``_by``/``stop_reason`` record the
    request; the run stays ``running``, "stopping", until its worker reaches a safe point). A
    terminal run never changes status again. ``replaces`` is what the environment ran when this
    run switched versions (empty until then). A rollback with ``resolve_at_start`` was asked for
    while another run was switching versions: what it restores is decided when it starts. At most one run per environment is
    running, which the database guarantees with a partial unique index.
    """

    kind = models.CharField(max_length=20, choices=RunKind.choices)
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="runs")
    source_environment = models.ForeignKey(
        Environment, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
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
            models.Index(fields=["environment", "status"]),
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

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # The approval list, newest first (ApprovalAdmin.ordering).
            models.Index(fields=["-created_at", "-id"], name="approval_newest_first"),
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


class Signoff(ImmutableModel):
    """ "UAT passed for image X in environment Y": what Production promotion waits for."""

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="signoffs")
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


class AuditEntry(ImmutableModel):
    """Who did what, when: every state change a person, CI or opsweb itself makes."""

    created_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    action = models.CharField(max_length=50)
    environment = models.ForeignKey(
        Environment, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    image = models.ForeignKey(
        ImageVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    message = models.TextField()

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


class ApprovalRule(models.Model):
    """ "``count`` approvals from members of ``group``": one of an environment's rules, all of
    which a run must meet. One person's approval counts toward one rule only."""

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="approval_rules"
    )
    group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="approval_rules")
    count = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])

    class Meta:
        ordering = ["environment", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "group"],
                name="one_rule_per_group_per_environment",
                violation_error_message="This environment already has a rule for that group.",
            ),
            models.CheckConstraint(condition=Q(count__gte=1), name="approval_rule_count_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.count} from {self.group.name}"


class ChangeWindow(models.Model):
    """When runs may start: a ``deny`` window ("no deploys") or an ``allow`` window ("deploys only
    Tue–Thu 10:00–16:00") for one environment, or for all when ``environment`` is empty.

    One-off: ``starts_at`` → ``ends_at`` (no end: until lifted). Recurring: an RRULE
    (``rrule``) or a cron expression (``cron``) giving the start of each occurrence on the wall
    clock of ``time_zone``, each lasting ``duration_seconds`` of wall-clock time; ``starts_at``
    anchors the recurrence and ``ends_at`` stops it. Rollbacks are never held by a window.
    """

    class Kind(models.TextChoices):
        DENY = "deny", "Deny (no deploys)"
        ALLOW = "allow", "Allow (deploys only then)"

    environment = models.ForeignKey(
        Environment,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="change_windows",
        help_text="Empty: every environment.",
    )
    kind = models.CharField(max_length=5, choices=Kind.choices, default=Kind.DENY)
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(
        null=True, blank=True, help_text="One-off: empty means until someone lifts it."
    )
    rrule = models.CharField(
        max_length=500,
        blank=True,
        help_text="Recurring: an RRULE, e.g. FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0.",
    )
    cron = models.CharField(
        max_length=100, blank=True, help_text="Recurring: a cron expression, e.g. 0 16 * * 5."
    )
    duration_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Recurring: how long each occurrence lasts (wall clock)."
    )
    time_zone = models.CharField(
        max_length=64, default="UTC", help_text="An IANA name, e.g. Europe/Berlin."
    )
    reason = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["environment", "id"]

    def __str__(self) -> str:
        from opsweb.windows import describe_window

        where = self.environment or "all environments"
        return f"{self.get_kind_display().split(' ')[0]} {where}: {describe_window(self)}"

    @property
    def is_recurring(self) -> bool:
        return bool(self.rrule or self.cron)

    def clean(self):
        from opsweb.windows import window_errors

        errors = window_errors(self)
        if errors:
            raise ValidationError(errors)


class NotificationEvent(models.TextChoices):
    """What a notification channel can subscribe to."""

    APPROVAL_NEEDED = "approval_needed", "A run waits for approval"
    RUN_SUCCEEDED = "run_succeeded", "A run succeeded"
    RUN_FAILED = "run_failed", "A run failed"
    ROLLBACK_STARTED = "rollback_started", "A rollback started"
    ROLLBACK_FINISHED = "rollback_finished", "A rollback finished"
    AUTO_DEPLOY_PAUSED = "auto_deploy_paused", "Auto-deploy paused"
    DRIFT_FOUND = "drift_found", "Drift found"
    VERSION_MARKED_BAD = "version_marked_bad", "A version was marked bad"


class NotificationChannel(models.Model):
    """Where notifications of one environment (or of all, when empty) go: email addresses, a
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
    kind = models.CharField(max_length=10, choices=Kind.choices)
    target = models.TextField(
        help_text="Email: addresses separated by commas. Webhooks: the http(s) URL."
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
        if self.kind == self.Kind.EMAIL:
            return self.target
        scheme, _, rest = self.target.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}/…{self.target[-4:] if len(rest) > 24 else ''}"

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
        elif not self.target.strip().lower().startswith(("http://", "https://")):
            errors["target"] = "A webhook URL starts with http:// or https:// and names a host."
        elif problem := outbound.url_problem(self.target, what="The webhook URL"):
            errors["target"] = problem
        elif not _valid(URLValidator(schemes=["http", "https"]), self.target.strip()):
            errors["target"] = "A webhook URL starts with http:// or https:// and names a host."
        if self.kind == self.Kind.WEBHOOK and not self.secret:
            errors["secret"] = "A generic webhook needs a secret to sign its requests."  # noqa: S105
        unknown = [e for e in self.events or [] if e not in NotificationEvent.values]
        if not isinstance(self.events, list) or unknown:
            errors["events"] = f"Unknown events: {', '.join(map(str, unknown))}."
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
