"""Several applications on the shared flow: creating one (command and admin), listing them,
``--app`` on every command, and isolation — a version, a rollback, a freeze, a run lane and a
local process of one application never touch another's (with a real django-q2 worker and real
processes on the local backend)."""

import json
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from opsweb import services
from opsweb.models import (
    Application,
    ApplicationRepository,
    AuditEntry,
    ChangeWindow,
    Environment,
    ImageVersion,
    Run,
    RunStatus,
    Target,
)
from opsweb.sample_app import digest_for
from orchestration.local import LocalProcessBackend
from tests.conftest import free_port, get_json, make_image, make_user, succeed_in


def run_command(*args, **env) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
        code = 0
    except CommandError as exc:
        code = exc.returncode
        err.write(str(exc))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def admin_user(flow):
    return User.objects.create_superuser("root", password="pw-root")


@pytest.fixture
def web(flow, admin_user):
    """A second application on the whole flow, with its own repository."""
    return services.create_application(
        user=admin_user,
        slug="web",
        name="Web front end",
        repositories=["example/web"],
        branch="develop",
    )


def targets(app) -> dict[str, Target]:
    return {t.slug: t for t in Target.objects.filter(application=app).in_flow()}


def written() -> tuple[int, ...]:
    return (
        Application.objects.count(),
        ApplicationRepository.objects.count(),
        Target.objects.count(),
        AuditEntry.objects.count(),
    )


# -- create_application ---------------------------------------------------------------------


def test_create_application_makes_its_targets_along_an_ordered_subset_and_audits(admin_user):
    sample_ports = {t.backend_settings["port"] for t in Target.objects.all()}
    code, out, err = run_command(
        "create_application",
        "--slug",
        "tool",
        "--name",
        "Internal tool",
        "--repository",
        "example/tool",
        "--repository",
        "example/tool-worker",
        "--environments",
        "local,dev,production",
        "--branch",
        "develop",
        "--repository-url",
        "https://github.com/example/tool",
        "--as",
        "root",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert Application.objects.get(slug="tool").repository_url == "https://github.com/example/tool"
    assert data["application"]["environments"] == ["local", "dev", "production"]
    assert data["application"]["repositories"] == ["example/tool", "example/tool-worker"]
    tool = Application.objects.get(slug="tool")
    flow = targets(tool)
    # Production's upstream is Dev: the tool skips AWS Staging.
    assert flow["production"].upstream == flow["dev"]
    ports = {t.backend_settings["port"] for t in flow.values()}
    assert len(ports) == 3 and not ports & sample_ports
    entry = AuditEntry.objects.get(action="create_application")
    assert entry.actor == admin_user and "tool" in entry.message


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["--slug", "sample"], "An application with slug 'sample' already exists"),
        (["--repository", "example/app"], "Repository 'example/app' is released by sample"),
        (["--environments", "dev,qa"], "No environment 'qa'"),
        (["--environments", "production,dev"], "not in the order of the flow"),
        (["--team", "nobody"], "No team (group) 'nobody'"),
        (["--as", "alice"], "User alice is not allowed to create applications"),
        (["--base-port", "65534"], "port"),
        (["--slug", "Not a slug!"], "slug"),
        (["--repository-url", "not a web address"], "URL"),
        # Longer than its column holds: refused with a sentence, not a database error.
        (["--repository", "example/" + "w" * 300], "at most 255 characters"),
    ],
)
def test_create_application_refuses_with_one_sentence_exit_2_and_writes_nothing(
    admin_user, alice, args, sentence
):
    base = {
        "--slug": "web",
        "--name": "Web",
        "--repository": "example/web",
        "--as": "root",
    }
    options = dict(base)
    options.update(dict(zip(args[::2], args[1::2], strict=True)))
    before = written()
    code, out, err = run_command(
        "create_application", *[part for pair in options.items() for part in pair]
    )
    assert code == 2
    assert sentence in err
    assert written() == before


def add_form(**fields) -> dict:
    """The admin's add form for an application, as a person fills it in."""
    environments = [env.pk for env in Environment.objects.filter(slug__in=["local", "dev"])]
    return {
        "name": "Web front end",
        "slug": "web",
        "auto_deploy_branch": "develop",
        "repository_url": "https://github.com/example/web",
        "repositories": "example/web\nexample/web-worker",
        "environments": environments + [Environment.objects.get(slug="production").pk],
        **fields,
    }


def test_the_admin_add_form_creates_an_application_through_the_service(client, admin_user):
    """Adding in the admin does what manage.py create_application does: targets along the
    environments chosen (an ordered subset: no Staging here), ports after every port in use,
    the repositories, and a create_application audit entry naming who."""
    sample_ports = {t.backend_settings["port"] for t in Target.objects.all()}
    client.force_login(admin_user)
    page = client.get("/admin/opsweb/application/add/").text
    assert 'name="repositories"' in page and 'name="environments"' in page
    assert "targets-TOTAL_FORMS" not in page  # the service makes them

    response = client.post("/admin/opsweb/application/add/", add_form())

    assert response.status_code == 302, response.text
    web = Application.objects.get(slug="web")
    assert web.repository_url == "https://github.com/example/web"
    assert sorted(web.repositories.values_list("repository", flat=True)) == [
        "example/web",
        "example/web-worker",
    ]
    flow = targets(web)
    assert list(flow) == ["local", "dev", "production"]
    assert flow["production"].upstream == flow["dev"]
    assert all(t.backend == "local" for t in flow.values())
    assert not {t.backend_settings["port"] for t in flow.values()} & sample_ports
    entry = AuditEntry.objects.get(action="create_application")
    assert entry.actor == admin_user
    assert "web" in entry.message and "local → dev → production" in entry.message


def test_the_admin_add_form_shows_the_services_refusal_and_writes_nothing(client, admin_user):
    client.force_login(admin_user)
    before = written()
    response = client.post(
        "/admin/opsweb/application/add/",
        add_form(repositories="example/web\nexample/app"),  # example/app is the sample's
    )
    assert response.status_code == 200
    assert (
        "Repository &#x27;example/app&#x27; is released by sample; a repository belongs to "
        "one application." in response.text
    )
    assert written() == before
    assert not Application.objects.filter(slug="web").exists()


def test_the_admin_add_form_says_why_when_the_service_refuses_after_the_check(
    client, admin_user, monkeypatch
):
    """Another admin claims the repository between the form's check and the save: the
    service's refusal is shown and its transaction leaves nothing behind."""
    monkeypatch.setattr(services, "check_application", lambda **fields: None)
    client.force_login(admin_user)
    before = written()
    response = client.post(
        "/admin/opsweb/application/add/",
        add_form(repositories="example/web\nexample/app"),
        follow=True,
    )
    assert response.redirect_chain[-1][0] == "/admin/opsweb/application/add/"
    assert "Repository &#x27;example/app&#x27; is released by sample" in response.text
    assert written() == before


def test_the_admin_edits_an_application_as_configuration(client, admin_user, flow):
    sample = Application.objects.get(slug="sample")
    client.force_login(admin_user)
    page = client.get(f"/admin/opsweb/application/{sample.pk}/change/").text
    assert "targets-TOTAL_FORMS" in page  # editing keeps the inlines
    form = {
        "name": sample.name,
        "slug": sample.slug,
        "auto_deploy_branch": "main",
        "repository_url": "",
        "repositories-TOTAL_FORMS": "0",
        "repositories-INITIAL_FORMS": "0",
        "targets-TOTAL_FORMS": "0",
        "targets-INITIAL_FORMS": "0",
    }
    response = client.post(f"/admin/opsweb/application/{sample.pk}/change/", form)
    assert response.status_code == 302, response.text
    sample.refresh_from_db()
    assert sample.auto_deploy_branch == "main"
    entry = AuditEntry.objects.get(action="configure_application")
    assert entry.actor == admin_user and "auto_deploy_branch='main'" in entry.message


# -- listing and --app ------------------------------------------------------------------------


def test_applications_lists_each_with_its_flow_and_what_runs_where(flow, web):
    succeed_in(targets(web)["dev"], make_image("2.0.0", repository="example/web"))
    code, out, err = run_command("applications", "--json")
    assert code == 0, err
    rows = {row["slug"]: row for row in json.loads(out)["applications"]}
    assert list(rows) == ["sample", "web"]
    assert rows["web"]["environments"] == ["local", "dev", "staging", "production"]
    assert rows["web"]["repositories"] == ["example/web"]
    by_env = {t["environment"]: t["version"] for t in rows["web"]["targets"]}
    assert by_env == {"local": None, "dev": "2.0.0", "staging": None, "production": None}
    assert all(t["version"] is None for t in rows["sample"]["targets"])

    code, text, err = run_command("applications")
    assert "web  Web front end" in text and "dev          2.0.0" in text


def test_a_bare_environment_is_refused_when_several_applications_are_released(
    flow, web, alice, monkeypatch
):
    make_image("1.0.0")
    before = Run.objects.count()
    code, out, err = run_command("deploy", "dev", "example/app:1.0.0", "--as", "alice")
    assert code == 2
    assert "Several applications are released here (sample, web): name one with --app" in err
    code, out, err = run_command("deploy", "dev", "1.0.0", "--app", "nope", "--as", "alice")
    assert code == 2 and "No application 'nope'; known applications: sample, web." in err
    assert Run.objects.count() == before

    monkeypatch.setenv("OPSWEB_APP", "sample")
    code, out, err = run_command("deploy", "dev", "1.0.0", "--as", "alice", "--json")
    assert code == 0, err
    payload = json.loads(out)["run"]
    assert (payload["application"], payload["environment"]) == ("sample", "dev")


def test_a_run_id_given_with_another_application_is_refused(flow, web, alice, bob):
    run = services.request_deploy(
        user=alice, environment=targets(web)["dev"], image=make_image(repository="example/web")
    )
    code, out, err = run_command("run_status", str(run.pk), "--app", "sample")
    assert code == 2 and f"Run #{run.pk} is a run of web, not of sample" in err
    code, out, err = run_command("run_status", str(run.pk), "--app", "web", "--json")
    assert json.loads(out)["run"]["application"] == "web"
    code, out, err = run_command("stop_run", str(run.pk), "--app", "sample", "--as", "bob")
    assert code == 2
    assert not Run.objects.get(pk=run.pk).stop_requested_at


def test_register_image_refuses_a_repository_of_another_application(flow, web, ci_user):
    before = ImageVersion.objects.count()
    args = ["--tag", "9.0.0", "--digest", "sha256:" + "a" * 64, "--as", "ci"]
    code, out, err = run_command(
        "register_image", "--repository", "example/web", "--app", "sample", *args
    )
    assert code == 2 and "'example/web' is released by web, not by sample" in err
    assert ImageVersion.objects.count() == before
    code, out, err = run_command(
        "register_image", "--repository", "example/web", "--app", "web", "--json", *args
    )
    assert code == 0, err
    assert json.loads(out)["application"] == "web"


def test_dora_per_application_and_across_all(flow, web):
    finished = timezone.now() - timedelta(hours=2)
    succeed_in(flow["production"], make_image(), finished_at=finished, started_at=finished)
    web_prod = targets(web)["production"]
    for _ in range(2):
        succeed_in(
            web_prod,
            make_image(repository="example/web"),
            finished_at=finished,
            started_at=finished,
        )
    reports = {}
    for app in ("sample", "web", ""):
        code, out, err = run_command("dora", "--json", *(["--app", app] if app else []))
        assert code == 0, err
        reports[app] = json.loads(out)
    assert reports["sample"]["deployments"] == 1 and reports["sample"]["application"] == "sample"
    assert reports["web"]["deployments"] == 2
    assert reports[""]["deployments"] == 3 and reports[""]["application"] is None
    code, text, err = run_command("dora")
    assert "all applications" in text


def test_environments_lists_every_application_with_a_column_for_it(flow, web):
    code, out, err = run_command("environments")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("APPLICATION")
    assert sum(line.startswith("web ") for line in lines) == 4
    code, out, err = run_command("environments", "--app", "web", "--json")
    assert {row["application"] for row in json.loads(out)["environments"]} == {"web"}


# -- isolation --------------------------------------------------------------------------------


def test_a_freeze_on_all_applications_stops_all_and_one_on_an_application_stops_one(
    flow, web, alice
):
    sample_dev, web_dev = flow["dev"], targets(web)["dev"]
    everywhere = ChangeWindow.objects.create(kind="deny", starts_at=timezone.now())
    assert sample_dev.is_frozen and web_dev.is_frozen
    everywhere.delete()
    ChangeWindow.objects.create(
        kind="deny",
        application=Application.objects.get(slug="web"),
        environment=Environment.objects.get(slug="dev"),
        starts_at=timezone.now(),
    )
    assert web_dev.is_frozen and not sample_dev.is_frozen
    with pytest.raises(services.ReleaseError, match="frozen"):
        services.request_deploy(
            user=alice, environment=web_dev, image=make_image(repository="example/web")
        )
    run = services.request_deploy(user=alice, environment=sample_dev, image=make_image())
    assert run.status == RunStatus.QUEUED


def test_a_rollback_in_one_application_touches_no_other(flow, web, alice):
    sample_dev, web_dev = flow["dev"], targets(web)["dev"]
    web_old, web_new = (make_image(repository="example/web") for _ in range(2))
    sample_old, sample_new = make_image(), make_image()
    succeed_in(web_dev, web_old)
    succeed_in(sample_dev, sample_old)
    succeed_in(web_dev, web_new)
    succeed_in(sample_dev, sample_new)  # the newest stable version anywhere in Dev
    assert services.previous_stable_version(web_dev, exclude=web_new) == web_old

    run = services.roll_back(user=alice, environment=web_dev, reason="critical_errors")
    assert (run.environment, run.image) == (web_dev, web_old)
    sample_dev.refresh_from_db()
    assert sample_dev.current_image == sample_new and not sample_dev.auto_deploy_paused
    assert not Run.objects.filter(environment=sample_dev, kind="rollback").exists()


def test_one_run_in_progress_per_target_not_per_environment(flow, web, alice):
    sample_dev, web_dev = flow["dev"], targets(web)["dev"]
    first = services.request_deploy(user=alice, environment=sample_dev, image=make_image())
    assert services.claim_next_run(environment_id=sample_dev.pk) == first
    second = services.request_deploy(
        user=alice, environment=web_dev, image=make_image(repository="example/web")
    )
    # Sample's Dev is busy; web's Dev is another lane and starts at once.
    assert services.claim_next_run(environment_id=web_dev.pk) == second
    assert set(Run.objects.filter(status=RunStatus.RUNNING)) == {first, second}
    third = services.request_deploy(user=alice, environment=sample_dev, image=make_image())
    assert services.claim_next_run(environment_id=sample_dev.pk) is None
    assert Run.objects.get(pk=third.pk).status == RunStatus.QUEUED


# -- with a real worker and real processes -----------------------------------------------------


@pytest.fixture
def two_on_local(flow, web, sample_repo, tmp_path):
    """Sample's and web's Dev on the local backend, sharing one state directory, each on its
    own free port, web's versions registered from CI's develop branch."""
    path, shas = sample_repo
    state = str(tmp_path / "state")
    configured = []
    for target in (flow["dev"], targets(web)["dev"]):
        port = free_port()
        target.backend_settings = {
            "repository": str(path),
            "port": port,
            "state_dir": state,
            "start_timeout": 10,
            "stop_timeout": 3,
        }
        target.health_check_url = f"http://127.0.0.1:{port}/healthz"
        target.health_check_window_seconds = 10
        target.full_clean()
        target.save()
        configured.append((target, port))
    yield configured, shas
    for target, _port in configured:
        LocalProcessBackend(target.backend_settings).stop(target.backend_key)


def wait_for_end(runs, log, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in runs:
            run.refresh_from_db()
        if all(run.is_terminal for run in runs):
            return
        time.sleep(0.2)
    pytest.fail(f"runs still going after {timeout}s: {[r.status for r in runs]}\n{log.read_text()}")


@pytest.mark.django_db(transaction=True)
def test_a_version_of_one_application_deploys_only_into_its_own_dev(
    two_on_local, ci_user, alice, worker
):
    ((sample_dev, sample_port), (web_dev, web_port)), shas = two_on_local
    # Both applications auto-deploy develop into the same shared AWS Dev.
    code, out, err = run_command(
        "register_image",
        "--repository",
        "example/web",
        "--tag",
        "1.1.0",
        "--digest",
        digest_for(shas["1.1.0"]),
        "--git-sha",
        shas["1.1.0"],
        "--branch",
        "develop",
        "--as",
        "ci",
        "--wait",
        "--timeout",
        "60",
        "--json",
    )
    assert code == 0, err + worker.read_text()
    data = json.loads(out)
    assert data["application"] == "web"
    assert [r["environment"] for r in data["runs"]] == ["dev"]
    assert data["runs"][0]["application"] == "web"
    assert get_json(f"http://127.0.0.1:{web_port}/")["version"] == "1.1.0"
    sample_dev.refresh_from_db()
    assert sample_dev.current_image is None
    assert not Run.objects.filter(environment__application__slug="sample").exists()
    with pytest.raises(OSError):
        get_json(f"http://127.0.0.1:{sample_port}/")


@pytest.mark.django_db(transaction=True)
def test_two_applications_deploy_into_dev_at_once_each_on_its_own_process(
    two_on_local, alice, worker
):
    ((sample_dev, sample_port), (web_dev, web_port)), shas = two_on_local

    def image(repository, tag):
        return make_image(
            tag, repository=repository, git_sha=shas[tag], digest=digest_for(shas[tag])
        )

    runs = [
        services.request_deploy(
            user=alice, environment=sample_dev, image=image("example/sample", "1.0.0")
        ),
        services.request_deploy(
            user=alice, environment=web_dev, image=image("example/web", "1.1.0")
        ),
    ]
    wait_for_end(runs, worker)
    assert [run.status for run in runs] == [RunStatus.SUCCEEDED, RunStatus.SUCCEEDED]
    assert get_json(f"http://127.0.0.1:{sample_port}/")["version"] == "1.0.0"
    assert get_json(f"http://127.0.0.1:{web_port}/")["version"] == "1.1.0"
    # The local backend keys its state per target: stopping web's Dev leaves sample's running.
    backend = LocalProcessBackend(web_dev.backend_settings)
    assert sample_dev.backend_key == "sample-dev" and web_dev.backend_key == "web-dev"
    backend.stop(web_dev.backend_key)
    assert get_json(f"http://127.0.0.1:{sample_port}/")["version"] == "1.0.0"
    with pytest.raises(OSError):
        get_json(f"http://127.0.0.1:{web_port}/")

    # A rollback of web's Dev, run by the worker, restores web's previous version only.
    runs.append(
        services.request_deploy(
            user=alice, environment=web_dev, image=image("example/web", "1.2.0")
        )
    )
    wait_for_end(runs, worker)
    rollback = services.roll_back(user=alice, environment=web_dev, reason="critical_errors")
    wait_for_end([rollback], worker)
    assert rollback.status == RunStatus.SUCCEEDED, worker.read_text()
    body = get_json(f"http://127.0.0.1:{web_port}/")
    assert (body["version"], body["rollback"]) == ("1.1.0", True)
    assert get_json(f"http://127.0.0.1:{sample_port}/")["version"] == "1.0.0"
    assert ImageVersion.objects.get(repository="example/web", tag="1.2.0").is_bad
    assert not ImageVersion.objects.filter(repository="example/sample", is_bad=True).exists()


def test_users_keep_their_roles_in_a_team_owned_application(flow, admin_user, alice):
    team = Group.objects.create(name="web team")
    web = services.create_application(
        user=admin_user,
        slug="web",
        name="Web",
        repositories=["example/web"],
        environments=["dev", "production"],
        team="web team",
    )
    assert web.team == team
    with pytest.raises(services.NotAllowed, match="not in web team"):
        services.request_deploy(
            user=alice, environment=targets(web)["dev"], image=make_image(repository="example/web")
        )
    member = make_user("erin", "deployers", "web team")
    run = services.request_deploy(
        user=member, environment=targets(web)["dev"], image=make_image(repository="example/web")
    )
    assert run.environment.application == web


def test_a_targets_service_link_never_shows_credentials_from_its_health_check_url(flow):
    target = flow["staging"]
    target.health_check_url = "https://deploy:s3cret@app.example.com:8443/healthz"
    assert target.service_url == "https://app.example.com:8443/"
    target.health_check_url = "http://[::1]:9000/healthz"
    assert target.service_url == "http://[::1]:9000/"
