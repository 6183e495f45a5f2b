"""The contract between opsweb and whatever changes what is running.

Backends get plain values (``DeployRequest``), return a ``DeployResult`` and raise
``DeployError`` with a sentence a person can act on. They know nothing of Django models.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

# A backend reports progress through this: (message, seconds the step took or None).
# opsweb records each call as a RunEvent and treats it as a heartbeat; an empty message is a
# heartbeat only.
Progress = Callable[[str, float | None], None]


def no_progress(message: str, seconds: float | None = None) -> None:
    """Progress sink for callers that do not record steps."""


class DeployError(Exception):
    """A deploy could not be done; the message says what went wrong and what to look at.

    ``previous_stopped`` says the previous version no longer runs (the local backend stops it
    before starting the new one), so opsweb treats the failure like a failed health check:
    with auto-rollback on, it restores the previous stable version.
    """

    def __init__(self, message: str, *, previous_stopped: bool = False):
        super().__init__(message)
        self.previous_stopped = previous_stopped


class DeployStopped(DeployError):
    """The deploy stopped at a safe point because ``DeployRequest.should_stop()`` said so.

    Raised after the backend put back what it had changed, where it could (the previous
    process, ECS revision or EC2 containers); the message says what it did. What runs after
    the stop is not taken from the backend's word: opsweb asks ``running_version`` and records
    that.
    """


class SettingsError(DeployError):
    """An environment's backend settings are invalid: ``errors`` maps field → message."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


@dataclass(frozen=True)
class DeployRequest:
    """What to deploy where. ``previous_ref`` is the backend reference recorded when the target
    version was last deployed (a rollback reuses it: the pid state, the task-definition ARN).
    ``should_stop()`` is polled at the backend's safe points (see ``DeployStopped``)."""

    environment: str
    settings: Mapping[str, Any]
    repository: str
    tag: str
    digest: str
    git_sha: str = ""
    is_rollback: bool = False
    run_id: int | None = None
    previous_ref: Mapping[str, Any] = field(default_factory=dict)
    # Polled at the backend's safe points (before the switch, between batches, while waiting
    # for a rollout); True means someone asked to stop: put back what changed, raise
    # DeployStopped. A plain callable, so that backends need no database.
    should_stop: Callable[[], bool] = field(default=lambda: False, compare=False, repr=False)


@dataclass(frozen=True)
class RunningImages:
    """What a target runs, for drift checks: ``summary`` is one digest when everything runs the
    same image (None: nothing runs), otherwise a sentence naming what runs where; ``images`` is
    every distinct digest (or label, such as an untagged instance) found, empty when nothing
    runs."""

    summary: str | None
    images: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DeployResult:
    """What the backend did: a reference to record on the run (pid, task-definition ARN)."""

    ref: Mapping[str, Any]
    message: str = ""


class DeployBackend(abc.ABC):
    """One way of running the application. Subclasses register themselves by ``name``."""

    name: ClassVar[str]
    label: ClassVar[str]
    # Its processes run on the worker's own machine, started by its settings: its health check
    # and HTTP alarms may reach loopback (whoever edits it can run commands there anyway).
    runs_on_worker: ClassVar[bool] = False
    # ``describe_targets`` lists what each of several targets runs (the board shows it).
    lists_targets: ClassVar[bool] = False

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = self.validate_settings(settings)

    @classmethod
    @abc.abstractmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Return normalised settings or raise SettingsError naming each bad field."""

    @abc.abstractmethod
    def deploy(self, request: DeployRequest, progress: Progress = no_progress) -> DeployResult:
        """Make ``request``'s version the one running; raise DeployError if it cannot."""

    def running_version(self, environment: str) -> str | None:
        """The image digest the target runs now, if the backend can tell (drift checks)."""
        return None

    def describe_targets(self, environment: str = "") -> list[dict[str, Any]]:
        """Each target's id, state and digest, for backends with ``lists_targets``; raises
        DeployError when the backend cannot be read."""
        return []

    @classmethod
    def alarm_problems(cls, alarms: list, *, allow: Any = None) -> list[str]:
        """Sentences for each wrong entry of an environment's ``alarms`` (a JSON list of
        objects; kinds checked for every backend); [] when valid. By default alarms name
        CloudWatch alarms; a backend reading them elsewhere overrides ``alarm_problem``.
        ``allow`` is the outbound allow-list for alarms read over HTTP."""
        if not isinstance(alarms, list):
            return ["Alarms are a JSON list of objects."]
        problems = []
        for i, alarm in enumerate(alarms, 1):
            if not isinstance(alarm, dict):
                problems.append(f"Alarm {i} is not an object.")
                continue
            if alarm.get("kind", "errors") not in ALARM_KINDS:
                problems.append(f"Alarm {i}: kind is one of {', '.join(ALARM_KINDS)}.")
            problems.extend(cls.alarm_problem(i, alarm, allow=allow))
        return problems

    @classmethod
    def alarm_problem(cls, i: int, alarm: Mapping[str, Any], *, allow: Any = None) -> list[str]:
        """What is wrong with alarm number ``i`` (1-based) beyond its kind: a CloudWatch alarm
        needs its name."""
        if not str(alarm.get("name", "")).strip():
            return [f"Alarm {i}: name is the CloudWatch alarm's name."]
        return []

    @classmethod
    def read_alarms(
        cls, alarms: list[Mapping[str, Any]], *, settings: Mapping[str, Any], allow: Any = None
    ) -> list[Any]:
        """Every alarm of ``alarms`` as it reads now, as ``orchestration.alarms.AlarmState``s in
        order: by default CloudWatch alarms by name, in ``settings``' region. Raises
        DeployError when they cannot be read (an alarm CloudWatch does not have included)."""
        from orchestration import alarms as readers

        return readers.read_alarms(
            [a["name"] for a in alarms],
            {a["name"]: a.get("kind", "errors") for a in alarms},
            region=settings.get("region", ""),
            endpoint_url=settings.get("endpoint_url", ""),
        )

    def running_images(self, environment: str) -> RunningImages:
        """What the target runs now, as one summary and every distinct image (drift checks, which
        must tell a half-switched target from a foreign image). Raises DeployError when the
        backend cannot be read. Backends whose targets can run several images override it."""
        running = self.running_version(environment)
        return RunningImages(running, frozenset({running}) if running else frozenset())


# The kinds of alarm an environment can watch (the rollback reason follows the kind).
ALARM_KINDS = ("errors", "latency", "saturation")

# Backends are chosen by name. Each is imported only when first used, so that boto3 is
# loaded by the processes that deploy to AWS and by nothing else; hence the one trait a
# caller needs without importing the backend lives here: whether it runs ECR images, whose
# scan findings opsweb reads.
BACKENDS: dict[str, tuple[str, str]] = {
    "local": ("orchestration.local", "Local process"),
    "ecs": ("orchestration.ecs", "AWS ECS"),
    "ec2": ("orchestration.ec2", "AWS EC2"),
}
SCANNED_BACKENDS = ("ecs", "ec2")
REGISTRY: dict[str, type[DeployBackend]] = {}


def register(cls: type[DeployBackend]) -> type[DeployBackend]:
    REGISTRY[cls.name] = cls
    return cls


def backend_class(name: str) -> type[DeployBackend]:
    if name not in REGISTRY and name in BACKENDS:
        importlib.import_module(BACKENDS[name][0])
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise DeployError(f"Unknown backend {name!r}; known backends: {known}.") from None


def get_backend(name: str, settings: Mapping[str, Any]) -> DeployBackend:
    return backend_class(name)(settings)


BACKEND_CHOICES = [(name, label) for name, (_, label) in BACKENDS.items()]
