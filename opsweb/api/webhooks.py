"""Push webhooks: GitHub (signed with ``X-Hub-Signature-256``, duplicates dropped by
``X-GitHub-Delivery``) and ECR image pushes through an EventBridge API destination (an API-key
header, duplicates dropped by the event id).

A webhook is a hint, never a trusted fact (Argo CD's rule): it says where to look, and opsweb
reads the registry itself (ECR ``describe_images``); what that read finds is registered through
``services.register_image``, as ``manage.py register_image`` would, acting as
``OPSWEB_WEBHOOK_USER``."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from ninja import Router

from opsweb import services
from opsweb.api.problems import ApiProblem
from opsweb.api.schemas import WebhookOut
from opsweb.api.throttle import check_throttle, record_failure
from opsweb.models import Application, ApplicationRepository, ImageVersion, WebhookDelivery
from orchestration.base import DeployError

log = logging.getLogger(__name__)
router = Router(tags=["webhooks"])
ECR_KEY_HEADER = "X-Opsweb-Api-Key"


def _payload(request) -> dict:
    try:
        data = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiProblem(422, "The body is not JSON.") from None
    if not isinstance(data, dict):
        raise ApiProblem(422, "The body is not a JSON object.")
    return data


def _first_time(source: str, delivery_id: str) -> bool:
    """Record the delivery; False when it was seen before (a redelivery: dropped)."""
    try:
        with transaction.atomic():
            WebhookDelivery.objects.create(source=source, delivery_id=delivery_id[:200])
        return True
    except IntegrityError:
        return False


def _webhook_user():
    name = settings.OPSWEB_API["WEBHOOK_USER"]
    User = get_user_model()
    user = User._default_manager.filter(**{User.USERNAME_FIELD: name}, is_active=True).first()
    if user is None:
        raise ApiProblem(
            422, f"OPSWEB_WEBHOOK_USER {name!r} is not an active user: create it or set another."
        )
    return user


def _region(repository: str) -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "") or "us-east-1"


def rescan(
    repositories: list[str], *, digest: str = "", git_sha: str = "", branch: str = ""
) -> tuple[list[ImageVersion], list[str]]:
    """Read ECR for ``repositories`` (the image ``digest``, or the images tagged for commit
    ``git_sha``) and register what is there. Returns the versions registered or found, and a
    sentence per image or repository that could not be."""
    from orchestration.ecs import pushed_images

    user = _webhook_user()
    found, problems = [], []
    for repository in repositories:
        if ".dkr.ecr." not in repository:
            continue  # only ECR can be read back
        try:
            images = pushed_images(repository, region=_region(repository), digest=digest or None)
        except DeployError as exc:
            problems.append(f"Could not read {repository} from ECR: {exc}")
            continue
        if git_sha:
            short = git_sha[:7]
            images = [
                i for i in images if any(t == git_sha or t.endswith("-" + short) for t in i["tags"])
            ]
        for image in images:
            known = ImageVersion.objects.filter(repository=repository, digest=image["digest"])
            if known.exists():
                found.extend(known)
                continue
            tag = image["tags"][0]
            application = ApplicationRepository.objects.get(repository=repository).application
            image_branch = branch or _branch_from_tag(application, tag)
            try:
                registration = services.register_image(
                    user=user,
                    repository=repository,
                    tag=tag,
                    digest=image["digest"],
                    git_sha=git_sha,
                    branch=image_branch,
                )
            except services.ReleaseError as exc:
                problems.append(f"{repository}:{tag}: {exc}")
                continue
            found.append(registration.image)
    return found, problems


def _branch_from_tag(application: Application, tag: str) -> str:
    """The branch an ECR push names in its tag, by the deploy workflow's convention
    (``develop-<run>-<sha>``); only the application's auto-deploy branch is recognised."""
    branch = application.auto_deploy_branch
    return branch if branch and tag.startswith(branch + "-") else ""


def _answer(found: list[ImageVersion], problems: list[str], hint: str) -> dict:
    from opsweb.api.endpoints import image_out

    if found:
        message = f"{hint}: " + ", ".join(services.describe(i) for i in found) + "."
    else:
        message = f"{hint}: ECR holds nothing new for it."
    if problems:
        message += " " + " ".join(problems)
    return {"message": message, "registered": [image_out(i) for i in found]}


@router.post("/github", response=WebhookOut, auth=None)
def github(request):
    """GitHub's webhook (events push and workflow_run, content type application/json, with a
    secret): the commit it names is looked up in the application's ECR repositories."""
    secret = settings.OPSWEB_API["GITHUB_WEBHOOK_SECRET"]
    if not secret:
        raise ApiProblem(404, "GitHub webhooks are not enabled (OPSWEB_GITHUB_WEBHOOK_SECRET).")
    check_throttle(request)
    signature = request.headers.get("X-Hub-Signature-256", "")
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        record_failure(request)
        raise ApiProblem(401, "The X-Hub-Signature-256 signature does not match the body.")
    event = request.headers.get("X-GitHub-Event", "")
    payload = _payload(request)
    delivery = request.headers.get("X-GitHub-Delivery", "")
    if delivery and not _first_time("github", delivery):
        return {"message": f"Delivery {delivery} was received before; dropped.", "registered": []}
    if event == "ping":
        return {"message": "pong", "registered": []}
    sha, branch = _github_commit(event, payload)
    if not sha:
        return {"message": f"Nothing to look up for event {event!r}.", "registered": []}
    html_url = str((payload.get("repository") or {}).get("html_url") or "").rstrip("/")
    application = Application.objects.filter(
        repository_url__in=[html_url, html_url + ".git"]
    ).first()
    if not html_url or application is None:
        return {"message": f"No application's source repository is {html_url!r}.", "registered": []}
    repositories = list(application.repositories.values_list("repository", flat=True))
    found, problems = rescan(repositories, git_sha=sha, branch=branch)
    return _answer(found, problems, f"{application.slug} commit {sha[:7]} on {branch or '-'}")


def _github_commit(event: str, payload: dict) -> tuple[str, str]:
    """The commit and branch an event names: a push, or a workflow run that succeeded."""
    if event == "push":
        ref = str(payload.get("ref") or "")
        sha = str(payload.get("after") or "")
        return (sha, ref.removeprefix("refs/heads/")) if ref.startswith("refs/heads/") else ("", "")
    if event == "workflow_run":
        run = payload.get("workflow_run") or {}
        if isinstance(run, dict) and run.get("conclusion") == "success":
            return str(run.get("head_sha") or ""), str(run.get("head_branch") or "")
    return "", ""


@router.post("/ecr", response=WebhookOut, auth=None)
def ecr(request):
    """An EventBridge API destination forwarding "ECR Image Action" events (PUSH, SUCCESS),
    with the API key in the X-Opsweb-Api-Key header: the pushed digest is read back from ECR."""
    key = settings.OPSWEB_API["ECR_WEBHOOK_KEY"]
    if not key:
        raise ApiProblem(404, "ECR webhooks are not enabled (OPSWEB_ECR_WEBHOOK_KEY).")
    check_throttle(request)
    if not hmac.compare_digest(request.headers.get(ECR_KEY_HEADER, "").encode(), key.encode()):
        record_failure(request)
        raise ApiProblem(401, f"The {ECR_KEY_HEADER} header does not match the configured key.")
    event = _payload(request)
    detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
    if detail.get("action-type") != "PUSH" or detail.get("result") != "SUCCESS":
        return {"message": "Not a successful image push; nothing to do.", "registered": []}
    event_id = str(event.get("id") or "")
    if event_id and not _first_time("ecr", event_id):
        return {"message": f"Event {event_id} was received before; dropped.", "registered": []}
    repository = (
        f"{event.get('account')}.dkr.ecr.{event.get('region')}.amazonaws.com/"
        f"{detail.get('repository-name')}"
    )
    digest = str(detail.get("image-digest") or "")
    if not ApplicationRepository.objects.filter(repository=repository).exists():
        return {"message": f"No application releases {repository}; ignored.", "registered": []}
    if not digest.startswith("sha256:"):
        raise ApiProblem(422, "The event names no image digest.")
    found, problems = rescan([repository], digest=digest)
    return _answer(found, problems, f"Push to {repository}")
