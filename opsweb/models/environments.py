"""Environments and their rules: who must approve (ApprovalRule) and when runs may start
(ChangeWindow)."""

from __future__ import annotations

from urllib.parse import urlsplit

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
    """One stage of the organisation's flow, shared by every application: Local Development →
    AWS Dev → AWS Staging → AWS Production, with the organisation's rules (who approves, UAT,
    soak time, image scans; change windows and notification channels point here too).

    ``upstream`` is the environment a version is promoted from; Local and Dev have none (Dev's
    versions come from CI: ``auto_deploy`` environments take every version registered on an
    application's auto-deploy branch). What runs where is per application: ``Target``.
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
    auto_deploy = models.BooleanField(
        default=False,
        help_text="Deploy every version CI registers on an application's auto-deploy branch "
        "(AWS Dev).",
    )
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
    soak_seconds = models.PositiveIntegerField(
        default=0, help_text="How long a version must have run here before it can move on."
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

    class Meta:
        ordering = ["position"]
        permissions = [("freeze_environment", "Can freeze and unfreeze an environment")]
        constraints = [
            models.CheckConstraint(
                condition=~Q(upstream=models.F("id")), name="environment_not_own_upstream"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        if self.requires_uat_signoff and not self.upstream_id:
            raise ValidationError(
                {"requires_uat_signoff": "A UAT sign-off needs an upstream environment."}
            )

    @property
    def accepts_direct_deploys(self) -> bool:
        """Local and Dev take chosen versions; the rest only take promotions."""
        return self.upstream_id is None


class Application(models.Model):
    """One service the team releases (a web front end, an API, a worker): its images come from
    its repositories, it is owned by a team, and it is deployed into some or all of the shared
    environments (its targets, in flow order)."""

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100, unique=True)
    team = models.ForeignKey(
        Group,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="applications",
        help_text="The team that owns it: only its members request, roll back and cancel its "
        "runs (approvals follow the approval rules). Empty: anyone the environment allows.",
    )
    auto_deploy_branch = models.CharField(
        max_length=200,
        blank=True,
        help_text="Versions CI registers on this branch deploy by themselves to the "
        "auto-deploy environments (AWS Dev).",
    )
    repository_url = models.URLField(
        blank=True,
        max_length=500,
        help_text="The source repository's web address (https://github.com/org/app), for links "
        "to commits and comparisons.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class ApplicationRepository(models.Model):
    """An image repository CI registers an application's versions from. A repository belongs to
    one application: the database refuses a second claim."""

    application = models.ForeignKey(
        Application, on_delete=models.CASCADE, related_name="repositories"
    )
    repository = models.CharField(
        max_length=255,
        unique=True,
        error_messages={"unique": "Another application already releases this repository."},
    )

    class Meta:
        ordering = ["repository"]
        verbose_name_plural = "application repositories"

    def __str__(self) -> str:
        return self.repository

    def clean(self):
        from .versions import validate_repository

        try:
            validate_repository(self.repository)
        except ValidationError as exc:
            raise ValidationError({"repository": exc.messages}) from None


class TargetQuerySet(models.QuerySet):
    def auto_deploying(self, branch: str | None = None):
        """Targets that take every version CI registers on their application's auto-deploy
        branch (``branch`` when given): in an ``auto_deploy`` environment, with a branch set."""
        targets = self.filter(environment__auto_deploy=True).exclude(
            application__auto_deploy_branch=""
        )
        return targets.filter(application__auto_deploy_branch=branch) if branch else targets

    def in_flow(self):
        """Targets with their application, environment and what runs, in flow order, each
        knowing its upstream and downstream target without a query (``link_flow``)."""
        targets = list(
            self.select_related("application", "environment", "current_image").order_by(
                "application__name", "application_id", "environment__position"
            )
        )
        return link_flow(targets)


class TargetManager(models.Manager.from_queryset(TargetQuerySet)):
    def get_queryset(self):
        return super().get_queryset().select_related("application", "environment")


class Target(models.Model):
    """One application in one environment (a deployment target): where and how it runs (backend
    and its settings, health check, alarms), what runs now and since when, drift, auto-deploy
    paused, and its own run lane (one run in progress per target) and rollback history.

    The organisation's rules are the environment's (``rules`` adds the application's own);
    ``upstream`` is the application's target in the nearest earlier environment of the shared
    flow that the application has (an application may skip AWS Staging).
    ``current_image`` is what the backend last switched to, set only by services when a run
    reaches the backend.
    """

    application = models.ForeignKey(Application, on_delete=models.PROTECT, related_name="targets")
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="targets")
    backend = models.CharField(max_length=20, choices=BACKEND_CHOICES, default="local")
    backend_settings = models.JSONField(default=dict, blank=True)
    auto_deploy_paused = models.BooleanField(default=False)
    paused_reason = models.CharField(max_length=300, blank=True)
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

    # Every read of a target names its environment and application: both come in the same
    # query (small tables), so no page pays a query per target to print one.
    objects = TargetManager()

    class Meta:
        base_manager_name = "objects"
        ordering = ["application__name", "application_id", "environment__position"]
        verbose_name = "deployment target"
        permissions = [("resume_auto_deploy", "Can resume auto-deploy")]
        constraints = [
            models.UniqueConstraint(
                fields=["application", "environment"],
                name="one_target_per_application_per_environment",
                violation_error_message="This application is already deployed into that "
                "environment.",
            )
        ]

    def __str__(self) -> str:
        return self.environment.name

    @property
    def backend_key(self) -> str:
        """What the backend keys this target's state by ("web-dev"): two applications' Dev
        never share a local state file or process."""
        return f"{self.application.slug}-{self.environment.slug}"

    @property
    def label(self) -> str:
        """'Sample service in AWS Production': the target named with its application."""
        return f"{self.application.name} in {self.environment.name}"

    @property
    def service_url(self) -> str:
        """Where the service answers: its health check URL without the path ("" without one)."""
        if not self.health_check_url:
            return ""
        parts = urlsplit(self.health_check_url)
        # Host and port only: credentials in the URL (user:secret@) are never shown.
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:  # a port out of range: no link rather than a broken page
            return ""
        return f"{parts.scheme}://{host}{port}/" if host else ""

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

    # -- the shared environment's facts, read through the target --------------------------

    @property
    def name(self) -> str:
        return self.environment.name

    @property
    def slug(self) -> str:
        return self.environment.slug

    @property
    def position(self) -> int:
        return self.environment.position

    @property
    def approver_group(self):
        return self.environment.approver_group

    @property
    def approver_group_id(self):
        return self.environment.approver_group_id

    @property
    def allow_self_approval(self) -> bool:
        return self.environment.allow_self_approval

    @property
    def forbid_author_approval(self) -> bool:
        return self.environment.forbid_author_approval

    @property
    def requires_uat_signoff(self) -> bool:
        return self.environment.requires_uat_signoff

    @property
    def soak_seconds(self) -> int:
        return self.environment.soak_seconds

    @property
    def block_severity(self) -> str:
        return self.environment.block_severity

    @property
    def auto_deploy_branch(self) -> str:
        """The branch whose versions deploy here by themselves: the application's, in an
        auto-deploy environment; '' elsewhere."""
        return self.application.auto_deploy_branch if self.environment.auto_deploy else ""

    @property
    def accepts_direct_deploys(self) -> bool:
        """Local and Dev take chosen versions; the rest only take promotions."""
        return self.environment.upstream_id is None

    # -- the application's flow -------------------------------------------------------------

    @property
    def upstream(self) -> Target | None:
        """The application's target in the nearest earlier environment along the shared flow
        (Production → Staging → Dev); None where the environment takes direct deploys."""
        if "_upstream" not in self.__dict__:
            self.__dict__["_upstream"] = _upstream_of(self)
        return self.__dict__["_upstream"]

    @property
    def upstream_id(self) -> int | None:
        upstream = self.upstream
        return upstream.pk if upstream else None

    @property
    def downstream(self) -> Target | None:
        """The application's target that promotes from this one, or None."""
        if "_downstream" not in self.__dict__:
            later = Target.objects.filter(
                application_id=self.application_id,
                environment__position__gt=self.environment.position,
            ).select_related("environment", "current_image", "application")
            self.__dict__["_downstream"] = next(
                (t for t in later.order_by("environment__position") if t.upstream_id == self.pk),
                None,
            )
        return self.__dict__["_downstream"]

    @property
    def outbound_allow(self) -> outbound.AllowList:
        """Where this target's health check and HTTP alarms may point: the allow-list
        (OPSWEB_OUTBOUND_ALLOW), plus loopback on the local backend, whose processes run on
        the worker's machine (started by its ``command`` setting, so reaching loopback gives
        whoever edits it nothing more)."""
        allow = outbound.current_allow()
        return allow.with_loopback() if backend_class(self.backend).runs_on_worker else allow

    # -- rules ----------------------------------------------------------------------------

    @property
    def rules(self) -> list[ApprovalRule]:
        """The approval rules a run here must meet, group names loaded: the organisation's for
        the environment and the application's own for it there (all must be met)."""
        if self.pk is None:
            return []
        return list(
            ApprovalRule.objects.for_target(self)
            .select_related("group", "application")
            .order_by("application_id", "id")
        )

    @property
    def required_approvals(self) -> int:
        """How many approvals a run here needs: the sum of its approval rules."""
        return sum(rule.count for rule in self.rules)

    @property
    def is_frozen(self) -> bool:
        """Whether a change window stops runs from starting here now (rollbacks still go)."""
        from opsweb.windows import freeze_status

        return freeze_status(self, timezone.now()).frozen


def _upstream_of(target: Target) -> Target | None:
    environment = target.environment
    chain = []
    seen = set()
    while environment.upstream_id and environment.upstream_id not in seen:
        seen.add(environment.upstream_id)
        environment = environment.upstream
        chain.append(environment.pk)
    if not chain:
        return None
    candidates = {
        t.environment_id: t
        for t in Target.objects.filter(
            application_id=target.application_id, environment_id__in=chain
        ).select_related("environment", "current_image", "application")
    }
    return next((candidates[pk] for pk in chain if pk in candidates), None)


def link_flow(targets: list[Target]) -> list[Target]:
    """Give each of ``targets`` (with their environments loaded) its upstream and downstream
    among them, so reading ``upstream``/``downstream`` costs no query. ``targets`` must hold
    every target of each application it holds."""
    by_app: dict[int, dict[int, Target]] = {}
    for t in targets:
        by_app.setdefault(t.application_id, {})[t.environment_id] = t
    parents = dict(Environment.objects.values_list("id", "upstream_id")) if targets else {}
    for t in targets:
        t.__dict__.setdefault("_downstream", None)
    for t in targets:
        own = by_app[t.application_id]
        upstream = None
        current = parents.get(t.environment_id)
        seen = set()
        while current and current not in seen:
            seen.add(current)
            if current in own:
                upstream = own[current]
                break
            current = parents.get(current)
        t.__dict__["_upstream"] = upstream
        if upstream is not None:
            upstream.__dict__["_downstream"] = t
    return targets


def alarm_problems(alarms, backend: str) -> list[str]:
    """Sentences for each wrong entry of an environment's ``alarms``; [] when valid. What an
    alarm is depends on the backend (``DeployBackend.alarm_problems``): an HTTP metric for the
    local backend, a CloudWatch alarm's name for ECS and EC2."""
    cls = backend_class(backend)
    allow = outbound.current_allow()
    return cls.alarm_problems(alarms, allow=allow.with_loopback() if cls.runs_on_worker else allow)


class RuleQuerySet(models.QuerySet):
    def for_target(self, target):
        """The rules a run in ``target`` must meet: the organisation's in its environment and
        its application's own there."""
        return self.filter(environment_id=target.environment_id).filter(
            Q(application__isnull=True) | Q(application_id=target.application_id)
        )

    def for_outer_target(self, path: str):
        """The same, for the target at ``path`` of the outer query (``OuterRef``): e.g.
        ``"environment"`` from runs, ``"run__environment"`` from approvals."""
        return self.filter(environment_id=models.OuterRef(f"{path}__environment_id")).filter(
            Q(application__isnull=True)
            | Q(application_id=models.OuterRef(f"{path}__application_id"))
        )


class ApprovalRule(models.Model):
    """ "``count`` approvals from members of ``group``": one of the rules a run in
    ``environment`` must meet — the organisation's for every application (``application``
    empty), or one application's own there. Both kinds apply: an application adds approvers,
    it never removes the organisation's. One person's approval counts toward one rule only."""

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="approval_rules"
    )
    application = models.ForeignKey(
        Application,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="approval_rules",
        help_text="Empty: the organisation's rule, for every application.",
    )
    group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="approval_rules")
    count = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])

    objects = RuleQuerySet.as_manager()

    class Meta:
        ordering = ["environment", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "group"],
                condition=Q(application__isnull=True),
                name="one_rule_per_group_per_environment",
                violation_error_message="This environment already has a rule for that group.",
            ),
            models.UniqueConstraint(
                fields=["environment", "application", "group"],
                condition=Q(application__isnull=False),
                name="one_rule_per_group_per_application_environment",
                violation_error_message="This application already has a rule for that group here.",
            ),
            models.CheckConstraint(condition=Q(count__gte=1), name="approval_rule_count_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.count} from {self.group.name}"

    def clean(self):
        problem = scope_problem(self.application, self.environment_id)
        if problem:
            raise ValidationError({"application": problem})


def scope_problem(application, environment_id) -> str | None:
    """Why a rule scoped to ``application`` (and the environment ``environment_id``, when
    given) cannot be: the application is not deployed there. None when the scope is fine."""
    if application is None or environment_id is None or application.pk is None:
        return None
    if application.targets.filter(environment_id=environment_id).exists():
        return None
    return f"{application} is not deployed into that environment; scope the rule to one it has."


class ChangeWindow(models.Model):
    """When runs may start: a ``deny`` window ("no deploys") or an ``allow`` window ("deploys only
    Tue–Thu 10:00–16:00") for one environment, or for all when ``environment`` is empty; for one
    application, or for all when ``application`` is empty.

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
    application = models.ForeignKey(
        Application,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="change_windows",
        help_text="Empty: every application.",
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
        if self.application_id:
            where = f"{self.application} in {where}"
        return f"{self.get_kind_display().split(' ')[0]} {where}: {describe_window(self)}"

    @property
    def is_recurring(self) -> bool:
        return bool(self.rrule or self.cron)

    def clean(self):
        from opsweb.windows import window_errors

        errors = window_errors(self)
        if problem := scope_problem(self.application, self.environment_id):
            errors["application"] = problem
        if errors:
            raise ValidationError(errors)
