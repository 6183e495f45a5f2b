"""Admin buttons through the Django test client: what each user sees, what a POST does,
permission and CSRF refusals, and query counts that do not grow with history."""

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.html import strip_tags

from opsweb import services
from opsweb.models import Approval, AuditEntry, ImageVersion, Run, RunEvent, RunStatus, Signoff
from tests.conftest import make_image, make_user, succeed_in

pytestmark = pytest.mark.django_db


def login(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def hidden_fields(html: str) -> dict[str, str]:
    """The hidden inputs of the confirmation form: CSRF token, what the page showed (seen),
    the chosen version."""
    form = html[html.index('id="confirm-form"') :]
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))


def post_form(client: Client, url: str, data: dict, *, between=None):
    """GET the confirmation page, then POST it with its hidden fields, as a browser does.
    ``between`` runs after the GET and before the POST (someone else acting meanwhile)."""
    page = client.get(url)
    assert page.status_code == 200, page.status_code
    fields = hidden_fields(page.text)
    if between is not None:
        between()
    return client.post(url, {**fields, **data}, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def pending(flow, alice, bob):
    """A promotion of 2.0.0 to Staging awaiting one approval."""
    v1, v2 = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(flow["staging"], v1)
    succeed_in(flow["dev"], v1)
    succeed_in(flow["dev"], v2)
    return services.request_promotion(user=alice, target=flow["staging"])


def run_page(run):
    return reverse("admin:opsweb_run_change", args=[run.pk])


def test_approver_sees_approve_and_requester_does_not(pending, alice, bob):
    assert "Approve</a>" in login(bob).get(run_page(pending)).text
    page = login(alice).get(run_page(pending)).text
    assert "Approve</a>" not in page and "Cancel</a>" in page
    assert "Approvals: 0 of 1" in page and "asked to promote" in page


def test_approve_confirmation_says_exactly_what_will_happen(pending, bob):
    # The digests are whole in the text (shortened on screen by CSS, whole when copied).
    page = strip_tags(login(bob).get(reverse("admin:opsweb_run_approve", args=[pending.pk])).text)
    assert "AWS Staging" in page
    assert (
        "1.0.0 (" + pending.from_image.digest in page and "2.0.0 (" + pending.image.digest in page
    )
    assert "0 of 1" in page and "Release 2.0.0" in page  # the commit message it carries


def test_approve_posts_with_csrf_and_queues_the_run(pending, bob):
    response = post_form(
        login(bob), reverse("admin:opsweb_run_approve", args=[pending.pk]), {"comment": "ship it"}
    )
    pending.refresh_from_db()
    assert pending.status == RunStatus.QUEUED
    assert any("1 of 1 approvals; it is queued" in m for m in messages_of(response))
    approval = Approval.objects.get(run=pending)
    assert (approval.user.username, approval.comment) == ("bob", "ship it")


def test_post_without_csrf_token_is_refused_and_changes_nothing(pending, bob):
    response = login(bob).post(reverse("admin:opsweb_run_approve", args=[pending.pk]), {})
    assert response.status_code == 403
    assert Approval.objects.count() == 0


def test_crafted_post_by_a_user_without_permission_gets_403(pending, outsider, alice):
    for user in (outsider, alice):  # not an approver; the requester
        client = Client()  # no CSRF enforcement: the permission check alone must refuse
        client.force_login(user)
        response = client.post(reverse("admin:opsweb_run_approve", args=[pending.pk]), {})
        assert response.status_code == 403
    pending.refresh_from_db()
    assert pending.status == RunStatus.PENDING and Approval.objects.count() == 0


def test_rule_refusal_shows_as_an_admin_error_message(flow, bob, carol):
    requester = make_user("root", "production approvers", is_superuser=True)
    image = make_image()
    succeed_in(flow["staging"], image)
    services.sign_off_uat(user=bob, environment=flow["staging"], image=image)
    run = services.request_promotion(user=requester, target=flow["production"], image=image)
    url = reverse("admin:opsweb_run_approve", args=[run.pk])
    client = login(requester)
    page = client.get(url)
    assert page.status_code == 200  # a rule, not a permission: the page says why
    assert "needs approvals from other people" in page.text and "disabled" in page.text
    response = client.post(url, hidden_fields(page.text), follow=True)
    assert any("needs approvals from other people" in m for m in messages_of(response))
    assert Approval.objects.count() == 0


def test_reject_needs_a_comment(pending, bob):
    url = reverse("admin:opsweb_run_reject", args=[pending.pk])
    response = post_form(login(bob), url, {"comment": ""})
    assert "This field is required" in response.text
    pending.refresh_from_db()
    assert pending.status == RunStatus.PENDING
    post_form(login(bob), url, {"comment": "tests are red"})
    pending.refresh_from_db()
    assert pending.status == RunStatus.REJECTED


def test_promote_button_requests_a_promotion(flow, alice, bob, carol):
    v1 = make_image("1.0.0")
    succeed_in(flow["staging"], v1)
    services.sign_off_uat(user=bob, environment=flow["staging"], image=v1)
    staging_url = reverse("admin:opsweb_target_change", args=[flow["staging"].pk])
    assert "Promote to AWS Production" in login(alice).get(staging_url).text
    url = reverse("admin:opsweb_target_promote", args=[flow["staging"].pk])
    page = login(alice).get(url).text
    assert "2 from production approvers, not including you" in page
    response = post_form(login(alice), url, {"note": "weekly release"})
    run = Run.objects.get(environment=flow["production"])
    assert run.status == RunStatus.PENDING and run.note == "weekly release"
    assert response.redirect_chain[-1][0] == run_page(run)


def test_rollback_button_rolls_back_in_one_click(flow, bob, alice):
    prod = flow["production"]
    old, new = make_image("1.0.0"), make_image("2.0.0")
    succeed_in(prod, old)
    succeed_in(prod, new)
    url = reverse("admin:opsweb_target_rollback", args=[prod.pk])
    assert login(alice).get(url).status_code == 403
    page = login(bob).get(url).text
    assert "2.0.0 (" in page and "will be marked bad" in page and "1.0.0 (" in page
    assert '<option value="" selected>' in page  # the reason is the person's to choose
    post_form(login(bob), url, {"reason": "security_vulnerability", "note": "CVE-2026-1"})
    run = Run.objects.get(kind="rollback")
    assert (run.image, run.status, run.requested_by) == (old, RunStatus.QUEUED, bob)
    services.claim_next_run(environment_id=prod.pk)
    new.refresh_from_db()
    assert new.is_bad


def test_mark_bad_and_uat_buttons(flow, bob, alice):
    image = make_image()
    succeed_in(flow["staging"], image)
    assert (
        login(alice).get(reverse("admin:opsweb_imageversion_mark_bad", args=[image.pk])).status_code
        == 403
    )
    post_form(
        login(bob),
        reverse("admin:opsweb_target_signoff", args=[flow["staging"].pk]),
        {"comment": "UAT ok"},
    )
    assert Signoff.objects.get().user == bob
    post_form(
        login(bob),
        reverse("admin:opsweb_imageversion_mark_bad", args=[image.pk]),
        {"reason": "data loss"},
    )
    image.refresh_from_db()
    assert image.is_bad and image.bad_reason == "data loss"


@pytest.mark.parametrize("model", [Approval, Signoff, RunEvent, AuditEntry])
def test_records_cannot_be_added_changed_or_deleted_by_a_superuser(pending, bob, model):
    services.approve_run(user=bob, run=pending)
    image = ImageVersion.objects.first()
    Signoff.objects.create(environment=pending.environment, image=image, user=bob)
    root = make_user("root", is_superuser=True)
    client = login(root)
    obj = model.objects.first()
    name = f"admin:opsweb_{model._meta.model_name}"
    assert client.get(reverse(f"{name}_delete", args=[obj.pk])).status_code == 403
    assert client.get(reverse(f"{name}_add")).status_code == 403
    change = client.get(reverse(f"{name}_change", args=[obj.pk]))
    assert change.status_code == 200 and 'name="_save"' not in change.text
    assert client.post(reverse(f"{name}_change", args=[obj.pk]), {}).status_code == 403
    assert model.objects.filter(pk=obj.pk).exists()


def test_audit_search_for_run_n_lists_that_runs_entries_and_those_naming_it(flow, alice, bob):
    succeed_in(flow["dev"], make_image("1.0.0"))
    run = services.request_promotion(user=alice, target=flow["staging"])
    services.approve_run(user=bob, run=run)
    other = make_image("0.9.0")
    services.audit(bob, "mark_bad", f"Marked 0.9.0 bad: broke what #{run.pk} fixed", image=other)
    services.audit(bob, "mark_bad", "Marked 0.8.0 bad: slow", image=other)
    services.audit(bob, "mark_bad", f"Marked 0.7.0 bad: see #{run.pk}0", image=other)
    root = make_user("root", is_superuser=True)
    url = reverse("admin:opsweb_auditentry_changelist")
    expected = {
        *AuditEntry.objects.filter(run=run).values_list("message", flat=True),
        f"Marked 0.9.0 bad: broke what #{run.pk} fixed",
    }
    assert len(expected) == 3
    for term in [f"run #{run.pk}", f"Run #{run.pk}", f"#{run.pk}", f"  run#{run.pk} "]:
        page = login(root).get(url, {"q": term})
        assert page.status_code == 200
        listed = {m.message for m in AuditEntry.objects.all() if m.message in page.content.decode()}
        assert listed == expected, term
    # Anything else is searched as words, as before.
    words = login(root).get(url, {"q": "slow"}).content.decode()
    assert "Marked 0.8.0 bad: slow" in words and "broke what" not in words


def test_image_search_finds_a_digest_prefix_without_sha256(flow):
    image = make_image("7.7.7")
    root = make_user("root", is_superuser=True)
    prefix = image.digest.removeprefix("sha256:")[:10]
    page = login(root).get(reverse("admin:opsweb_imageversion_changelist"), {"q": prefix}).text
    assert "7.7.7" in page


def history(flow, n):
    user = make_user(f"u{n}", "staging approvers")
    for i in range(n):
        image = make_image()
        run = succeed_in(flow["dev"], image)
        RunEvent.objects.create(run=run, message=f"event {i}")
        Approval.objects.create(run=run, user=user, decision="approve", digest=image.digest)
        AuditEntry.objects.create(actor=user, action="x", message=f"m{i}", run=run)


@pytest.mark.parametrize(
    "model", ["environment", "run", "imageversion", "approval", "runevent", "auditentry", "signoff"]
)
def test_changelist_query_count_does_not_grow_with_history(flow, model):
    client = login(make_user("root", is_superuser=True))
    url = reverse(f"admin:opsweb_{model}_changelist")

    def queries():
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        return len(ctx)

    history(flow, 3)
    few = queries()
    history(flow, 30)
    assert queries() == few


def test_index_shows_the_pipeline_with_drift_and_waiting_runs(pending, bob):
    from opsweb.models import Target

    Target.objects.filter(environment__slug="dev").update(
        drift="service runs nothing, opsweb last deployed 2.0.0"
    )
    page = login(bob).get(reverse("admin:index")).text
    assert "pipeline" in page and "AWS Production" in page
    assert "drift: service runs nothing" in page
    assert f"#{pending.pk} 2.0.0</a> waits: 0 of 1; may approve: bob" in page
    waiting = page.split('id="waiting-for-you"')[1].split("</div>")[0]
    assert f"#{pending.pk}</a>" in waiting  # bob may approve it: it waits for him


def test_index_query_count_does_not_grow_with_history(flow, alice):
    client = login(make_user("root", is_superuser=True))

    def queries():
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(reverse("admin:index")).status_code == 200
        return len(ctx)

    history(flow, 2)
    few = queries()
    history(flow, 20)
    for _ in range(5):
        image = make_image()
        succeed_in(flow["dev"], image)
    assert queries() == few


def test_a_malformed_object_id_is_not_a_server_error(flow):
    client = login(make_user("root", is_superuser=True))
    for model in ("environment", "run", "imageversion"):
        response = client.get(f"/admin/opsweb/{model}/abc/change/")
        assert response.status_code == 302  # the stock "doesn't exist" redirect


def inline_forms(env, **changes) -> dict:
    """The environment page's inline formsets as posted: its rules as they are, no windows."""
    rules = list(env.environment.approval_rules.order_by("id"))
    data = {
        "approval_rules-TOTAL_FORMS": len(rules),
        "approval_rules-INITIAL_FORMS": len(rules),
        "change_windows-TOTAL_FORMS": 0,
        "change_windows-INITIAL_FORMS": 0,
    }
    for i, rule in enumerate(rules):
        data |= {
            f"approval_rules-{i}-id": rule.pk,
            f"approval_rules-{i}-environment": env.environment_id,
            f"approval_rules-{i}-group": rule.group_id,
            f"approval_rules-{i}-count": rule.count,
        }
    return data | changes


def test_environment_edits_are_validated_and_audited(flow):
    from opsweb.models import Target

    root = make_user("root", is_superuser=True)
    client = Client()
    client.force_login(root)
    env = flow["production"]
    url = reverse("admin:opsweb_target_change", args=[env.pk])
    data = {
        "name": env.name,
        "slug": env.slug,
        "position": env.position,
        "upstream": env.upstream_id,
        "approver_group": env.approver_group_id,
        "allow_self_approval": "",
        "requires_uat_signoff": "on",
        "backend": "local",
        "backend_settings": '{"port": 8104, "repository": "/r", "state_dir": "/s", '
        '"start_timeout": "nan"}',
        "auto_deploy_branch": "",
        "health_check_url": "",
        "health_check_window_seconds": 30,
        "auto_rollback": "on",
        "rto_seconds": 300,
        "bake_seconds": 0,
    }
    response = client.post(url, data)
    assert response.status_code == 200 and "start_timeout" in response.text
    assert Target.objects.get(pk=env.pk).rto_seconds == 300
    data["rto_seconds"] = 600
    data["backend_settings"] = "[1, 2]"
    assert "Give an object of settings" in client.post(url, data).text
    data["backend_settings"] = '{"port": 8104, "repository": "/r", "state_dir": "/s"}'
    assert client.post(url, data).status_code == 302
    assert Target.objects.get(pk=env.pk).rto_seconds == 600
    entry = AuditEntry.objects.get(action="configure_environment")
    assert entry.actor == root and "rto_seconds=600" in entry.message


def test_approving_a_run_that_was_queued_meanwhile_explains_why(pending, bob):
    url = reverse("admin:opsweb_run_approve", args=[pending.pk])
    erin = make_user("erin", "staging approvers")
    response = post_form(
        login(bob), url, {}, between=lambda: services.approve_run(user=erin, run=pending)
    )
    assert any(
        f"Run #{pending.pk} changed since you looked: status is now queued" in m
        for m in messages_of(response)
    ), messages_of(response)
    assert not Approval.objects.filter(user=bob).exists()


def test_a_refused_page_says_why(pending, alice):
    page = login(alice).get(reverse("admin:opsweb_run_approve", args=[pending.pk]))
    assert page.status_code == 403
    assert "alice is not in staging approvers, whose members approve runs in AWS Staging." in (
        page.text
    )


def test_buttons_that_cannot_succeed_are_disabled_with_the_reason(pending, bob):
    services.approve_run(user=make_user("erin", "staging approvers"), run=pending)
    assert "Approve</a>" not in login(bob).get(run_page(pending)).text  # run is queued now
    env_page = reverse("admin:opsweb_target_change", args=[pending.environment.pk])
    page = login(bob).get(env_page).text
    assert "Roll back</a>" not in page  # nothing earlier in Staging: disabled, with why
    assert 'aria-disabled="true" title="No earlier version than 1.0.0 succeeded' in page
    assert re.search(r"<strong>Roll back</strong> is not available: .*No earlier version", page)


def test_promote_page_shows_a_bad_version_and_the_missing_signoff(flow, alice, bob):
    image = make_image("4.0.0")
    succeed_in(flow["staging"], image)
    services.mark_bad(user=bob, image=image, reason="corrupts carts")
    page = login(alice).get(reverse("admin:opsweb_target_promote", args=[flow["staging"].pk])).text
    # Bad versions are neither preselected nor offered; the page says why nothing can go.
    assert "Release 4.0.0" not in page.split('id="confirm-form"')[0].split("<select")[-1]
    assert "example/app:4.0.0 is marked bad; choose another version to promote." in page
    assert '<input type="submit" value="Confirm' in page and "disabled" in page


def test_run_list_counts_the_same_approvals_as_the_rules(flow, alice, bob, carol):
    from django.contrib.auth.models import Group

    image = make_image()
    succeed_in(flow["staging"], image)
    services.sign_off_uat(user=bob, environment=flow["staging"], image=image)
    run = services.request_promotion(user=alice, target=flow["production"], image=image)
    services.approve_run(user=bob, run=run)
    services.approve_run(user=carol, run=run)  # queued with 2 of 2
    bob.groups.remove(Group.objects.get(name="production approvers"))  # bob's stops counting
    page = (
        login(make_user("root", is_superuser=True)).get(reverse("admin:opsweb_run_changelist")).text
    )
    assert services.approvals_count(run) == 1
    assert "1 of 2" in page and "2 of 2" not in page


def test_promote_page_offers_no_version_older_than_what_the_target_runs(flow, alice):
    old, current, new = make_image("1.0.0"), make_image("2.0.0"), make_image("3.0.0")
    for image in (old, current, new):
        succeed_in(flow["dev"], image)
    succeed_in(flow["staging"], old)
    succeed_in(flow["staging"], current)
    url = reverse("admin:opsweb_target_promote", args=[flow["dev"].pk])
    page = login(alice).get(url).text
    picker = page[page.index('id="choose"') : page.index("</form>", page.index('id="choose"'))]
    assert f'value="{new.pk}"' in picker and f'value="{old.pk}"' not in picker
    assert (
        "1 version older than what AWS Staging runs (2.0.0) is not offered: going back is a "
        "rollback." in picker
    )
    # Asked for by its id anyway, it is refused with the reason, as the service would.
    refused = login(alice).get(url, {"image": old.pk}).text
    assert "older" in refused[refused.index('id="refusal"') :][:400]
