"""Ec2Backend: deploy an image by digest to the Docker container on each EC2 instance of an Auto
Scaling group (or of a tag), in batches, through AWS Systems Manager Run Command.

Each batch is taken out of the target group (when one is set), switched by an
``AWS-RunShellScript`` command that pulls ``repository@sha256:…``, starts the new container,
waits for its health check on the instance and only then stops the old one, and is put back.
A batch that fails stops the rollout and puts the instances already switched back on the image
they ran before. The image each instance runs is written to its ``opsweb:image`` tag, which is
what drift checks read. Credentials come from the standard AWS chain, as for ECS.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from orchestration.base import (
    DeployBackend,
    DeployError,
    DeployRequest,
    DeployResult,
    DeployStopped,
    Progress,
    RunningImages,
    no_progress,
    register,
)
from orchestration.ecs import HEARTBEAT_SECONDS, aws_error, make_client

from .instances import (
    Instance,
    Outcome,
    Touched,
    _reason,
    _selector_ref,
    _some,
    _tag,
    allowed_errors,
    instance_image,
    instance_image_or_none,
    last_lines,
    split_batches,
)
from .scripts import revert_script, switch_script
from .validation import validate_settings

log = logging.getLogger(__name__)

DOCS = "docs/ec2-backend.md"
IMAGE_TAG = "opsweb:image"

# The tag is only shown to the app as APP_VERSION; it is quoted anyway.
APP_VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
COMMAND_DONE = {
    "Success",
    "Failed",
    "TimedOut",
    "Cancelled",
    "Cancelling",
    "Undeliverable",
    "Terminated",
    "DeliveryTimedOut",
    "ExecutionTimedOut",
    "InvalidPlatform",
    "AccessDenied",
}


@register
class Ec2Backend(DeployBackend):
    name = "ec2"
    label = "AWS EC2"
    lists_targets = True

    def __init__(self, settings: Mapping[str, Any], *, clients: Mapping[str, Any] | None = None):
        super().__init__(settings)
        self._clients: dict[str, Any] = dict(clients or {})

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return validate_settings(settings)

    # -- AWS calls ---------------------------------------------------------------------------

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = make_client(
                service,
                region=self.settings["region"],
                endpoint_url=self.settings["endpoint_url"],
                max_attempts=self.settings["max_attempts"],
            )
        return self._clients[service]

    def _call(self, service: str, operation: str, **params) -> dict[str, Any]:
        try:
            return getattr(self.client(service), operation)(**params)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(exc, service=service, docs=DOCS) from exc

    def _pages(self, service: str, operation: str, key: str, **params) -> list[dict[str, Any]]:
        try:
            paginator = self.client(service).get_paginator(operation)
            return [item for page in paginator.paginate(**params) for item in page.get(key, [])]
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(exc, service=service, docs=DOCS) from exc

    @property
    def _where(self) -> str:
        s = self.settings
        if s["auto_scaling_group"]:
            return f"Auto Scaling group {s['auto_scaling_group']!r} in region {s['region']}"
        return f"instances tagged {s['tag_key']}={s['tag_value']} in region {s['region']}"

    # -- the instances -----------------------------------------------------------------------

    def instances(self) -> list[Instance]:
        """Every instance of the group (or carrying the tag) that is not terminated, in instance
        id order, with its state, health and the image its ``opsweb:image`` tag names.

        Raises DeployError when the Auto Scaling group does not exist or AWS refuses a call."""
        s = self.settings
        if s["auto_scaling_group"]:
            groups = self._call(
                "autoscaling",
                "describe_auto_scaling_groups",
                AutoScalingGroupNames=[s["auto_scaling_group"]],
            )["AutoScalingGroups"]
            if not groups:
                raise DeployError(
                    f"Auto Scaling group {s['auto_scaling_group']!r} not found in region "
                    f"{s['region']}; check this environment's auto_scaling_group and region "
                    f"settings and the AWS account opsweb runs as."
                )
            members = {
                i["InstanceId"]: (i.get("LifecycleState", ""), i.get("HealthStatus", ""))
                for i in groups[0].get("Instances", [])
            }
            if not members:
                return []
            described = self._pages(
                "ec2", "describe_instances", "Reservations", InstanceIds=sorted(members)
            )
        else:
            members = {}
            described = self._pages(
                "ec2",
                "describe_instances",
                "Reservations",
                Filters=[{"Name": f"tag:{s['tag_key']}", "Values": [s["tag_value"]]}],
            )
        found = [i for r in described for i in r.get("Instances", [])]
        found = [i for i in found if i["State"]["Name"] not in ("terminated", "shutting-down")]
        checks = {} if members else self._status_checks([i["InstanceId"] for i in found])
        return sorted(
            (
                Instance(
                    instance_id=i["InstanceId"],
                    state=i["State"]["Name"],
                    lifecycle=members.get(i["InstanceId"], ("", ""))[0],
                    health=members.get(i["InstanceId"], ("", ""))[1]
                    or checks.get(i["InstanceId"], ""),
                    image=_tag(i, IMAGE_TAG),
                )
                for i in found
            ),
            key=lambda instance: instance.instance_id,
        )

    def _status_checks(self, instance_ids: list[str]) -> dict[str, str]:
        """EC2 status checks summarised per instance: 'ok' when both the instance and the system
        checks pass, otherwise the worse of the two ('impaired', 'initializing', …)."""
        if not instance_ids:
            return {}
        statuses = self._pages(
            "ec2",
            "describe_instance_status",
            "InstanceStatuses",
            InstanceIds=instance_ids,
            IncludeAllInstances=True,
        )
        summary = {}
        for status in statuses:
            parts = {
                status.get("InstanceStatus", {}).get("Status", "not-applicable"),
                status.get("SystemStatus", {}).get("Status", "not-applicable"),
            }
            bad = sorted(parts - {"ok"})
            summary[status["InstanceId"]] = bad[0] if bad else "ok"
        return summary

    def _targets(self) -> list[Instance]:
        targets = [i for i in self.instances() if i.in_service]
        if not targets:
            raise DeployError(
                f"No running, healthy instances in the {self._where}; start some (or fix their "
                f"health) before deploying."
            )
        return targets

    def describe_targets(self, environment: str = "") -> list[dict[str, Any]]:
        """Plain data for the board, one dict per instance (terminated ones left out):
        ``instance_id``, ``state`` (EC2), ``lifecycle`` and ``health`` (the group's view, or the
        status checks), ``in_service`` (bool: a deploy would switch it), ``image`` and ``digest``
        (from the ``opsweb:image`` tag; "" / None when absent). Raises DeployError if AWS cannot
        be read."""
        return [
            {
                "instance_id": i.instance_id,
                "state": i.state,
                "lifecycle": i.lifecycle,
                "health": i.health,
                "in_service": i.in_service,
                "image": i.image,
                "digest": i.digest,
            }
            for i in self.instances()
        ]

    def running_version(self, environment: str = "") -> str | None:
        """The digest every in-service instance runs, from the ``opsweb:image`` tags; when they
        disagree, a sentence naming which instance runs what (shown as drift). None when there
        are no instances."""
        return self.running_images(environment).summary

    def running_images(self, environment: str = "") -> RunningImages:
        """``running_version`` as the summary, and every distinct image of the in-service
        instances (an untagged one as "no opsweb:image tag"), so that a drift check during a
        rollout can see that only the old and the new image run."""
        targets = [i for i in self.instances() if i.in_service]
        by_image: dict[str, list[str]] = {}
        for instance in targets:
            running = instance.digest or instance.image or f"no {IMAGE_TAG} tag"
            by_image.setdefault(running, []).append(instance.instance_id)
        if not by_image:
            return RunningImages(None)
        if len(by_image) == 1:
            return RunningImages(next(iter(by_image)), frozenset(by_image))
        # Target.drift holds 500 characters: name a few instances per image, count the rest.
        summary = "; ".join(
            f"{image} on {_some(ids)}" for image, ids in sorted(by_image.items())[:3]
        ) + (f"; {len(by_image) - 3} more images" if len(by_image) > 3 else "")
        return RunningImages(summary, frozenset(by_image))

    # -- deploying ---------------------------------------------------------------------------

    def deploy(self, request: DeployRequest, progress: Progress = no_progress) -> DeployResult:
        image = instance_image(request.repository, request.digest)
        version = request.tag if APP_VERSION_RE.match(request.tag or "") else ""
        started = time.monotonic()
        targets = self._targets()
        batches = split_batches([t.instance_id for t in targets], self.settings["batch_size"])
        allowed = allowed_errors(len(targets), self.settings["max_errors"])
        progress(
            f"{len(targets)} instance(s) in the {self._where}: "
            f"{', '.join(t.instance_id for t in targets)}; {len(batches)} batch(es), "
            f"{allowed} failure(s) allowed",
            time.monotonic() - started,
        )
        script = switch_script(
            self.settings, image=image, version=version, rollback=request.is_rollback
        )
        previous = {t.instance_id: t.image for t in targets}
        touched = Touched()
        failed: list[Outcome] = []
        for number, batch in enumerate(batches, 1):
            label = f"Batch {number}/{len(batches)}"
            if request.should_stop():
                self._stop_between_batches(label, touched, previous, request, progress)
            try:
                outcomes = self._switch_batch(
                    batch, script, image, label, request, progress, touched
                )
            except DeployError as exc:  # AWS refused or failed a call halfway through a batch
                self._stop_rollout(
                    label, str(exc).rstrip("."), touched, previous, request, progress
                )
            except Exception as exc:
                # A bug or an unexpected answer once switching has begun: every instance touched
                # goes back like after a failed batch; the traceback to the server log.
                log.exception("EC2 rollout of %s failed at %s", image, label)
                self._stop_rollout(
                    label,
                    f"unexpected error ({type(exc).__name__}: {exc})",
                    touched,
                    previous,
                    request,
                    progress,
                )
            failed += [o for o in outcomes if not o.ok]
            if len(failed) > allowed:
                failures = "; ".join(o.describe() for o in failed)
                self._stop_rollout(label, failures, touched, previous, request, progress)
        self._publish(image, progress)
        switched = touched.switched
        tolerated = f"; {len(failed)} failed within max_errors: " if failed else ""
        return DeployResult(
            ref={
                "image": image,
                "instances": [i for i in switched if i not in {o.instance_id for o in failed}],
                **_selector_ref(self.settings),
            },
            message=(
                f"{len(switched) - len([o for o in failed if o.switched])} instance(s) run "
                f"{image} after {len(batches)} batch(es)"
                f"{tolerated}{'; '.join(o.describe() for o in failed)}"
            ),
        )

    def _switch_batch(
        self, batch, script, image, label, request, progress, touched: Touched | None = None
    ) -> list[Outcome]:
        """Take ``batch`` out of the target group, run ``script`` on it, tag the instances that
        switched with ``image`` ("" removes the tag), put the batch back. Returns each instance's
        outcome; one that switched but did not turn healthy in the target group has failed.
        Each step is noted in ``touched`` as soon as it is done, so that a DeployError from any
        AWS call leaves a true account of the batch."""
        touched = touched if touched is not None else Touched()
        target = image or "the previous container"
        progress(f"{label}: switching {', '.join(batch)} to {target}", None)
        draining = self._leave_target_group(batch, label, progress, touched)
        if draining:
            wait = self.settings["target_timeout"]
            outcomes = [
                Outcome(i, "Not switched", f"still {draining[i]} after {wait:g}s")
                if i in draining
                else Outcome(i, "Not switched", "its batch did not finish draining")
                for i in batch
            ]
        else:
            outcomes = self._run(batch, script, label, request, progress, touched)
        done = [o.instance_id for o in outcomes if o.ok]
        if done:
            self._tag(done, image)
        for outcome in outcomes:
            if outcome.ok:
                progress(f"{outcome.instance_id}: runs {target}", None)
            else:
                progress(f"{outcome.instance_id}: switch failed, {outcome.describe()}", None)
        unhealthy = self._join_target_group(batch, label, progress, touched)
        return [
            Outcome(o.instance_id, "Unhealthy in the target group", unhealthy[o.instance_id], True)
            if o.ok and o.instance_id in unhealthy
            else o
            for o in outcomes
        ]

    def _stop_rollout(self, label, failures: str, touched: Touched, previous, request, progress):
        """A batch failed beyond max_errors, or an AWS call failed at any step: restore every
        instance ``touched`` (``_restore``), then raise DeployError naming the failures, what
        went back and every instance that could not be restored (``previous_stopped`` then, so
        that opsweb treats the environment as broken)."""
        count = len(touched.switched) + len(touched.sent)
        progress(f"{label} failed: {failures}. Restoring {count} switched instance(s)", None)
        try:
            restored, rejoined, problems = self._restore(touched, previous, request, progress)
        except Exception as exc:  # any failure of the restore leaves the environment broken
            log.exception("EC2 restore after %s failed", label)
            restored, rejoined = [], []
            problems = [f"unexpected error ({type(exc).__name__}: {str(exc).rstrip('.')})"]
        said = []
        if restored:
            said.append(f"{', '.join(restored)} went back to the image they ran before.")
        if rejoined:
            said.append(
                f"{', '.join(rejoined)} went back into the target group on the image they "
                f"still ran."
            )
        if problems:
            raise DeployError(
                f"The rollout stopped at {label.lower()}: {failures}. "
                + "".join(f"{sentence} " for sentence in said)
                + f"Restoring failed too: {'; '.join(problems)}. Check those instances.",
                previous_stopped=True,
            )
        back = " ".join(said) or "No instance had been switched."
        raise DeployError(f"The rollout stopped at {label.lower()}: {failures}. {back}")

    def _stop_between_batches(self, label, touched: Touched, previous, request, progress):
        """Someone asked to stop before ``label``: put every instance ``touched`` so far back on
        what it ran before (``_restore``), then raise DeployStopped saying whether that worked."""
        if not (touched.switched or touched.sent or touched.out):
            raise DeployStopped(f"Stopped before {label.lower()}: no instance had been switched")
        names = ", ".join([*touched.switched, *sorted(touched.sent - set(touched.switched))])
        progress(f"Stop asked before {label.lower()}: restoring {names}", None)
        try:
            _, _, problems = self._restore(touched, previous, request, progress)
        except Exception as exc:  # the stop is still reported; opsweb then reads what runs
            log.exception("EC2 restore after a stop before %s failed", label)
            problems = [f"unexpected error ({type(exc).__name__}: {str(exc).rstrip('.')})"]
        if problems:
            raise DeployStopped(
                f"Stopped before {label.lower()}: restoring {names} failed: {'; '.join(problems)}"
            )
        raise DeployStopped(
            f"Stopped before {label.lower()}: {names} went back to the image they ran before"
        )

    def _restore(self, touched: Touched, previous, request, progress):
        """Put every instance ``touched`` back as it was: those switched, or sent a command whose
        outcome is unknown, back on ``previous[id]`` (grouped by image; one whose earlier image
        is unknown and that switched gets its stopped previous container back), and those still
        out of the target group back into it. Returns (restored ids, ids only put back into the
        target group, sentences naming each instance that could not be restored)."""
        groups: dict[str, list[str]] = {}
        problems: list[str] = []
        for instance_id in [*touched.switched, *sorted(touched.sent)]:
            image = previous.get(instance_id, "")
            if image and instance_image_or_none(image):
                groups.setdefault(image, []).append(instance_id)
            elif instance_id in touched.switched:
                groups.setdefault("", []).append(instance_id)
            else:
                # Its stopped "previous" container may be older than what it ran: name it.
                left_out = " and left out of the target group" if instance_id in touched.out else ""
                problems.append(
                    f"{instance_id}: whether its switch command ran is unknown and the image "
                    f"it ran before was never recorded, so it was not restored{left_out}"
                )
        restored: list[str] = []
        handled = {i for ids in groups.values() for i in ids} | set(touched.sent)
        for image, instance_ids in groups.items():
            if image:
                script = switch_script(self.settings, image=image, version="", rollback=True)
            else:
                script = revert_script(self.settings)
            label = f"Restore to {image or 'the previous container'}"
            # Those the deploy left out of the target group stay out until this restore joins.
            steps = Touched(out=touched.out & set(instance_ids))
            try:
                outcomes = self._switch_batch(
                    instance_ids, script, image, label, request, progress, steps
                )
            except DeployError as exc:
                error = str(exc).rstrip(".")
                back = [i for i in steps.switched if i not in steps.out]
                outside = [i for i in steps.switched if i in steps.out]
                rest = [i for i in instance_ids if i not in steps.switched]
                restored += back
                if outside:
                    problems.append(
                        f"{', '.join(outside)} went back to the image they ran before but not "
                        f"into the target group: {error}"
                    )
                if rest:
                    problems.append(f"{', '.join(rest)} not restored: {error}")
                continue
            bad = {o.instance_id for o in outcomes if not o.ok}
            problems += [o.describe() for o in outcomes if not o.ok]
            restored += [i for i in instance_ids if i not in bad]
            progress(
                f"{label}: {len(instance_ids) - len(bad)} of {len(instance_ids)} instance(s) "
                f"restored",
                None,
            )
        rejoined = sorted(touched.out - handled)
        if rejoined:
            try:
                unhealthy = self._join_target_group(rejoined, "Restore", progress)
            except DeployError as exc:
                problems.append(f"{', '.join(rejoined)}: {str(exc).rstrip('.')}")
                rejoined = []
            else:
                problems += [
                    f"{i} Unhealthy in the target group: {state}" for i, state in unhealthy.items()
                ]
                rejoined = [i for i in rejoined if i not in unhealthy]
        return restored, rejoined, problems

    def _publish(self, image: str, progress: Progress) -> None:
        """Record the image where new instances read it at boot (the launch template's user data
        reads ``image_parameter``), so that scale-out launches what opsweb deployed."""
        name = self.settings["image_parameter"]
        if not name:
            return
        self._call("ssm", "put_parameter", Name=name, Value=image, Type="String", Overwrite=True)
        progress(f"SSM parameter {name} now names {image} for new instances", None)

    def _tag(self, instance_ids: list[str], image: str) -> None:
        if image:
            tags = [{"Key": IMAGE_TAG, "Value": image}]
            self._call("ec2", "create_tags", Resources=instance_ids, Tags=tags)
        else:
            self._call("ec2", "delete_tags", Resources=instance_ids, Tags=[{"Key": IMAGE_TAG}])

    # -- Run Command -------------------------------------------------------------------------

    def _run(
        self, instance_ids, script, label, request, progress, touched: Touched
    ) -> list[Outcome]:
        """Send ``script`` to ``instance_ids`` with AWS-RunShellScript and wait for every
        invocation to end (heartbeats meanwhile). Past ``command_timeout`` plus a grace period
        the command is cancelled and the instances still running it count as timed out. Each
        instance is noted in ``touched`` as sent, then as it ends."""
        timeout = self.settings["command_timeout"]
        command = self._call(
            "ssm",
            "send_command",
            InstanceIds=list(instance_ids),
            DocumentName="AWS-RunShellScript",
            Comment=f"opsweb {request.environment} run {request.run_id or '-'}"[:100],
            TimeoutSeconds=max(30, int(timeout)),
            Parameters={"commands": script, "executionTimeout": [str(int(timeout))]},
        )["Command"]
        command_id = command["CommandId"]
        touched.sent.update(instance_ids)
        progress(f"{label}: sent Run Command {command_id} to {len(instance_ids)} instance(s)", None)
        started = time.monotonic()
        deadline = started + timeout + min(30.0, timeout)
        pending = list(instance_ids)
        outcomes: dict[str, Outcome] = {}
        reported_at = started
        while pending:
            for instance_id in list(pending):
                outcome = self._invocation(command_id, instance_id)
                if outcome is not None:
                    outcomes[instance_id] = outcome
                    touched.ended(outcome)
                    pending.remove(instance_id)
            now = time.monotonic()
            if not pending:
                break
            if now >= deadline:
                self._cancel(command_id, pending)
                for instance_id in pending:
                    outcomes[instance_id] = Outcome(
                        instance_id,
                        "TimedOut",
                        f"still running after {timeout:g}s; opsweb cancelled the command",
                    )
                break
            if now - reported_at >= HEARTBEAT_SECONDS:
                progress(f"{label}: waiting for {', '.join(pending)}", now - started)
                reported_at = now
            else:
                progress("", None)  # a heartbeat only
            time.sleep(min(self.settings["poll_interval"], max(deadline - now, 0)))
        return [outcomes[i] for i in instance_ids]

    def _invocation(self, command_id: str, instance_id: str) -> Outcome | None:
        """The invocation's outcome once it has ended, None while it runs."""
        try:
            found = self.client("ssm").get_command_invocation(
                CommandId=command_id, InstanceId=instance_id
            )
        except ClientError as exc:
            # Just after SendCommand the invocation may not exist yet: not an outcome.
            if exc.response.get("Error", {}).get("Code") == "InvocationDoesNotExist":
                return None
            raise aws_error(exc, service="ssm", docs=DOCS) from exc
        except BotoCoreError as exc:
            raise aws_error(exc, service="ssm", docs=DOCS) from exc
        status = found.get("Status", "")
        if status not in COMMAND_DONE:
            return None
        switched = status == "Success"
        output = last_lines(
            found.get("StandardOutputContent", ""), found.get("StandardErrorContent", "")
        )
        detail = found.get("StatusDetails", "")
        if detail and detail != status:
            status = f"{status} ({detail})"
        return Outcome(instance_id, status, output, switched)

    def _cancel(self, command_id: str, instance_ids: list[str]) -> None:
        # Best effort: the instances' own executionTimeout stops the script anyway.
        with contextlib.suppress(ClientError, BotoCoreError):
            self.client("ssm").cancel_command(CommandId=command_id, InstanceIds=instance_ids)

    # -- the target group --------------------------------------------------------------------

    def _leave_target_group(
        self, batch: list[str], label: str, progress: Progress, touched: Touched
    ) -> dict:
        """Deregister ``batch`` and wait for draining; returns {id: state} of those still not
        drained at target_timeout. The batch is noted out of the group before the call: if the
        call fails halfway, registering them again is harmless."""
        arn = self.settings["target_group_arn"]
        if not arn:
            return {}
        # Deregistering a target the group does not hold is an error (InvalidTarget).
        registered = [i for i, state in self._target_states(batch).items() if state != "unused"]
        if not registered:
            return {}
        touched.out.update(registered)
        self._call(
            "elbv2",
            "deregister_targets",
            TargetGroupArn=arn,
            Targets=self._target_list(registered),
        )
        progress(f"{label}: deregistered from the target group, draining", None)
        return self._wait_targets(batch, lambda state: state == "unused", "drain", progress)

    def _join_target_group(
        self, batch: list[str], label: str, progress: Progress, touched: Touched | None = None
    ) -> dict:
        """Register ``batch`` again and wait until healthy; returns {id: state} of those that
        did not become healthy within target_timeout. Once registered, the batch is no longer
        out of the group in ``touched``."""
        arn = self.settings["target_group_arn"]
        if not arn:
            return {}
        targets = self._target_list(batch)
        self._call("elbv2", "register_targets", TargetGroupArn=arn, Targets=targets)
        if touched is not None:
            touched.out.difference_update(batch)
        left = self._wait_targets(batch, lambda state: state == "healthy", "be healthy", progress)
        if not left:
            progress(f"{label}: healthy in the target group again", None)
        return left

    def _target_list(self, batch: Iterable[str]) -> list[dict[str, Any]]:
        return [{"Id": i, "Port": self.settings["port"]} for i in batch]

    def _target_health(self, batch: list[str]) -> dict[str, dict[str, str]]:
        """{instance id: its TargetHealth (State, Reason, Description)} in the target group; an
        instance the group does not list is 'unused', as AWS calls an unregistered target."""
        described = self._call(
            "elbv2",
            "describe_target_health",
            TargetGroupArn=self.settings["target_group_arn"],
            Targets=self._target_list(batch),
        )["TargetHealthDescriptions"]
        found = {d["Target"]["Id"]: d.get("TargetHealth", {}) for d in described}
        return {i: found.get(i) or {"State": "unused"} for i in batch}

    def _target_states(self, batch: list[str]) -> dict[str, str]:
        return {i: h.get("State", "unused") for i, h in self._target_health(batch).items()}

    def _wait_targets(self, batch, done, purpose: str, progress: Progress) -> dict[str, str]:
        """Poll target health until ``done(state)`` holds for each of ``batch``; returns
        {instance id: 'state: reason'} for those still not done at target_timeout."""
        started = time.monotonic()
        deadline = started + self.settings["target_timeout"]
        reported_at = started
        while True:
            states = self._target_health(batch)
            left = {
                i: " ".join(filter(None, [health.get("State", "unused"), _reason(health)]))
                for i, health in states.items()
                if not done(health.get("State", "unused"))
            }
            now = time.monotonic()
            if not left or now >= deadline:
                return left
            if now - reported_at >= HEARTBEAT_SECONDS:
                progress(f"Waiting for {', '.join(left)} to {purpose}", now - started)
                reported_at = now
            else:
                progress("", None)
            time.sleep(min(self.settings["poll_interval"], max(deadline - now, 0)))
