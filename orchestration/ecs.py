"""EcsBackend: deploy an image to an AWS ECS service by digest, wait for the rollout, roll back
by pointing the service at the task-definition revision an earlier run recorded.

A deploy reads the service's task definition, registers a revision that differs only in the
named container's image (``repository@sha256:…``, never a tag), updates the service and follows
its deployment until ECS says COMPLETED or FAILED (deployment circuit breaker), or the timeout
passes. Credentials come from the standard AWS chain; ``endpoint_url`` (or AWS_ENDPOINT_URL)
points it at an emulator. This is the only module that imports boto3.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from orchestration import outbound
from orchestration.base import (
    DeployBackend,
    DeployError,
    DeployRequest,
    DeployResult,
    DeployStopped,
    Progress,
    SettingsError,
    no_progress,
    register,
)

# Rollout, deployment_summary: re-exported, so ``orchestration.ecs`` keeps every name it had.
from orchestration.ecs_rollout import (  # noqa: F401
    Rollout,
    Watch,
    _deployment_id,
    deployment_summary,
    judge_rollout,
    last_events,
    revision_name,
)

DEFAULT_TIMEOUT = 900.0
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_MAX_ATTEMPTS = 6
# Progress is the run's heartbeat: while nothing changes, still report this often, well inside
# opsweb's HEARTBEAT_STALE_SECONDS (120 by default), without writing an event on every poll.
HEARTBEAT_SECONDS = 30.0

REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
CONTAINER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
ECR_HOST_RE = re.compile(
    r"^(?P<registry>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$"
)
DENIED_RE = re.compile(
    r"(?:User|Principal): (?P<who>\S+) is not authorized to perform: (?P<action>\S+)"
    r"(?: on resource: (?P<resource>\S+))?"
)
CREDENTIAL_KEYS = {
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "access_key",
    "secret_key",
    "profile",
}
THROTTLING_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
}
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}
BAD_CREDENTIAL_CODES = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
}
SETTINGS_KEYS = {
    "region",
    "cluster",
    "service",
    "container_name",
    "endpoint_url",
    "timeout",
    "poll_interval",
    "max_attempts",
}


class AwsError(DeployError):
    """An AWS call failed; ``code`` is AWS's error code, for callers that handle some codes."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


def make_client(
    service: str,
    *,
    region: str,
    endpoint_url: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
):
    """A boto3 client using the standard credential chain. Throttled and transient failures are
    retried by botocore with exponential backoff and jitter ("standard" retry mode). With no
    ``endpoint_url``, boto3 itself honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE>."""
    config = Config(
        region_name=region,
        # total_max_attempts counts the first call too; retries.max_attempts would not.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=30,
        user_agent_extra="opsweb",
    )
    if endpoint_url:
        # boto3 opens its own connections, so the endpoint is checked (with every address it
        # resolves to) when the client is made rather than pinned per request.
        try:
            outbound.check_endpoint(endpoint_url, what="endpoint_url")
        except (outbound.OutboundRefused, OSError) as exc:
            raise DeployError(f"{exc}") from None
    # A session per client: boto3's default session is not safe to share between threads.
    return boto3.session.Session().client(service, endpoint_url=endpoint_url or None, config=config)


def endpoint_url_problem(endpoint_url: str) -> str | None:
    """Why an AWS ``endpoint_url`` override is refused (not http(s), or a target opsweb does
    not send to: see ``orchestration.outbound``), or None; empty means AWS itself."""
    if not endpoint_url:
        return None
    if not endpoint_url.startswith(("http://", "https://")):
        return (
            "Give an http(s) URL such as 'https://ecs.eu-west-1.amazonaws.com', or leave it "
            "empty for AWS (or AWS_ENDPOINT_URL)."
        )
    return outbound.url_problem(endpoint_url, what="endpoint_url")


def aws_settings_errors(settings: Mapping[str, Any], known: set[str], label: str) -> dict:
    """What every AWS backend refuses in its settings, field → sentence: credentials written
    into them (they come from the standard AWS chain) and keys it does not know."""
    errors: dict[str, str] = {}
    if CREDENTIAL_KEYS & {str(key).lower() for key in settings}:
        errors["credentials"] = (
            "Do not put AWS credentials in settings; opsweb takes them from the standard "
            "AWS chain (the task role on ECS, a profile or environment variables locally)."
        )
    unknown = sorted(set(settings) - known - CREDENTIAL_KEYS)
    if unknown:
        errors["unknown"] = (
            f"Unknown setting(s) {', '.join(map(repr, unknown))}; the {label} backend takes "
            f"{', '.join(sorted(known))}."
        )
    return errors


@register
class EcsBackend(DeployBackend):
    name = "ecs"
    label = "AWS ECS"

    def __init__(self, settings: Mapping[str, Any], *, client=None):
        super().__init__(settings)
        self._client = client

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        errors = aws_settings_errors(settings, SETTINGS_KEYS, "ECS")
        region = str(settings.get("region") or "").strip()
        if not REGION_RE.match(region):
            errors["region"] = "Give the AWS region the cluster is in, such as 'eu-west-1'."
        cluster = str(settings.get("cluster") or "").strip()
        if not cluster:
            errors["cluster"] = "Give the name or ARN of the ECS cluster that runs the service."
        service = str(settings.get("service") or "").strip()
        if not service:
            errors["service"] = "Give the name or ARN of the ECS service to deploy to."
        container = str(settings.get("container_name") or "").strip()
        if not CONTAINER_NAME_RE.match(container):
            errors["container_name"] = (
                "Give the name of the container in the task definition that runs the app's "
                "image (letters, digits, '-' and '_')."
            )
        endpoint_url = str(settings.get("endpoint_url") or "").strip()
        if problem := endpoint_url_problem(endpoint_url):
            errors["endpoint_url"] = problem
        seconds = "Give a number of seconds between {low:g} and {high:g}."
        timeout = _number(settings, "timeout", DEFAULT_TIMEOUT, (1, 3600), seconds, errors)
        poll_interval = _number(
            settings, "poll_interval", DEFAULT_POLL_INTERVAL, (0.01, 60), seconds, errors
        )
        max_attempts = _number(
            settings,
            "max_attempts",
            DEFAULT_MAX_ATTEMPTS,
            (1, 20),
            "Give a whole number of attempts between {low:g} and {high:g}.",
            errors,
            whole=True,
        )
        if errors:
            raise SettingsError(errors)
        return {
            "region": region,
            "cluster": cluster,
            "service": service,
            "container_name": container,
            "endpoint_url": endpoint_url,
            "timeout": timeout,
            "poll_interval": poll_interval,
            "max_attempts": int(max_attempts),
        }

    # -- AWS calls -------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(
                "ecs",
                region=self.settings["region"],
                endpoint_url=self.settings["endpoint_url"],
                max_attempts=self.settings["max_attempts"],
            )
        return self._client

    @property
    def _where(self) -> str:
        s = self.settings
        return f"service {s['service']!r} in cluster {s['cluster']!r} in region {s['region']}"

    def _call(self, operation: str, **params) -> dict[str, Any]:
        try:
            return getattr(self.client, operation)(**params)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            s = self.settings
            if code == "ClusterNotFoundException":
                raise AwsError(
                    f"Cluster {s['cluster']!r} not found in region {s['region']}; check this "
                    f"environment's cluster and region settings and the AWS account opsweb "
                    f"runs as.",
                    code,
                ) from exc
            if code in {"ServiceNotFoundException", "ServiceNotActiveException"}:
                raise AwsError(self._not_found(), code) from exc
            raise aws_error(exc, service="ecs") from exc
        except BotoCoreError as exc:
            raise aws_error(exc, service="ecs") from exc

    def _not_found(self) -> str:
        return (
            f"Service {self.settings['service']!r} not found in cluster "
            f"{self.settings['cluster']!r} in region {self.settings['region']}; check this "
            f"environment's settings."
        )

    def _service(self) -> dict[str, Any]:
        response = self._call(
            "describe_services",
            cluster=self.settings["cluster"],
            services=[self.settings["service"]],
        )
        services = response.get("services") or []
        if not services or services[0].get("status") == "INACTIVE":
            raise AwsError(self._not_found(), "ServiceNotFoundException")
        service = services[0]
        if service.get("status") == "DRAINING":
            raise DeployError(f"The {self._where} is being deleted (DRAINING).")
        return service

    def _task_definition(self, arn: str, *, tags: bool = False) -> dict[str, Any]:
        return self._call("describe_task_definition", taskDefinition=arn, **_include_tags(tags))

    # -- reading what runs -----------------------------------------------------------------

    def running_version(self, environment: str = "") -> str | None:
        """The digest the service's task definition pins for the container (drift checks).

        ECS keeps ``service.taskDefinition`` equal to the PRIMARY deployment's task definition
        (circuit-breaker rollbacks included); it is read from the service because emulators such
        as moto never roll the deployment record forward. An image not pinned by digest is
        returned as written (``repo:tag``), so the drift message says what runs."""
        definition = self._task_definition(self._service()["taskDefinition"])["taskDefinition"]
        image = self._container(definition)["image"]
        return image_digest(image) or image

    def _container(self, definition: Mapping[str, Any]) -> dict[str, Any]:
        name = self.settings["container_name"]
        containers = definition.get("containerDefinitions") or []
        for container in containers:
            if container.get("name") == name:
                return container
        names = ", ".join(repr(c.get("name")) for c in containers) or "none"
        raise DeployError(
            f"Container {name!r} is not in task definition "
            f"{revision_name(definition.get('taskDefinitionArn', '?'))} (its containers: {names}); "
            f"set this environment's container_name to the container that runs the app."
        )

    # -- deploy ----------------------------------------------------------------------------

    def deploy(self, request: DeployRequest, progress: Progress = no_progress) -> DeployResult:
        image = pinned_image(request.repository, request.digest)
        started = time.monotonic()
        service = self._service()
        controller = (service.get("deploymentController") or {}).get("type", "ECS")
        if controller != "ECS":
            raise DeployError(
                f"The {self._where} uses {controller} deployments; opsweb deploys services that "
                f"use the rolling update (ECS) deployment controller."
            )
        current = service["taskDefinition"]
        progress(f"The {self._where} runs {revision_name(current)}", time.monotonic() - started)
        target = self._recorded_revision(request, image, progress) if request.is_rollback else None
        if target is None:
            target = self._register(current, image, progress)
        if request.should_stop():
            raise DeployStopped(
                f"Stopped before the switch: the {self._where} still runs {revision_name(current)}"
            )
        started = time.monotonic()
        updated = (
            self._call(
                "update_service",
                cluster=self.settings["cluster"],
                service=self.settings["service"],
                taskDefinition=target,
            ).get("service")
            or {}
        )
        progress(
            f"Updated service {self.settings['service']} to {revision_name(target)}",
            time.monotonic() - started,
        )
        watch = Watch(
            target, current, before=service, deployment_id=_deployment_id(updated, target)
        )
        self._follow(watch, progress, should_stop=request.should_stop)
        return DeployResult(
            ref={
                "task_definition_arn": target,
                "cluster": self.settings["cluster"],
                "service": self.settings["service"],
            },
            message=f"{self.settings['service']} runs {revision_name(target)} with {image}",
        )

    def _register(self, base_arn: str, image: str, progress: Progress) -> str:
        started = time.monotonic()
        described = self._task_definition(base_arn, tags=True)
        definition = described["taskDefinition"]
        self._container(definition)  # names the containers there are if ours is missing
        accepted = self.client.meta.service_model.operation_model(
            "RegisterTaskDefinition"
        ).input_shape.members
        # Only what RegisterTaskDefinition takes: the ARN, revision, status, registeredAt… are
        # ECS's own bookkeeping and make the call fail.
        params = {key: value for key, value in definition.items() if key in accepted}
        params["containerDefinitions"] = [
            {**c, "image": image} if c.get("name") == self.settings["container_name"] else c
            for c in definition["containerDefinitions"]
        ]
        if described.get("tags"):
            params["tags"] = described["tags"]
        arn = self._call("register_task_definition", **params)["taskDefinition"][
            "taskDefinitionArn"
        ]
        progress(
            f"Registered {revision_name(arn)} from {revision_name(base_arn)} with "
            f"{self.settings['container_name']} = {image}",
            time.monotonic() - started,
        )
        return arn

    def _recorded_revision(self, request: DeployRequest, image: str, progress: Progress):
        """The revision recorded when this version last deployed here, if it can be reused."""
        arn = (request.previous_ref or {}).get("task_definition_arn")
        started = time.monotonic()
        if not arn:
            progress(f"No task definition recorded for {request.tag} here; registering one")
            return None
        try:
            definition = self._task_definition(arn)["taskDefinition"]
        except AwsError as exc:
            if exc.code not in {"ClientException", "InvalidParameterException"}:
                raise
            progress(f"Recorded {revision_name(arn)} cannot be read ({exc}); registering it again")
            return None
        if definition.get("status") != "ACTIVE":
            progress(
                f"Recorded {revision_name(arn)} was deregistered ({definition.get('status')}); "
                f"registering {image} again from the current task definition",
                time.monotonic() - started,
            )
            return None
        pinned = self._container(definition).get("image", "")
        if image_digest(pinned) != request.digest:
            progress(
                f"Recorded {revision_name(arn)} runs {pinned}, not {request.digest}; registering "
                f"a revision with {image}"
            )
            return None
        progress(
            f"Rolling back to recorded {revision_name(arn)} (no new registration)",
            time.monotonic() - started,
        )
        return arn

    # -- following the rollout -------------------------------------------------------------

    def _follow(self, watch: Watch, progress: Progress, *, should_stop=lambda: False) -> None:
        """Poll the service until ``watch``'s deployment completes (return) or fails, is rolled
        back by ECS or the timeout passes (DeployError saying which); before each poll, stop
        (``_stop_rollout``) when ``should_stop()`` is true."""
        target = watch.target
        started = time.monotonic()
        deadline = started + self.settings["timeout"]
        reported, reported_at = "", started
        while True:
            if should_stop():
                self._stop_rollout(target, watch.replacing, progress)
            service = self._service()
            rollout = judge_rollout(service, watch)
            now = time.monotonic()
            if rollout.state == "COMPLETED":
                progress(
                    f"Rollout of {revision_name(target)} completed: {rollout.detail}", now - started
                )
                return
            if rollout.state == "FAILED":
                raise DeployError(f"{rollout.detail}{last_events(service)}")
            if now >= deadline:
                raise DeployError(
                    f"The rollout of {revision_name(target)} did not finish within "
                    f"{self.settings['timeout']:g}s: {rollout.detail}.{last_events(service)} "
                    f"ECS may still finish it or its circuit breaker may roll it back; check the "
                    f"service, then deploy again or roll back."
                )
            if rollout.detail != reported or now - reported_at >= HEARTBEAT_SECONDS:
                progress(f"Waiting for the rollout: {rollout.detail}", now - started)
                reported, reported_at = rollout.detail, now
            else:
                progress("", None)  # a heartbeat only: the worker is alive, nothing new to log
            time.sleep(min(self.settings["poll_interval"], max(deadline - now, 0)))

    def _stop_rollout(self, target: str, previous: str, progress: Progress) -> None:
        """Stop a rollout of ``target``: update the service back to ``previous`` (the revision
        it ran before) and follow that rollout, then raise DeployStopped saying where it is.
        When AWS refuses the update back, still DeployStopped (saying so): opsweb then asks
        the service what it runs and shows that, not the version it meant to restore."""
        try:
            self._call(
                "update_service",
                cluster=self.settings["cluster"],
                service=self.settings["service"],
                taskDefinition=previous,
            )
        except DeployError as exc:
            raise DeployStopped(
                f"Stopped during the rollout of {revision_name(target)}, but updating the "
                f"{self._where} back to {revision_name(previous)} failed "
                f"({str(exc).rstrip('.')}); ECS goes on with {revision_name(target)}"
            ) from None
        progress(
            f"Stop asked: updated service {self.settings['service']} back to "
            f"{revision_name(previous)}",
            None,
        )
        try:
            self._follow(Watch(previous, target), progress)
        except DeployError as exc:
            raise DeployStopped(
                f"Stopped during the rollout of {revision_name(target)}: the {self._where} was "
                f"updated back to {revision_name(previous)}, whose rollout did not complete: {exc}"
            ) from None
        raise DeployStopped(
            f"Stopped during the rollout of {revision_name(target)}: the {self._where} runs "
            f"{revision_name(previous)} again"
        )


def _number(settings, key, default, bounds, message, errors, *, whole=False) -> float:
    """A numeric setting within ``bounds``; records ``message`` in ``errors`` otherwise."""
    low, high = bounds
    value = settings.get(key)
    try:
        number = float(default if value in (None, "") else value)
        if not low <= number <= high or (whole and number != int(number)):
            raise ValueError
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        errors[key] = message.format(low=low, high=high)
        return float(default)
    return number


def _include_tags(tags: bool) -> dict[str, Any]:
    return {"include": ["TAGS"]} if tags else {}


def pinned_image(repository: str, digest: str) -> str:
    if not DIGEST_RE.match(digest or ""):
        raise DeployError(f"{digest!r} is not an image digest ('sha256:' and 64 hex characters).")
    return f"{repository}@{digest}"


def image_digest(image: str) -> str | None:
    """The digest of ``repo@sha256:…``, or None for an image named by tag."""
    _, at, digest = (image or "").rpartition("@")
    return digest if at and DIGEST_RE.match(digest) else None


def describe_principal(arn: str) -> str:
    assumed = re.match(r"^arn:[^:]+:sts::\d+:assumed-role/([^/]+)/", arn)
    if assumed:
        return f"role {assumed.group(1)}"
    named = re.match(r"^arn:[^:]+:iam::\d+:(user|role)/(?:.*/)?([^/]+)$", arn)
    if named:
        return f"{named.group(1)} {named.group(2)}"
    return arn


def aws_error(exc: Exception, *, service: str, docs: str = "docs/ecs-backend.md") -> AwsError:
    """Turn a botocore failure into a sentence a person can act on; ``docs`` is the page that
    lists the IAM permissions the backend needs."""
    if isinstance(exc, NoCredentialsError):
        return AwsError(
            "No AWS credentials found: give opsweb's worker a task role on ECS, or set a profile "
            "or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY locally."
        )
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
        return AwsError(f"Could not reach AWS: {exc}. Check the network and endpoint_url.")
    if not isinstance(exc, ClientError):
        return AwsError(f"AWS call failed: {exc}")
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "")
    operation = exc.operation_name
    attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
    if code in DENIED_CODES:
        denied = DENIED_RE.search(message)
        if denied:
            on = f" on {denied['resource']}" if denied["resource"] else ""
            return AwsError(
                f"AWS denied {denied['action']}{on} to {describe_principal(denied['who'])} "
                f"({denied['who']}). Allow {denied['action']} in that identity's IAM policy; "
                f"{docs} lists what opsweb needs. AWS said: {message}",
                code,
            )
        return AwsError(
            f"AWS denied {service}:{operation} ({code}): {message}. Allow it in the IAM policy "
            f"of the role opsweb runs as; {docs} lists what opsweb needs.",
            code,
        )
    if code in THROTTLING_CODES:
        return AwsError(
            f"AWS kept throttling {service}:{operation} ({code}) after {attempts} attempt(s) "
            f"with exponential backoff; the account's API rate is shared by everything in it. "
            f"Try again in a minute, or raise max_attempts.",
            code,
        )
    if code in BAD_CREDENTIAL_CODES:
        return AwsError(
            f"AWS did not accept opsweb's credentials ({code}: {message}); check the task role, "
            f"profile or environment variables it runs with.",
            code,
        )
    return AwsError(f"AWS {service}:{operation} failed ({code}): {message}", code)


# -- ECR: tag → digest, and refusing digests ECR lacks -----------------------------------------


def split_ecr_repository(repository: str) -> tuple[str | None, str | None, str]:
    """``123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app`` → (registry id, region, name).
    A repository without a registry host is a name in the account's own registry."""
    first, slash, rest = repository.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        return None, None, repository
    host = ECR_HOST_RE.match(first)
    if not host:
        raise DeployError(
            f"{repository} is not in Amazon ECR (its registry is {first}); only ECR "
            f"repositories can be looked up."
        )
    return host["registry"], host["region"], rest


def _ecr_lookup(repository, image_id, *, region, endpoint_url, client):
    registry, repo_region, name = split_ecr_repository(repository)
    region = repo_region or region  # the repository's host says where it lives
    client = client or make_client("ecr", region=region, endpoint_url=endpoint_url)
    params: dict[str, Any] = {"repositoryName": name, "imageIds": [image_id]}
    if registry:
        params["registryId"] = registry
    try:
        return client.describe_images(**params)["imageDetails"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ImageNotFoundException":
            return []
        if code == "RepositoryNotFoundException":
            raise AwsError(
                f"ECR has no repository {name!r} in region {region}"
                + (f" of registry {registry}" if registry else "")
                + "; check the repository name and region.",
                code,
            ) from exc
        raise aws_error(exc, service="ecr") from exc
    except BotoCoreError as exc:
        raise aws_error(exc, service="ecr") from exc


def pushed_images(
    repository: str,
    *,
    region: str,
    digest: str | None = None,
    endpoint_url: str | None = None,
    client=None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """What ECR holds in ``repository`` (the one image ``digest``, or the newest ``limit``
    tagged images), newest first, as ``{"digest", "tags", "pushed_at"}``. A webhook is only a
    hint: this is the read that decides what is registered."""
    if digest:
        details = _ecr_lookup(
            repository,
            {"imageDigest": digest},
            region=region,
            endpoint_url=endpoint_url,
            client=client,
        )
    else:
        registry, repo_region, name = split_ecr_repository(repository)
        region = repo_region or region
        client = client or make_client("ecr", region=region, endpoint_url=endpoint_url)
        params: dict[str, Any] = {"repositoryName": name, "filter": {"tagStatus": "TAGGED"}}
        if registry:
            params["registryId"] = registry
        details = []
        try:
            for page in client.get_paginator("describe_images").paginate(**params):
                details.extend(page["imageDetails"])
                if len(details) >= limit:
                    break
        except ClientError as exc:
            raise aws_error(exc, service="ecr") from exc
        except BotoCoreError as exc:
            raise aws_error(exc, service="ecr") from exc
    images = [
        {
            "digest": d["imageDigest"],
            "tags": sorted(d.get("imageTags") or []),
            "pushed_at": d.get("imagePushedAt"),
        }
        for d in details
        if d.get("imageTags")
    ]
    images.sort(key=lambda image: str(image["pushed_at"] or ""), reverse=True)
    return images[:limit]


def resolve_digest(
    *, repository: str, tag: str, region: str, endpoint_url: str | None = None, client=None
) -> str:
    """The digest ECR holds for ``repository:tag``; DeployError if ECR has no such tag."""
    images = _ecr_lookup(
        repository, {"imageTag": tag}, region=region, endpoint_url=endpoint_url, client=client
    )
    if not images:
        raise DeployError(
            f"ECR has no image tagged {tag!r} in {repository}; push it first or check the tag."
        )
    return images[0]["imageDigest"]


def image_exists(
    *, repository: str, digest: str, region: str, endpoint_url: str | None = None, client=None
) -> bool:
    """Whether ECR holds ``repository@digest``; DeployError if the repository is missing."""
    pinned_image(repository, digest)  # refuses a malformed digest
    images = _ecr_lookup(
        repository, {"imageDigest": digest}, region=region, endpoint_url=endpoint_url, client=client
    )
    return bool(images)


def require_image(
    *, repository: str, digest: str, region: str, endpoint_url: str | None = None, client=None
) -> None:
    """Refuse a digest ECR does not have, with a sentence saying so."""
    if not image_exists(
        repository=repository,
        digest=digest,
        region=region,
        endpoint_url=endpoint_url,
        client=client,
    ):
        raise DeployError(
            f"ECR has no image {digest} in {repository}; push the image before registering it, "
            f"or check the digest."
        )
