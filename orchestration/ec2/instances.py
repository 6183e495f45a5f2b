"""The instances of an EC2 environment as opsweb tracks them during a deploy (Instance, Outcome,
Touched), and the small pure rules about them: batches, allowed errors, the image they may run."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestration.base import DeployError
from orchestration.ecs import image_digest, pinned_image

OUTPUT_LINES = 5

# A Docker image repository: an optional registry host (and port), then lower-case path parts.
REPOSITORY_RE = re.compile(
    r"^(?:[A-Za-z0-9.-]+(?::\d{1,5})?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)


@dataclass(frozen=True)
class Instance:
    """One EC2 instance of the environment as opsweb sees it. ``lifecycle`` and ``health`` are the
    Auto Scaling group's view (empty when instances are chosen by tag, where ``health`` is the
    EC2 status checks' summary); ``image`` is the ``opsweb:image`` tag ("" when absent)."""

    instance_id: str
    state: str
    lifecycle: str
    health: str
    image: str

    @property
    def in_service(self) -> bool:
        return (
            self.state == "running"
            and self.lifecycle in ("", "InService")
            and self.health in ("Healthy", "ok")
        )

    @property
    def digest(self) -> str | None:
        return image_digest(self.image)


@dataclass(frozen=True)
class Outcome:
    """How switching one instance ended; ``output`` is its command's last lines. ``switched``
    says the container now runs the new image (even if the target group then found it
    unhealthy), so that a restore includes it."""

    instance_id: str
    status: str
    output: str = ""
    switched: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "Success"

    def describe(self) -> str:
        said = f": {self.output}" if self.output else " (no output)"
        return f"{self.instance_id} {self.status}{said}"


@dataclass
class Touched:
    """Where each instance a deploy touched stands, updated as each step is done, so that a
    failure at any step (a command, a tag, the target group) restores or names every one of
    them: ``out`` were deregistered from the target group and not registered again; ``sent``
    were sent a switch command whose outcome is not known yet; ``switched`` run the new image
    (in the order they switched); ``kept`` ran the command, which failed and kept the old
    container."""

    out: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)
    switched: list[str] = field(default_factory=list)
    kept: set[str] = field(default_factory=set)

    def ended(self, outcome: Outcome) -> None:
        self.sent.discard(outcome.instance_id)
        if outcome.switched and outcome.instance_id not in self.switched:
            self.switched.append(outcome.instance_id)
        elif not outcome.switched:
            self.kept.add(outcome.instance_id)


def instance_image(repository: str, digest: str) -> str:
    """``repository@sha256:…`` for the instances; DeployError for anything that is not a plain
    image repository and a digest (never a tag)."""
    if not REPOSITORY_RE.match(repository or ""):
        raise DeployError(
            f"{repository!r} is not a Docker image repository (such as "
            f"'123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app'); opsweb will not send "
            f"it to the instances."
        )
    return pinned_image(repository, digest)


def instance_image_or_none(image: str) -> str | None:
    repository, _, digest = image.rpartition("@")
    try:
        return instance_image(repository, digest)
    except DeployError:
        return None


def split_batches(instance_ids: Sequence[str], size: str) -> list[list[str]]:
    """``instance_ids`` in batches of ``size`` ("2", or "25%" of them, at least one)."""
    count = len(instance_ids)
    per = max(1, math.ceil(count * int(size[:-1]) / 100)) if size.endswith("%") else int(size)
    return [list(instance_ids[i : i + per]) for i in range(0, count, per)]


def allowed_errors(count: int, max_errors: str) -> int:
    """How many instances may fail ("1", or "10%" of ``count``, rounded down)."""
    if max_errors.endswith("%"):
        return count * int(max_errors[:-1]) // 100
    return int(max_errors)


def last_lines(*texts: str, count: int = OUTPUT_LINES) -> str:
    lines = [line.strip() for text in texts for line in (text or "").splitlines() if line.strip()]
    return " | ".join(lines[-count:])


def _some(names: Sequence[str], count: int = 3) -> str:
    """``a, b, c`` or ``a, b, c and 4 more``."""
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(names[:count]) + more


def _tag(instance: Mapping[str, Any], key: str) -> str:
    return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == key), "")


def _reason(health: Mapping[str, str]) -> str:
    reason = health.get("Reason", "")
    return f"({reason})" if reason else ""


def _selector_ref(settings: Mapping[str, Any]) -> dict[str, str]:
    if settings["auto_scaling_group"]:
        return {"auto_scaling_group": settings["auto_scaling_group"]}
    return {"tag": f"{settings['tag_key']}={settings['tag_value']}"}
