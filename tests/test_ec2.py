"""The EC2 backend against a real moto server (EC2, Auto Scaling, SSM, ELBv2; the fixture lives
in tests/conftest.py), through opsweb's own services and tasks where a user would notice.

moto runs nothing on its instances: every Run Command invocation reports Success with empty
output, it has no ListCommandInvocations, DescribeInstanceInformation or CancelCommand. So the
faults opsweb must handle on an instance — a command that fails, one that never finishes — are
made with a botocore ``after-call`` hook that rewrites GetCommandInvocation's answer for chosen
instances after moto has answered (and a ``before-call`` hook answers CancelCommand). Everything
else — instances, the group, tags, the target group, the commands sent — is moto's.

The shell script sent to the instances is exercised separately, with ``sh`` running it against
stand-in ``docker`` / ``curl`` / ``aws`` commands that record what they were asked to do.
"""

import json
import os
import stat
import subprocess

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from django.core.exceptions import ValidationError

from opsweb import services, tasks
from opsweb.models import ImageVersion, RunStatus, Target
from opsweb.services import running
from orchestration import ec2
from orchestration.base import DeployError, DeployRequest, SettingsError, get_backend
from orchestration.ec2 import backend as ec2_backend
from tests.conftest import fake_digest, free_port, make_image

REGION = "eu-west-1"
ACCOUNT = "123456789012"
REPOSITORY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/team/app"
GROUP = "app-dev"
AMI = "ami-12c6146b"  # one of the images moto knows (listing them all is slow)


def client(url: str, service: str):
    return boto3.client(service, region_name=REGION, endpoint_url=url)


def make_group(url: str, *, count: int = 3, name: str = GROUP) -> dict:
    """An Auto Scaling group of ``count`` instances from a launch template, and an ELBv2 target
    group (not yet holding them). Returns {"instances": [...], "target_group_arn": ...}."""
    ec2_client = client(url, "ec2")
    vpc = ec2_client.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2_client.create_subnet(
        VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=f"{REGION}a"
    )["Subnet"]["SubnetId"]
    ami = AMI
    ec2_client.create_launch_template(
        LaunchTemplateName=f"{name}-lt",
        LaunchTemplateData={"ImageId": ami, "InstanceType": "t3.micro"},
    )
    client(url, "autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": f"{name}-lt"},
        MinSize=count,
        MaxSize=max(count, 1),
        DesiredCapacity=count,
        VPCZoneIdentifier=subnet,
    )
    target_group = client(url, "elbv2").create_target_group(
        Name=name,
        Protocol="HTTP",
        Port=8000,
        VpcId=vpc,
        TargetType="instance",
        HealthCheckPath="/healthz",
    )["TargetGroups"][0]["TargetGroupArn"]
    return {"instances": group_instances(url, name), "target_group_arn": target_group}


def group_instances(url: str, name: str = GROUP) -> list[str]:
    (group,) = client(url, "autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[name]
    )["AutoScalingGroups"]
    return sorted(i["InstanceId"] for i in group["Instances"])


def settings_for(url: str | None, **extra) -> dict:
    settings = {
        "region": REGION,
        "auto_scaling_group": GROUP,
        "container_name": "web",
        "port": 8000,
        "poll_interval": 0.05,
        "command_timeout": 5,
        "target_timeout": 5,
        "max_attempts": 2,
        **({"endpoint_url": url} if url else {}),
        **extra,
    }
    return {key: value for key, value in settings.items() if value is not None}


def use_ec2(environment: Target, url: str, **extra) -> Target:
    environment.backend = "ec2"
    environment.backend_settings = settings_for(url, **extra)
    environment.health_check_url = ""
    environment.full_clean()
    environment.save()
    return environment


def deploy_through_opsweb(user, environment, image):
    run = services.request_deploy(user=user, environment=environment, image=image)
    tasks.execute_run(run.pk)
    run.refresh_from_db()
    return run


def ecr_image(tag: str) -> ImageVersion:
    return make_image(tag, repository=REPOSITORY)


def image_tags(url: str, instances: list[str]) -> dict[str, str]:
    """{instance id: its opsweb:image tag}."""
    reservations = client(url, "ec2").describe_instances(InstanceIds=instances)["Reservations"]
    return {
        i["InstanceId"]: next(
            (t["Value"] for t in i.get("Tags", []) if t["Key"] == "opsweb:image"), ""
        )
        for r in reservations
        for i in r["Instances"]
    }


def target_states(url: str, arn: str) -> dict[str, str]:
    health = client(url, "elbv2").describe_target_health(TargetGroupArn=arn)
    return {
        d["Target"]["Id"]: d["TargetHealth"]["State"] for d in health["TargetHealthDescriptions"]
    }


class Ssm:
    """What the backend's SSM clients send, and the faults they are made to see.

    moto 5.2 shares one InstanceIds list between all its commands (ListCommands shows every
    command on every instance), so the commands are recorded as they leave the client. moto
    cannot fail a command either (it runs none): GetCommandInvocation's answer for the
    instances in ``faults`` is rewritten after moto gave it. CancelCommand, which moto lacks,
    is answered here and recorded in ``cancelled``. ``refuse[n]`` = (code, message) makes the
    n-th SendCommand (1-based) fail as AWS would, before it reaches moto."""

    def __init__(self):
        self.commands: list[dict] = []
        self.faults: dict[str, dict] = {}
        self.cancelled: list[dict] = []
        self.refuse: dict[int, tuple[str, str]] = {}
        # {instance: images the load balancer never finds healthy on it ("*": any image)}
        self.unhealthy: dict[str, set[str]] = {}
        self.sent_image: dict[str, str] = {}  # the image each instance was last switched to

    def attach_elbv2(self, elbv2_client) -> None:
        # moto reports every registered instance healthy at once; a real target group may not.
        elbv2_client.meta.events.register(
            "after-call.elastic-load-balancing-v2.DescribeTargetHealth", self._unhealthy
        )

    def _unhealthy(self, parsed, **kwargs):
        for description in parsed.get("TargetHealthDescriptions", []):
            instance = description["Target"]["Id"]
            failing = self.unhealthy.get(instance, set())
            registered = description["TargetHealth"]["State"] != "unused"
            if registered and (self.sent_image.get(instance) in failing or "*" in failing):
                description["TargetHealth"] = {
                    "State": "unhealthy",
                    "Reason": "Target.FailedHealthChecks",
                    "Description": "Health checks failed",
                }

    def attach(self, ssm_client) -> None:
        events = ssm_client.meta.events
        events.register("provide-client-params.ssm.SendCommand", self._sent)
        events.register("after-call.ssm.GetCommandInvocation", self._rewrite)
        events.register("before-call.ssm.CancelCommand", self._cancel)
        events.register("before-call.ssm.SendCommand", self._refuse)

    def _sent(self, params, **kwargs):
        lines = params["Parameters"]["commands"]
        variables = dict(line.split("=", 1) for line in lines if line[:1].isupper() and "=" in line)
        self.commands.append(
            {"instances": list(params["InstanceIds"]), "vars": variables, "lines": lines}
        )
        for instance in params["InstanceIds"]:
            self.sent_image[instance] = variables.get("IMAGE", "the previous container")

    def _refuse(self, **kwargs):
        if len(self.commands) not in self.refuse:
            return None
        code, message = self.refuse[len(self.commands)]
        error = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {}}
        return AWSResponse("", 400, {}, None), error

    def _rewrite(self, parsed, **kwargs):
        parsed.update(self.faults.get(parsed.get("InstanceId"), {}))

    def _cancel(self, params, **kwargs):
        self.cancelled.append(json.loads(params["body"]))
        return AWSResponse("", 200, {}, None), {}


@pytest.fixture
def ssm(aws, monkeypatch) -> Ssm:
    recorder = Ssm()
    real = ec2_backend.make_client

    def make_client(service, **kwargs):
        made = real(service, **kwargs)
        if service == "ssm":
            recorder.attach(made)
        if service == "elbv2":
            recorder.attach_elbv2(made)
        return made

    monkeypatch.setattr(ec2_backend, "make_client", make_client)
    return recorder


def failed(output: str) -> dict:
    return {
        "Status": "Failed",
        "StatusDetails": "Failed",
        "ResponseCode": 1,
        "StandardOutputContent": output,
    }


# -- settings --------------------------------------------------------------------------------


def test_settings_errors_name_each_field(flow):
    environment = Target(
        application=flow["dev"].application,
        environment=flow["dev"].environment,
        backend="ec2",
        backend_settings={
            "region": "Ireland",
            "auto_scaling_group": "app",
            "tag_key": "app",
            "container_name": "web; rm -rf /",
            "health_path": "/healthz?x=$(reboot)",
            "env_file": "../etc/passwd",
            "batch_size": "0",
            "max_errors": "150%",
            "target_group_arn": "my-target-group",
            "port": 70000,
            "cluster": "c",
        },
    )
    with pytest.raises(ValidationError) as caught:
        environment.full_clean()
    messages = caught.value.message_dict["backend_settings"]
    assert "region: Give the AWS region the instances are in, such as 'eu-west-1'." in messages
    assert (
        "auto_scaling_group: Give either auto_scaling_group or tag_key and tag_value, not both."
        in messages
    )
    fields = {message.split(":", 1)[0] for message in messages}
    assert fields == {
        "region",
        "auto_scaling_group",
        "container_name",
        "health_path",
        "env_file",
        "batch_size",
        "max_errors",
        "target_group_arn",
        "port",
        "unknown",
    }
    assert "batch_size: Give a whole number of instances (at least 1) or a percentage" in "".join(
        messages
    )
    assert Target.objects.filter(environment__slug="sandbox").count() == 0


def test_settings_need_a_group_or_a_tag_and_refuse_credentials():
    with pytest.raises(SettingsError) as caught:
        ec2.Ec2Backend.validate_settings(
            {"region": REGION, "container_name": "web", "aws_secret_access_key": "hunter2"}
        )
    assert caught.value.errors["auto_scaling_group"].startswith(
        "Give the Auto Scaling group whose instances run the app, or tag_key and tag_value"
    )
    assert "standard AWS chain" in caught.value.errors["credentials"]
    assert "hunter2" not in str(caught.value)
    tagged = ec2.Ec2Backend.validate_settings(
        {"region": REGION, "container_name": "web", "tag_key": "app", "tag_value": "web"}
    )
    assert (tagged["tag_key"], tagged["tag_value"], tagged["auto_scaling_group"]) == (
        "app",
        "web",
        "",
    )


def test_settings_defaults_are_stable():
    settings = ec2.Ec2Backend.validate_settings(
        {
            "region": REGION,
            "auto_scaling_group": GROUP,
            "container_name": "web",
            "batch_size": "25%",
        }
    )
    assert settings == {
        "region": REGION,
        "auto_scaling_group": GROUP,
        "tag_key": "",
        "tag_value": "",
        "container_name": "web",
        "port": 8000,
        "health_path": "/healthz",
        "env_file": "",
        "batch_size": "25%",
        "max_errors": "0",
        "target_group_arn": "",
        "image_parameter": "",
        "health_timeout": 120.0,
        "command_timeout": 600.0,
        "target_timeout": 300.0,
        "poll_interval": 5.0,
        "endpoint_url": "",
        "max_attempts": 6,
    }
    assert ec2.Ec2Backend.validate_settings(settings) == settings


def test_batches_and_allowed_errors():
    ids = [f"i-{n}" for n in range(5)]
    assert ec2.split_batches(ids, "2") == [["i-0", "i-1"], ["i-2", "i-3"], ["i-4"]]
    assert ec2.split_batches(ids, "50%") == [["i-0", "i-1", "i-2"], ["i-3", "i-4"]]
    assert ec2.split_batches(ids, "1%") == [[i] for i in ids]
    assert ec2.allowed_errors(5, "1") == 1
    assert ec2.allowed_errors(5, "40%") == 2
    assert ec2.allowed_errors(5, "10%") == 0


# -- deploy ----------------------------------------------------------------------------------


def test_deploy_switches_the_group_in_batches_by_digest(aws, flow, alice, ssm):
    made = make_group(aws, count=3)
    arn = made["target_group_arn"]
    client(aws, "elbv2").register_targets(
        TargetGroupArn=arn, Targets=[{"Id": i, "Port": 8000} for i in made["instances"]]
    )
    dev = use_ec2(
        flow["dev"],
        aws,
        batch_size=2,
        target_group_arn=arn,
        env_file="/etc/app/app.env",
        image_parameter="/app/dev/image",
    )
    image = ecr_image("1.0.0")

    run = deploy_through_opsweb(alice, dev, image)

    assert run.status == RunStatus.SUCCEEDED, run.error
    pinned = f"{REPOSITORY}@{image.digest}"
    instances = made["instances"]
    assert image_tags(aws, instances) == {i: pinned for i in instances}
    commands = ssm.commands
    assert [c["instances"] for c in commands] == [instances[:2], instances[2:]]
    for command in commands:
        assert command["vars"]["IMAGE"] == pinned  # by digest, never a tag
        assert command["vars"]["ROLLBACK"] == "false"
        assert command["vars"]["APP_VERSION"] == "1.0.0"
        assert command["vars"]["REGISTRY"] == f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
        assert command["vars"]["ENV_FILE"] == "/etc/app/app.env"
        assert not any(":1.0.0" in line for line in command["lines"])
    assert target_states(aws, arn) == {i: "healthy" for i in instances}
    assert client(aws, "ssm").get_parameter(Name="/app/dev/image")["Parameter"]["Value"] == pinned
    assert run.backend_ref == {"image": pinned, "instances": instances, "auto_scaling_group": GROUP}
    messages = list(run.events.values_list("message", flat=True))
    assert any(m.startswith("3 instance(s) in the Auto Scaling group 'app-dev'") for m in messages)
    for step in (
        "Batch 1/2: deregistered from the target group, draining",
        "Batch 1/2: healthy in the target group again",
        "Batch 2/2: healthy in the target group again",
        f"{instances[2]}: runs {pinned}",
    ):
        assert step in messages, step
    dev.refresh_from_db()
    assert dev.current_image == image


def test_deploy_by_tag_switches_only_running_healthy_instances(aws):
    ec2_client = client(aws, "ec2")
    ami = AMI

    def launch(count, value):
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "app", "Value": value}]}]
        return [
            i["InstanceId"]
            for i in ec2_client.run_instances(
                ImageId=ami, MinCount=count, MaxCount=count, TagSpecifications=tags
            )["Instances"]
        ]

    web = launch(3, "web")
    other = launch(1, "worker")
    ec2_client.stop_instances(InstanceIds=[web[0]])
    backend = get_backend(
        "ec2", settings_for(aws, auto_scaling_group=None, tag_key="app", tag_value="web")
    )
    digest = fake_digest("by tag")

    result = backend.deploy(DeployRequest("dev", backend.settings, REPOSITORY, "1.0.0", digest))

    assert sorted(result.ref["instances"]) == sorted(web[1:])
    assert result.ref["tag"] == "app=web"
    tags = image_tags(aws, web + other)
    assert tags[web[0]] == "" and tags[other[0]] == ""
    assert backend.running_version("dev") == digest
    board = {t["instance_id"]: t for t in backend.describe_targets("dev")}
    assert set(board) == set(web)
    assert board[web[0]]["state"] == "stopped" and board[web[0]]["in_service"] is False
    assert board[web[1]]["digest"] == digest and board[web[1]]["in_service"] is True


def test_deploy_skips_instances_the_group_finds_unhealthy(aws):
    instances = make_group(aws, count=3)["instances"]
    client(aws, "autoscaling").set_instance_health(
        InstanceId=instances[1], HealthStatus="Unhealthy"
    )
    backend = get_backend("ec2", settings_for(aws))

    result = backend.deploy(
        DeployRequest("dev", backend.settings, REPOSITORY, "1.0.0", fake_digest("skip"))
    )

    assert result.ref["instances"] == [instances[0], instances[2]]
    assert image_tags(aws, instances)[instances[1]] == ""


def test_deploy_without_instances_or_group_says_so(aws, flow, alice, ssm):
    make_group(aws, count=0)
    dev = use_ec2(flow["dev"], aws)

    run = deploy_through_opsweb(alice, dev, ecr_image("1.0.0"))

    assert run.status == RunStatus.FAILED
    assert run.error == (
        f"No running, healthy instances in the Auto Scaling group 'app-dev' in region {REGION}; "
        f"start some (or fix their health) before deploying."
    )
    assert ssm.commands == []
    missing = get_backend("ec2", settings_for(aws, auto_scaling_group="app-qa"))
    with pytest.raises(
        DeployError, match=f"Auto Scaling group 'app-qa' not found in region {REGION}"
    ):
        missing.deploy(DeployRequest("dev", missing.settings, REPOSITORY, "1", fake_digest("q")))


def test_deploy_refuses_a_repository_the_shell_could_misread(aws, ssm):
    make_group(aws, count=1)
    backend = get_backend("ec2", settings_for(aws))
    request = DeployRequest("dev", backend.settings, "team/app;reboot", "1.0.0", fake_digest("x"))

    with pytest.raises(DeployError, match="is not a Docker image repository"):
        backend.deploy(request)

    assert ssm.commands == []


# -- a failed batch stops the rollout and restores what was switched -------------------------


def test_failed_batch_stops_and_restores_switched_instances(aws, flow, alice, ssm):
    made = make_group(aws, count=4)
    instances, arn = made["instances"], made["target_group_arn"]
    dev = use_ec2(flow["dev"], aws, batch_size=2, target_group_arn=arn)
    good, bad = ecr_image("1.0.0"), ecr_image("1.1.0")
    first = deploy_through_opsweb(alice, dev, good)
    assert first.status == RunStatus.SUCCEEDED, first.error
    before = len(ssm.commands)
    output = "\n".join(f"line {n}" for n in range(1, 9)) + "\nopsweb: the new container failed"
    ssm.faults[instances[3]] = failed(output)

    run = deploy_through_opsweb(alice, dev, bad)

    assert run.status == RunStatus.FAILED
    good_image, bad_image = f"{REPOSITORY}@{good.digest}", f"{REPOSITORY}@{bad.digest}"
    assert run.error == (
        f"The rollout stopped at batch 2/2: {instances[3]} Failed: line 5 | line 6 | line 7 | "
        f"line 8 | opsweb: the new container failed. {instances[0]}, {instances[1]}, "
        f"{instances[2]} went back to the image they ran before."
    )
    # Every instance runs the good image again, and the target group holds them all.
    assert image_tags(aws, instances) == {i: good_image for i in instances}
    assert target_states(aws, arn) == {i: "healthy" for i in instances}
    commands = ssm.commands[before:]
    assert [(c["instances"], c["vars"]["IMAGE"]) for c in commands] == [
        (instances[:2], bad_image),
        (instances[2:], bad_image),
        (instances[:3], good_image),
    ]
    assert commands[-1]["vars"]["ROLLBACK"] == "true"
    messages = list(run.events.values_list("message", flat=True))
    assert f"Restore to {good_image}: 3 of 3 instance(s) restored" in messages
    dev.refresh_from_db()
    assert dev.current_image == good  # the failed version never became the current one


def test_first_deploy_failing_restores_the_previous_container(aws, ssm):
    instances = make_group(aws, count=2)["instances"]
    ssm.faults[instances[1]] = failed("docker: pull access denied")
    backend = get_backend("ec2", settings_for(aws))

    with pytest.raises(DeployError) as caught:
        backend.deploy(
            DeployRequest("dev", backend.settings, REPOSITORY, "1.0.0", fake_digest("first"))
        )

    assert str(caught.value).startswith(
        f"The rollout stopped at batch 2/2: {instances[1]} Failed: docker: pull access denied."
    )
    restore = ssm.commands[-1]
    assert restore["instances"] == [instances[0]]
    assert "IMAGE" not in restore["vars"]  # no recorded image: the stopped container comes back
    assert 'docker rename "$NAME-previous" "$NAME"' in restore["lines"]
    assert image_tags(aws, instances) == {i: "" for i in instances}


def test_a_target_that_never_turns_healthy_fails_its_batch_and_is_restored(aws, ssm):
    made = make_group(aws, count=2)
    instances, arn = made["instances"], made["target_group_arn"]
    backend = get_backend(
        "ec2", settings_for(aws, target_group_arn=arn, batch_size=2, target_timeout=1)
    )
    sick = fake_digest("sick")
    ssm.unhealthy[instances[1]] = {f"{REPOSITORY}@{sick}"}

    with pytest.raises(DeployError) as caught:
        backend.deploy(DeployRequest("dev", backend.settings, REPOSITORY, "1.0.0", sick))

    assert str(caught.value) == (
        f"The rollout stopped at batch 1/1: {instances[1]} Unhealthy in the target group: "
        f"unhealthy (Target.FailedHealthChecks). {instances[0]}, {instances[1]} went back to "
        f"the image they ran before."
    )
    restore = ssm.commands[-1]
    assert restore["instances"] == instances
    assert 'docker rename "$NAME-previous" "$NAME"' in restore["lines"]  # no image recorded
    assert image_tags(aws, instances) == {i: "" for i in instances}


def test_a_failed_restore_says_so_and_marks_the_environment_broken(aws, ssm):
    made = make_group(aws, count=1)
    (instance,), arn = made["instances"], made["target_group_arn"]
    backend = get_backend("ec2", settings_for(aws, target_group_arn=arn, target_timeout=1))
    ssm.unhealthy[instance] = {"*"}  # the instance itself is broken

    with pytest.raises(DeployError) as caught:
        backend.deploy(
            DeployRequest("dev", backend.settings, REPOSITORY, "1.0.0", fake_digest("broken"))
        )

    unhealthy = f"{instance} Unhealthy in the target group: unhealthy (Target.FailedHealthChecks)"
    assert str(caught.value) == (
        f"The rollout stopped at batch 1/1: {unhealthy}. Restoring failed too: {unhealthy}. "
        f"Check those instances."
    )
    assert caught.value.previous_stopped is True  # opsweb treats the environment as broken


def test_an_aws_error_halfway_restores_what_was_switched(aws, ssm):
    instances = make_group(aws, count=2)["instances"]
    backend = get_backend("ec2", settings_for(aws))
    before = fake_digest("before")
    client(aws, "ec2").create_tags(
        Resources=instances, Tags=[{"Key": "opsweb:image", "Value": f"{REPOSITORY}@{before}"}]
    )
    # What AWS answers for an instance whose SSM agent is not registered.
    ssm.refuse[2] = ("InvalidInstanceId", "Instances not in a valid state for account")

    with pytest.raises(DeployError) as caught:
        backend.deploy(
            DeployRequest("dev", backend.settings, REPOSITORY, "1.0.0", fake_digest("half"))
        )

    assert str(caught.value) == (
        "The rollout stopped at batch 2/2: AWS ssm:SendCommand failed (InvalidInstanceId): "
        f"Instances not in a valid state for account. {instances[0]} went back to the image "
        f"they ran before."
    )
    assert caught.value.previous_stopped is False
    assert [c["instances"] for c in ssm.commands] == [
        [instances[0]],
        [instances[1]],
        [instances[0]],
    ]
    assert ssm.commands[-1]["vars"]["IMAGE"] == f"{REPOSITORY}@{before}"
    assert image_tags(aws, instances) == {i: f"{REPOSITORY}@{before}" for i in instances}


def test_an_unexpected_error_halfway_restores_what_was_switched(aws, ssm, monkeypatch):
    # Not an AWS refusal but a fault in opsweb's own handling (which no AWS answer provokes):
    # once switching has begun, it is handled like a failed batch.
    instances = make_group(aws, count=2)["instances"]
    backend = get_backend("ec2", settings_for(aws))
    before = fake_digest("before")
    client(aws, "ec2").create_tags(
        Resources=instances, Tags=[{"Key": "opsweb:image", "Value": f"{REPOSITORY}@{before}"}]
    )
    leave = type(backend)._leave_target_group
    calls = []

    def fails_second(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("TargetHealthDescriptions")
        return leave(self, *args)

    monkeypatch.setattr(type(backend), "_leave_target_group", fails_second)
    with pytest.raises(DeployError) as caught:
        backend.deploy(
            DeployRequest("dev", backend.settings, REPOSITORY, "1.0.0", fake_digest("half"))
        )

    assert str(caught.value) == (
        "The rollout stopped at batch 2/2: unexpected error (KeyError: "
        f"'TargetHealthDescriptions'). {instances[0]} went back to the image they ran before."
    )
    assert caught.value.previous_stopped is False
    assert image_tags(aws, instances) == {i: f"{REPOSITORY}@{before}" for i in instances}


def refuse_after_batch(monkeypatch, ssm, operation: str, *, commands: int, times: int = 1):
    """Make ``operation`` ("ec2.CreateTags", "elastic-load-balancing-v2.RegisterTargets", …)
    fail as AWS would, ``times`` times, from its first call after the ``commands``-th Run
    Command was sent (moto answers every such call; a real outage or throttle would not)."""
    made = ec2_backend.make_client
    refused = []

    def refuse(**kwargs):
        if len(ssm.commands) < commands or len(refused) >= times:
            return None
        refused.append(operation)
        error = {"Error": {"Code": "ServiceUnavailable", "Message": "Please retry."}}
        return AWSResponse("", 400, {}, None), {**error, "ResponseMetadata": {}}

    def make_client(service, **kwargs):
        client_ = made(service, **kwargs)
        client_.meta.events.register(f"before-call.{operation}", refuse)
        return client_

    monkeypatch.setattr(ec2_backend, "make_client", make_client)
    return refused


def registered_group(url: str, count: int, before: str) -> tuple[list[str], str]:
    """A group whose instances run ``before`` (their tag) and are all in the target group."""
    made = make_group(url, count=count)
    instances, arn = made["instances"], made["target_group_arn"]
    client(url, "elbv2").register_targets(
        TargetGroupArn=arn, Targets=[{"Id": i, "Port": 8000} for i in instances]
    )
    client(url, "ec2").create_tags(
        Resources=instances, Tags=[{"Key": "opsweb:image", "Value": before}]
    )
    return instances, arn


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("ec2.CreateTags", "ec2:CreateTags"),
        ("elastic-load-balancing-v2.RegisterTargets", "elbv2:RegisterTargets"),
        ("elastic-load-balancing-v2.DescribeTargetHealth", "elbv2:DescribeTargetHealth"),
    ],
)
def test_an_aws_error_after_a_batch_switched_restores_that_batch_too(
    aws, flow, alice, ssm, monkeypatch, operation, call
):
    # Tagging, registering or waiting for health failed after batch 2's command succeeded:
    # batch 2 was left on the new image, out of the target group, and the message said only
    # batch 1 went back.
    before = f"{REPOSITORY}@{fake_digest('before')}"
    instances, arn = registered_group(aws, 2, before)
    dev = use_ec2(flow["dev"], aws, target_group_arn=arn)
    refused = refuse_after_batch(monkeypatch, ssm, operation, commands=2)

    run = deploy_through_opsweb(alice, dev, ecr_image("1.1.0"))

    assert refused == [operation]
    assert run.status == RunStatus.FAILED
    assert run.error == (
        f"The rollout stopped at batch 2/2: AWS {call} failed (ServiceUnavailable): Please "
        f"retry. {instances[0]}, {instances[1]} went back to the image they ran before."
    )
    assert image_tags(aws, instances) == {i: before for i in instances}
    assert target_states(aws, arn) == {i: "healthy" for i in instances}
    restore = ssm.commands[-1]
    assert (restore["instances"], restore["vars"]["IMAGE"]) == (instances, before)
    assert not dev.runs.filter(kind="rollback").exists()  # nothing was left broken


def test_instances_that_could_not_be_restored_are_named(aws, ssm, monkeypatch):
    before = f"{REPOSITORY}@{fake_digest('before')}"
    instances, arn = registered_group(aws, 2, before)
    refuse_after_batch(
        monkeypatch, ssm, "elastic-load-balancing-v2.RegisterTargets", commands=2, times=99
    )
    backend = get_backend("ec2", settings_for(aws, target_group_arn=arn))

    with pytest.raises(DeployError) as caught:
        backend.deploy(
            DeployRequest("dev", backend.settings, REPOSITORY, "1.1.0", fake_digest("new"))
        )

    refusal = "AWS elbv2:RegisterTargets failed (ServiceUnavailable): Please retry"
    assert str(caught.value) == (
        f"The rollout stopped at batch 2/2: {refusal}. Restoring failed too: {instances[0]}, "
        f"{instances[1]} went back to the image they ran before but not into the target group: "
        f"{refusal}. Check those instances."
    )
    assert caught.value.previous_stopped is True
    assert image_tags(aws, instances) == {i: before for i in instances}
    assert set(target_states(aws, arn).values()) <= {"unused", "draining"}


def test_failures_within_max_errors_finish_and_show_as_drift(aws, flow, alice, ssm):
    instances = make_group(aws, count=3)["instances"]
    dev = use_ec2(flow["dev"], aws, max_errors="1")
    ssm.faults[instances[1]] = failed("health check failed")
    image = ecr_image("1.0.0")

    run = deploy_through_opsweb(alice, dev, image)

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert f"1 failed within max_errors: {instances[1]} Failed: health check failed" in (
        run.events.get(message__startswith="Backend finished").message
    )
    pinned = f"{REPOSITORY}@{image.digest}"
    assert tasks.check_drift() == {
        "sample-dev": (
            f"service runs no opsweb:image tag on {instances[1]}; {image.digest} on "
            f"{instances[0]}, {instances[2]}, opsweb last deployed 1.0.0 ({image.digest})"
        )
    }
    assert image_tags(aws, instances)[instances[0]] == pinned


def test_a_command_that_never_ends_is_cancelled_and_fails_the_run(aws, ssm):
    instances = make_group(aws, count=1)["instances"]
    ssm.faults[instances[0]] = {"Status": "InProgress"}
    backend = get_backend("ec2", settings_for(aws, command_timeout=1))
    beats = []

    with pytest.raises(DeployError) as caught:
        backend.deploy(
            DeployRequest("dev", backend.settings, REPOSITORY, "1.0.0", fake_digest("slow")),
            lambda message, seconds=None: beats.append(message),
        )

    assert str(caught.value) == (
        f"The rollout stopped at batch 1/1: {instances[0]} TimedOut: still running after 1s; "
        f"opsweb cancelled the command. Restoring failed too: {instances[0]}: whether its "
        f"switch command ran is unknown and the image it ran before was never recorded, so it "
        f"was not restored. Check those instances."
    )
    assert caught.value.previous_stopped is True
    assert [c["InstanceIds"] for c in ssm.cancelled] == [instances]
    assert beats.count("") > 5  # heartbeats while waiting
    assert image_tags(aws, instances) == {instances[0]: ""}


# -- rollback, drift, unreachable AWS --------------------------------------------------------


def test_rollback_redeploys_the_previous_digest_with_rollback_set(aws, flow, alice, ssm):
    instances = make_group(aws, count=2)["instances"]
    dev = use_ec2(flow["dev"], aws)
    good, bad = ecr_image("1.0.0"), ecr_image("1.1.0")
    deploy_through_opsweb(alice, dev, good)
    deploy_through_opsweb(alice, dev, bad)

    rollback = services.roll_back(user=alice, environment=dev, reason="critical_errors")
    tasks.execute_run(rollback.pk)

    rollback.refresh_from_db()
    assert rollback.status == RunStatus.SUCCEEDED, rollback.error
    good_image = f"{REPOSITORY}@{good.digest}"
    assert image_tags(aws, instances) == {i: good_image for i in instances}
    last = ssm.commands[-2:]  # batch size 1: one command per instance
    assert [c["vars"]["IMAGE"] for c in last] == [good_image, good_image]
    assert [c["vars"]["ROLLBACK"] for c in last] == ["true", "true"]
    dev.refresh_from_db()
    assert dev.current_image == good


def test_drift_names_the_instances_that_disagree(aws, flow, alice):
    instances = make_group(aws, count=3)["instances"]
    dev = use_ec2(flow["dev"], aws)
    image = ecr_image("1.0.0")
    deploy_through_opsweb(alice, dev, image)
    assert tasks.check_drift() == {}

    hotfix = fake_digest("hotfix")
    client(aws, "ec2").create_tags(
        Resources=[instances[2]], Tags=[{"Key": "opsweb:image", "Value": f"{REPOSITORY}@{hotfix}"}]
    )

    found = tasks.check_drift()

    dev.refresh_from_db()
    first, second = sorted([(image.digest, instances[:2]), (hotfix, instances[2:])])
    running = "; ".join(f"{digest} on {', '.join(ids)}" for digest, ids in (first, second))
    assert found == {
        "sample-dev": f"service runs {running}, opsweb last deployed 1.0.0 ({image.digest})"
    }
    assert dev.drift == found["sample-dev"]


def test_drift_check_mid_rollout_expects_the_old_and_the_new_image(aws, flow, alice, monkeypatch):
    instances = make_group(aws, count=2)["instances"]
    dev = use_ec2(flow["dev"], aws)
    old, new = ecr_image("1.0.0"), ecr_image("1.1.0")
    deploy_through_opsweb(alice, dev, old)
    found_mid_rollout = []
    record_progress = services.record_progress

    def progress_then_check(**kwargs):
        record_progress(**kwargs)
        if kwargs["message"].startswith("Batch 2/2: switching"):  # batch 1 runs the new image
            found_mid_rollout.append(tasks.check_drift())

    monkeypatch.setattr(running, "record_progress", progress_then_check)

    run = deploy_through_opsweb(alice, dev, new)

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert found_mid_rollout == [{}]
    assert image_tags(aws, instances) == {i: f"{REPOSITORY}@{new.digest}" for i in instances}
    dev.refresh_from_db()
    assert dev.drift == ""


def test_drift_of_many_instances_fits_the_environment(aws, flow, alice):
    instances = make_group(aws, count=12)["instances"]
    dev = use_ec2(flow["dev"], aws, batch_size="50%")
    image = ecr_image("1.0.0")
    assert deploy_through_opsweb(alice, dev, image).status == RunStatus.SUCCEEDED
    for n, instance in enumerate(instances[:8]):  # eight hand-made hotfixes
        tag = {"Key": "opsweb:image", "Value": f"{REPOSITORY}@{fake_digest(str(n))}"}
        client(aws, "ec2").create_tags(Resources=[instance], Tags=[tag])

    found = tasks.check_drift()["sample-dev"]

    dev.refresh_from_db()
    assert dev.drift == found and len(found) <= 500
    assert found.startswith("service runs sha256:")
    assert "; 6 more images, opsweb last deployed 1.0.0" in found


def test_unreachable_endpoint_fails_the_run_with_a_sentence(aws, flow, alice):
    closed = f"http://127.0.0.1:{free_port()}"
    dev = use_ec2(flow["dev"], closed, max_attempts=1)

    run = deploy_through_opsweb(alice, dev, ecr_image("1.0.0"))

    assert run.status == RunStatus.FAILED
    assert run.error.startswith("Could not reach AWS: ")
    assert run.error.endswith("Check the network and endpoint_url.")
    assert closed in run.error


# -- the script, run by sh against stand-in docker, curl and aws -----------------------------

FAKE_DOCKER = """\
#!/bin/sh
echo "docker $*" >> "$FAKE_LOG"
state="$FAKE_STATE"
case "$1" in
  inspect) grep -qx "$2" "$state/containers" 2>/dev/null ;;
  run) shift; while [ "$1" != "--name" ]; do shift; done; echo "$2" >> "$state/containers" ;;
  rm) name="$3"; grep -vx "$name" "$state/containers" > "$state/c" 2>/dev/null; mv "$state/c" "$state/containers"; true ;;
  rename) grep -vx "$2" "$state/containers" > "$state/c"; echo "$3" >> "$state/c"; mv "$state/c" "$state/containers" ;;
  port) echo "127.0.0.1:49153" ;;
  *) true ;;
esac
"""
FAKE_CURL = """\
#!/bin/sh
echo "curl $*" >> "$FAKE_LOG"
case "$*" in *":$FAKE_BAD_PORT/"*) exit 22 ;; esac
"""


@pytest.fixture
def fake_instance(tmp_path):
    """Run a script's lines with sh; docker/curl/aws/sleep are stand-ins that log their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {
        "docker": FAKE_DOCKER,
        "curl": FAKE_CURL,
        "aws": '#!/bin/sh\necho "aws $*" >> "$FAKE_LOG"\necho token\n',
        "sleep": "#!/bin/sh\ntrue\n",
    }.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "containers").write_text("web\n")  # the old container runs

    def run(lines: list[str], *, bad_port: str = "none"):
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "FAKE_LOG": str(tmp_path / "log"),
            "FAKE_STATE": str(tmp_path),
            "FAKE_BAD_PORT": bad_port,
        }
        done = subprocess.run(
            ["sh", "-c", "\n".join(lines)], env=env, capture_output=True, text=True, timeout=30
        )
        log = (tmp_path / "log").read_text().splitlines()
        containers = (tmp_path / "containers").read_text().split()
        return done, log, containers

    return run


def script(**settings) -> list[str]:
    valid = ec2.Ec2Backend.validate_settings(
        settings_for(None, env_file="/etc/app/app.env", health_timeout=4, **settings)
    )
    return ec2.switch_script(
        valid, image=f"{REPOSITORY}@{fake_digest('new')}", version="1.0.0", rollback=False
    )


def test_script_starts_the_new_container_before_stopping_the_old(fake_instance):
    done, log, containers = fake_instance(script())

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith(f"opsweb: web runs {REPOSITORY}@{fake_digest('new')}")
    # ECR login with the instance's role (the two sides of a pipe log in either order).
    assert set(log[:2]) == {
        f"aws ecr get-login-password --region {REGION}",
        f"docker login --username AWS --password-stdin {ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com",
    }
    candidate = next(i for i, line in enumerate(log) if "--name web-candidate" in line)
    checked = next(i for i, line in enumerate(log) if "http://127.0.0.1:49153/healthz" in line)
    stopped = log.index("docker stop web")
    started = next(i for i, line in enumerate(log) if "--name web " in line)
    assert candidate < checked < stopped < started
    assert "--env-file /etc/app/app.env" in log[started]
    assert f"{REPOSITORY}@{fake_digest('new')}" in log[started]
    assert "-p 8000:8000" in log[started]
    assert sorted(containers) == ["web", "web-previous"]


def test_script_keeps_the_old_container_when_the_new_one_is_unhealthy(fake_instance):
    done, log, containers = fake_instance(script(), bad_port="49153")

    assert done.returncode == 1
    assert "the new container failed /healthz for 4s; the old one still runs" in done.stdout
    assert "docker stop web" not in log
    assert containers == ["web"]


def test_script_quotes_what_it_is_given(fake_instance, tmp_path):
    marker = tmp_path / "injected"
    lines = ec2.switch_script(
        ec2.Ec2Backend.validate_settings(settings_for(None, health_timeout=2)),
        image=f"{REPOSITORY}@{fake_digest('q')}",
        version=f"1.0'; touch {marker}; echo '",  # not a valid tag; quoted all the same
        rollback=True,
    )

    done, log, _ = fake_instance(lines)

    assert done.returncode == 0, done.stdout + done.stderr
    assert not marker.exists()
    assert f"APP_VERSION=1.0'; touch {marker}; echo '" in " ".join(log)
    assert "ROLLBACK=true" in " ".join(log)
