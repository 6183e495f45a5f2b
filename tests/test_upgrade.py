"""Upgrade without loss: a populated one-application install (migration 0017, before
applications) migrated to the latest schema keeps every run, approval, sign-off and audit
entry, each pointing at a target of the application the install became — on SQLite and, with
DATABASE_URL, on PostgreSQL (where 0019 builds its index concurrently)."""

import io
from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from opsweb.models import (
    Application,
    ApplicationRepository,
    Approval,
    ApprovalRule,
    AuditEntry,
    Environment,
    ImageVersion,
    Run,
    Signoff,
    Target,
)
from tests.conftest import fake_digest, fake_sha

BEFORE = [("opsweb", "0017_events_run_stopped")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def populate(apps, repositories: list[str]) -> dict:
    """One service released the 0017 way: four environments holding what runs, a history of
    runs with approvals, a sign-off and the audit trail, and a group allowed to view
    environments."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ContentType = apps.get_model("contenttypes", "ContentType")
    User = apps.get_model("auth", "User")
    Environment0 = apps.get_model("opsweb", "Environment")
    Image0 = apps.get_model("opsweb", "ImageVersion")
    Run0 = apps.get_model("opsweb", "Run")
    Approval0 = apps.get_model("opsweb", "Approval")
    Signoff0 = apps.get_model("opsweb", "Signoff")
    Audit0 = apps.get_model("opsweb", "AuditEntry")
    Rule0 = apps.get_model("opsweb", "ApprovalRule")

    approvers = Group.objects.create(name="approvers")
    environment_type, _ = ContentType.objects.get_or_create(app_label="opsweb", model="environment")
    view, _ = Permission.objects.get_or_create(
        content_type=environment_type,
        codename="view_environment",
        defaults={"name": "Can view environment"},
    )
    approvers.permissions.add(view)
    bob = User.objects.create(username="bob")
    envs = {}
    upstream = None
    for n, slug in enumerate(["local", "dev", "staging", "production"]):
        envs[slug] = Environment0.objects.create(
            name=slug.title(),
            slug=slug,
            position=n * 10,
            upstream=upstream if slug in ("staging", "production") else None,
            backend="local",
            backend_settings={"repository": "/srv/app", "port": 9150 + n, "state_dir": "/tmp"},
            auto_deploy_branch="develop" if slug == "dev" else "",
            approver_group=approvers,
            health_check_url=f"http://127.0.0.1:{9150 + n}/healthz",
        )
        upstream = envs[slug] if slug != "local" else None
    Rule0.objects.create(environment=envs["production"], group=approvers, count=1)
    now = timezone.now()
    images = [
        Image0.objects.create(
            repository=repositories[n % len(repositories)],
            tag=f"1.{n}.0",
            digest=fake_digest(f"upgrade-{n}"),
            git_sha=fake_sha(f"upgrade-{n}"),
            branch="develop",
        )
        for n in range(3)
    ]
    runs = []
    for n, image in enumerate(images):
        for source, slug in ((None, "dev"), ("dev", "staging"), ("staging", "production")):
            finished = now - timedelta(days=10 - n, hours=-len(runs))
            run = Run0.objects.create(
                kind="deploy" if source is None else "promotion",
                environment=envs[slug],
                source_environment=envs[source] if source else None,
                image=image,
                requested_by=bob,
                status="succeeded",
                required_approvals=1 if slug == "production" else 0,
                created_at=finished - timedelta(minutes=5),
                started_at=finished - timedelta(minutes=4),
                finished_at=finished,
            )
            runs.append(run)
            Audit0.objects.create(
                actor=bob,
                action="request_promotion" if source else "request_deploy",
                environment=envs[slug],
                image=image,
                run=run,
                message=f"Requested run #{run.pk}",
            )
            if slug == "production":
                Approval0.objects.create(run=run, user=bob, decision="approve", digest=image.digest)
            if slug == "staging":
                Signoff0.objects.create(environment=envs[slug], image=image, user=bob)
    for slug in ("dev", "staging", "production"):
        Environment0.objects.filter(pk=envs[slug].pk).update(
            current_image=images[-1], current_since=now
        )
    Audit0.objects.create(actor=bob, action="mark_bad", image=images[0], message="Marked bad")
    return {
        "environments": {slug: env.pk for slug, env in envs.items()},
        "runs": {run.pk: (run.environment_id, run.source_environment_id) for run in runs},
        "approvals": set(Approval0.objects.values_list("pk", "run_id")),
        "signoffs": set(Signoff0.objects.values_list("pk", "environment_id", "image_id")),
        "audit": set(Audit0.objects.values_list("pk", "environment_id", "run_id")),
        "images": [image.pk for image in images],
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("repositories", "slug"),
    [
        (["123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/shop"], "shop"),
        (["example/app", "example/app-history"], "sample"),
    ],
)
def test_an_install_upgrades_to_one_application_keeping_every_record(repositories, slug):
    before = populate(migrate(BEFORE), repositories)
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    app = Application.objects.get()
    assert app.slug == slug and app.auto_deploy_branch == "develop"
    assert sorted(ApplicationRepository.objects.values_list("repository", flat=True)) == sorted(
        repositories
    )
    # Each environment's target took its id, in flow order, with what it ran and its backend.
    targets = {t.slug: t for t in Target.objects.in_flow()}
    assert {s: t.pk for s, t in targets.items()} == before["environments"]
    assert all(t.application == app for t in targets.values())
    assert targets["production"].current_image.tag == "1.2.0"
    assert targets["local"].backend_settings["port"] == 9150
    assert targets["production"].upstream == targets["staging"]
    assert Environment.objects.get(slug="dev").auto_deploy
    assert targets["dev"].auto_deploy_branch == "develop"
    assert ApprovalRule.objects.for_target(targets["production"]).get().count == 1

    runs = {run.pk: run for run in Run.objects.select_related("environment__application")}
    assert {
        pk: (run.environment_id, run.source_environment_id) for pk, run in runs.items()
    } == before["runs"]
    assert {run.environment.application.slug for run in runs.values()} == {slug}
    assert set(Approval.objects.values_list("pk", "run_id")) == before["approvals"]
    assert (
        set(Signoff.objects.values_list("pk", "environment_id", "image_id")) == (before["signoffs"])
    )
    assert all(s.environment.application == app for s in Signoff.objects.all())
    assert (
        set(AuditEntry.objects.values_list("pk", "environment_id", "run_id")) == (before["audit"])
    )
    assert set(ImageVersion.objects.values_list("application__slug", flat=True)) == {slug}
    # 0024 gave every approval and every audit entry naming a target or a version its
    # application, so the lists filtered by application (?app=) show the old history too.
    assert set(Approval.objects.values_list("application__slug", flat=True)) == {slug}
    assert set(
        AuditEntry.objects.exclude(environment=None, image=None).values_list(
            "application__slug", flat=True
        )
    ) == {slug}
    # Whoever could view environments can view their targets and the application.
    from django.contrib.auth.models import Group

    held = set(Group.objects.get(name="approvers").permissions.values_list("codename", flat=True))
    assert {"view_environment", "view_target", "view_application"} <= held
    # New targets number after the old ones: the next application's ids do not collide.
    assert Target.objects.create(
        application=Application.objects.create(slug="web", name="Web"),
        environment=Environment.objects.get(slug="dev"),
    ).pk > max(before["environments"].values())


@pytest.mark.django_db
def test_fill_applications_fills_what_old_processes_wrote_after_the_migration(flow, alice, bob):
    from django.core.management import call_command

    from opsweb import services
    from tests.conftest import make_image, succeed_in

    succeed_in(flow["dev"], make_image("1.0.0"))
    run = services.request_promotion(user=alice, target=flow["staging"])
    services.approve_run(user=bob, run=run)
    # A web server still on the code from before applications writes them without one.
    entries = list(AuditEntry.objects.filter(run=run).values_list("pk", "action", "actor_id"))
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE opsweb_auditentry SET application_id = NULL WHERE run_id = %s", [run.pk]
        )
        cursor.execute(
            "UPDATE opsweb_approval SET application_id = NULL WHERE run_id = %s", [run.pk]
        )
    sample = run.environment.application
    assert not AuditEntry.objects.filter(run=run, application=sample).exists()

    out = io.StringIO()
    call_command("fill_applications", stdout=out)
    assert out.getvalue().strip() == (
        f"Filled the application of {len(entries)} audit entries and 1 approval."
    )
    assert AuditEntry.objects.filter(run=run, application=sample).count() == len(entries)
    assert Approval.objects.get(run=run).application == sample
    # Nothing else about the records changed, and a second run finds nothing to fill.
    assert list(AuditEntry.objects.filter(run=run).values_list("pk", "action", "actor_id")) == (
        entries
    )
    again = io.StringIO()
    call_command("fill_applications", stdout=again)
    assert again.getvalue().strip() == "Filled the application of 0 audit entries and 0 approvals."
