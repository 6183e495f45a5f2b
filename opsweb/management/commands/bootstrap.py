"""Create the seed's four environments, the groups that work them, the first application
(the sample service, deployed into all four) and the scheduled checks.

Idempotent: what exists is left exactly as it is, so an operator's changes survive a rerun.
"""

from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand
from django.db import transaction
from django_q.models import Schedule

from opsweb import services
from opsweb.models import Application, ApprovalRule, Environment

GROUP_PERMISSIONS = {
    "deployers": [
        "request_deploy",
        "request_promotion",
        "view_environment",
        "view_target",
        "view_application",
        "view_imageversion",
        "view_run",
        "view_runevent",
        "view_approval",
        "view_signoff",
        "view_auditentry",
    ],
    "staging approvers": [
        "request_promotion",
        "sign_off_uat",
        "mark_bad",
        "resume_auto_deploy",
        "view_environment",
        "view_target",
        "view_application",
        "view_imageversion",
        "view_run",
        "view_runevent",
        "view_approval",
        "view_signoff",
        "view_auditentry",
    ],
    "production approvers": [
        "request_promotion",
        "sign_off_uat",
        "mark_bad",
        "resume_auto_deploy",
        "freeze_environment",
        "cancel_run",
        "add_changewindow",
        "change_changewindow",
        "delete_changewindow",
        "view_changewindow",
        "view_approvalrule",
        "view_environment",
        "view_target",
        "view_application",
        "view_imageversion",
        "view_run",
        "view_runevent",
        "view_approval",
        "view_signoff",
        "view_auditentry",
    ],
    # An emergency override of a freeze needs approvals from this group (and its members may
    # ask for one).
    "override approvers": [
        "override_freeze",
        "request_promotion",
        "view_environment",
        "view_target",
        "view_application",
        "view_imageversion",
        "view_run",
        "view_runevent",
        "view_approval",
        "view_changewindow",
        "view_auditentry",
    ],
    "ci": [
        "add_imageversion",
        "request_deploy",
        "request_promotion",
        "view_environment",
        "view_target",
        "view_application",
        "view_imageversion",
        "view_run",
        "view_runevent",
        "view_approval",
    ],
}

# (slug, name, upstream slug, approver group, approvals needed from it, fields) in flow order.
ENVIRONMENTS = [
    ("local", "Local Development", None, "deployers", 0, {}),
    ("dev", "AWS Dev", None, "deployers", 0, {"auto_deploy": True}),
    ("staging", "AWS Staging", "dev", "staging approvers", 1, {}),
    (
        "production",
        "AWS Production",
        "staging",
        "production approvers",
        2,
        {"requires_uat_signoff": True, "allow_self_approval": False},
    ),
]

# The first application: the demo's sample service, on the local backend from port 8101 on.
SAMPLE_APPLICATION = {
    "slug": "sample",
    "name": "Sample service",
    "repository": "example/sample",
    "auto_deploy_branch": "develop",
}
SAMPLE_BASE_PORT = 8101


def create_local_application(spec: dict, environments, *, base_port: int, team=None):
    """An application (``spec``: slug, name, repository, auto_deploy_branch) deployed into
    ``environments`` on the local backend, the n-th on port ``base_port`` + n, its processes
    built from the demo's repository (``services.build_application``, unchecked: the seed's
    own data). Returns the application."""
    return services.build_application(
        services.ApplicationSpec(
            slug=spec["slug"],
            name=spec["name"],
            repositories=(spec["repository"],),
            environments=tuple(environments),
            team=team,
            branch=spec.get("auto_deploy_branch", ""),
        ),
        base_port=base_port,
    )


SCHEDULES = [
    ("opsweb: reconcile runs", "opsweb.tasks.reconcile", Schedule.MINUTES, 1),
    ("opsweb: check drift", "opsweb.tasks.check_drift", Schedule.MINUTES, 5),
    ("opsweb: read image scan findings", "opsweb.tasks.read_scan_findings", Schedule.MINUTES, 30),
]


class Command(BaseCommand):
    help = (
        "Create the four environments of the flow, their groups and scheduled checks (idempotent)."
    )

    @transaction.atomic
    def handle(self, *args, **options):
        created = []
        groups = {}
        for name, codenames in GROUP_PERMISSIONS.items():
            group, new = Group.objects.get_or_create(name=name)
            groups[name] = group
            if new:
                group.permissions.set(
                    Permission.objects.filter(
                        content_type__app_label="opsweb", codename__in=codenames
                    )
                )
                created.append(f"group {name!r}")

        by_slug = {}
        for position, (slug, name, upstream, group, needs, fields) in enumerate(ENVIRONMENTS):
            existing = Environment.objects.filter(slug=slug).first()
            if existing:
                by_slug[slug] = existing
                continue
            by_slug[slug] = Environment.objects.create(
                slug=slug,
                name=name,
                position=position * 10,
                upstream=by_slug.get(upstream),
                approver_group=groups[group],
                **fields,
            )
            if needs:
                ApprovalRule.objects.create(
                    environment=by_slug[slug], group=groups[group], count=needs
                )
            created.append(f"environment {name!r}")
        if not Application.objects.exists():
            create_local_application(
                SAMPLE_APPLICATION, list(by_slug.values()), base_port=SAMPLE_BASE_PORT
            )
            created.append(f"application {SAMPLE_APPLICATION['name']!r}")

        for name, func, schedule_type, minutes in SCHEDULES:
            _, new = Schedule.objects.get_or_create(
                name=name,
                defaults={
                    "func": func,
                    "schedule_type": schedule_type,
                    "minutes": minutes,
                    "repeats": -1,
                },
            )
            if new:
                created.append(f"schedule {name!r}")

        if options["verbosity"] == 0:
            return
        if created:
            self.stdout.write("Created " + ", ".join(created) + ".")
        else:
            self.stdout.write("Nothing to do: everything already exists.")
