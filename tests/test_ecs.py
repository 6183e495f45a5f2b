"""The ECS backend against a real moto server (a subprocess on 127.0.0.1, reset between tests),
and what moto cannot show — a failing rollout, throttling, access denied — through
botocore's Stubber or a before-send hook on an injected client.

moto 5.2 notes: MOTO_ECS_SERVICE_RUNNING is the *number* of running tasks a new service reports
(a service whose desiredCount it covers reports rolloutState COMPLETED, one it does not stays
IN_PROGRESS for ever), and update_service changes the service's taskDefinition but not its
deployment record.
"""

import contextlib
import json
from datetime import UTC, datetime

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from django.core.exceptions import ValidationError

from opsweb import services, tasks
from opsweb.models import (
    ImageVersion,
    NotificationChannel,
    NotificationDelivery,
    RunEvent,
    RunStatus,
    Target,
)
from orchestration import ecs
from orchestration.base import DeployError, DeployRequest, get_backend
from tests.conftest import fake_digest, make_image, succeed_in

REGION = "eu-west-1"
ACCOUNT = "123456789012"
CLUSTER = "opsweb-test"
REPOSITORY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/team/app"


def client(url: str, service: str = "ecs"):
    return boto3.client(service, region_name=REGION, endpoint_url=url)


def make_service(url: str, name: str, *, desired: int = 1) -> str:
    """An awsvpc Fargate service with an app container and a sidecar; returns its task def ARN."""
    ec2, ecs_client = client(url, "ec2"), client(url)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc)["GroupId"]
    ecs_client.create_cluster(clusterName=CLUSTER)
    arn = ecs_client.register_task_definition(
        family=name,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        executionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/{name}-execution",
        containerDefinitions=[
            {"name": "web", "image": f"{REPOSITORY}:bootstrap", "essential": True},
            {"name": "log-router", "image": "amazon/aws-for-fluent-bit:2", "essential": False},
        ],
        tags=[{"key": "team", "value": "release"}],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs_client.create_service(
        cluster=CLUSTER,
        serviceName=name,
        taskDefinition=arn,
        desiredCount=desired,
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}
        },
    )
    return arn


def settings_for(url: str | None, service: str, **extra) -> dict:
    return {
        "region": REGION,
        "cluster": CLUSTER,
        "service": service,
        "container_name": "web",
        "poll_interval": 0.05,
        "timeout": 10,
        **({"endpoint_url": url} if url else {}),
        **extra,
    }


def use_ecs(environment: Target, url: str, service: str, **extra) -> Target:
    environment.backend = "ecs"
    environment.backend_settings = settings_for(url, service, **extra)
    environment.health_check_url = ""
    environment.full_clean()
    environment.save()
    return environment


def service_state(url: str, service: str) -> tuple[str, str]:
    """(task definition ARN, the web container's image) the service is on."""
    ecs_client = client(url)
    arn = ecs_client.describe_services(cluster=CLUSTER, services=[service])["services"][0][
        "taskDefinition"
    ]
    definition = ecs_client.describe_task_definition(taskDefinition=arn)["taskDefinition"]
    return arn, next(c["image"] for c in definition["containerDefinitions"] if c["name"] == "web")


def revisions(url: str, family: str) -> list[str]:
    return client(url).list_task_definitions(familyPrefix=family)["taskDefinitionArns"]


def deploy_through_opsweb(user, environment, image):
    run = services.request_deploy(user=user, environment=environment, image=image)
    tasks.execute_run(run.pk)
    run.refresh_from_db()
    return run


def ecr_image(tag: str) -> ImageVersion:
    return make_image(tag, repository=REPOSITORY)


# -- settings --------------------------------------------------------------------------------


def test_settings_errors_name_each_field(flow):
    environment = Target(
        application=flow["dev"].application,
        environment=flow["dev"].environment,
        backend="ecs",
        backend_settings={"region": "Ireland", "cluster": "", "timeout": "soon", "port": 80},
    )
    with pytest.raises(ValidationError) as caught:
        environment.full_clean()
    messages = caught.value.message_dict["backend_settings"]
    assert "region: Give the AWS region the cluster is in, such as 'eu-west-1'." in messages
    assert any(m.startswith("cluster: Give the name or ARN of the ECS cluster") for m in messages)
    assert any(m.startswith("service: Give the name or ARN of the ECS service") for m in messages)
    assert any(m.startswith("container_name: Give the name of the container") for m in messages)
    assert "timeout: Give a number of seconds between 1 and 3600." in messages
    assert any(m.startswith("unknown: Unknown setting(s) 'port'") for m in messages)


def test_settings_refuse_credentials():
    settings = settings_for(None, "app") | {"aws_secret_access_key": "hunter2"}
    with pytest.raises(DeployError) as caught:
        ecs.EcsBackend.validate_settings(settings)
    assert "standard AWS chain" in caught.value.errors["credentials"]
    assert "hunter2" not in str(caught.value)


def test_settings_defaults_are_stable():
    settings = ecs.EcsBackend.validate_settings(
        {"region": REGION, "cluster": "c", "service": "s", "container_name": "web"}
    )
    assert settings == {
        "region": REGION,
        "cluster": "c",
        "service": "s",
        "container_name": "web",
        "endpoint_url": "",
        "timeout": 900.0,
        "poll_interval": 5.0,
        "max_attempts": 6,
    }
    assert ecs.EcsBackend.validate_settings(settings) == settings


# -- deploy and roll back against moto -------------------------------------------------------


def test_deploy_registers_pinned_revision_and_updates_service(aws, flow, alice):
    original = make_service(aws, "app-dev")
    dev = use_ecs(flow["dev"], aws, "app-dev")
    image = ecr_image("1.0.0")

    run = deploy_through_opsweb(alice, dev, image)

    assert run.status == RunStatus.SUCCEEDED, run.error
    arn, running = service_state(aws, "app-dev")
    assert running == f"{REPOSITORY}@{image.digest}"
    assert arn != original
    assert run.backend_ref == {"task_definition_arn": arn, "cluster": CLUSTER, "service": "app-dev"}
    described = client(aws).describe_task_definition(taskDefinition=arn, include=["TAGS"])
    new = described["taskDefinition"]
    sidecar = next(c for c in new["containerDefinitions"] if c["name"] == "log-router")
    assert sidecar["image"] == "amazon/aws-for-fluent-bit:2"
    assert new["executionRoleArn"].endswith(":role/app-dev-execution")
    assert (new["networkMode"], new["cpu"], new["memory"]) == ("awsvpc", "256", "512")
    assert described["tags"] == [{"key": "team", "value": "release"}]
    dev.refresh_from_db()
    assert dev.current_image == image
    steps = {e.message.split(" ")[0]: e.duration_seconds for e in run.events.all()}
    assert steps["Registered"] is not None and steps["Updated"] is not None
    assert any("Rollout of app-dev:2 completed" in e.message for e in run.events.all())


def test_deploy_honours_aws_endpoint_url(aws, monkeypatch):
    make_service(aws, "app-dev")
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    backend = get_backend("ecs", settings_for(None, "app-dev"))
    digest = fake_digest("from-env")

    backend.deploy(DeployRequest("dev", backend.settings, REPOSITORY, "1.0.0", digest))

    assert backend.running_version("dev") == digest


def test_rollback_repoints_to_recorded_arn_without_registering(aws, flow, alice):
    make_service(aws, "app-dev")
    dev = use_ecs(flow["dev"], aws, "app-dev")
    good, bad = ecr_image("1.0.0"), ecr_image("1.1.0")
    first = deploy_through_opsweb(alice, dev, good)
    deploy_through_opsweb(alice, dev, bad)
    before = revisions(aws, "app-dev")

    rollback = services.roll_back(user=alice, environment=dev, reason="critical_errors")
    tasks.execute_run(rollback.pk)

    rollback.refresh_from_db()
    assert rollback.status == RunStatus.SUCCEEDED, rollback.error
    assert revisions(aws, "app-dev") == before
    recorded = first.backend_ref["task_definition_arn"]
    assert service_state(aws, "app-dev") == (recorded, f"{REPOSITORY}@{good.digest}")
    assert rollback.backend_ref["task_definition_arn"] == recorded
    assert rollback.events.filter(message__contains="no new registration").exists()


def test_rollback_registers_again_when_revision_was_deregistered(aws, flow, alice):
    make_service(aws, "app-dev")
    dev = use_ecs(flow["dev"], aws, "app-dev")
    good, bad = ecr_image("1.0.0"), ecr_image("1.1.0")
    recorded = deploy_through_opsweb(alice, dev, good).backend_ref["task_definition_arn"]
    deploy_through_opsweb(alice, dev, bad)
    client(aws).deregister_task_definition(taskDefinition=recorded)

    rollback = services.roll_back(user=alice, environment=dev, reason="critical_errors")
    tasks.execute_run(rollback.pk)

    rollback.refresh_from_db()
    assert rollback.status == RunStatus.SUCCEEDED, rollback.error
    arn, running = service_state(aws, "app-dev")
    assert ecs.revision_name(arn) == "app-dev:4"  # 1 created, 2 good (deregistered), 3 bad
    assert running == f"{REPOSITORY}@{good.digest}"
    assert rollback.events.filter(message__contains="was deregistered (INACTIVE)").exists()


def test_deploy_times_out_saying_what_the_rollout_was_doing(aws):
    make_service(aws, "app-dev", desired=2)  # moto reports 1 running: IN_PROGRESS for ever
    backend = get_backend("ecs", settings_for(aws, "app-dev", timeout=1))
    request = DeployRequest("dev", backend.settings, REPOSITORY, "1.0.0", fake_digest("slow"))

    with pytest.raises(DeployError) as caught:
        backend.deploy(request)

    assert str(caught.value).startswith("The rollout of app-dev:2 did not finish within 1s: ")
    assert "rolloutState IN_PROGRESS, 1 of 2 tasks running, 1 pending" in str(caught.value)


def test_deploy_explains_missing_service_cluster_and_container(aws):
    make_service(aws, "app-dev")
    request = DeployRequest("dev", {}, REPOSITORY, "1.0.0", fake_digest("x"))
    cases = [
        (
            settings_for(aws, "app-qa"),
            f"Service 'app-qa' not found in cluster '{CLUSTER}' in region {REGION}",
        ),
        (
            settings_for(aws, "app-dev", cluster="nowhere"),
            f"Cluster 'nowhere' not found in region {REGION}",
        ),
        (
            settings_for(aws, "app-dev", container_name="api"),
            "Container 'api' is not in task definition app-dev:1 (its containers: 'web', "
            "'log-router')",
        ),
    ]
    for settings, message in cases:
        with pytest.raises(DeployError) as caught:
            get_backend("ecs", settings).deploy(request)
        assert str(caught.value).startswith(message)

    client(aws).delete_service(cluster=CLUSTER, service="app-dev", force=True)
    with pytest.raises(DeployError, match="Service 'app-dev' not found in cluster"):
        get_backend("ecs", settings_for(aws, "app-dev")).deploy(request)


def test_drift_shows_a_service_changed_behind_opsweb(aws, flow, alice):
    make_service(aws, "app-dev")
    dev = use_ecs(flow["dev"], aws, "app-dev")
    image = ecr_image("1.0.0")
    arn = deploy_through_opsweb(alice, dev, image).backend_ref["task_definition_arn"]
    assert tasks.check_drift() == {}

    ecs_client = client(aws)
    definition = ecs_client.describe_task_definition(taskDefinition=arn)["taskDefinition"]
    hotfix = fake_digest("hotfix")
    other = ecs_client.register_task_definition(
        family="app-dev",
        containerDefinitions=[
            {**c, "image": f"{REPOSITORY}@{hotfix}"} if c["name"] == "web" else c
            for c in definition["containerDefinitions"]
        ],
        cpu="256",
        memory="512",
    )["taskDefinition"]["taskDefinitionArn"]
    ecs_client.update_service(cluster=CLUSTER, service="app-dev", taskDefinition=other)

    found = tasks.check_drift()

    dev.refresh_from_db()
    expected = f"service runs {hotfix}, opsweb last deployed 1.0.0 ({image.digest})"
    assert found == {"sample-dev": expected}
    assert dev.drift == expected
    assert dev.drift_checked_at is not None


def test_drift_check_during_a_rollout_expects_what_the_run_deploys(aws, flow, alice):
    # argo-cd#18153: the check ran mid-rollout and reported the digest opsweb was deploying.
    make_service(aws, "app-dev")
    dev = use_ecs(flow["dev"], aws, "app-dev")
    NotificationChannel.objects.create(
        name="ops", kind="email", target="ops@example.com", events=["drift_found"]
    )
    old, new = ecr_image("1.0.0"), ecr_image("1.1.0")
    deploy_through_opsweb(alice, dev, old)
    run = services.request_deploy(user=alice, environment=dev, image=new)
    claimed = services.claim_next_run(environment_id=dev.pk)
    backend = get_backend("ecs", dev.backend_settings)
    found_mid_rollout = []

    def progress(message, seconds=None):
        if message.startswith("Updated service"):  # the service now points at the new revision
            found_mid_rollout.append(tasks.check_drift())

    backend.deploy(
        DeployRequest("dev", backend.settings, REPOSITORY, new.tag, new.digest, run_id=run.pk),
        progress,
    )

    assert claimed.pk == run.pk
    assert found_mid_rollout == [{}]
    dev.refresh_from_db()
    assert dev.drift == "" and dev.drift_checked_at is not None
    assert not NotificationDelivery.objects.filter(event="drift_found").exists()

    hotfix = fake_digest("hotfix")
    backend.deploy(DeployRequest("dev", backend.settings, REPOSITORY, "hotfix", hotfix))
    found = tasks.check_drift()

    expected = (
        f"service runs {hotfix}, while run #{run.pk} deploys 1.1.0 ({new.digest}) in place of 1.0.0"
    )
    assert found == {"sample-dev": expected}
    assert NotificationDelivery.objects.filter(event="drift_found").count() == 1


def test_full_promotion_staging_to_production(aws, flow, alice, bob, carol):
    make_service(aws, "app-staging")
    make_service(aws, "app-production")
    staging = use_ecs(flow["staging"], aws, "app-staging")
    production = use_ecs(flow["production"], aws, "app-production")
    image = ecr_image("2.0.0")
    succeed_in(flow["dev"], image)

    to_staging = services.request_promotion(user=alice, target=staging)
    services.approve_run(user=bob, run=to_staging)
    tasks.execute_run(to_staging.pk)
    to_staging.refresh_from_db()
    assert to_staging.status == RunStatus.SUCCEEDED, to_staging.error

    services.sign_off_uat(user=bob, environment=staging, image=image, note="UAT passed")
    to_production = services.request_promotion(user=alice, target=production)
    services.approve_run(user=bob, run=to_production)
    assert services.approve_run(user=carol, run=to_production).status == RunStatus.QUEUED
    tasks.execute_run(to_production.pk)

    to_production.refresh_from_db()
    production.refresh_from_db()
    assert to_production.status == RunStatus.SUCCEEDED, to_production.error
    assert production.current_image == image
    arn, running = service_state(aws, "app-production")
    assert running == f"{REPOSITORY}@{image.digest}"
    assert to_production.backend_ref["task_definition_arn"] == arn
    assert ecs.image_digest(running) == image.digest


# -- ECR ---------------------------------------------------------------------------------------


def push(url: str, name: str, tag: str) -> str:
    ecr = client(url, "ecr")
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName=name)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1},
        "layers": [{"digest": fake_digest(f"{name}:{tag}"), "size": 1, "mediaType": "x"}],
    }
    image = ecr.put_image(repositoryName=name, imageManifest=json.dumps(manifest), imageTag=tag)
    return image["image"]["imageId"]["imageDigest"]


def test_ecr_resolves_a_tag_to_its_digest(aws):
    digest = push(aws, "team/app", "1.4.2")

    for repository in (REPOSITORY, "team/app"):
        found = ecs.resolve_digest(
            repository=repository, tag="1.4.2", region=REGION, endpoint_url=aws
        )
        assert found == digest
    assert ecs.image_exists(repository=REPOSITORY, digest=digest, region=REGION, endpoint_url=aws)


def test_ecr_refuses_what_it_does_not_have(aws):
    push(aws, "team/app", "1.4.2")
    where = {"region": REGION, "endpoint_url": aws}

    with pytest.raises(DeployError, match=r"ECR has no image tagged '9\.9\.9' in .*/team/app"):
        ecs.resolve_digest(repository=REPOSITORY, tag="9.9.9", **where)
    missing = fake_digest("never pushed")
    assert not ecs.image_exists(repository=REPOSITORY, digest=missing, **where)
    with pytest.raises(DeployError, match=f"ECR has no image {missing} in "):
        ecs.require_image(repository=REPOSITORY, digest=missing, **where)
    with pytest.raises(DeployError, match="ECR has no repository 'team/other' in region eu-west-1"):
        ecs.resolve_digest(repository="team/other", tag="1.0", **where)
    with pytest.raises(DeployError, match="is not in Amazon ECR"):
        ecs.resolve_digest(repository="ghcr.io/team/app", tag="1.0", **where)


# -- what moto cannot show: throttling through a before-send hook -----------------------------


class _Body:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **kwargs):
        yield self.body


def throttle(ecs_client, times: int | None) -> list[str]:
    """Answer the next ``times`` ECS calls (all when None) with ThrottlingException before they
    reach moto; botocore's retry logic sees a real HTTP 400 and backs off."""
    seen: list[str] = []

    def before_send(request, **kwargs):
        seen.append(request.headers["X-Amz-Target"].decode().rsplit(".", 1)[-1])
        if times is not None and len(seen) > times:
            return None
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
        return AWSResponse(request.url, 400, {}, _Body(body.encode()))

    ecs_client.meta.events.register("before-send.ecs", before_send)
    return seen


def test_throttling_is_retried_with_backoff(aws):
    make_service(aws, "app-dev")
    settings = ecs.EcsBackend.validate_settings(settings_for(aws, "app-dev"))
    ecs_client = ecs.make_client("ecs", region=REGION, endpoint_url=aws, max_attempts=3)
    calls = throttle(ecs_client, times=2)
    digest = fake_digest("throttled")

    ecs.EcsBackend(settings, client=ecs_client).deploy(
        DeployRequest("dev", settings, REPOSITORY, "1.0.0", digest)
    )

    assert calls[:3] == ["DescribeServices"] * 3
    assert service_state(aws, "app-dev")[1] == f"{REPOSITORY}@{digest}"


def test_throttling_that_does_not_stop_is_a_clear_error(aws):
    settings = ecs.EcsBackend.validate_settings(settings_for(aws, "app-dev", max_attempts=2))
    ecs_client = ecs.make_client("ecs", region=REGION, endpoint_url=aws, max_attempts=2)
    calls = throttle(ecs_client, times=None)

    with pytest.raises(DeployError) as caught:
        ecs.EcsBackend(settings, client=ecs_client).running_version("dev")

    assert calls == ["DescribeServices", "DescribeServices"]
    assert str(caught.value).startswith(
        "AWS kept throttling ecs:DescribeServices (ThrottlingException) after 2 attempt(s) "
        "with exponential backoff"
    )


# -- what moto cannot show: a failed rollout, access denied, a timeout with events ------------

CURRENT = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/app-dev:3"
NEW = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/app-dev:4"
OTHER = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/app-dev:5"
WORKER = f"arn:aws:sts::{ACCOUNT}:assumed-role/opsweb-worker/i-0abc123"
EVENT_TIME = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


def described_service(task_definition: str, deployments: list[dict], events=()) -> dict:
    return {
        "services": [
            {
                "serviceName": "app-dev",
                "status": "ACTIVE",
                "taskDefinition": task_definition,
                "desiredCount": 2,
                "runningCount": 2,
                "deployments": deployments,
                "events": [
                    {"id": str(i), "createdAt": EVENT_TIME, "message": m}
                    for i, m in enumerate(events)
                ],
            }
        ],
        "failures": [],
    }


def deployment(task_definition: str, status: str, state: str, running=2, failed=0) -> dict:
    return {
        "id": f"ecs-svc/{task_definition[-1]}",
        "status": status,
        "taskDefinition": task_definition,
        "desiredCount": 2,
        "runningCount": running,
        "pendingCount": 2 - running,
        "failedTasks": failed,
        "rolloutState": state,
        "rolloutStateReason": {
            "FAILED": "ECS deployment circuit breaker: tasks failed to start.",
        }.get(state, f"ECS deployment {state.lower()}."),
    }


def stub_until_update(stubber: Stubber, *, update: bool = True) -> None:
    """Describe the service and its task definition, register app-dev:4, update the service."""
    steady = [deployment(CURRENT, "PRIMARY", "COMPLETED")]
    stubber.add_response("describe_services", described_service(CURRENT, steady))
    stubber.add_response(
        "describe_task_definition",
        {
            "taskDefinition": {
                "taskDefinitionArn": CURRENT,
                "family": "app-dev",
                "revision": 3,
                "status": "ACTIVE",
                "containerDefinitions": [{"name": "web", "image": "team/app:old", "memory": 512}],
                "registeredAt": EVENT_TIME,
            },
            "tags": [],
        },
    )
    stubber.add_response("register_task_definition", {"taskDefinition": {"taskDefinitionArn": NEW}})
    if update:
        stubber.add_response("update_service", {"service": {"serviceName": "app-dev"}})


def stubbed_client() -> tuple[object, Stubber]:
    ecs_client = boto3.client(
        "ecs", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    return ecs_client, Stubber(ecs_client)


def test_failed_rollout_fails_the_run_with_what_ecs_said(flow, alice, monkeypatch):
    ecs_client, stubber = stubbed_client()
    stub_until_update(stubber)
    failed = [
        deployment(CURRENT, "PRIMARY", "IN_PROGRESS", running=1),
        deployment(NEW, "ACTIVE", "FAILED", running=0, failed=3),
    ]
    events = ["(service app-dev) deployment ecs-svc/4 deployment failed: tasks failed to start."]
    stubber.add_response("describe_services", described_service(CURRENT, failed, events))
    monkeypatch.setattr(ecs, "make_client", lambda *args, **kwargs: ecs_client)
    dev = flow["dev"]
    dev.backend, dev.health_check_url = "ecs", ""
    dev.backend_settings = settings_for(None, "app-dev")
    dev.save()
    image = make_image("1.0.0")

    with stubber:
        run = deploy_through_opsweb(alice, dev, image)
        stubber.assert_no_pending_responses()

    assert run.status == RunStatus.FAILED
    assert run.error == (
        "The deployment of app-dev:4 failed (deployment circuit breaker): ECS deployment circuit "
        "breaker: tasks failed to start. (rolloutState FAILED, 0 of 2 tasks running, 2 pending, "
        "3 failed). ECS is rolling the service back to app-dev:3. Last service events: "
        "[09:30:00 UTC] (service app-dev) deployment ecs-svc/4 deployment failed: tasks failed "
        "to start.."
    )
    messages = list(run.events.values_list("message", "level"))
    registered = f"Registered app-dev:4 from app-dev:3 with web = example/app@{image.digest}"
    assert (registered, RunEvent.Level.INFO) in messages
    assert messages[-1] == (f"Failed: {run.error}", RunEvent.Level.ERROR)
    assert run.events.get(message__startswith="Updated service").duration_seconds is not None
    dev.refresh_from_db()
    assert dev.current_image is None


def test_access_denied_names_the_action_and_the_role():
    ecs_client, stubber = stubbed_client()
    stub_until_update(stubber, update=False)
    stubber.add_client_error(
        "update_service",
        service_error_code="AccessDeniedException",
        service_message=(
            f"User: {WORKER} is not authorized to perform: ecs:UpdateService on resource: "
            f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{CLUSTER}/app-dev because no "
            f"identity-based policy allows the ecs:UpdateService action"
        ),
        http_status_code=400,
    )
    settings = ecs.EcsBackend.validate_settings(settings_for(None, "app-dev"))

    with stubber, pytest.raises(DeployError) as caught:
        ecs.EcsBackend(settings, client=ecs_client).deploy(
            DeployRequest("dev", settings, REPOSITORY, "1.0.0", fake_digest("denied"))
        )

    assert str(caught.value).startswith(
        f"AWS denied ecs:UpdateService on arn:aws:ecs:{REGION}:{ACCOUNT}:service/{CLUSTER}/"
        f"app-dev to role opsweb-worker ({WORKER}). Allow ecs:UpdateService in that identity's "
        f"IAM policy"
    )


def test_timeout_lists_the_last_service_events():
    ecs_client, stubber = stubbed_client()
    stub_until_update(stubber)
    stuck = [
        deployment(NEW, "PRIMARY", "IN_PROGRESS", running=0),
        deployment(CURRENT, "ACTIVE", "COMPLETED"),
    ]
    events = [
        "(service app-dev) is unable to consistently start tasks successfully.",
        "(service app-dev) has started 2 tasks: (task 1) (task 2).",
    ]
    for _ in range(200):  # more polls than the timeout allows
        stubber.add_response("describe_services", described_service(NEW, stuck, events))
    settings = ecs.EcsBackend.validate_settings(
        settings_for(None, "app-dev", timeout=1, poll_interval=0.05)
    )
    steps = []

    with stubber, pytest.raises(DeployError) as caught:
        ecs.EcsBackend(settings, client=ecs_client).deploy(
            DeployRequest("dev", settings, REPOSITORY, "1.0.0", fake_digest("stuck")),
            lambda message, seconds=None: steps.append(message),
        )

    assert str(caught.value) == (
        "The rollout of app-dev:4 did not finish within 1s: rolloutState IN_PROGRESS, 0 of 2 "
        "tasks running, 2 pending, 0 failed. Last service events: [09:30:00 UTC] (service "
        "app-dev) is unable to consistently start tasks successfully.; [09:30:00 UTC] (service "
        "app-dev) has started 2 tasks: (task 1) (task 2).. ECS may still finish it or its "
        "circuit breaker may roll it back; check the service, then deploy again or roll back."
    )
    assert steps.count("Waiting for the rollout: " + ecs.deployment_summary(stuck[0])) == 1


def test_rollout_judgement():
    def judge(on: str, deployments: list[dict]) -> tuple[str, str]:
        service = described_service(on, deployments)["services"][0]
        judged = ecs.judge_rollout(service, NEW, replacing=CURRENT)
        return judged.state, judged.detail

    assert judge(NEW, [deployment(NEW, "PRIMARY", "COMPLETED")])[0] == "COMPLETED"
    replaced = [deployment(OTHER, "PRIMARY", "IN_PROGRESS"), deployment(NEW, "ACTIVE", "COMPLETED")]
    assert judge(OTHER, replaced) == (
        "FAILED",
        "app-dev:4 is no longer the service's primary deployment: it now deploys app-dev:5.",
    )
    assert judge(OTHER, [deployment(OTHER, "PRIMARY", "IN_PROGRESS")]) == (
        "FAILED",
        "The service was pointed at app-dev:5 while opsweb rolled out app-dev:4; someone else "
        "deployed.",
    )
    stale_read = judge(CURRENT, [deployment(CURRENT, "PRIMARY", "COMPLETED")])
    assert stale_read == (
        "IN_PROGRESS",
        "ECS does not show the deployment of app-dev:4 yet; the service is on app-dev:3",
    )
    behind_a_classic_load_balancer = deployment(NEW, "PRIMARY", "COMPLETED")
    del behind_a_classic_load_balancer["rolloutState"]
    assert judge(NEW, [behind_a_classic_load_balancer])[0] == "COMPLETED"
    old_tasks_draining = [
        behind_a_classic_load_balancer,
        deployment(CURRENT, "ACTIVE", "COMPLETED"),
    ]
    assert judge(NEW, old_tasks_draining)[0] == "IN_PROGRESS"


# -- a rollout ECS's circuit breaker has already rolled back (aws-actions/...-task-definition#191)

BEFORE_ID, OURS_ID, ROLLBACK_ID = "ecs-svc/1111", "ecs-svc/2222", "ecs-svc/3333"
FAILED_EVENTS = [
    f"(service app-dev) (deployment {OURS_ID}) deployment failed: tasks failed to start.",
    f"(service app-dev) rolling back to deployment {BEFORE_ID}.",
]


def with_ids(service: dict, *ids: str, created_at=EVENT_TIME) -> dict:
    """``service`` with its deployments numbered ``ids`` in order, as real ECS numbers them."""
    for deployment, deployment_id in zip(service["deployments"], ids, strict=True):
        deployment.update(id=deployment_id, createdAt=created_at)
    return service


def before_update() -> dict:
    """The service as opsweb read it before UpdateService: on app-dev:3, an old event."""
    steady = [deployment(CURRENT, "PRIMARY", "COMPLETED")]
    return with_ids(
        described_service(CURRENT, steady, ["(service app-dev) has reached a steady state."])[
            "services"
        ][0],
        BEFORE_ID,
    )


def polled(on: str, deployments: list[dict], ids: list[str], events=()) -> dict:
    """A later DescribeServices entry: ``events`` (newest first) above the old one."""
    service = described_service(
        on, deployments, [*events, "(service app-dev) has reached a steady state."]
    )["services"][0]
    count = len(service["events"])
    for number, event in enumerate(service["events"]):
        event["id"] = "old" if number == count - 1 else f"new-{number}"
    return with_ids(service, *ids)


def test_rollout_judgement_recognises_a_rollback_whenever_the_poll_lands():
    watch = ecs.Watch(NEW, CURRENT, before=before_update(), deployment_id=OURS_ID)
    rolling = (
        "The deployment of app-dev:4 failed (deployment circuit breaker) and ECS is rolling the "
        "service back to app-dev:3"
    )
    rolled = (
        "The deployment of app-dev:4 failed (deployment circuit breaker) and ECS rolled the "
        "service back to app-dev:3, which runs again"
    )
    moments = {
        "ours failed, rollback under way": (
            polled(
                CURRENT,
                [
                    deployment(CURRENT, "PRIMARY", "IN_PROGRESS", running=1),
                    deployment(NEW, "ACTIVE", "FAILED", running=0, failed=3),
                ],
                [ROLLBACK_ID, OURS_ID],
                FAILED_EVENTS[::-1],
            ),
            "ECS is rolling the service back to app-dev:3.",
        ),
        "ours failed, rollback completed": (
            polled(
                CURRENT,
                [
                    deployment(CURRENT, "PRIMARY", "COMPLETED"),
                    deployment(NEW, "ACTIVE", "FAILED", running=0, failed=3),
                ],
                [ROLLBACK_ID, OURS_ID],
                FAILED_EVENTS[::-1],
            ),
            "ECS rolled the service back to app-dev:3.",
        ),
        "ours dropped, rollback under way": (
            polled(
                CURRENT,
                [deployment(CURRENT, "PRIMARY", "IN_PROGRESS", running=1)],
                [ROLLBACK_ID],
            ),
            rolling,
        ),
        "ours dropped, rollback completed": (
            polled(CURRENT, [deployment(CURRENT, "PRIMARY", "COMPLETED")], [ROLLBACK_ID]),
            rolled,
        ),
        "ours dropped, ECS reused the old deployment; only its events tell": (
            polled(
                CURRENT,
                [deployment(CURRENT, "PRIMARY", "COMPLETED")],
                [BEFORE_ID],
                ["(service app-dev) has reached a steady state.", *FAILED_EVENTS[::-1]],
            ),
            rolled,
        ),
        "ours still primary and in progress: not decided yet": (
            polled(
                NEW,
                [
                    deployment(CURRENT, "ACTIVE", "IN_PROGRESS", running=1),
                    deployment(NEW, "PRIMARY", "IN_PROGRESS", running=0, failed=3),
                ],
                [ROLLBACK_ID, OURS_ID],
            ),
            None,
        ),
    }
    for moment, (service, said) in moments.items():
        judged = ecs.judge_rollout(service, watch)
        if said is None:
            assert judged.state == "IN_PROGRESS", moment
            continue
        assert judged.state == "FAILED", moment
        assert said in judged.detail, (moment, judged.detail)

    # What only looks like a rollback: a stale read right after UpdateService, and the events
    # of an earlier deploy's rollback, are not this deploy's.
    stale = before_update()
    assert ecs.judge_rollout(stale, watch).state == "IN_PROGRESS"
    earlier_rollback = before_update()
    earlier_rollback["events"] = [
        {"id": f"old-{n}", "createdAt": EVENT_TIME, "message": m}
        for n, m in enumerate(FAILED_EVENTS[::-1])
    ]
    watch_after_it = ecs.Watch(NEW, CURRENT, before=earlier_rollback, deployment_id=OURS_ID)
    assert ecs.judge_rollout(earlier_rollback, watch_after_it).state == "IN_PROGRESS"


def test_a_rollout_rolled_back_before_opsweb_looks_fails_at_once(aws, flow, alice, monkeypatch):
    # aws-actions/amazon-ecs-deploy-task-definition#191: ECS had already rolled back, and the
    # run looked busy until its rollout timeout.
    make_service(aws, "app-dev")
    dev = use_ecs(flow["dev"], aws, "app-dev", timeout=60)
    good, bad = ecr_image("1.0.0"), ecr_image("1.1.0")
    good_revision = deploy_through_opsweb(alice, dev, good).backend_ref["task_definition_arn"]
    moto = client(aws)
    make_client = ecs.make_client
    updated = []

    def circuit_breaker_rolls_back(parsed, **kwargs):
        # By the time opsweb looks, ECS put the service back on the good revision.
        updated.append(parsed["service"]["taskDefinition"])
        moto.update_service(cluster=CLUSTER, service="app-dev", taskDefinition=good_revision)

    def described_as_ecs_reports_it(parsed, **kwargs):
        if not updated:
            return
        service = parsed["services"][0]
        service["deployments"] = [
            {
                **service["deployments"][0],
                "id": "ecs-svc/rolled-back",
                "status": "PRIMARY",
                "taskDefinition": good_revision,
                "rolloutState": "COMPLETED",
                "rolloutStateReason": "ECS deployment circuit breaker: rolling back to "
                "deploymentId ecs-svc/before.",
            }
        ]
        service["events"] = [
            {"id": "e2", "createdAt": EVENT_TIME, "message": "(service app-dev) rolling back."},
            {
                "id": "e1",
                "createdAt": EVENT_TIME,
                "message": "(service app-dev) (deployment ecs-svc/ours) deployment failed: "
                "tasks failed to start.",
            },
        ]

    def observed_client(*args, **kwargs):
        made = make_client(*args, **kwargs)
        made.meta.events.register("after-call.ecs.UpdateService", circuit_breaker_rolls_back)
        made.meta.events.register("after-call.ecs.DescribeServices", described_as_ecs_reports_it)
        return made

    monkeypatch.setattr(ecs, "make_client", observed_client)

    run = deploy_through_opsweb(alice, dev, bad)

    assert run.status == RunStatus.FAILED
    assert run.error.startswith(
        f"The deployment of app-dev:3 failed (deployment circuit breaker) and ECS rolled the "
        f"service back to {ecs.revision_name(good_revision)}, which runs again "
        f"(rolloutState COMPLETED, 1 of 1 tasks running, 0 pending, 0 failed); app-dev:3 does "
        f"not run. Last service events: [09:30:00 UTC] (service app-dev) rolling back."
    ), run.error
    assert not run.events.filter(message__startswith="Waiting for the rollout").exists()
    dev.refresh_from_db()
    assert dev.current_image == good  # what runs, truthfully: the run never switched
    assert service_state(aws, "app-dev") == (good_revision, f"{REPOSITORY}@{good.digest}")
    assert not dev.runs.filter(kind="rollback").exists()  # ECS already restored it
    assert tasks.check_drift() == {}
