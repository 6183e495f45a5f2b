"""The CI commands: exit codes a pipeline can trust, one JSON object on stdout, a sentence on
stderr, nothing written on a refusal — through call_command and as real processes, including a
real django-q2 worker deploying the sample service on the local backend."""

import json
import os
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from opsweb import services
from opsweb.models import (
    Approval,
    AuditEntry,
    ChangeWindow,
    ImageVersion,
    Run,
    RunStatus,
    Signoff,
    Target,
)
from opsweb.sample_app import digest_for
from orchestration.base import DeployError
from orchestration.local import LocalProcessBackend
from tests.conftest import (
    database_url,
    fake_digest,
    fake_sha,
    free_port,
    get_json,
    make_image,
    make_user,
    succeed_in,
)

ROOT = Path(__file__).resolve().parent.parent
RECORDS = (ImageVersion, Run, Approval, AuditEntry, Signoff)


def counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in RECORDS}


def run_command(*args, **options) -> tuple[int, str, str]:
    """call_command as a pipeline sees it: (exit code, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    try:
        call_command(*args, stdout=out, stderr=err, **options)
        code = 0
    except CommandError as exc:
        code = exc.returncode
        err.write(f"CommandError: {exc}\n")
    return code, out.getvalue(), err.getvalue()


def subprocess_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"Q_SYNC", "OPSWEB_USER"}}
    env.update(DATABASE_URL=database_url(), **extra)
    return env


def manage(*args: str, timeout: float = 90, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- personas and a world with history -------------------------------------------------------


@pytest.fixture
def world(flow, alice, bob, carol, dave, ci_user, outsider):
    """Dev and Staging run 1.0.0; Production has a promotion of it pending, approved once by
    carol; 2.0.0 is a tag in two repositories."""
    v1 = make_image("1.0.0")
    v2 = make_image("1.1.0")
    succeed_in(flow["dev"], v1)
    staging_run = succeed_in(flow["staging"], v1)
    Signoff.objects.create(environment=flow["staging"], image=v1, user=carol)
    prod_run = services.request_promotion(user=bob, target=flow["production"], image=v1)
    services.approve_run(user=carol, run=prod_run)
    make_image("2.0.0", repository="example/app")
    make_image("2.0.0", repository="example/other")
    return types.SimpleNamespace(v1=v1, v2=v2, staging_run=staging_run, prod_run=prod_run, env=flow)


def register_args(tag: str, *extra: str, digest: str | None = None, user: str = "ci") -> list:
    return [
        "register_image",
        "--repository",
        "example/app",
        "--tag",
        tag,
        "--digest",
        digest or fake_digest(f"example/app:{tag}"),
        "--as",
        user,
        *extra,
    ]


# -- success paths through call_command -----------------------------------------------------


def test_register_image_on_develop_queues_the_aws_dev_deploy(world):
    before = counts()
    code, out, err = run_command(
        *register_args("3.0.0", "--branch", "develop", "--git-sha", fake_sha("3"), "--json"),
        "--committed-at",
        "2025-01-31T14:05:00+01:00",
        "--build-url",
        "https://ci.example.com/runs/7",
        "--commit-message",
        "Add things\n\nwith a body",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] and data["created"] and data["exit_code"] == 0
    assert data["run"]["environment"] == "dev" and data["run"]["status"] == RunStatus.QUEUED
    assert f"Queued run #{data['run']['id']} to deploy it to AWS Dev" in data["message"]
    image = ImageVersion.objects.get(pk=data["image"]["id"])
    assert image.committed_at == datetime(2025, 1, 31, 13, 5, tzinfo=UTC)
    assert (
        image.commit_message == "Add things\n\nwith a body" and image.registered_by.username == "ci"
    )
    assert counts()["ImageVersion"] == before["ImageVersion"] + 1
    assert counts()["Run"] == before["Run"] + 1


def test_register_image_is_idempotent_by_digest(world):
    run_command(*register_args("3.0.0", "--branch", "develop"))
    before = counts()
    code, out, _ = run_command(*register_args("3.0.0", "--branch", "develop", "--json"))
    data = json.loads(out)
    assert code == 0 and data["created"] is False and "already registered" in data["message"]
    assert data["run"]["status"] == RunStatus.QUEUED  # its auto-deploy, for --wait to follow
    assert counts() == before


def test_register_image_on_another_branch_deploys_nothing(world):
    before = counts()
    code, out, _ = run_command(*register_args("3.0.0", "--branch", "feature/login"))
    assert code == 0
    assert "Nothing deployed: no environment auto-deploys branch 'feature/login'" in out
    assert counts()["Run"] == before["Run"]


def test_register_image_resolve_fills_in_the_digest_from_ecr(world, monkeypatch):
    found = fake_digest("from ecr")
    calls = []

    def resolve_digest(**kwargs):
        calls.append(kwargs)
        return found

    monkeypatch.setitem(
        sys.modules, "orchestration.ecs", types.SimpleNamespace(resolve_digest=resolve_digest)
    )
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    args = ["register_image", "--repository", "example/app", "--tag", "3.0.0", "--as", "ci"]
    code, out, _ = run_command(*args, "--resolve", "--json")
    assert code == 0 and json.loads(out)["image"]["digest"] == found
    assert calls == [
        {"repository": "example/app", "tag": "3.0.0", "region": "eu-west-1", "endpoint_url": None}
    ]
    other = fake_digest("stale")
    before = counts()
    code, _, err = run_command(*args, "--resolve", "--digest", other, "--region", "us-east-1")
    assert code == 2 and f"--digest {other} does not match {found}" in err
    assert counts() == before


def test_register_image_resolve_failure_is_a_refusal(world, monkeypatch):
    def resolve_digest(**kwargs):
        raise DeployError("ECR has no repository 'example/app' in region eu-west-1")

    monkeypatch.setitem(
        sys.modules, "orchestration.ecs", types.SimpleNamespace(resolve_digest=resolve_digest)
    )
    before = counts()
    code, _, err = run_command(
        "register_image", "--repository", "example/app", "--tag", "3.0.0", "--as", "ci",
        "--resolve", "--region", "eu-west-1",
    )  # fmt: skip
    assert code == 2 and "Could not look up example/app:3.0.0 in ECR" in err
    assert "ECR has no repository 'example/app'" in err and counts() == before


def test_register_image_resolve_asks_ecr(world, monkeypatch, tmp_path):
    """--resolve through orchestration.ecs against moto's in-process ECR."""
    moto = pytest.importorskip("moto")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ECR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    repository = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1},
        "layers": [{"digest": fake_digest("layer"), "size": 1, "mediaType": "x"}],
    }
    with moto.mock_aws():
        import boto3

        ecr = boto3.client("ecr", region_name="eu-west-1")
        ecr.create_repository(repositoryName="team/app")
        pushed = ecr.put_image(
            repositoryName="team/app", imageManifest=json.dumps(manifest), imageTag="1.4.2"
        )["image"]["imageId"]["imageDigest"]
        args = ["register_image", "--repository", repository, "--as", "ci", "--resolve"]
        code, out, err = run_command(*args, "--tag", "1.4.2", "--json")
        assert code == 0, err
        assert json.loads(out)["image"]["digest"] == pushed
        before = counts()
        code, _, err = run_command(*args, "--tag", "9.9.9")
        assert code == 2 and "ECR has no image tagged '9.9.9'" in err
        assert counts() == before


def test_deploy_queues_a_run_and_prints_its_id(world):
    code, out, _ = run_command("deploy", "dev", "example/app:1.1.0", "--as", "alice", "--json")
    data = json.loads(out)
    assert code == 0 and data["run"]["status"] == RunStatus.QUEUED
    assert data["message"] == f"Requested run #{data['run']['id']}: deploy " + (
        f"1.1.0 ({world.v2.short_digest}) to AWS Dev."
    )


def test_promote_approve_then_reject_through_the_commands(world):
    v3 = make_image("3.0.0")
    succeed_in(world.env["dev"], v3)
    code, out, _ = run_command("promote", "dev", "AWS Staging", "--as", "alice", "--json")
    run = json.loads(out)["run"]
    assert code == 0 and run["status"] == RunStatus.PENDING and run["image"]["tag"] == "3.0.0"

    code, out, _ = run_command("approve", str(run["id"]), "--as", "bob", "--comment", "looks good")
    assert code == 0 and f"Approved run #{run['id']} (1 of 1); it is fully approved" in out
    assert Run.objects.get(pk=run["id"]).status == RunStatus.QUEUED

    code, out, _ = run_command(
        "reject", f"#{world.prod_run.pk}", "--as", "dave", "--comment", "not this week", "--json"
    )
    data = json.loads(out)
    assert code == 0 and data["run"]["status"] == RunStatus.REJECTED
    assert data["run"]["approvals"][-1]["comment"] == "not this week"


def test_signoff_uat_records_the_signoff(world):
    code, out, _ = run_command("signoff_uat", "staging", "1.0.0", "--as", "bob", "--json")
    data = json.loads(out)
    assert code == 0 and data["signoff"]["user"] == "bob"
    assert Signoff.objects.filter(user__username="bob", image=world.v1).exists()


def test_rollback_queues_the_previous_stable_version_and_pauses_dev(world):
    succeed_in(world.env["dev"], world.v2)  # Dev moved on from 1.0.0 to 1.1.0
    code, out, _ = run_command(
        "rollback", "dev", "--reason", "critical_errors", "--note", "500s", "--as", "alice"
    )
    assert code == 0
    assert "Rolling back AWS Dev from 1.1.0" in out and "to 1.0.0" in out
    assert "marked bad when the rollback starts" in out and "until someone resumes it" in out
    services.claim_next_run(environment_id=world.env["dev"].pk)
    dev = Target.objects.get(environment__slug="dev")
    assert dev.auto_deploy_paused and ImageVersion.objects.get(pk=world.v2.pk).is_bad


def test_run_status_shows_the_run_and_its_exit_code(world):
    code, out, _ = run_command("run_status", str(world.prod_run.pk), "--as", "ci")
    assert code == 0
    assert f"Run #{world.prod_run.pk}: promotion 1.0.0" in out and "pending approval" in out
    assert "approvals: 1 of 2: carol approved" in out

    services.reject_run(user=User.objects.get(username="dave"), run=world.prod_run, comment="no")
    code, out, err = run_command("run_status", str(world.prod_run.pk), "--as", "ci", "--json")
    assert code == 1 and json.loads(out)["run"]["status"] == RunStatus.REJECTED
    assert f"Run #{world.prod_run.pk} was rejected" in err


def test_run_status_wait_times_out_with_exit_3(world):
    started = time.monotonic()
    code, out, err = run_command(
        "run_status", str(world.prod_run.pk), "--as", "ci", "--wait", "--timeout", "0.6"
    )
    assert code == 3 and time.monotonic() - started < 5
    assert f"Run #{world.prod_run.pk} is still pending approval after 0.6s; it goes on" in err


def test_environments_lists_versions_flags_and_pending_runs(world):
    ChangeWindow.objects.create(
        environment=world.prod_run.environment.environment, starts_at=timezone.now()
    )
    code, out, _ = run_command("environments", "--as", "ci")
    assert code == 0
    header, local, dev, staging, production = out.splitlines()
    assert header.split()[:3] == ["ENVIRONMENT", "VERSION", "DEPLOYED"]
    assert f"1.0.0 {world.v1.short_digest} {world.v1.short_sha}" in dev
    assert f"#{world.prod_run.pk} pending" in production and "frozen" in production
    code, out, _ = run_command("environments", "--as", "ci", "--json")
    rows = {row["slug"]: row for row in json.loads(out)["environments"]}
    assert rows["staging"]["current"]["tag"] == "1.0.0" and rows["production"]["frozen"]


def test_the_user_can_come_from_opsweb_user(world, monkeypatch):
    monkeypatch.setenv("OPSWEB_USER", "ci")
    code, out, _ = run_command("environments", "--json")
    assert code == 0 and json.loads(out)["ok"]


# -- refusals: exit 2, nothing written, a sentence naming the problem --------------------------

REFUSALS = {
    "malformed digest": (
        register_args("3.0.0", digest="sha256:not-a-digest"),
        "--digest 'sha256:not-a-digest' is not a digest",
    ),
    "digest of the wrong length": (
        register_args("3.0.0", digest="sha256:" + "a" * 63),
        "64 lowercase hex characters (63 after 'sha256:')",
    ),
    "digest without sha256": (register_args("3.0.0", digest="a" * 64), "is not a digest"),
    "short git sha": (
        register_args("3.0.0", "--git-sha", "abc1234"),
        "--git-sha 'abc1234' is refused: A git sha is the full 40-character",
    ),
    "bad committed-at": (
        register_args("3.0.0", "--committed-at", "yesterday"),
        "--committed-at 'yesterday' is not an ISO 8601 date and time",
    ),
    "tag with a newline": (register_args("3.0.0\n"), "contains a control character"),
    "moved tag": (register_args("1.0.0", digest=fake_digest("rebuilt")), "tags are immutable"),
    "unknown environment": (
        ["deploy", "nowhere", "1.1.0", "--as", "alice"],
        "No environment 'nowhere'; known environments: local, dev, staging, production.",
    ),
    "unknown image": (["deploy", "dev", "9.9.9", "--as", "alice"], "No image '9.9.9'"),
    "unknown image digest": (
        ["deploy", "dev", "example/app@" + fake_digest("nothing"), "--as", "alice"],
        "No image 'example/app@sha256:",
    ),
    "ambiguous image": (
        ["deploy", "dev", "2.0.0", "--as", "alice"],
        "Image '2.0.0' is ambiguous: it matches",
    ),
    "unknown user": (["deploy", "dev", "1.1.0", "--as", "ghost"], "User 'ghost' does not exist."),
    "no user": (["deploy", "dev", "1.1.0"], "No user to act as: pass --as USER or set OPSWEB_USER"),
    "user without permission": (
        register_args("3.0.0", user="mallory"),
        "mallory is not allowed to register images.",
    ),
    "deploy without permission": (
        ["deploy", "dev", "1.1.0", "--as", "mallory"],
        "mallory is not allowed to deploy to AWS Dev.",
    ),
    "viewing without permission": (
        ["environments", "--as", "mallory"],
        "mallory is not allowed to view environments.",
    ),
    "deploy to staging": (
        ["deploy", "staging", "1.1.0", "--as", "alice"],
        "AWS Staging takes promotions from AWS Dev, not direct deploys",
    ),
    "promote that skips an environment": (
        ["promote", "dev", "production", "--image", "1.0.0", "--as", "bob"],
        "AWS Production is promoted from AWS Staging, not AWS Dev; promote one step at a time.",
    ),
    "approve by the requester": (
        ["approve", "{prod_run}", "--as", "bob"],
        "bob requested run #{prod_run}; AWS Production needs approvals from other people.",
    ),
    "approve twice": (
        ["approve", "{prod_run}", "--as", "carol"],
        "carol has already decided on run #{prod_run}.",
    ),
    "approve a finished run": (
        ["approve", "{staging_run}", "--as", "bob"],
        "Run #{staging_run} succeeded. Only runs awaiting approval can be approved",
    ),
    "approve by a non-approver": (
        ["approve", "{prod_run}", "--as", "alice"],
        "alice is not in production approvers",
    ),
    "approve an unknown run": (["approve", "999999", "--as", "bob"], "Run #999999 does not exist."),
    "approve a run that is not a number": (
        ["approve", "latest", "--as", "bob"],
        "'latest' is not a run id",
    ),
    "reject without comment": (
        ["reject", "{prod_run}", "--as", "dave"],
        "Say why you reject this run: a comment is required.",
    ),
    "reject with a blank comment": (
        ["reject", "{prod_run}", "--as", "dave", "--comment", "   "],
        "a comment is required",
    ),
    "rollback with no earlier stable version": (
        ["rollback", "dev", "--reason", "critical_errors", "--as", "alice"],
        "succeeded in AWS Dev and is not bad, so there is nothing to roll back",
    ),
    "rollback without a reason": (
        ["rollback", "dev", "--as", "alice"],
        "the following arguments are required: --reason",
    ),
    "rollback with an unknown reason": (
        ["rollback", "dev", "--reason", "boredom", "--as", "alice"],
        "invalid choice: 'boredom'",
    ),
    "signoff of a version that never ran there": (
        ["signoff_uat", "staging", "1.1.0", "--as", "bob"],
        "1.1.0 has not succeeded in AWS Staging; test it there first.",
    ),
    "bad timeout": (
        ["deploy", "dev", "1.1.0", "--as", "alice", "--wait", "--timeout", "soon"],
        "--timeout 'soon' is not a number of seconds.",
    ),
    "NUL in an option": (
        ["deploy", "dev", "1.1.0", "--as", "alice", "--note", "a\x00b"],
        "--note contains a NUL character",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_command_refusal_exits_2_and_writes_nothing(world, case):
    args, expected = REFUSALS[case]
    ids = {"prod_run": world.prod_run.pk, "staging_run": world.staging_run.pk}
    args = [arg.format(**ids) if "{" in arg else arg for arg in args]
    before = counts()
    code, out, err = run_command(*args)
    assert code == 2, (out, err)
    assert expected.format(**ids) in err
    assert "Traceback" not in err
    assert counts() == before


def test_ambiguous_image_lists_the_candidates(world):
    code, _, err = run_command("deploy", "dev", "2.0.0", "--as", "alice")
    assert code == 2 and "example/app:2.0.0" in err and "example/other:2.0.0" in err


def test_inactive_user_is_refused(world):
    make_user("gone", "ci", is_active=False)
    code, _, err = run_command("environments", "--as", "gone")
    assert code == 2 and "User 'gone' is inactive." in err


def test_refusal_with_json_prints_one_error_object(world):
    code, out, _ = run_command("deploy", "dev", "9.9.9", "--as", "alice", "--json")
    data = json.loads(out)
    assert code == 2 and data == {"ok": False, "exit_code": 2, "error": data["error"]}
    assert "No image '9.9.9'" in data["error"]


# -- arbitrary input never produces a traceback or a partial record ----------------------------

HEX = "0123456789abcdef"
texts = st.text(max_size=40)  # anything: NULs, newlines, surrogate-free unicode


def mostly(valid, junk=texts):
    """Valid five times in six, so that a fair share of examples get all the way to a row."""
    return st.sampled_from([valid] * 5 + [junk]).flatmap(lambda strategy: strategy)


options = st.fixed_dictionaries(
    {
        "repository": mostly(st.sampled_from(["example/app", "reg.example.com:5000/a/b"])),
        "tag": mostly(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}", fullmatch=True)),
        "digest": mostly(
            st.text(HEX, min_size=64, max_size=64).map("sha256:".__add__),
            st.one_of(st.text(HEX, max_size=70).map("sha256:".__add__), texts),
        ),
        "git_sha": mostly(st.one_of(st.just(""), st.text(HEX, min_size=40, max_size=40))),
        "branch": mostly(st.sampled_from(["", "develop", "feature/x"])),
        "commit_message": texts,
        "committed_at": mostly(st.one_of(st.just(""), st.datetimes().map(datetime.isoformat))),
        "build_url": mostly(st.sampled_from(["", "https://ci.example.com/b/1"])),
    }
)


@settings(
    max_examples=60,
    deadline=None,
    # The fixtures make the flow and the ci user once; each example counts rows around itself,
    # so sharing them between examples is what we want.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=options)
def test_register_image_with_arbitrary_input_is_all_or_nothing(ci_user, values):
    before = counts()
    code, out, err = run_command("register_image", as_user="ci", json=True, **values)
    after = counts()
    if not out:
        # argparse refused the arguments (a value starting with "-") before --json was read.
        assert code == 2 and "argument" in err and after == before
        return
    data = json.loads(out)
    assert data["exit_code"] == code
    event(f"exit {code}" + (f", created={data['created']}" if code == 0 else ""))
    if code != 0:
        assert code == 2 and "CommandError: " in err and data["error"]
        assert after == before
        return
    if not data["created"]:
        # Known digest: nothing new, unless it now deploys where its branch never ran.
        assert after["ImageVersion"] == before["ImageVersion"]
        deployed = len(data["runs"]) if data["deployed"] else 0
        assert after["Run"] == before["Run"] + deployed
        return
    image = ImageVersion.objects.get(pk=data["image"]["id"])
    image.full_clean()
    assert "\n" not in image.tag + image.digest + image.repository + image.branch
    assert after["ImageVersion"] == before["ImageVersion"] + 1
    assert after["Run"] == before["Run"] + len(data["runs"])
    assert after["AuditEntry"] == before["AuditEntry"] + 1 + len(data["runs"])


# -- real processes --------------------------------------------------------------------------


def manage_all(*commands) -> list[subprocess.CompletedProcess]:
    """Independent commands as concurrent processes (each pays Django's start-up)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: manage(*args), commands))


@pytest.mark.django_db(transaction=True)
def test_commands_as_processes_exit_codes_json_and_stderr(world):
    """Each command as CI runs it; exit code, one JSON object on stdout, sentences on stderr."""
    v3 = make_image("3.0.0")
    succeed_in(world.env["dev"], v3)
    prod_run = world.prod_run.pk

    registered, deployed, promoted, rejected, signed = manage_all(
        register_args("4.0.0", "--branch", "develop", "--json"),
        ["deploy", "local", "1.1.0", "--as", "alice", "--json"],
        ["promote", "dev", "staging", "--as", "alice", "--json"],
        ["reject", str(prod_run), "--comment", "not now", "--as", "dave"],
        ["signoff_uat", "staging", "1.0.0", "--as", "bob", "--json"],
    )
    for result in (registered, deployed, promoted, rejected, signed):
        assert result.returncode == 0, result.stderr
    data = json.loads(registered.stdout)
    assert data["created"] and data["run"]["environment"] == "dev"
    assert json.loads(deployed.stdout)["run"]["environment"] == "local"
    promotion = json.loads(promoted.stdout)["run"]
    assert promotion["status"] == "pending" and promotion["image"]["tag"] == "3.0.0"
    assert f"Rejected run #{prod_run}: not now" in rejected.stdout
    assert json.loads(signed.stdout)["signoff"]["user"] == "bob"

    approved, status = manage_all(
        ["approve", str(promotion["id"]), "--as", "bob", "--json"],
        ["run_status", str(prod_run), "--as", "ci", "--json"],
    )
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["run"]["status"] == "queued"
    # run_status of the rejected run: exit 1, and the sentence on stderr.
    assert status.returncode == 1
    assert json.loads(status.stdout)["run"]["status"] == "rejected"
    assert f"CommandError: Run #{prod_run} was rejected: " in status.stderr

    result = manage(
        "rollback", "dev", "--reason", "security_vulnerability", "--as", "alice", "--json"
    )
    assert result.returncode == 0, result.stderr
    rollback = json.loads(result.stdout)["run"]
    assert rollback["kind"] == "rollback" and rollback["image"]["tag"] == "1.0.0"

    before = counts()
    listed, timed_out, unknown, short_digest, no_reason = manage_all(
        ["environments", "--json", "--as", "ci"],
        ["run_status", str(rollback["id"]), "--as", "ci", "--wait", "--timeout", "0.5"],
        ["deploy", "dev", "9.9.9", "--as", "alice", "--json"],
        register_args("5.0.0", digest="sha256:" + "b" * 63),
        ["rollback", "dev", "--as", "alice"],  # argparse: --reason is required
    )
    assert counts() == before
    assert listed.returncode == 0, listed.stderr
    dev = next(row for row in json.loads(listed.stdout)["environments"] if row["slug"] == "dev")
    # Not paused yet: the rollback is queued, and pauses auto-deploy when a worker starts it.
    assert not dev["auto_deploy_paused"] and dev["current"]["tag"] == "3.0.0"
    # The queued rollback does not move without a worker: --wait times out with 3.
    assert timed_out.returncode == 3
    assert f"Run #{rollback['id']} is still queued after 0.5s; it goes on" in timed_out.stderr
    assert unknown.returncode == 2 and json.loads(unknown.stdout)["ok"] is False
    assert "CommandError: No image '9.9.9'" in unknown.stderr
    assert short_digest.returncode == 2 and "(63 after 'sha256:')" in short_digest.stderr
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    for result in (unknown, short_digest, no_reason):
        assert "Traceback" not in result.stderr


@pytest.mark.django_db(transaction=True)
def test_the_user_can_come_from_opsweb_user_in_a_process(flow, ci_user):
    result = manage("environments", OPSWEB_USER="ci")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("ENVIRONMENT")


@pytest.mark.django_db(transaction=True)
def test_register_image_does_not_load_boto3(flow, ci_user):
    script = (
        "import sys, django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('register_image', '--repository', 'example/app', '--tag', '1.0.0',\n"
        f"             '--digest', '{fake_digest('boto')}', '--branch', 'develop', '--as', 'ci')\n"
        "print('boto3' in sys.modules, 'botocore' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=subprocess_env(DJANGO_SETTINGS_MODULE="opsweb.settings"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["False", "False"]


# -- runs that really deploy the sample service --------------------------------------------------


@pytest.fixture
def sample_in(sample_repo, tmp_path):
    """Point environments at the sample service on a free port; stop what they ran afterwards."""
    path, shas = sample_repo
    used = []

    def configure(environment: Target) -> int:
        port = free_port()
        backend_settings = {
            "repository": str(path),
            "port": port,
            "state_dir": str(tmp_path / "state"),
            "start_timeout": 10,
            "stop_timeout": 3,
        }
        Target.objects.filter(pk=environment.pk).update(
            backend_settings=backend_settings,
            health_check_url=f"http://127.0.0.1:{port}/healthz",
            health_check_window_seconds=10,
        )
        used.append((environment.backend_key, backend_settings))
        return port

    yield configure, shas
    for key, backend_settings in used:
        LocalProcessBackend(backend_settings).stop(key)


def sample_args(shas: dict, tag: str, *extra: str) -> list[str]:
    return [
        "register_image",
        "--repository",
        "sample/app",
        "--tag",
        tag,
        "--digest",
        digest_for(shas[tag]),
        "--git-sha",
        shas[tag],
        *extra,
    ]


@pytest.mark.django_db(transaction=True)
def test_register_image_on_develop_is_deployed_to_aws_dev_by_a_worker(
    flow, ci_user, alice, sample_in, worker
):
    configure, shas = sample_in
    port = configure(flow["dev"])

    # CI's step, as CI runs it: a process that waits for the worker to finish the deploy.
    result = manage(
        *sample_args(shas, "1.0.0", "--branch", "develop", "--as", "ci", "--wait", "--json"),
        "--timeout",
        "60",
    )
    assert result.returncode == 0, result.stderr + worker.read_text()
    data = json.loads(result.stdout)
    assert data["run"]["status"] == "succeeded" and data["run"]["environment"] == "dev"
    assert "Claimed by a worker" in result.stderr  # the run's log, followed on stderr
    assert get_json(f"http://127.0.0.1:{port}/")["version"] == "1.0.0"

    code, out, err = run_command(
        *sample_args(shas, "1.1.0", "--branch", "develop", "--as", "ci", "--wait")
    )
    assert code == 0, err + worker.read_text()
    assert get_json(f"http://127.0.0.1:{port}/")["version"] == "1.1.0"

    code, out, err = run_command(
        "rollback", "dev", "--reason", "critical_errors", "--as", "alice", "--wait", "--json"
    )
    assert code == 0, err + worker.read_text()
    assert json.loads(out)["run"]["status"] == "succeeded"
    body = get_json(f"http://127.0.0.1:{port}/")
    assert (body["version"], body["rollback"]) == ("1.0.0", True)

    # Dev is paused after the rollback: the next develop build is recorded, not deployed, and
    # --wait says so with exit code 4 (registered, not deployed).
    runs = Run.objects.count()
    code, out, err = run_command(
        *sample_args(shas, "1.2.0", "--branch", "develop", "--as", "ci", "--wait", "--json")
    )
    data = json.loads(out)
    assert code == 4 and data["created"] and data["run"] is None and not data["deployed"]
    assert "Not deployed to AWS Dev: auto-deploy is paused" in data["message"]
    assert data["auto_deploy"][0]["skipped"].startswith("auto-deploy is paused")
    assert Run.objects.count() == runs
    assert get_json(f"http://127.0.0.1:{port}/")["version"] == "1.0.0"


@pytest.mark.django_db(transaction=True)
def test_deploy_wait_exits_1_when_the_run_fails(flow, alice, sample_in, sync_tasks):
    configure, shas = sample_in
    configure(flow["local"])  # the run executes in this process when the request commits
    crashes = shas["2.0.0"]  # exits at start
    make_image("2.0.0", repository="sample/app", git_sha=crashes, digest=digest_for(crashes))
    code, out, err = run_command(
        "deploy", "local", "sample/app:2.0.0", "--as", "alice", "--wait", "--json"
    )
    assert code == 1
    assert json.loads(out)["run"]["status"] == "failed"
    assert "Run #" in err and "failed: The command exited at once" in err
