"""Many applications on the organisation's shared environments (#23).

An environment becomes the shared stage of the flow with the organisation's rules; what was
per service moves to a deployment target (one application in one environment). An existing
install becomes one application — ``sample``, or named after its image repository when it has
exactly one — that keeps every run, approval, sign-off and audit entry: each environment's
target takes the environment's id, so every reference to it stays valid while foreign keys are
pointed at the target table.

On PostgreSQL the steps that touch big tables are cheap: new columns are nullable (no rewrite),
the image versions are backfilled in batches of 5,000, and the run table's foreign key is pointed at the target table. The application index on image versions is built concurrently by 0019.
"""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models
from django.db.models import Q

# What moved from the environment to its target, in the order the admin shows it.
TARGET_FIELDS = [
    "backend",
    "backend_settings",
    "auto_deploy_paused",
    "paused_reason",
    "health_check_url",
    "health_check_window_seconds",
    "auto_rollback",
    "rto_seconds",
    "current_image_id",
    "current_since",
    "bake_seconds",
    "alarms",
    "roll_back_on_vulnerability",
    "security_alert",
    "drift",
    "drift_checked_at",
]
BATCH = 5000


def application_for(repositories):
    """(slug, name) of the application an existing install becomes."""
    if len(repositories) == 1:
        last = repositories[0].rsplit("/", 1)[-1]
        slug = "".join(c if c.isalnum() or c == "-" else "-" for c in last.lower())[:50] or "sample"
        return slug, last[:100]
    return "sample", "Sample service"


def forwards(apps, schema_editor):
    Environment = apps.get_model("opsweb", "Environment")
    Target = apps.get_model("opsweb", "Target")
    Application = apps.get_model("opsweb", "Application")
    ApplicationRepository = apps.get_model("opsweb", "ApplicationRepository")
    ImageVersion = apps.get_model("opsweb", "ImageVersion")
    environments = list(Environment.objects.order_by("position"))
    repositories = sorted(set(ImageVersion.objects.values_list("repository", flat=True)))
    if not environments and not repositories:
        return  # a new install: `manage.py bootstrap` creates the first application
    slug, name = application_for(repositories)
    branch = next((e.auto_deploy_branch for e in environments if e.auto_deploy_branch), "")
    app = Application.objects.create(slug=slug, name=name, auto_deploy_branch=branch)
    for repository in repositories:
        ApplicationRepository.objects.create(application=app, repository=repository)
    for env in environments:
        Target.objects.create(
            id=env.id,
            application=app,
            environment=env,
            **{field: getattr(env, field) for field in TARGET_FIELDS},
        )
        if env.auto_deploy_branch:
            env.auto_deploy = True
            env.save(update_fields=["auto_deploy"])
    if environments:
        with schema_editor.connection.cursor() as cursor:
            from django.core.management.color import no_style

            for sql in schema_editor.connection.ops.sequence_reset_sql(no_style(), [Target]):
                cursor.execute(sql)
    last = 0
    while True:
        ids = list(
            ImageVersion.objects.filter(id__gt=last, application__isnull=True)
            .order_by("id")
            .values_list("id", flat=True)[:BATCH]
        )
        if not ids:
            break
        ImageVersion.objects.filter(id__in=ids).update(application=app)
        last = ids[-1]
    _permissions(apps)


def _permissions(apps):
    """Groups keep what they could do: whoever could view or change an environment can view
    or change its targets, and view applications; resuming auto-deploy is a target's."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    environment_type = ContentType.objects.filter(app_label="opsweb", model="environment").first()
    if environment_type is None:
        return
    target_type, _ = ContentType.objects.get_or_create(app_label="opsweb", model="target")
    application_type, _ = ContentType.objects.get_or_create(
        app_label="opsweb", model="application"
    )
    Permission.objects.filter(content_type=environment_type, codename="resume_auto_deploy").update(
        content_type=target_type
    )

    def permission(content_type, codename, name):
        return Permission.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": name}
        )[0]

    grants = {
        "view_environment": [
            permission(target_type, "view_target", "Can view deployment target"),
            permission(application_type, "view_application", "Can view application"),
        ],
        "change_environment": [
            permission(target_type, "change_target", "Can change deployment target"),
            permission(application_type, "change_application", "Can change application"),
        ],
        "add_environment": [
            permission(target_type, "add_target", "Can add deployment target"),
            permission(application_type, "add_application", "Can add application"),
        ],
    }
    for group in Group.objects.all():
        held = set(group.permissions.values_list("codename", flat=True))
        for codename, permissions in grants.items():
            if codename in held:
                group.permissions.add(*permissions)


def backwards(apps, schema_editor):
    Target = apps.get_model("opsweb", "Target")
    Environment = apps.get_model("opsweb", "Environment")
    for target in Target.objects.all():
        Environment.objects.filter(pk=target.environment_id).update(
            **{field: getattr(target, field) for field in TARGET_FIELDS},
            auto_deploy_branch=target.application.auto_deploy_branch
            if target.environment.auto_deploy
            else "",
        )


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("opsweb", "0017_events_run_stopped"),
    ]

    operations = [
        migrations.CreateModel(
            name="Application",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("slug", models.SlugField(unique=True)),
                ("name", models.CharField(max_length=100, unique=True)),
                ("auto_deploy_branch", models.CharField(blank=True, help_text="Versions CI registers on this branch deploy by themselves to the auto-deploy environments (AWS Dev).", max_length=200)),
                ("repository_url", models.URLField(blank=True, help_text="The source repository's web address (https://github.com/org/app), for links to commits and comparisons.", max_length=500)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("team", models.ForeignKey(blank=True, help_text="The team that owns it: only its members request, roll back and cancel its runs (approvals follow the approval rules). Empty: anyone the environment allows.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name="applications", to="auth.group")),
            ],
            options={"ordering": ["name", "id"]},
        ),
        migrations.CreateModel(
            name="ApplicationRepository",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("repository", models.CharField(error_messages={"unique": "Another application already releases this repository."}, max_length=255, unique=True)),
                ("application", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="repositories", to="opsweb.application")),
            ],
            options={"ordering": ["repository"], "verbose_name_plural": "application repositories"},
        ),
        migrations.CreateModel(
            name="Target",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("backend", models.CharField(choices=[("local", "Local process"), ("ecs", "AWS ECS"), ("ec2", "AWS EC2")], default="local", max_length=20)),
                ("backend_settings", models.JSONField(blank=True, default=dict)),
                ("auto_deploy_paused", models.BooleanField(default=False)),
                ("paused_reason", models.CharField(blank=True, max_length=300)),
                ("health_check_url", models.URLField(blank=True)),
                ("health_check_window_seconds", models.PositiveIntegerField(default=30, help_text="How long to keep retrying the health check after a deploy.")),
                ("auto_rollback", models.BooleanField(default=True, help_text="Roll back by itself when a deploy fails its health check.")),
                ("rto_seconds", models.PositiveIntegerField(default=300, help_text="Recovery time objective for a rollback.")),
                ("current_since", models.DateTimeField(blank=True, null=True)),
                ("bake_seconds", models.PositiveIntegerField(blank=True, default=0, help_text="After the health check passes, keep watching the alarms this long before the run succeeds.")),
                ("alarms", models.JSONField(blank=True, default=list, help_text='Watched during the bake. ECS/EC2: [{"name": "app-5xx", "kind": "errors"}] (CloudWatch alarms). Local: [{"url": "http://127.0.0.1:8001/metrics", "field": "errors", "threshold": 5, "kind": "errors"}]. Kinds: errors, latency, saturation.')),
                ("roll_back_on_vulnerability", models.BooleanField(default=False, help_text="When a re-read scan finds a blocking vulnerability in the running version, roll back to the newest stable version without one.")),
                ("security_alert", models.CharField(blank=True, help_text="Set by opsweb: the running version has blocking findings and nothing safe to roll back to.", max_length=500)),
                ("drift", models.CharField(blank=True, max_length=500)),
                ("drift_checked_at", models.DateTimeField(blank=True, null=True)),
                ("application", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="targets", to="opsweb.application")),
                ("environment", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="targets", to="opsweb.environment")),
                ("current_image", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="opsweb.imageversion")),
            ],
            options={
                "base_manager_name": "objects",
                "verbose_name": "deployment target",
                "ordering": ["application__name", "application_id", "environment__position"],
                "permissions": [("resume_auto_deploy", "Can resume auto-deploy")],
                "constraints": [
                    models.UniqueConstraint(fields=("application", "environment"), name="one_target_per_application_per_environment", violation_error_message="This application is already deployed into that environment."),
                ],
            },
        ),
        migrations.AddField(
            model_name="environment",
            name="auto_deploy",
            field=models.BooleanField(default=False, help_text="Deploy every version CI registers on an application's auto-deploy branch (AWS Dev)."),
        ),
        migrations.AddField(
            model_name="approvalrule",
            name="application",
            field=models.ForeignKey(blank=True, help_text="Empty: the organisation's rule, for every application.", null=True, on_delete=django.db.models.deletion.CASCADE, related_name="approval_rules", to="opsweb.application"),
        ),
        migrations.AddField(
            model_name="changewindow",
            name="application",
            field=models.ForeignKey(blank=True, help_text="Empty: every application.", null=True, on_delete=django.db.models.deletion.CASCADE, related_name="change_windows", to="opsweb.application"),
        ),
        migrations.AddField(
            model_name="notificationchannel",
            name="application",
            field=models.ForeignKey(blank=True, help_text="Empty: every application.", null=True, on_delete=django.db.models.deletion.CASCADE, related_name="notification_channels", to="opsweb.application"),
        ),
        migrations.AddField(
            model_name="imageversion",
            name="application",
            field=models.ForeignKey(blank=True, null=True, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name="versions", to="opsweb.application"),
        ),
        migrations.RunPython(forwards, backwards),
        # Runs, sign-offs and audit entries point at the target that took the environment's id.
        migrations.AlterField(
            model_name="run",
            name="environment",
            field=models.ForeignKey(help_text="Where the run deploys: its application's target in an environment.", on_delete=django.db.models.deletion.PROTECT, related_name="runs", to="opsweb.target"),
        ),
        migrations.AlterField(
            model_name="run",
            name="source_environment",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="opsweb.target"),
        ),
        migrations.AlterField(
            model_name="signoff",
            name="environment",
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="signoffs", to="opsweb.target"),
        ),
        migrations.AlterField(
            model_name="auditentry",
            name="environment",
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="opsweb.target"),
        ),
        migrations.RemoveConstraint(model_name="approvalrule", name="one_rule_per_group_per_environment"),
        migrations.AddConstraint(
            model_name="approvalrule",
            constraint=models.UniqueConstraint(condition=Q(application__isnull=True), fields=("environment", "group"), name="one_rule_per_group_per_environment", violation_error_message="This environment already has a rule for that group."),
        ),
        migrations.AddConstraint(
            model_name="approvalrule",
            constraint=models.UniqueConstraint(condition=Q(application__isnull=False), fields=("environment", "application", "group"), name="one_rule_per_group_per_application_environment", violation_error_message="This application already has a rule for that group here."),
        ),
        migrations.AlterModelOptions(
            name="environment",
            options={"ordering": ["position"], "permissions": [("freeze_environment", "Can freeze and unfreeze an environment")]},
        ),
    ] + [
        migrations.RemoveField(model_name="environment", name=field.removesuffix("_id"))
        for field in TARGET_FIELDS + ["auto_deploy_branch"]
    ]
