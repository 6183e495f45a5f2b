"""Load the demo a newcomer clicks through: a sample service, its releases, the four
environments on the local backend, and the people who work them.

Idempotent: a second run changes nothing, except restarting a deployed sample process that is
no longer running (after a reboot, or `demo --stop`). Refuses to run with DEBUG off.
"""

import hashlib
import random
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from opsweb import services, tasks
from opsweb.management.commands.local_admin import remember_password
from opsweb.models import (
    Application,
    ApplicationRepository,
    Approval,
    ApprovalRule,
    AuditEntry,
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
PEOPLE = {
    "alice": ["deployers"],
    "bob": ["staging approvers", "production approvers", "qa", "override approvers"],
    "carol": ["staging approvers", "production approvers", "qa", "sre", "override approvers"],
    "ci": ["ci"],
}
# The demo's Production needs 1 approval from QA and 1 from SRE (carol is in both: her approval
# counts toward one of them only).
PRODUCTION_RULES = [("qa", 1), ("sre", 1)]
# Service accounts run management commands (--as ci) and never log into the web console.
SERVICE_ACCOUNTS = {"ci"}


class Command(BaseCommand):
    help = "Load demo data and start the sample service in all four environments (DEBUG only)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--base-port",
            type=int,
            default=8101,
            help="Local, Dev, Staging and Production listen on this port and the "
            "next three (default 8101).",
        )
        parser.add_argument(
            "--stop",
            action="store_true",
            help="Stop the sample processes the demo started, and nothing else.",
        )

    def handle(self, *args, base_port, stop, **options):
        if not settings.DEBUG:
            raise CommandError(
                "The demo creates users with printed passwords; it runs only with DEBUG on."
            )
        if not 1024 <= base_port <= 65532:
            raise CommandError(f"--base-port {base_port} is outside 1024–65532.")
        call_command("bootstrap", verbosity=0)
        sample = Application.objects.get(slug="sample")
        for repository in (REPOSITORY, HISTORY_REPOSITORY):
            ApplicationRepository.objects.get_or_create(
                repository=repository, defaults={"application": sample}
            )
        environments = Target.objects.filter(application=sample).in_flow()[:4]
        if stop:
            for env in environments:
                if env.backend == "local":
                    get_backend("local", env.backend_settings).stop(env.backend_key)
            self.stdout.write("Stopped the demo's sample processes.")
            return

        repo_dir = Path(settings.OPSWEB["LOCAL_STATE_DIR"]) / "demo-app"
        shas = create_repository(repo_dir, RELEASES)
        self._configure(environments, repo_dir, base_port)
        self._production_rules(environments[3])
        users = self._people()
        images = self._images(shas, users["ci"])
        fresh = not Target.objects.filter(current_image__isnull=False).exists()
        if fresh and not ImageVersion.objects.filter(repository=HISTORY_REPOSITORY).exists():
            # First, so that its runs, approvals and audit entries come before today's.
            backdated_history(environments, shas["1.0.0"], users)
            self.stdout.write(f"Added {HISTORY_WEEKS} weeks of backdated history (DORA page).")
        if fresh:
            self._history(environments, images, users)
        else:
            self._restart(environments)
        self._print(environments, users)

    def _configure(self, environments, repo_dir, base_port):
        for offset, env in enumerate(environments):
            port = base_port + offset
            env.backend = "local"
            env.backend_settings = {
                "repository": str(repo_dir),
                "port": port,
                "state_dir": str(settings.OPSWEB["LOCAL_STATE_DIR"]),
            }
            env.health_check_url = f"http://127.0.0.1:{port}/healthz"
            env.health_check_window_seconds = 8
            env.full_clean()
            env.save()

    def _production_rules(self, production):
        """Two rules instead of bootstrap's one, unless someone changed the rules already."""
        groups = {name: Group.objects.get_or_create(name=name)[0] for name, _ in PRODUCTION_RULES}
        Group.objects.get_or_create(name="override approvers")
        shared = production.environment
        rules = list(shared.approval_rules.select_related("group"))
        if [(r.group.name, r.count) for r in rules] != [("production approvers", 2)]:
            return
        shared.approval_rules.all().delete()
        for name, count in PRODUCTION_RULES:
            ApprovalRule.objects.create(environment=shared, group=groups[name], count=count)

    def _people(self):
        users = {}
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
                    user.set_password(remember_password(username))
                user.save()
                user.groups.set(Group.objects.filter(name__in=groups))
            users[username] = user
        return users

    def _images(self, shas, ci):
        images = {}
        for release in RELEASES:
            sha = shas[release.tag]
            image = ImageVersion.objects.filter(repository=REPOSITORY, tag=release.tag).first()
            if image is None:
                image = ImageVersion.objects.create(
                    application=Application.objects.get(slug="sample"),
                    repository=REPOSITORY,
                    tag=release.tag,
                    digest=digest_for(sha),
                    git_sha=sha,
                    branch="main" if release.tag == "1.2.1" else "develop",
                    commit_message=release.message,
                    registered_by=ci,
                )
            images[release.tag] = image
        return images

    def _history(self, environments, images, users):
        """Walk the real flow so that each environment has history to roll back to."""
        local, dev, staging, production = environments
        alice, bob, carol, ci = users["alice"], users["bob"], users["carol"], users["ci"]

        def execute(run):
            tasks.execute_run(run.pk)
            run.refresh_from_db()
            if run.status != RunStatus.SUCCEEDED:
                raise CommandError(f"Demo run #{run.pk} {run.status}: {run.error}")
            self.stdout.write(f"  {run.environment}: {run.image.tag}")

        self.stdout.write("Deploying the sample service through the flow:")
        for tag in ("1.0.0", "1.1.0"):
            execute(services.request_deploy(user=ci, environment=dev, image=images[tag]))
            run = services.request_promotion(user=alice, target=staging, image=images[tag])
            execute(services.approve_run(user=bob, run=run, comment="Looks good in Dev"))
            services.sign_off_uat(
                user=carol, environment=staging, image=images[tag], note="UAT passed"
            )
            if tag == "1.0.0":
                run = services.request_promotion(user=alice, target=production, image=images[tag])
                services.approve_run(user=bob, run=run)
                execute(services.approve_run(user=carol, run=run))
        execute(services.request_deploy(user=ci, environment=dev, image=images["1.2.0"]))
        execute(services.request_deploy(user=alice, environment=local, image=images["1.2.1"]))

    def _restart(self, environments):
        for env in environments:
            image = env.current_image
            if image is None or env.backend != "local":
                continue
            backend = get_backend("local", env.backend_settings)
            if backend.running_version(env.backend_key) == image.digest:
                continue
            try:
                backend.deploy(
                    DeployRequest(
                        environment=env.backend_key,
                        settings=backend.settings,
                        repository=image.repository,
                        tag=image.tag,
                        digest=image.digest,
                        git_sha=image.git_sha,
                    )
                )
                self.stdout.write(f"Restarted {image.tag} in {env}.")
            except DeployError as exc:
                self.stderr.write(f"Could not restart {image.tag} in {env}: {exc}")

    def _print(self, environments, users):
        self.stdout.write("Demo ready. Environments (sample service):")
        for env in Target.objects.filter(pk__in=[e.pk for e in environments]):
            tag = env.current_image.tag if env.current_image else "nothing"
            self.stdout.write(
                f"  {env.name:<18} {tag:<7} {env.health_check_url.removesuffix('/healthz')}/"
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


def backdated_history(environments, sha, users, *, weeks=HISTORY_WEEKS, seed=12) -> int:
    """Insert finished runs of the past ``weeks`` weeks (before the live demo's own runs) so
    that the DORA page has something to say: versions committed on working days, deployed to
    Dev within the hour, some promoted to Staging and Production days later; a few fail and
    a few are rolled back in minutes. History rows, not live runs: nothing is executed.

    The versions are registered under HISTORY_REPOSITORY at the 1.0.0 commit, so that a
    rollback that reaches that far back still starts a working sample service.
    Returns the number of runs inserted."""
    _local, dev, staging, production = environments
    rng = random.Random(seed)  # noqa: S311 (the same history on every laptop, not a secret)
    start = timezone.now() - timedelta(weeks=weeks)
    runs = []
    for day in range(weeks * 7 - 1):
        moment = start + timedelta(days=day, hours=9 + rng.random() * 8)
        if moment.weekday() >= 5 or rng.random() < 0.25:
            continue  # weekends and quiet days
        image = ImageVersion.objects.create(
            application=environments[0].application,
            repository=HISTORY_REPOSITORY,
            tag=f"0.{day}.0",
            digest="sha256:" + hashlib.sha256(f"history-{day}".encode()).hexdigest(),
            git_sha=sha,
            branch="develop",
            commit_message=f"Change {day} (demo history)",
            committed_at=moment,
            registered_at=moment + timedelta(minutes=8),
            registered_by=users["ci"],
        )
        finished = moment + timedelta(minutes=rng.uniform(12, 60))
        runs.append(_history_run(dev, image, finished, rng, users["ci"], RunKind.DEPLOY, 0.06))
        if runs[-1].status == RunStatus.FAILED or rng.random() < 0.4:
            continue
        finished += timedelta(hours=rng.uniform(3, 30))
        requester = users.get("alice") or users["ci"]
        runs.append(_history_run(staging, image, finished, rng, requester, None, 0.04))
        if runs[-1].status == RunStatus.FAILED or rng.random() < 0.35:
            continue
        finished += timedelta(hours=rng.uniform(18, 96))
        runs.append(_history_run(production, image, finished, rng, requester, None, 0.08))
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
                message=f"Requested run #{run.pk}: {run.get_kind_display().lower()} of "
                f"{run.image.tag} to {run.environment} (demo history)",
            )
        )
        for n, user in enumerate(approvers.get(run.environment_id, [])[: run.required_approvals]):
            decided = run.created_at + (run.queued_at - run.created_at) * (n + 1) / 3
            approvals.append(
                Approval(
                    run=run,
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
