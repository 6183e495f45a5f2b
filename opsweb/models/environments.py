"""Environments and their rules: who must approve (ApprovalRule) and when runs may start
(ChangeWindow)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from orchestration import outbound
from orchestration.base import BACKEND_CHOICES, SettingsError, backend_class


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
        return allow.with_loopback() if backend_class(self.backend).runs_on_worker else allow

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


def alarm_problems(alarms, backend: str) -> list[str]:
    """Sentences for each wrong entry of an environment's ``alarms``; [] when valid. What an
    alarm is depends on the backend (``DeployBackend.alarm_problems``): an HTTP metric for the
    local backend, a CloudWatch alarm's name for ECS and EC2."""
    cls = backend_class(backend)
    allow = outbound.current_allow()
    return cls.alarm_problems(alarms, allow=allow.with_loopback() if cls.runs_on_worker else allow)


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
