"""Push webhooks are hints: GitHub (signed) and ECR via EventBridge (API key) make opsweb read
ECR itself (the moto server) and register what it finds, as register_image would."""

import hashlib
import hmac
import json

import pytest

from opsweb.models import Application, ApplicationRepository, ImageVersion, Run, WebhookDelivery
from tests.conftest import fake_sha
from tests.test_ecs import push

API = "/api/v1"
ACCOUNT = "123456789012"
REGION = "eu-west-1"
REPOSITORY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/webapp"
SECRET = "github-webhook-secret"
KEY = "eventbridge-api-key"


@pytest.fixture
def hooks(flow, ci_user, aws, monkeypatch, settings):
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    settings.OPSWEB_API = {
        **settings.OPSWEB_API,
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "ECR_WEBHOOK_KEY": KEY,
        "WEBHOOK_USER": "ci",
    }
    sample = Application.objects.get(slug="sample")
    sample.repository_url = "https://github.com/org/sample"
    sample.save()
    ApplicationRepository.objects.create(application=sample, repository=REPOSITORY)
    return aws


def ecr_event(digest: str, event_id="ev-1", tag="develop-7.1-abc1234", **detail):
    return {
        "id": event_id,
        "detail-type": "ECR Image Action",
        "source": "aws.ecr",
        "account": ACCOUNT,
        "region": REGION,
        "detail": {
            "result": "SUCCESS",
            "action-type": "PUSH",
            "repository-name": "webapp",
            "image-digest": digest,
            "image-tag": tag,
            **detail,
        },
    }


def post_ecr(client, body, key=KEY):
    return client.post(
        API + "/webhooks/ecr",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_X_OPSWEB_API_KEY=key,
    )


def post_github(client, event, body, delivery="d-1", secret=SECRET):
    raw = json.dumps(body).encode()
    signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return client.post(
        API + "/webhooks/github",
        data=raw,
        content_type="application/json",
        HTTP_X_GITHUB_EVENT=event,
        HTTP_X_GITHUB_DELIVERY=delivery,
        HTTP_X_HUB_SIGNATURE_256=signature,
    )


def test_ecr_push_is_read_back_and_registered_and_deployed(client, hooks):
    digest = push(hooks, "webapp", "develop-7.1-abc1234")

    response = post_ecr(client, ecr_event(digest))

    assert response.status_code == 200, response.content
    image = ImageVersion.objects.get(repository=REPOSITORY)
    assert image.digest == digest and image.tag == "develop-7.1-abc1234"
    assert image.branch == "develop" and image.registered_by.username == "ci"
    assert Run.objects.get(image=image).environment.slug == "dev"
    assert response.json()["registered"][0]["digest"] == digest

    again = post_ecr(client, ecr_event(digest))
    assert again.status_code == 200 and "received before; dropped" in again.json()["message"]
    assert ImageVersion.objects.count() == 1 and Run.objects.count() == 1


def test_ecr_event_is_a_hint_not_a_fact(client, hooks):
    """An event naming a digest ECR does not hold registers nothing."""
    push(hooks, "webapp", "1.0.0")
    invented = "sha256:" + "0" * 64

    response = post_ecr(client, ecr_event(invented, tag="2.0.0"))

    assert response.status_code == 200
    assert "ECR holds nothing new" in response.json()["message"]
    assert not ImageVersion.objects.exists()


def test_ecr_webhook_with_a_wrong_key_is_401(client, hooks):
    digest = push(hooks, "webapp", "1.0.0")
    response = post_ecr(client, ecr_event(digest), key="guess")
    assert response.status_code == 401
    assert not ImageVersion.objects.exists() and not WebhookDelivery.objects.exists()


def test_github_push_registers_the_commits_image(client, hooks):
    sha = fake_sha("commit-7")
    digest = push(hooks, "webapp", f"develop-7.1-{sha[:7]}")
    push(hooks, "webapp", "develop-6.1-0000000")  # another commit's image
    body = {
        "ref": "refs/heads/develop",
        "after": sha,
        "repository": {"html_url": "https://github.com/org/sample"},
    }

    response = post_github(client, "push", body)

    assert response.status_code == 200, response.content
    image = ImageVersion.objects.get()
    assert (image.digest, image.git_sha, image.branch) == (digest, sha, "develop")
    duplicate = post_github(client, "push", body)
    assert "received before; dropped" in duplicate.json()["message"]
    assert ImageVersion.objects.count() == 1


def test_github_webhook_with_a_bad_signature_is_401(client, hooks):
    response = post_github(client, "push", {"ref": "refs/heads/develop"}, secret="wrong")
    assert response.status_code == 401
    assert "X-Hub-Signature-256" in response.json()["detail"]
    assert not WebhookDelivery.objects.exists()


def test_webhooks_not_configured_are_404(client, flow, settings):
    settings.OPSWEB_API = {
        **settings.OPSWEB_API,
        "GITHUB_WEBHOOK_SECRET": "",
        "ECR_WEBHOOK_KEY": "",
    }
    assert client.post(API + "/webhooks/github").status_code == 404
    assert client.post(API + "/webhooks/ecr").status_code == 404
