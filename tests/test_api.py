"""The HTTP API (/api/v1/) through Django's test client: the same services, rules and sentences
as the commands, status codes that mean one thing each, problem+json errors, tokens and their
scopes, Idempotency-Key, cursors and the throttle."""

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.utils import timezone

from opsweb import services
from opsweb.models import (
    ApiToken,
    Application,
    ApplicationRepository,
    AuditEntry,
    ImageVersion,
    Run,
    RunStatus,
    Target,
)
from tests.conftest import fake_digest, make_image, make_user, succeed_in

API = "/api/v1"


def make_token(user, scopes="read deploy approve", **fields):
    admin = make_user("token-admin-" + user.username, is_superuser=True)
    token, secret = services.create_api_token(
        user=admin, owner=user, name=f"{user.username} token", scopes=scopes, **fields
    )
    return token, secret


def call(client, method, path, secret=None, body=None, **headers):
    if secret:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    kwargs = {"content_type": "application/json"} if body is not None else {}
    data = json.dumps(body) if body is not None else None
    if data is not None:
        kwargs["data"] = data
    return getattr(client, method)(API + path, **kwargs, **headers)


def written():
    return (
        Run.objects.count(),
        ImageVersion.objects.count(),
        AuditEntry.objects.count(),
        ApiToken.objects.filter(last_used_at__isnull=False).count(),
    )


@pytest.fixture
def ci(ci_user):
    return make_token(ci_user)[1]


def register_body(tag="3.0.0", **fields):
    return {
        "repository": "example/app",
        "tag": tag,
        "digest": fake_digest(f"example/app:{tag}"),
        "branch": "develop",
        **fields,
    }


# -- register and deploy -----------------------------------------------------------------------


def test_api_register_image_queues_the_dev_deploy_and_names_the_token(client, ci):
    response = call(client, "post", "/images", ci, register_body())

    assert response.status_code == 201, response.content
    data = response.json()
    assert data["created"] and data["image"]["tag"] == "3.0.0"
    assert data["image"]["application"] == "sample"
    [run] = data["runs"]
    assert run["environment"] == "dev" and run["status"] == RunStatus.QUEUED
    assert f"Queued run #{run['id']} to deploy it to" in data["message"]
    entry = AuditEntry.objects.get(action="register_image")
    assert entry.actor.username == "ci" and entry.token.name == "ci token"
    assert "(through API token 'ci token'" in entry.message


def test_api_register_known_digest_is_200(client, ci):
    call(client, "post", "/images", ci, register_body())
    again = call(client, "post", "/images", ci, register_body())
    assert again.status_code == 200 and not again.json()["created"]
    assert ImageVersion.objects.filter(tag="3.0.0").count() == 1


def test_api_idempotency_key_replays_the_first_response(client, ci):
    first = call(client, "post", "/images", ci, register_body(), HTTP_IDEMPOTENCY_KEY="build-7")
    before = written()
    retry = call(client, "post", "/images", ci, register_body(), HTTP_IDEMPOTENCY_KEY="build-7")

    assert retry.status_code == 201 and retry.json() == first.json()
    assert retry["Idempotent-Replayed"] == "true"
    assert written()[:3] == before[:3]
    other = call(
        client, "post", "/images", ci, register_body("3.0.1"), HTTP_IDEMPOTENCY_KEY="build-7"
    )
    assert other.status_code == 422
    assert "used for a different request" in other.json()["detail"]
    assert not ImageVersion.objects.filter(tag="3.0.1").exists()


def test_api_deploy_is_202_and_the_run_can_be_followed(client, ci, flow):
    image = make_image("1.2.0")
    response = call(
        client,
        "post",
        "/applications/sample/environments/dev/deploys",
        ci,
        {"image": "example/app:1.2.0", "note": "by hand"},
    )

    assert response.status_code == 202, response.content
    run_id = response.json()["run"]["id"]
    assert response.json()["message"] == (
        f"Requested run #{run_id}: deploy {services.describe(image)} to {flow['dev']}."
    )
    status = call(client, "get", f"/runs/{run_id}?wait=0.2", ci)
    assert status.status_code == 200
    assert status.json()["status"] == RunStatus.QUEUED and not status.json()["terminal"]


def test_api_short_form_works_with_one_application_and_asks_with_two(client, ci, flow):
    make_image("1.2.0")
    short = call(client, "post", "/environments/dev/deploys", ci, {"image": "example/app:1.2.0"})
    assert short.status_code == 202

    Application.objects.create(slug="other", name="Other")
    again = call(client, "post", "/environments/dev/deploys", ci, {"image": "example/app:1.2.0"})
    assert again.status_code == 422
    assert again["Content-Type"] == "application/problem+json"
    assert "Several applications" in again.json()["detail"]
    named = call(client, "get", "/environments/dev?application=sample", ci)
    assert named.status_code == 200 and named.json()["application"] == "sample"


# -- refusals: 401, 403, 404, 409, 422 -----------------------------------------------------------


def test_api_rule_refusal_is_409_with_the_services_sentence(client, alice, flow):
    secret = make_token(alice)[1]
    v1 = make_image("1.0.0")
    succeed_in(flow["dev"], v1)
    before = written()

    # Production takes promotions from Staging, where nothing ran yet.
    response = call(
        client, "post", "/applications/sample/environments/production/promotions", secret, {}
    )

    assert response.status_code == 409, response.content
    problem = response.json()
    assert response["Content-Type"] == "application/problem+json"
    assert problem["status"] == 409 and problem["title"] == "Conflict"
    try:
        services.request_promotion(
            user=alice, target=flow["production"], source=flow["staging"], image=None
        )
    except services.ReleaseError as exc:
        assert problem["detail"] == str(exc)
    assert written()[:3] == before[:3]


def test_api_permission_refusal_is_403_with_the_policy_sentence(client, outsider, flow):
    secret = make_token(outsider)[1]
    make_image("1.2.0")
    response = call(client, "post", "/environments/dev/deploys", secret, {"image": "1.2.0"})

    assert response.status_code == 403
    assert "mallory" in response.json()["detail"] and "not allowed" in response.json()["detail"]
    assert not Run.objects.exists()


def test_api_token_without_the_scope_is_403(client, ci_user, flow):
    secret = make_token(ci_user, scopes="read")[1]
    response = call(client, "post", "/images", secret, register_body())
    assert response.status_code == 403
    assert "does not have the 'deploy' scope" in response.json()["detail"]
    assert not ImageVersion.objects.exists()
    assert call(client, "get", "/runs", secret).status_code == 200


@pytest.mark.parametrize("problem", ["missing", "garbage", "expired", "revoked", "inactive"])
def test_api_bad_credentials_are_401_and_write_nothing(client, ci_user, problem):
    token, secret = make_token(ci_user)
    if problem == "missing":
        secret = None
    elif problem == "garbage":
        secret = "opsweb_" + "x" * 43
    elif problem == "expired":
        ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(1))
    elif problem == "revoked":
        services.revoke_api_token(user=ci_user, token=token)
    else:
        ci_user.is_active = False
        ci_user.save()
    before = written()

    response = call(client, "post", "/images", secret, register_body())

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"]
    assert written() == before


def test_api_token_for_one_application_cannot_act_on_another(client, ci_user, flow):
    other = Application.objects.create(slug="other", name="Other")
    ApplicationRepository.objects.create(application=other, repository="example/other")
    secret = make_token(ci_user, application=other)[1]

    register = call(client, "post", "/images", secret, register_body())
    deploy = call(
        client, "post", "/applications/sample/environments/dev/deploys", secret, {"image": "x"}
    )
    listed = call(client, "get", "/applications", secret)

    assert (
        register.status_code == 403 and "only for application 'other'" in register.json()["detail"]
    )
    assert deploy.status_code == 403
    assert [a["slug"] for a in listed.json()["items"]] == ["other"]
    assert not ImageVersion.objects.exists() and not Run.objects.exists()


def test_api_unknown_things_are_404_and_bad_input_422(client, ci):
    assert call(client, "get", "/runs/999", ci).status_code == 404
    assert call(client, "get", "/applications/nope/environments", ci).status_code == 404
    missing_env = call(client, "get", "/applications/sample/environments/nowhere", ci)
    assert (
        missing_env.status_code == 404
        and "No environment 'nowhere'" in missing_env.json()["detail"]
    )
    bad = call(client, "post", "/images", ci, register_body(digest="sha256:abc"))
    assert bad.status_code == 422 and "is not a digest" in bad.json()["detail"]
    nul = call(client, "post", "/images", ci, register_body(commit_message="a\x00b"))
    assert nul.status_code == 422 and "NUL" in nul.json()["detail"]
    assert not ImageVersion.objects.exists()


def test_api_repeated_bad_credentials_are_throttled(client, ci, settings):
    settings.OPSWEB_API = {**settings.OPSWEB_API, "FAILURE_LIMIT": 3}
    for _ in range(3):
        assert call(client, "get", "/runs", "opsweb_wrong").status_code == 401
    throttled = call(client, "get", "/runs", ci)
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) > 0
    assert "Too many failed sign-ins" in throttled.json()["detail"]


# -- reads ---------------------------------------------------------------------------------------


def test_api_runs_are_paged_by_cursor(client, ci, flow):
    image = make_image("1.0.0")
    ids = [succeed_in(flow["dev"], image).pk for _ in range(5)]
    first = call(client, "get", "/runs?limit=2", ci).json()
    second = call(client, "get", f"/runs?limit=2&cursor={first['next_cursor']}", ci).json()
    third = call(client, "get", f"/runs?limit=2&cursor={second['next_cursor']}", ci).json()

    seen = [r["id"] for page in (first, second, third) for r in page["items"]]
    assert seen == sorted(ids, reverse=True) and third["next_cursor"] is None
    assert call(client, "get", "/runs?cursor=bogus!", ci).status_code == 422


def test_api_environments_and_dora(client, ci, flow):
    succeed_in(flow["dev"], make_image("1.0.0"))
    envs = call(client, "get", "/applications/sample/environments", ci).json()
    assert [e["slug"] for e in envs["environments"]][:2] == ["local", "dev"]
    assert envs["environments"][1]["current"]["tag"] == "1.0.0"
    dora = call(client, "get", "/dora?environment=dev&days=30", ci)
    assert dora.status_code == 200 and dora.json()["report"]["days"] == 30


def test_api_approve_and_reject_as_the_approver(client, bob, carol, flow):
    v1 = make_image("1.0.0")
    succeed_in(flow["dev"], v1)
    alice = make_user("alice2", "deployers")
    run = services.request_promotion(user=alice, target=flow["staging"], source=flow["dev"])
    secret = make_token(bob, scopes="read approve")[1]

    response = call(client, "post", f"/runs/{run.pk}/approve", secret, {"comment": "ok"})

    assert response.status_code == 200, response.content
    assert response.json()["message"].startswith(f"Approved run #{run.pk}")
    assert run.approvals.get().user == bob
    again = call(client, "post", f"/runs/{run.pk}/approve", secret, {"comment": "ok"})
    assert again.status_code in (403, 409)


# -- the command ---------------------------------------------------------------------------------


def test_api_token_command_creates_lists_and_revokes(client, ci_user, capsys):
    make_user("root", is_superuser=True)
    call_command(
        "api_token",
        "create",
        "--user",
        "ci",
        "--name",
        "pipeline",
        "--scopes",
        "read,deploy",
        "--as",
        "root",
        "--json",
    )
    data = json.loads(capsys.readouterr().out)
    secret = data["secret"]
    assert secret.startswith("opsweb_") and data["token"]["scopes"] == "deploy read"
    assert ApiToken.objects.get(pk=data["token"]["id"]).secret_hash != secret
    assert call(client, "get", "/runs", secret).status_code == 200

    call_command("api_token", "list", "--as", "root")
    listing = capsys.readouterr().out
    assert "pipeline" in listing and secret not in listing

    call_command("api_token", "revoke", str(data["token"]["id"]), "--as", "root")
    assert call(client, "get", "/runs", secret).status_code == 401


def test_api_token_command_refuses_bad_input_with_exit_2(ci_user):
    from django.core.management.base import CommandError

    make_user("root", is_superuser=True)
    with pytest.raises(CommandError) as refused:
        call_command(
            "api_token",
            "create",
            "--user",
            "ci",
            "--name",
            "x",
            "--scopes",
            "admin",
            "--as",
            "root",
        )
    assert refused.value.returncode == 2 and "Unknown scope(s) admin" in str(refused.value)
    with pytest.raises(CommandError) as not_allowed:
        call_command("api_token", "create", "--user", "ci", "--name", "x", "--as", "ci")
    assert not_allowed.value.returncode == 2 and "not allowed to create API tokens" in str(
        not_allowed.value
    )
    assert not ApiToken.objects.exists()


def test_api_admin_page_is_not_audited_as_the_last_token(client, ci, flow):
    call(client, "post", "/images", ci, register_body())
    assert services.acting_token.get() is None
    Group.objects.get(name="ci")  # the request's thread keeps no token
    assert Target.objects.filter(application__slug="sample").exists()


# -- the admin -----------------------------------------------------------------------------------


def test_api_token_admin_shows_the_secret_once_and_revokes(client, ci_user):
    root = make_user("root", is_superuser=True)
    client.force_login(root)
    response = client.post(
        "/admin/opsweb/apitoken/add/",
        {"user": ci_user.pk, "name": "from the admin", "scope_choices": ["read"]},
        follow=True,
    )
    assert response.status_code == 200
    page = response.content.decode()
    secret = page.split("it is not shown again: ")[1].split("<")[0].strip()
    token = ApiToken.objects.get(name="from the admin")
    assert token.created_by == root and secret.startswith("opsweb_")
    assert secret not in client.get(f"/admin/opsweb/apitoken/{token.pk}/change/").content.decode()
    client.logout()
    assert call(client, "get", "/runs", secret).status_code == 200

    client.force_login(root)
    client.post(
        "/admin/opsweb/apitoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    client.logout()
    assert call(client, "get", "/runs", secret).status_code == 401
    assert AuditEntry.objects.filter(action="revoke_api_token").count() == 1


def test_api_run_status_costs_five_queries(client, ci_user, flow, django_assert_num_queries):
    """The endpoint CI polls: the throttle, the token, the run (with its target, application,
    image and requester), its last events, its approvals."""
    secret = make_token(ci_user)[1]
    run = succeed_in(flow["dev"], make_image("1.0.0"))
    call(client, "get", f"/runs/{run.pk}", secret)  # last_used_at written once a minute

    with django_assert_num_queries(5):
        response = call(client, "get", f"/runs/{run.pk}", secret)

    assert response.status_code == 200 and response.json()["status"] == RunStatus.SUCCEEDED


def test_api_token_for_one_application_cannot_read_or_decide_anothers_runs(client, flow):
    """Even a superuser's token, when it is for one application, reads and decides nothing of
    another: each path answers 403 with the sentence, lists leave the other out, nothing moves."""
    other = Application.objects.create(slug="other", name="Other")
    root = make_user("root-owner", is_superuser=True)
    secret = make_token(root, application=other)[1]
    image = make_image("1.0.0")
    succeed_in(flow["dev"], image)
    waiting = Run.objects.create(
        kind="promotion", environment=flow["staging"], image=image, status=RunStatus.PENDING
    )
    before = written()

    reads = [
        f"/runs/{waiting.pk}",
        f"/runs/{waiting.pk}?wait=1",
        "/runs?application=sample",
        f"/images/{image.pk}",
        "/applications/sample",
        "/applications/sample/environments",
        "/applications/sample/environments/staging",
        "/environments/staging?application=sample",
        "/applications/sample/images",
        "/applications/sample/dora",
    ]
    for path in reads:
        answer = call(client, "get", path, secret)
        assert answer.status_code == 403, (path, answer.status_code)
        assert "only for application 'other'" in answer.json()["detail"], path
    assert call(client, "get", "/runs", secret).json()["items"] == []
    assert call(client, "get", "/images", secret).json()["items"] == []

    acts = {
        f"/runs/{waiting.pk}/approve": {},
        f"/runs/{waiting.pk}/reject": {"comment": "no"},
        f"/runs/{waiting.pk}/cancel": {},
        f"/runs/{waiting.pk}/stop": {"reason": "no"},
        f"/images/{image.pk}/mark-bad": {"reason": "no"},
        "/applications/sample/environments/staging/promotions": {"image": "1.0.0"},
        "/applications/sample/environments/staging/rollbacks": {"reason": "critical_errors"},
    }
    for path, body in acts.items():
        answer = call(client, "post", path, secret, body)
        assert answer.status_code == 403, (path, answer.status_code, answer.content)
    waiting.refresh_from_db()
    assert waiting.status == RunStatus.PENDING and not waiting.approvals.exists()
    assert not ImageVersion.objects.filter(is_bad=True).exists()
    assert written()[:2] == before[:2]
