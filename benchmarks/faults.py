"""Fault harness: kill workers, race approvals and restart PostgreSQL, then check that opsweb
recovered by itself, correctly, within the target time.

    .venv/bin/python benchmarks/faults.py            # long form: 5 kills per step, 50 races
    .venv/bin/python benchmarks/faults.py --short    # .ci/run: 1 kill per step, 10 races

Everything is real and on this machine only: a private PostgreSQL server (initdb in a scratch
directory, on a free loopback port, so that restarting it disturbs nobody else), the demo's
sample service as local processes on --base-port … +3, and `manage.py worker` with the default
settings (heartbeat staleness, reconcile interval). Faults:

* kill at <step>: SIGKILL the whole worker (cluster and supervisor) when the run reaches the
  step, start a new worker at once (as ECS or a supervisor would), and queue a follow-up deploy.
  Steps: export, old stopped, new started, health check (of 1.3.0, which fails it), and during
  a rollback.
* stop at <step>: click Stop when a deploy reaches the step (claimed, old stopped, new started,
  health check of 1.3.0); the run must end stopped with what the backend runs being what opsweb
  shows (no drift), then a follow-up deploy must succeed. Its time is click → run ended.
* stop ecs at <step>: the same on an environment moved to the ECS backend, against a moto
  server the harness starts on loopback (allowed through OPSWEB_OUTBOUND_ALLOW), at ECS's
  safe points: before the switch, and during the rollout wait (the service wants two tasks,
  moto runs one, so the rollout stays IN_PROGRESS until stopped). The run must end stopped
  with the service back on its previous task definition, which is what opsweb shows.
* final approvals raced: two approvers approve a one-approval promotion at the same instant.
* PostgreSQL restarted: mid-deploy, the database server restarts.

A trial is correct when every run ended in one terminal state, none was claimed twice, what
the backend runs is what opsweb shows (no drift) and answers its health check, the follow-up
run succeeded, and a failing version was rolled back. Recovery is the time from the fault to
the environment starting its next run. Exit status 0 when every trial was correct and recovered
within --target seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOOD = ["1.0.0", "1.1.0", "1.2.0", "1.2.1"]
BROKEN = "1.3.0"


def code(tag: str) -> str:
    """The release a trial's version was built from: "1.2.0-r7" → "1.2.0"."""
    return tag.split("-r")[0]


KILL_STEPS = {
    # fault name: (event prefix that marks the step, version to deploy)
    "export": ("Claimed by a worker", None),
    "old stopped": ("Stopped", None),
    "new started": ("Started", None),
    "health check": ("Health check attempt", BROKEN),
    "during a rollback": ("Stopped", None),
}

STOP_STEPS = {
    # stop asked when the run logs: (event prefix, version to deploy). Before the switch, while
    # the old process is stopped (the new one is put back by the previous), once the new one
    # started, and between the health-check attempts of the failing 1.3.0.
    "claimed": ("Claimed by a worker", None),
    "old stopped": ("Stopped", None),
    "new started": ("Started", None),
    "health check": ("Health check attempt", BROKEN),
}


ECS_STOP_STEPS = {
    # stop asked when the run logs: (event prefix, whether the rollout stays IN_PROGRESS).
    # "Claimed" comes before the backend makes its client and registers the task definition,
    # so the stop is seen at the check before update_service.
    "before the switch": ("Claimed by a worker", False),
    "during the rollout": ("Updated service", True),
}
ECS_REGION = "eu-west-1"
ECS_CLUSTER = "opsweb-faults"
ECS_SERVICE = "app-dev"
ECS_REPOSITORY = f"123456789012.dkr.ecr.{ECS_REGION}.amazonaws.com/team/app"


@dataclass
class Tally:
    tried: int = 0
    correct: int = 0
    recover: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    endings: dict[str, int] = field(default_factory=dict)  # how stopped runs ended, counted

    def trial(self, fault, *args) -> None:
        """Run one trial; a trial that raises counts as incorrect, with the exception."""
        try:
            self.add(*fault(*args))
        except Exception as exc:
            self.add([f"the trial raised {exc!r}"], None)

    def add(self, problems: list[str], seconds: float | None) -> None:
        self.tried += 1
        self.correct += not problems
        self.problems += problems
        if seconds is not None:
            self.recover.append(seconds)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_range(count: int = 4, start: int = 8801) -> int:
    """The first port from ``start`` on where ``count`` consecutive loopback ports are free, so
    that the demo's four processes do not meet another run's (a second harness, a test suite)."""
    for base in range(start, 65535 - count, count):
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise SystemExit("faults: no 4 consecutive free loopback ports")


# -- a private PostgreSQL -------------------------------------------------------------------------


class PrivatePostgres:
    """initdb + pg_ctl in a scratch directory, trust auth, loopback only."""

    def __init__(self, scratch: Path):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        found = shutil.which("pg_ctl")
        pg_ctl = bins[-1] if bins else (Path(found).resolve() if found else None)
        if pg_ctl is None:
            raise SystemExit(
                "PostgreSQL's pg_ctl and initdb are needed (apt-get install postgresql)"
            )
        self.bin = pg_ctl.parent
        self.data = scratch / "pgdata"
        self.port = free_port()
        self.log = scratch / "postgres.log"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            os.chown(scratch, *_ids("postgres"))

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, stdout=subprocess.DEVNULL)

    def start(self) -> str:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")
        self._pg_ctl("start")
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
             "postgres", "opsweb"],
            check=True,
        )  # fmt: skip
        return f"postgres://postgres@127.0.0.1:{self.port}/opsweb"

    def _pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-m", "fast", action,
        )  # fmt: skip

    def restart(self) -> None:
        self._pg_ctl("restart")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl("stop")


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


# -- a moto server for the ECS backend -----------------------------------------------------------


class MotoServer:
    """moto's ThreadedMotoServer on a free loopback port, in this process: the harness can
    then play the part of ECS's rollouts, which moto does not simulate (``set_rollout``)."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self) -> str:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

        # A count, not a flag: a service wanting one task reports it running.
        os.environ["MOTO_ECS_SERVICE_RUNNING"] = "1"
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        return self.url

    def set_rollout(self, cluster: str, service: str, state: str) -> None:
        """Make the service's deployment record say ``state`` ("IN_PROGRESS", "COMPLETED"):
        moto keeps one record per service, fixed when it was created."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ecs.models import ecs_backends

        found = ecs_backends[DEFAULT_ACCOUNT_ID][ECS_REGION].services[f"{cluster}:{service}"]
        for deployment in found.deployments:
            deployment["rolloutState"] = state
            deployment["runningCount"] = 1 if state == "COMPLETED" else 0
            deployment["pendingCount"] = 0 if state == "COMPLETED" else 1

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# -- workers ------------------------------------------------------------------------------------


class Worker:
    """`manage.py worker` as deployed: the cluster in its own session under a supervisor."""

    def __init__(self, scratch: Path, env: dict[str, str]):
        self.scratch, self.env, self.count = scratch, env, 0
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.count += 1
        with open(self.scratch / f"worker-{self.count}.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "worker"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the cluster's process group first (killed alone, the supervisor would make
        the cluster stop gracefully), then the supervisor."""
        pid = self.process.pid
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(child), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


# -- the harness --------------------------------------------------------------------------------


class Harness:
    def __init__(self, worker: Worker, postgres: PrivatePostgres, target: float):
        from django.contrib.auth.models import User

        from opsweb.models import Target

        self.worker, self.postgres, self.target = worker, postgres, target
        self.env = Target.objects.get(application__slug="sample", environment__slug="local")
        self.staging = Target.objects.get(application__slug="sample", environment__slug="staging")
        self.alice, self.bob, self.carol = (
            User.objects.get(username=name) for name in ("alice", "bob", "carol")
        )

    # helpers

    def image(self, tag: str):
        """A fresh version with ``tag``'s code: opsweb never deploys an older version over a
        newer one (rollback is for going back), so each trial deploys a newer build of the
        same few commits ("1.2.0-r7"), registered now."""
        import uuid

        from opsweb.models import ImageVersion
        from opsweb.sample_app import digest_for

        base = ImageVersion.objects.get(tag=tag)
        self.copies = getattr(self, "copies", 0) + 1
        return ImageVersion.objects.create(
            repository=base.repository,
            tag=f"{tag}-r{self.copies}",
            git_sha=base.git_sha,
            digest=digest_for(f"{base.git_sha}-{uuid.uuid4().hex}"),
            branch=base.branch,
            commit_message=base.commit_message,
        )

    def promotable(self, tag: str, source):
        """A fresh version of ``tag`` recorded as a success in ``source`` (history, so that it
        may be promoted; the race is about the approvals, not the deploy before them)."""
        from datetime import timedelta

        from django.utils import timezone

        from opsweb.models import Run

        image = self.image(tag)
        at = timezone.now() - timedelta(minutes=1)
        Run.objects.create(
            kind="deploy",
            environment=source,
            image=image,
            status="succeeded",
            created_at=at,
            started_at=at,
            switched_at=at,
            finished_at=at,
        )
        return image

    def reset_bad_marks(self) -> None:
        """A harness shortcut, not something the app allows: forget "bad" marks and paused
        auto-deploy left by earlier trials, so that every trial can use the same versions."""
        from opsweb.models import ImageVersion, Target

        ImageVersion.objects.filter(tag__in=[*GOOD, BROKEN]).update(is_bad=False, bad_reason="")
        Target.objects.update(auto_deploy_paused=False, paused_reason="")

    def pick(self, *, besides=()) -> object:
        self.env.refresh_from_db()
        current = code(self.env.current_image.tag) if self.env.current_image else None
        besides = {code(tag) for tag in besides}
        return self.image(next(t for t in GOOD if t != current and t not in besides))

    def wait_quiet(self, environment, timeout: float = 120) -> bool:
        from opsweb.models import Run, RunStatus

        deadline = time.monotonic() + timeout
        busy = [RunStatus.QUEUED, RunStatus.RUNNING]
        while time.monotonic() < deadline:
            if not Run.objects.filter(environment=environment, status__in=busy).exists():
                return True
            time.sleep(0.2)
        return False

    def wait_event(self, run, prefix: str, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if run.events.filter(message__startswith=prefix).exists():
                return True
            run.refresh_from_db()
            if run.is_terminal:
                return False
            time.sleep(0.01)
        return False

    def check(self, environment, since, expect_failed_version=None) -> list[str]:
        """What a person would check after the fault; each problem as a sentence."""
        from django.db.models import Count, Q

        from opsweb.models import Run
        from orchestration.base import get_backend
        from orchestration.health import check_once

        problems = []
        environment.refresh_from_db()
        runs = Run.objects.filter(environment=environment, created_at__gte=since).annotate(
            claims=Count("events", filter=Q(events__message__startswith="Claimed by a worker"))
        )
        for run in runs:
            if not run.is_terminal:
                problems.append(f"run #{run.pk} still {run.status}")
            if run.claims > 1:
                problems.append(f"run #{run.pk} claimed {run.claims} times")
        backend = get_backend(environment.backend, environment.backend_settings)
        running = backend.running_version(environment.backend_key)
        shown = environment.current_image
        if shown is None or running != shown.digest:
            problems.append(f"backend runs {running}, opsweb shows {shown}")
        if environment.drift:
            problems.append(f"drift: {environment.drift}")
        healthy, detail = check_once(environment.health_check_url, allow=environment.outbound_allow)
        if not healthy:
            problems.append(f"unhealthy: {detail}")
        if expect_failed_version and shown and code(shown.tag) == expect_failed_version:
            problems.append(f"{expect_failed_version} still runs: not rolled back")
        return problems

    def next_start(self, environment, after, exclude) -> float | None:
        from opsweb.models import Run

        started = (
            Run.objects.filter(environment=environment, started_at__gt=after)
            .exclude(pk__in=exclude)
            .order_by("started_at")
            .values_list("started_at", flat=True)
            .first()
        )
        return (started - after).total_seconds() if started else None

    # faults

    def kill_at(self, step: str) -> tuple[list[str], float | None]:
        from django.utils import timezone

        from opsweb import services

        prefix, version = KILL_STEPS[step]
        self.reset_bad_marks()
        since = timezone.now()
        if step == "during a rollback":
            first = services.request_deploy(
                user=self.alice, environment=self.env, image=self.pick()
            )
            self.wait_quiet(self.env)
            first.refresh_from_db()
            if first.status != "succeeded":
                return [f"setup deploy #{first.pk} {first.status}: {first.error}"], None
            run = services.roll_back(user=self.alice, environment=self.env, reason="other")
        else:
            image = self.image(version) if version else self.pick()
            run = services.request_deploy(user=self.alice, environment=self.env, image=image)
        if not self.wait_event(run, prefix):
            run.refresh_from_db()
            return [f"run #{run.pk} never reached '{prefix}' ({run.status}: {run.error})"], None
        killed_at = timezone.now()
        self.worker.kill()
        self.worker.start()
        run.refresh_from_db()
        follow = services.request_deploy(
            user=self.alice, environment=self.env, image=self.pick(besides=[run.image.tag])
        )
        if not self.wait_quiet(self.env):
            return ["the environment did not settle within 120 s"], None
        problems = self.check(self.env, since, BROKEN if version == BROKEN else None)
        follow.refresh_from_db()
        if follow.status != "succeeded":
            problems.append(f"follow-up run #{follow.pk} {follow.status}: {follow.error}")
        return problems, self.next_start(self.env, killed_at, exclude=[run.pk])

    def stop_at(self, step: str) -> tuple[list[str], float | None]:
        """Click Stop when the run reaches ``step``; correct when it ends stopped (or, asked
        after its last safe point, succeeded), what the backend runs is what opsweb shows
        with no drift, and a follow-up deploy succeeds. The time is from the click to the
        run's end."""
        from django.utils import timezone

        from opsweb import services
        from opsweb.errors import ReleaseError
        from opsweb.models import RunStatus
        from orchestration.base import get_backend

        prefix, version = STOP_STEPS[step]
        self.reset_bad_marks()
        image = self.image(version) if version else self.pick()
        run = services.request_deploy(user=self.alice, environment=self.env, image=image)
        if not self.wait_event(run, prefix):
            run.refresh_from_db()
            return [f"run #{run.pk} never reached '{prefix}' ({run.status}: {run.error})"], None
        asked_at = timezone.now()
        run.refresh_from_db()
        try:
            services.stop_run(user=self.alice, run=run, reason=f"fault harness, stop at {step}")
        except ReleaseError:
            # The run ended between the step's event and the click (the local backend's last
            # steps take milliseconds): the policy refuses the stop, as it should. Judged
            # below like any other ending; a run that ended badly is still a failure.
            run.refresh_from_db()
            if run.status == RunStatus.RUNNING:
                raise
        if not self.wait_quiet(self.env):
            return ["the environment did not settle within 120 s"], None
        run.refresh_from_db()
        problems = []
        # "Stopped after the switch: 1.1.0-r3 was stopped and 1.0.0-r2 runs again as pid 12…"
        # → one line per kind of ending, versions and numbers left out.
        detail = run.error.split("): ", 1)[-1].split(";")[0] if run.error else run.status
        ending = re.sub(r"\d[\w.-]*", "…", detail)[:90]
        self.endings[ending] = self.endings.get(ending, 0) + 1
        if run.status not in (RunStatus.STOPPED, RunStatus.SUCCEEDED):
            problems.append(f"run #{run.pk} {run.status} after a stop: {run.error}")
        self.env.refresh_from_db()
        backend = get_backend(self.env.backend, self.env.backend_settings)
        running, shown = backend.running_version(self.env.backend_key), self.env.current_image
        if shown is None or running != shown.digest:
            problems.append(f"after the stop the backend runs {running}, opsweb shows {shown}")
        if self.env.drift:
            problems.append(f"drift after the stop: {self.env.drift}")
        follow = services.request_deploy(
            user=self.alice, environment=self.env, image=self.pick(besides=[run.image.tag])
        )
        if not self.wait_quiet(self.env):
            return [*problems, "the follow-up did not settle within 120 s"], None
        follow.refresh_from_db()
        if follow.status != "succeeded":
            problems.append(f"follow-up run #{follow.pk} {follow.status}: {follow.error}")
        return problems, max(0.0, (run.finished_at - asked_at).total_seconds())

    def ecs_client(self, service: str = "ecs"):
        import boto3

        return boto3.client(service, region_name=ECS_REGION, endpoint_url=self.moto_url)

    def ecs_task_definition(self) -> str:
        """The task definition ARN the ECS service is on, read from moto."""
        described = self.ecs_client().describe_services(cluster=ECS_CLUSTER, services=[ECS_SERVICE])
        return described["services"][0]["taskDefinition"]

    def ecr_image(self):
        """A fresh version in an ECR repository (what the ECS backend pins by digest)."""
        import hashlib
        import uuid

        from opsweb.models import ImageVersion

        self.copies = getattr(self, "copies", 0) + 1
        return ImageVersion.objects.create(
            repository=ECS_REPOSITORY,
            tag=f"2.0.{self.copies}",
            git_sha=hashlib.sha1(uuid.uuid4().bytes).hexdigest(),  # noqa: S324 (a stand-in)
            digest="sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
            commit_message="fault harness",
        )

    def use_ecs(self, moto) -> list[str]:
        """Move the dev environment to the ECS backend on moto (a Fargate service with one
        task wanted) and deploy a first version there; problems as sentences."""
        from opsweb import services
        from opsweb.models import ApplicationRepository, Target
        from orchestration.base import get_backend

        self.moto, self.moto_url = moto, moto.start()
        self.dev = Target.objects.get(application__slug="sample", environment__slug="dev")
        # The ECR repository the ECS service pulls from is the sample service's too.
        ApplicationRepository.objects.get_or_create(
            repository=ECS_REPOSITORY, defaults={"application": self.dev.application}
        )
        if self.dev.backend == "local":  # its demo process would outlive `demo --stop`
            get_backend("local", self.dev.backend_settings).stop(self.dev.backend_key)
        ec2, ecs = self.ecs_client("ec2"), self.ecs_client()
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(
            GroupName=ECS_SERVICE, Description=ECS_SERVICE, VpcId=vpc
        )["GroupId"]
        ecs.create_cluster(clusterName=ECS_CLUSTER)
        arn = ecs.register_task_definition(
            family=ECS_SERVICE,
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu="256",
            memory="512",
            containerDefinitions=[
                {"name": "web", "image": f"{ECS_REPOSITORY}:bootstrap", "essential": True}
            ],
        )["taskDefinition"]["taskDefinitionArn"]
        ecs.create_service(
            cluster=ECS_CLUSTER,
            serviceName=ECS_SERVICE,
            taskDefinition=arn,
            desiredCount=1,
            launchType="FARGATE",
            networkConfiguration={
                "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}
            },
        )
        self.dev.backend = "ecs"
        self.dev.backend_settings = {
            "region": ECS_REGION,
            "cluster": ECS_CLUSTER,
            "service": ECS_SERVICE,
            "container_name": "web",
            "endpoint_url": self.moto_url,
            "poll_interval": 0.1,
            # Long enough that a rollout kept IN_PROGRESS is ended by the stop, never by this.
            "timeout": 60,
        }
        self.dev.health_check_url = ""  # moto runs no containers to answer one
        self.dev.full_clean()
        self.dev.save()
        first = services.request_deploy(
            user=self.alice, environment=self.dev, image=self.ecr_image()
        )
        if not self.wait_quiet(self.dev):
            return ["the first ECS deploy did not settle within 120 s"]
        first.refresh_from_db()
        if first.status != "succeeded":
            return [f"the first ECS deploy #{first.pk} {first.status}: {first.error}"]
        return []

    def stop_ecs_at(self, step: str) -> tuple[list[str], float | None]:
        """Click Stop when an ECS deploy reaches ``step``; correct when the run ends stopped,
        the service (read from moto) is back on the task definition it ran before, opsweb
        shows that version with no drift, and a follow-up deploy succeeds. The time is from
        the click to the run's end."""
        from django.utils import timezone

        from opsweb import services
        from opsweb.models import RunStatus
        from orchestration.base import get_backend

        prefix, stays_in_progress = ECS_STOP_STEPS[step]
        self.reset_bad_marks()
        self.dev.refresh_from_db()
        before_arn, before_image = self.ecs_task_definition(), self.dev.current_image
        if stays_in_progress:
            # The rollout stays IN_PROGRESS (as a real one does for minutes) until the worker
            # has acted on the stop by updating the service back; then the rollout back is let
            # complete, so that the stop's whole path runs, never the rollout timeout.
            self.moto.set_rollout(ECS_CLUSTER, ECS_SERVICE, "IN_PROGRESS")
        try:
            run = services.request_deploy(
                user=self.alice, environment=self.dev, image=self.ecr_image()
            )
            if not self.wait_event(run, prefix):
                run.refresh_from_db()
                return [f"run #{run.pk} never reached '{prefix}' ({run.status}: {run.error})"], None
            asked_at = timezone.now()
            run.refresh_from_db()
            services.stop_run(user=self.alice, run=run, reason=f"fault harness, stop ecs at {step}")
            if stays_in_progress and not self.wait_event(run, "Stop asked: updated service"):
                run.refresh_from_db()
                return [f"run #{run.pk} did not update the service back ({run.error})"], None
        finally:
            if stays_in_progress:
                self.moto.set_rollout(ECS_CLUSTER, ECS_SERVICE, "COMPLETED")
        if not self.wait_quiet(self.dev):
            return ["the environment did not settle within 120 s"], None
        run.refresh_from_db()
        problems = []
        detail = run.error.split("): ", 1)[-1].split(";")[0] if run.error else run.status
        detail = re.sub(
            r"the service '[^']*' in cluster '[^']*' in region \S+", "the service", detail
        )
        ending = re.sub(r"\d[\w.:-]*", "…", detail)[:90]
        self.endings[ending] = self.endings.get(ending, 0) + 1
        if run.status != RunStatus.STOPPED:
            problems.append(f"run #{run.pk} {run.status} after a stop: {run.error}")
        after_arn = self.ecs_task_definition()
        if after_arn != before_arn:
            problems.append(f"the service is on {after_arn}, not back on {before_arn}")
        self.dev.refresh_from_db()
        backend = get_backend(self.dev.backend, self.dev.backend_settings)
        running, shown = backend.running_version(self.dev.backend_key), self.dev.current_image
        if shown != before_image:
            problems.append(f"opsweb shows {shown}, not {before_image} that ran before")
        if shown is None or running != shown.digest:
            problems.append(f"after the stop the service runs {running}, opsweb shows {shown}")
        if self.dev.drift:
            problems.append(f"drift after the stop: {self.dev.drift}")
        follow = services.request_deploy(
            user=self.alice, environment=self.dev, image=self.ecr_image()
        )
        if not self.wait_quiet(self.dev):
            return [*problems, "the follow-up did not settle within 120 s"], None
        follow.refresh_from_db()
        if follow.status != "succeeded":
            problems.append(f"follow-up run #{follow.pk} {follow.status}: {follow.error}")
        return problems, (run.finished_at - asked_at).total_seconds()

    def race_final_approvals(self, i: int) -> tuple[list[str], float | None]:
        from django.db import connection
        from django.utils import timezone

        from opsweb import services
        from opsweb.models import RunStatus
        from opsweb.services import ReleaseError

        self.reset_bad_marks()
        self.staging.refresh_from_db()
        current = code(self.staging.current_image.tag) if self.staging.current_image else None
        source = self.staging.upstream
        image = self.promotable("1.0.0" if current != "1.0.0" else "1.2.0", source)
        since = timezone.now()
        run = services.request_promotion(user=self.alice, target=self.staging, image=image)
        barrier = threading.Barrier(2)
        outcomes = []

        def approve(user) -> None:
            try:
                barrier.wait()
                services.approve_run(user=user, run=run)
                outcomes.append("approved")
            except ReleaseError as exc:
                outcomes.append(str(exc))
            finally:
                connection.close()

        threads = [threading.Thread(target=approve, args=(u,)) for u in (self.bob, self.carol)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if not self.wait_quiet(self.staging):
            return ["staging did not settle within 120 s"], None
        problems = self.check(self.staging, since)
        run.refresh_from_db()
        queued = run.events.filter(message="Fully approved; queued").count()
        if queued != 1:
            problems.append(f"run #{run.pk} queued {queued} times ({outcomes})")
        if run.status != RunStatus.SUCCEEDED:
            problems.append(f"run #{run.pk} {run.status}: {run.error}")
        return problems, None

    def restart_postgres(self) -> tuple[list[str], float | None]:
        from django.db import connections
        from django.utils import timezone

        from opsweb import services

        self.reset_bad_marks()
        since = timezone.now()
        run = services.request_deploy(user=self.alice, environment=self.env, image=self.pick())
        if not self.wait_event(run, "Stopped"):
            return [f"run #{run.pk} never reached 'Stopped'"], None
        restarted_at = timezone.now()
        self.postgres.restart()
        connections.close_all()
        run.refresh_from_db()
        follow = services.request_deploy(
            user=self.alice, environment=self.env, image=self.pick(besides=[run.image.tag])
        )
        if not self.wait_quiet(self.env):
            return ["the environment did not settle within 120 s"], None
        problems = self.check(self.env, since)
        follow.refresh_from_db()
        if follow.status != "succeeded":
            problems.append(f"follow-up run #{follow.pk} {follow.status}: {follow.error}")
        return problems, self.next_start(self.env, restarted_at, exclude=[run.pk])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="kills per step (default 5)")
    parser.add_argument("--races", type=int, default=50, help="approval races (default 50)")
    parser.add_argument("--short", action="store_true", help="1 kill per step, 10 races")
    parser.add_argument(
        "--base-port", type=int, default=None, help="the demo's first port (default: 4 free ones)"
    )
    parser.add_argument("--target", type=float, default=30.0, help="recovery target, seconds")
    args = parser.parse_args()
    if args.base_port is None:
        args.base_port = free_port_range()
    if args.short:
        args.n, args.races = 1, 10

    scratch = Path(tempfile.mkdtemp(prefix="opsweb-faults-"))
    postgres = PrivatePostgres(scratch)
    try:
        ok = run_faults(args, scratch, postgres, postgres.start()) == 0
    finally:
        postgres.stop()
    if ok:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if ok else 1


def run_faults(args, scratch: Path, postgres: PrivatePostgres, database_url: str) -> int:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "OPSWEB_LOCAL_STATE_DIR": str(scratch / "local"),
        "DJANGO_SETTINGS_MODULE": "opsweb.settings",
        "LOG_LEVEL": "WARNING",
        "DJANGO_ENV": "development",
    }
    for name in ("OPSWEB_HEARTBEAT_STALE_SECONDS", "OPSWEB_RECONCILE_SECONDS", "Q_SYNC"):
        env.pop(name, None)  # the defaults are what is measured
    # The ECS trials talk to moto on loopback, allowed the way an operator would allow an
    # endpoint; AWS credentials are moto's dummies and no profile or endpoint is inherited.
    for name in list(env):
        if name in ("AWS_PROFILE", "AWS_SESSION_TOKEN") or name.startswith("AWS_ENDPOINT_URL"):
            env.pop(name)
    env.update(
        OPSWEB_OUTBOUND_ALLOW="127.0.0.1/32",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 (moto's dummy)
        AWS_DEFAULT_REGION=ECS_REGION,
        AWS_CONFIG_FILE=str(scratch / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(scratch / "no-aws-credentials"),
    )
    os.environ.clear()
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    with open(os.devnull, "w") as quiet:
        call_command("demo", base_port=args.base_port, apps="sample", stdout=quiet)
    worker = Worker(scratch, env)
    worker.start()
    moto = MotoServer()
    harness = Harness(worker, postgres, args.target)
    tallies: dict[str, Tally] = {}
    print(
        f"faults: heartbeat stale after {settings.OPSWEB['HEARTBEAT_STALE_SECONDS']}s, "
        f"reconcile every {settings.OPSWEB['RECONCILE_SECONDS']:g}s; logs in {scratch}",
        flush=True,
    )
    try:
        for step in KILL_STEPS:
            tally = tallies.setdefault(f"kill at {step}", Tally())
            for _ in range(args.n):
                tally.trial(harness.kill_at, step)
            report(f"kill at {step}", tally, args.target)
        for step in STOP_STEPS:
            tally = tallies.setdefault(f"stop at {step}", Tally())
            harness.endings = tally.endings
            for _ in range(args.n):
                tally.trial(harness.stop_at, step)
            report(f"stop at {step}", tally, args.target)
        try:
            setup = harness.use_ecs(moto)
        except Exception as exc:
            setup = [f"moving dev to ECS on moto raised {exc!r}"]
        for step in ECS_STOP_STEPS:
            tally = tallies.setdefault(f"stop ecs at {step}", Tally())
            harness.endings = tally.endings
            for _ in range(args.n):
                if setup:  # no service to stop on: each trial fails with the reason
                    tally.add(setup, None)
                else:
                    tally.trial(harness.stop_ecs_at, step)
            report(f"stop ecs at {step}", tally, args.target)
        tally = tallies.setdefault("final approvals raced", Tally())
        for i in range(args.races):
            tally.trial(harness.race_final_approvals, i)
        report("final approvals raced", tally, args.target)
        tally = tallies.setdefault("PostgreSQL restarted", Tally())
        tally.trial(harness.restart_postgres)
        report("PostgreSQL restarted", tally, args.target)
    finally:
        worker.stop()
        moto.stop()
        with open(os.devnull, "w") as quiet:
            call_command("demo", base_port=args.base_port, apps="sample", stop=True, stdout=quiet)
        from django.db import connections

        connections.close_all()
    ok = all(
        t.correct == t.tried and all(s <= args.target for s in t.recover) for t in tallies.values()
    )
    total = sum(t.tried for t in tallies.values())
    passed = sum(t.correct for t in tallies.values())
    print(f"recovery target {args.target:g}s: {'met' if ok else 'MISSED'}")
    print(f"faults: {passed} passed, {total - passed} failed")  # the closing line CI reads
    return 0 if ok else 1


def report(name: str, tally: Tally, target: float) -> None:
    if tally.recover:
        seconds = (
            f"recover median {statistics.median(tally.recover):5.1f}s  "
            f"max {max(tally.recover):5.1f}s"
        )
        if max(tally.recover) > target:
            seconds += f"  (over {target:g}s)"
    else:
        seconds = "recover -"
    print(f"{name:30} tried {tally.tried:3}  correct {tally.correct:3}  {seconds}", flush=True)
    for problem in tally.problems:
        print(f"    {problem}", flush=True)
    for ending, count in tally.endings.items():
        print(f"    {count} × {ending}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
