from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django_q.models import Schedule

from opsweb.models import Target

pytestmark = pytest.mark.django_db


def bootstrap() -> str:
    out = StringIO()
    call_command("bootstrap", stdout=out)
    return out.getvalue()


def test_bootstrap_creates_the_seed_flow_in_order():
    bootstrap()
    envs = list(Target.objects.all())
    assert [e.name for e in envs] == [
        "Local Development",
        "AWS Dev",
        "AWS Staging",
        "AWS Production",
    ]
    local, dev, staging, production = envs
    assert (local.upstream, dev.upstream, staging.upstream, production.upstream) == (
        None,
        None,
        dev,
        staging,
    )
    assert dev.auto_deploy_branch == "develop"
    assert [e.required_approvals for e in envs] == [0, 0, 1, 2]
    assert production.requires_uat_signoff and not production.allow_self_approval
    assert staging.approver_group.name == "staging approvers"
    assert production.approver_group.name == "production approvers"
    assert set(Group.objects.values_list("name", flat=True)) == {
        "deployers",
        "staging approvers",
        "production approvers",
        "override approvers",
        "ci",
    }
    assert Schedule.objects.filter(func="opsweb.tasks.reconcile").exists()


def test_bootstrap_twice_changes_nothing_and_keeps_operator_changes():
    bootstrap()
    production = Target.objects.get(environment__slug="production")
    production.environment.approval_rules.update(count=3)
    Group.objects.get(name="ci").permissions.clear()

    out = bootstrap()

    assert "Nothing to do" in out
    assert Target.objects.count() == 4
    assert Target.objects.get(environment__slug="production").required_approvals == 3
    assert Group.objects.get(name="ci").permissions.count() == 0
    assert Schedule.objects.count() == 3


def test_bootstrap_gives_groups_the_permissions_they_name():
    bootstrap()
    ci = Group.objects.get(name="ci")
    assert ci.permissions.filter(codename="add_imageversion").exists()
    assert not ci.permissions.filter(codename="mark_bad").exists()
    prod = Group.objects.get(name="production approvers")
    assert prod.permissions.filter(codename="sign_off_uat").exists()
