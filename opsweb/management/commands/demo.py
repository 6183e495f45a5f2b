"""Load the demo a newcomer clicks through: three applications on the shared flow — the sample
service, a second web service and an internal tool that skips AWS Staging — each with its own
image repository, releases and history, all on the local backend, and the people who work them.

Ports, from ``--base-port`` B on (each application's targets in flow order):

    sample  Local B,   Dev B+1, Staging B+2,  Production B+3
    web     Local B+4, Dev B+5, Staging B+6,  Production B+7
    tool    Local B+8, Dev B+9,               Production B+10

Teams (Django groups) own them: the Web team the sample service and the web front end, Platform
the internal tool, so the overview's team filter has something to filter. Every demo user is
in both teams and keeps the roles the walkthrough gives them in every application.

``--apps sample`` loads the sample service alone (four ports, as benchmarks/faults.py needs).
Idempotent: a second run changes nothing, except restarting a deployed process that is no
longer running (after a reboot, or `demo --stop`). Refuses to run with DEBUG off.
"""

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from io import StringIO
from pathlib import Path

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, connections
from django.utils import timezone

from opsweb import services, tasks
from opsweb.management.commands.local_admin import hash_passwords, remember_password
from opsweb.models import (
    Application,
    ApplicationRepository,
    Approval,
    ApprovalRule,
    AuditEntry,
    Environment,
    ImageVersion,
    Run,
    RunKind,
    RunStatus,
    Target,
)
from opsweb.sample_app import DEMO_RELEASES, Release, create_repository, digest_for
from orchestration.base import DeployError, DeployRequest, get_backend

REPOSITORY = "example/sample"
HISTORY_REPOSITORY = "example/sample-history"
HISTORY_WEEKS = 12
RELEASES = [
    *DEMO_RELEASES[:3],
    Release("1.2.1", "Work in progress on a laptop"),
    DEMO_RELEASES[3],
]


@dataclass(frozen=True)
class DemoApp:
    """One application of the demo: its image versions are (tag, the sample service's release
    it is built from, message); ``walk`` is the live history, (environment, tag) in order."""

    slug: str
    name: str
    team: str
    repository: str
    history_repository: str
    environments: tuple[str, ...]
    versions: tuple[tuple[str, str, str], ...]
    walk: tuple[tuple[str, str], ...]
    seed: int
    local_branch_tags: frozenset[str] = field(default_factory=frozenset)


APPS = {
    "sample": DemoApp(
        slug="sample",
        name="Sample service",
        team="Web team",
        repository=REPOSITORY,
        history_repository=HISTORY_REPOSITORY,
        environments=("local", "dev", "staging", "production"),
        versions=tuple((r.tag, r.tag, r.message) for r in RELEASES),
        walk=(
            ("dev", "1.0.0"),
            ("staging", "1.0.0"),
            ("production", "1.0.0"),
            ("dev", "1.1.0"),
            ("staging", "1.1.0"),
            ("dev", "1.2.0"),
            ("local", "1.2.1"),
        ),
        seed=12,
        local_branch_tags=frozenset({"1.2.1"}),
    ),
    "web": DemoApp(
        slug="web",
        name="Web front end",
        team="Web team",
        repository="example/web",
        history_repository="example/web-history",
        environments=("local", "dev", "staging", "production"),
        versions=(
            ("2.3.0", "1.0.0", "Checkout page in the new design"),
            ("2.4.0", "1.1.0", "Saved baskets"),
            ("2.5.0", "1.2.0", "Faster product search"),
            ("2.6.0", "1.3.0", "Move sessions to the new store (breaks the health check)"),
        ),
        walk=(
            ("dev", "2.3.0"),
            ("staging", "2.3.0"),
            ("production", "2.3.0"),
            ("dev", "2.4.0"),
            ("staging", "2.4.0"),
            ("production", "2.4.0"),
            ("dev", "2.5.0"),
            ("local", "2.5.0"),
        ),
        seed=23,
    ),
    "tool": DemoApp(
        slug="tool",
        name="Internal tool",
        team="Platform",
        repository="example/tool",
        history_repository="example/tool-history",
        environments=("local", "dev", "production"),  # no AWS Staging
        versions=(
            ("0.8.0", "1.0.0", "Export to CSV"),
            ("0.9.0", "1.1.0", "Bulk edit"),
        ),
        walk=(("dev", "0.8.0"), ("production", "0.8.0"), ("dev", "0.9.0"), ("local", "0.9.0")),
        seed=34,
    ),
}
# Ports each application takes from the base: four per application, in this order.
PORTS_PER_APP = 4

PEOPLE = {
    "alice": ["deployers"],
    "bob": ["staging approvers", "production approvers", "qa", "override approvers"],
    "carol": ["staging approvers", "production approvers", "qa", "sre", "override approvers"],
    # A third override approver: an override needs 2 approvals from people other than its
    # requester (bob or carol), which two members alone could never give.
    "dave": ["override approvers"],
    "ci": ["ci"],
}
# The demo's Production needs 1 approval from QA and 1 from SRE (carol is in both: her approval
# counts toward one of them only).
PRODUCTION_RULES = [("qa", 1), ("sre", 1)]
# Service accounts run management commands (--as ci) and never log into the web console.
SERVICE_ACCOUNTS = {"ci"}


class Command(BaseCommand):
    help = (
        "Load demo data and start three applications (sample, web, tool) on the local backend "
        "(DEBUG only)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--base-port",
            type=int,
            default=8101,
            help="The first port (default 8101): sample takes it and the next three, web the "
            "four after, tool the three after those.",
        )
        parser.add_argument(
            "--apps",
            default=",".join(APPS),
            metavar="SLUGS",
            help=f"The applications to load, comma-separated (default {','.join(APPS)}); "
            f"sample is always loaded.",
        )
        parser.add_argument(
            "--stop",
            action="store_true",
            help="Stop the processes the demo started, and nothing else.",
        )

    def handle(self, *args, base_port, stop, apps, **options):
        if not settings.DEBUG:
            raise CommandError(
                "The demo creates users with printed passwords; it runs only with DEBUG on."
            )
        chosen = demo_apps(apps)
        last_port = base_port + PORTS_PER_APP * len(chosen) - 1
        if not base_port >= 1024 or last_port > 65535:
            raise CommandError(
                f"--base-port {base_port} is outside 1024–{65536 - PORTS_PER_APP * len(chosen)} "
                f"(the demo's {len(chosen)} application(s) need ports up to {last_port})."
            )
        call_command("bootstrap", verbosity=0)
        applications = {spec.slug: self._application(spec) for spec in chosen}
        flows = {
            slug: Target.objects.filter(application=app).in_flow()
            for slug, app in applications.items()
        }
        if stop:
            for targets in flows.values():
                for target in targets:
                    if target.backend == "local":
                        get_backend("local", target.backend_settings).stop(target.backend_key)
            self.stdout.write("Stopped the demo's processes.")
            return

        repo_dir = Path(settings.OPSWEB["LOCAL_STATE_DIR"]) / "demo-app"
        shas = create_repository(repo_dir, RELEASES)
        for n, spec in enumerate(chosen):
            self._configure(flows[spec.slug], repo_dir, base_port + PORTS_PER_APP * n)
        self._production_rules()
        users = self._people()
        self._teams(chosen, users)
        fresh = {
            spec.slug: not Target.objects.filter(
                application=applications[spec.slug], current_image__isnull=False
            ).exists()
            for spec in chosen
        }
        for spec in chosen:
            # Every history first, so that its runs, approvals and audit entries come before
            # today's.
            if (
                fresh[spec.slug]
                and not ImageVersion.objects.filter(repository=spec.history_repository).exists()
            ):
                backdated_history(
                    flows[spec.slug],
                    shas["1.0.0"],
                    users,
                    repository=spec.history_repository,
                    seed=spec.seed,
                )
                self.stdout.write(
                    f"Added {HISTORY_WEEKS} weeks of backdated history for {spec.slug} (DORA)."
                )
        walks = []
        for spec in chosen:
            images = self._images(spec, applications[spec.slug], shas, users["ci"])
            if fresh[spec.slug]:
                walks.append((spec, flows[spec.slug], images))
            else:
                self._restart(flows[spec.slug])
        self._walk(walks, users)
        self._print(flows, users)

    def _walk(self, walks, users):
        """Each fresh application's live history (``_history``), the applications at once, one
        thread each: an application's runs follow one another, but another application's, on
        ports of their own, need not wait for them; most of a run is its new process starting
        (~0.1 s until it listens), on the other core. Each walk's lines are printed together,
        in the applications' order. Inside a transaction (a test's) other connections could
        not see its rows: one after the other, in it."""
        if len(walks) < 2 or connection.in_atomic_block:
            for spec, targets, images in walks:
                self._history(spec, targets, images, users, self.stdout)
            return

        def walk(spec, targets, images) -> str:
            out = StringIO()
            try:
                self._history(spec, targets, images, users, out)
            finally:
                connections.close_all()  # this thread's
            return out.getvalue()

        with ThreadPoolExecutor(max_workers=len(walks), thread_name_prefix="demo-walk") as pool:
            futures = [pool.submit(walk, *w) for w in walks]
        for future in futures:
            self.stdout.write(future.result(), ending="")

    def _application(self, spec: DemoApp) -> Application:
        """The demo's application ``spec`` (created on the shared flow if it is missing), owned
        by its team unless someone gave it another one."""
        team = Group.objects.get_or_create(name=spec.team)[0]
        app = Application.objects.filter(slug=spec.slug).first()
        if app is not None and app.team_id is None:
            # A demo loaded before the teams: own it now (its people join the team below).
            app.team = team
            app.save(update_fields=["team"])
        if app is None:
            app = services.build_application(
                services.ApplicationSpec(
                    slug=spec.slug,
                    name=spec.name,
                    repositories=(spec.repository,),
                    environments=tuple(
                        Environment.objects.filter(slug__in=spec.environments).order_by("position")
                    ),
                    team=team,
                    branch="develop",
                )
            )
        for repository in (spec.repository, spec.history_repository):
            ApplicationRepository.objects.get_or_create(
                repository=repository, defaults={"application": app}
            )
        return app

    def _configure(self, targets, repo_dir, base_port):
        for offset, target in enumerate(targets):
            port = base_port + offset
            target.backend = "local"
            target.backend_settings = {
                "repository": str(repo_dir),
                "port": port,
                "state_dir": str(settings.OPSWEB["LOCAL_STATE_DIR"]),
            }
            target.health_check_url = f"http://127.0.0.1:{port}/healthz"
            target.health_check_window_seconds = 8
            target.full_clean()
            target.save()

    def _production_rules(self):
        """Two rules instead of bootstrap's one, unless someone changed the rules already."""
        groups = {name: Group.objects.get_or_create(name=name)[0] for name, _ in PRODUCTION_RULES}
        Group.objects.get_or_create(name="override approvers")
        shared = Environment.objects.get(slug="production")
        rules = list(shared.approval_rules.select_related("group"))
        if [(r.group.name, r.count) for r in rules] != [("production approvers", 2)]:
            return
        shared.approval_rules.all().delete()
        for name, count in PRODUCTION_RULES:
            ApprovalRule.objects.create(environment=shared, group=groups[name], count=count)

    def _people(self):
        users = {}
        # The people the demo creates now: their passwords hashed together, in threads (or
        # ahead, by quickstart), not one after the other in the loop below.
        missing = (
            set(PEOPLE)
            - SERVICE_ACCOUNTS
            - set(User.objects.filter(username__in=PEOPLE).values_list("username", flat=True))
        )
        hashed = hash_passwords(remember_password(username) for username in sorted(missing))
        for username, groups in PEOPLE.items():
            service = username in SERVICE_ACCOUNTS
            user, created = User.objects.get_or_create(
                username=username, defaults={"is_staff": not service}
            )
            if service and (user.is_staff or user.has_usable_password()):
                user.is_staff = False
                user.set_unusable_password()
                user.save()
            if created:
                if not service:
                    password = remember_password(username)
                    user.password = hashed.get(password) or make_password(password)
                user.save()
                user.groups.set(Group.objects.filter(name__in=groups))
            users[username] = user
        return users

    def _teams(self, chosen: list[DemoApp], users) -> None:
        """Every demo user in every team of the demo: only a team's members request deploys,
        promotions, freezes and resumes for its applications (``policy.team_refusal``), and
        the walkthrough has alice, bob, carol and ci do those in each of them."""
        teams = Group.objects.filter(name__in={spec.team for spec in chosen})
        for user in users.values():
            user.groups.add(*teams)

    def _images(self, spec: DemoApp, app, shas, ci):
        images = {}
        for tag, release, message in spec.versions:
            sha = shas[release]
            image = ImageVersion.objects.filter(repository=spec.repository, tag=tag).first()
            if image is None:
                image = ImageVersion.objects.create(
                    application=app,
                    repository=spec.repository,
                    tag=tag,
                    digest=digest_for(f"{spec.repository}:{sha}")
                    if spec.slug != "sample"
                    else digest_for(sha),
                    git_sha=sha,
                    branch="main" if tag in spec.local_branch_tags else "develop",
                    commit_message=message,
                    registered_by=ci,
                )
            images[tag] = image
        return images

    def _history(self, spec: DemoApp, targets, images, users, out):
        """Walk the real flow so that each environment has history to roll back to: deploys
        to Local and Dev, promotions approved by bob and carol, UAT sign-offs by carol."""
        by_slug = {target.slug: target for target in targets}
        alice, bob, carol, ci = users["alice"], users["bob"], users["carol"], users["ci"]

        def execute(run):
            tasks.execute_run(run.pk)
            run.refresh_from_db()
            if run.status != RunStatus.SUCCEEDED:
                raise CommandError(f"Demo run #{run.pk} {run.status}: {run.error}")
            out.write(f"  {run.environment.label}: {run.image.tag}\n")

        out.write(f"Deploying {spec.name} through the flow:\n")
        for slug, tag in spec.walk:
            target, image = by_slug[slug], images[tag]
            if target.accepts_direct_deploys:
                user = ci if target.auto_deploy_branch else alice
                execute(services.request_deploy(user=user, environment=target, image=image))
            else:
                run = services.request_promotion(user=alice, target=target, image=image)
                for approver, comment in ((bob, "Looks good upstream"), (carol, "")):
                    run.refresh_from_db()
                    if run.status == RunStatus.PENDING:
                        run = services.approve_run(user=approver, run=run, comment=comment)
                execute(run)
            downstream = target.downstream
            if downstream is not None and downstream.requires_uat_signoff:
                services.sign_off_uat(
                    user=carol, environment=target, image=image, note="UAT passed"
                )

    def _restart(self, targets):
        for target in targets:
            image = target.current_image
            if image is None or target.backend != "local":
                continue
            backend = get_backend("local", target.backend_settings)
            if backend.running_version(target.backend_key) == image.digest:
                continue
            try:
                backend.deploy(
                    DeployRequest(
                        environment=target.backend_key,
                        settings=backend.settings,
                        repository=image.repository,
                        tag=image.tag,
                        digest=image.digest,
                        git_sha=image.git_sha,
                    )
                )
                self.stdout.write(f"Restarted {image.tag} in {target.label}.")
            except DeployError as exc:
                self.stderr.write(f"Could not restart {image.tag} in {target.label}: {exc}")

    def _print(self, flows, users):
        self.stdout.write("Demo ready. Applications and environments:")
        for slug, targets in flows.items():
            self.stdout.write(f"  {slug}:")
            for target in Target.objects.filter(pk__in=[t.pk for t in targets]):
                tag = target.current_image.tag if target.current_image else "nothing"
                self.stdout.write(
                    f"    {target.name:<18} {tag:<7} "
                    f"{target.health_check_url.removesuffix('/healthz')}/"
                )
        teams: dict[str, list[str]] = {}
        for app in (
            Application.objects.filter(slug__in=flows).select_related("team").order_by("slug")
        ):
            teams.setdefault(app.team.name if app.team else "no team", []).append(app.slug)
        self.stdout.write(
            "Teams (every demo user is in each): "
            + "; ".join(f"{team} owns {', '.join(slugs)}" for team, slugs in teams.items())
        )
        self.stdout.write("Demo users (log in at /admin/):")
        for username, groups in PEOPLE.items():
            if username in SERVICE_ACCOUNTS:
                self.stdout.write(
                    f"  {username:<6} {'(no password)':<18} service account: "
                    f"manage.py commands only (--as {username})"
                )
                continue
            self.stdout.write(
                f"  {username:<6} {remember_password(username):<18} {', '.join(groups)}"
            )


def demo_apps(value: str) -> list[DemoApp]:
    slugs = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in slugs if s not in APPS]
    if unknown:
        raise CommandError(f"--apps {unknown[0]!r} is not one of {', '.join(APPS)}.")
    return [spec for slug, spec in APPS.items() if slug == "sample" or slug in slugs]


def backdated_history(
    environments,
    sha,
    users,
    *,
    weeks=HISTORY_WEEKS,
    seed=12,
    repository=HISTORY_REPOSITORY,
) -> int:
    """Insert finished runs of the past ``weeks`` weeks (before the live demo's own runs) so
    that the DORA page has something to say: versions committed on working days, deployed to
    Dev within the hour, some promoted along the application's flow (Staging, when it has one,
    and Production) days later; a few fail and a few are rolled back in minutes. History rows,
    not live runs: nothing is executed.

    The versions are registered under ``repository`` (one of the application's) at the 1.0.0
    commit, so that a rollback that reaches that far back still starts a working service.
    Returns the number of runs inserted."""
    by_slug = {target.slug: target for target in environments}
    dev, production = by_slug["dev"], by_slug["production"]
    promotions = [t for t in (by_slug.get("staging"), production) if t is not None]
    rng = random.Random(seed)  # noqa: S311 (the same history on every laptop, not a secret)
    start = timezone.now() - timedelta(weeks=weeks)
    runs = []
    for day in range(weeks * 7 - 1):
        moment = start + timedelta(days=day, hours=9 + rng.random() * 8)
        if moment.weekday() >= 5 or rng.random() < 0.25:
            continue  # weekends and quiet days
        image = ImageVersion.objects.create(
            application=dev.application,
            repository=repository,
            tag=f"0.{day}.0",
            digest="sha256:" + hashlib.sha256(f"{repository}-{day}".encode()).hexdigest(),
            git_sha=sha,
            branch="develop",
            commit_message=f"Change {day} (demo history)",
            committed_at=moment,
            registered_at=moment + timedelta(minutes=8),
            registered_by=users["ci"],
        )
        finished = moment + timedelta(minutes=rng.uniform(12, 60))
        runs.append(_history_run(dev, image, finished, rng, users["ci"], RunKind.DEPLOY, 0.06))
        requester = users.get("alice") or users["ci"]
        for target, stop_rate, hours, failure_rate in zip(
            promotions, (0.4, 0.35), ((3, 30), (18, 96)), (0.04, 0.08), strict=False
        ):
            if runs[-1].status == RunStatus.FAILED or rng.random() < stop_rate:
                break
            finished += timedelta(hours=rng.uniform(*hours))
            runs.append(_history_run(target, image, finished, rng, requester, None, failure_rate))
        if runs[-1].environment != production:
            continue
        previous = _last_success(runs, production, runs[-1])
        if runs[-1].status == RunStatus.SUCCEEDED and previous and rng.random() < 0.15:
            clicked = finished + timedelta(hours=rng.uniform(0.5, 6))
            runs.append(
                Run(
                    kind=RunKind.ROLLBACK,
                    environment=production,
                    image=previous.image,
                    replaces=image,
                    requested_by=users["bob"],
                    reason="critical_errors",
                    note="Demo history (backdated)",
                    status=RunStatus.SUCCEEDED,
                    created_at=clicked,
                    queued_at=clicked,
                    started_at=clicked,
                    switched_at=clicked + timedelta(seconds=40),
                    finished_at=clicked + timedelta(seconds=rng.uniform(90, 420)),
                )
            )
            image.is_bad, image.marked_bad_at = True, clicked
            image.bad_reason = "Rolled back in AWS Production: Critical errors (demo history)"
            image.save(update_fields=["is_bad", "marked_bad_at", "bad_reason"])
    now = timezone.now()
    runs = [run for run in runs if run.finished_at < now - timedelta(hours=1)]
    _replacing(runs)
    Run.objects.bulk_create(runs)
    _decisions_and_audit(runs, users)
    return len(runs)


def _replacing(runs) -> None:
    """Set what each history run switched away from: the environment's last success."""
    current = {}
    for run in sorted(runs, key=lambda r: r.finished_at):
        if run.kind != RunKind.ROLLBACK:
            run.replaces = current.get(run.environment_id)
        if run.status == RunStatus.SUCCEEDED:
            current[run.environment_id] = run.image


def _decisions_and_audit(runs, users) -> None:
    """The approvals the history's promotions had (a person per rule, never the requester)
    and the audit trail a real history leaves: each request, decision, end and bad mark."""
    approvers = {
        env.pk: _history_approvers(env, users)
        for env in {run.environment for run in runs if run.required_approvals}
    }
    approvals, entries = [], []
    verbs = {RunKind.DEPLOY: "request_deploy", RunKind.PROMOTION: "request_promotion"}
    for run in runs:
        entries.append(
            AuditEntry(
                created_at=run.created_at,
                actor=run.requested_by,
                action=verbs.get(run.kind, "roll_back"),
                run=run,
                environment=run.environment,
                image=run.image,
                application_id=run.environment.application_id,
                message=f"Requested run #{run.pk}: {run.get_kind_display().lower()} of "
                f"{run.image.tag} to {run.environment} (demo history)",
            )
        )
        for n, user in enumerate(approvers.get(run.environment_id, [])[: run.required_approvals]):
            decided = run.created_at + (run.queued_at - run.created_at) * (n + 1) / 3
            approvals.append(
                Approval(
                    run=run,
                    application_id=run.environment.application_id,
                    user=user,
                    decision=Approval.Decision.APPROVE,
                    digest=run.image.digest,
                    created_at=decided,
                )
            )
            entries.append(
                AuditEntry(
                    created_at=decided,
                    actor=user,
                    action="approve_run",
                    run=run,
                    environment=run.environment,
                    image=run.image,
                    application_id=run.environment.application_id,
                    message=f"Approved run #{run.pk} (demo history)",
                )
            )
        entries.append(
            AuditEntry(
                created_at=run.finished_at,
                action=f"run_{run.status}",
                run=run,
                environment=run.environment,
                image=run.image,
                application_id=run.environment.application_id,
                message=f"Run #{run.pk} {run.status} (demo history)",
            )
        )
        if run.kind == RunKind.ROLLBACK and run.replaces and run.replaces.is_bad:
            entries.append(
                AuditEntry(
                    created_at=run.created_at,
                    actor=run.requested_by,
                    action="mark_bad",
                    image=run.replaces,
                    application_id=run.replaces.application_id,
                    message=f"Marked {run.replaces.tag} bad: {run.replaces.bad_reason}",
                )
            )
    Approval.objects.bulk_create(approvals)
    AuditEntry.objects.bulk_create(entries)


def _history_approvers(environment, users) -> list:
    """One member per approval rule of ``environment``, each rule a different person, none
    of them the history's requester (alice, or ci where there is no alice)."""
    requester = users.get("alice") or users["ci"]
    chosen = []
    for rule in environment.rules:
        members = rule.group.user_set.exclude(pk=requester.pk).exclude(
            pk__in=[u.pk for u in chosen]
        )
        chosen.extend(members.order_by("username")[: rule.count])
    return chosen


def _history_run(environment, image, finished, rng, user, kind, failure_rate) -> Run:
    failed = rng.random() < failure_rate
    started = finished - timedelta(minutes=rng.uniform(2, 6))
    return Run(
        kind=kind or RunKind.PROMOTION,
        environment=environment,
        source_environment=environment.upstream,
        image=image,
        replaces=None,
        requested_by=user,
        note="Demo history (backdated)",
        required_approvals=environment.required_approvals,
        status=RunStatus.FAILED if failed else RunStatus.SUCCEEDED,
        created_at=started - timedelta(minutes=rng.uniform(1, 120)),
        queued_at=started,
        started_at=started,
        switched_at=started + timedelta(seconds=30),
        finished_at=finished,
        error="Health check failed (demo history)" if failed else "",
    )


def _last_success(runs, environment, before):
    for run in reversed(runs):
        if (
            run is not before
            and run.environment == environment
            and run.status == RunStatus.SUCCEEDED
            and run.kind != RunKind.ROLLBACK
            and not run.image.is_bad
        ):
            return run
    return None
