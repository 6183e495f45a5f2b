"""`manage.py demo`: the walkthrough's starting point, with real processes."""

import random
import socket
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher, check_password
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from opsweb import policy, services
from opsweb.management.commands import local_admin
from opsweb.management.commands.local_admin import remember_password
from opsweb.models import Application, AuditEntry, ImageVersion, Run, Target
from orchestration.local import LocalProcessBackend
from tests.conftest import get_json

pytestmark = pytest.mark.django_db(transaction=True)


def free_block(size=4) -> int:
    for _ in range(50):
        base = random.randint(20000, 60000)  # noqa: S311 (a port, not a secret)
        try:
            for port in range(base, base + size):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of ports")


@pytest.fixture
def demo_settings(settings, tmp_path):
    settings.DEBUG = True
    settings.OPSWEB = {**settings.OPSWEB, "LOCAL_STATE_DIR": tmp_path / "local"}
    yield
    for env in Target.objects.all():
        LocalProcessBackend(env.backend_settings).stop(env.backend_key)


def test_demo_refuses_to_run_with_debug_off(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="only with DEBUG on"):
        call_command("demo")
    assert Target.objects.count() == 0


def test_demo_starts_three_applications_on_their_own_ports_and_is_idempotent(demo_settings):
    base = free_block(11)
    out = StringIO()
    call_command("demo", base_port=base, stdout=out)

    def versions(app):
        return [t.current_image.tag for t in Target.objects.filter(application__slug=app)]

    served = [get_json(f"http://127.0.0.1:{base + i}/")["version"] for i in range(11)]
    assert served[:4] == versions("sample") == ["1.2.1", "1.2.0", "1.1.0", "1.0.0"]
    assert served[4:8] == versions("web") == ["2.5.0", "2.5.0", "2.4.0", "2.4.0"]
    # The internal tool skips AWS Staging: Local, Dev and Production on the next three ports.
    assert served[8:] == versions("tool") == ["0.9.0", "0.9.0", "0.8.0"]
    assert [t.slug for t in Target.objects.filter(application__slug="tool")] == [
        "local",
        "dev",
        "production",
    ]
    assert "alice" in out.getvalue() and "bob" in out.getvalue()
    counts = (ImageVersion.objects.count(), Run.objects.count())
    # The backdated history reads like a real one: its promotions had their approvals, it has
    # an audit trail, and it comes before today's runs; each application has its own.
    history = Run.objects.filter(note="Demo history (backdated)")
    promoted = history.filter(kind="promotion", status="succeeded")
    assert promoted.exists()
    assert all(services.quorum_progress(run).met for run in promoted)
    assert AuditEntry.objects.filter(run__in=history, action="approve_run").exists()
    assert AuditEntry.objects.filter(run__in=history, action="run_succeeded").exists()
    for app in ("sample", "web", "tool"):
        assert history.filter(environment__application__slug=app, kind="promotion").exists()
        assert not ImageVersion.objects.filter(
            application__slug=app,
            runs__environment__application__slug__in=[
                other for other in ("sample", "web", "tool") if other != app
            ],
        ).exists()
    today = Run.objects.exclude(note="Demo history (backdated)").order_by("pk").first()
    assert not history.filter(pk__gt=today.pk).exists()

    call_command("demo", base_port=base, stdout=StringIO())
    assert (ImageVersion.objects.count(), Run.objects.count()) == counts

    call_command("demo", base_port=base, stop=True, stdout=StringIO())
    for port in (base + 3, base + 7, base + 10):
        with pytest.raises(OSError):
            get_json(f"http://127.0.0.1:{port}/")
    call_command("demo", base_port=base, stdout=StringIO())  # restarts what was deployed
    assert get_json(f"http://127.0.0.1:{base + 3}/")["version"] == "1.0.0"
    assert get_json(f"http://127.0.0.1:{base + 10}/")["version"] == "0.8.0"
    assert Run.objects.count() == counts[1]


def test_demo_teams_own_its_applications_and_the_overview_filters_by_them(demo_settings):
    base = free_block(11)
    out = StringIO()
    call_command("demo", base_port=base, stdout=out)
    assert "Web team owns sample, web; Platform owns tool" in out.getvalue()

    bob = User.objects.get(username="bob")
    client = Client()
    client.force_login(bob)
    overview = client.get(reverse("admin:index")).text
    assert 'id="id_overview_team"' in overview
    assert '<option value="Web team">' in overview and '<option value="Platform">' in overview

    def matrix(team):
        page = client.get(reverse("admin:index"), {"team": team}).text
        return page.split("opsweb-overview-matrix")[1].split("</table>")[0]

    platform = matrix("Platform")
    assert ">Internal tool</a>" in platform
    assert "Web front end" not in platform and "Sample service" not in platform
    web = matrix("Web team")
    assert ">Web front end</a>" in web and ">Sample service</a>" in web
    assert "Internal tool" not in web

    # The walkthrough's people keep their roles in every team's application: alice asks,
    # bob approves, carol signs off (the policy's team rule refuses none of them).
    for slug in ("web", "tool"):
        target = Target.objects.get(application__slug=slug, environment__slug="dev")
        for name in ("alice", "bob", "carol", "ci"):
            user = User.objects.get(username=name)
            assert policy.team_refusal(user, target) is None, (name, slug)
    alice = User.objects.get(username="alice")
    production = Target.objects.get(application__slug="tool", environment__slug="production")
    run = services.request_promotion(user=alice, target=production)
    run = services.approve_run(user=bob, run=run)
    assert run.approvals.filter(user=bob).exists()


def test_demo_with_the_sample_alone_takes_four_ports(demo_settings):
    base = free_block(4)
    call_command("demo", base_port=base, apps="sample", stdout=StringIO())
    assert list(Application.objects.values_list("slug", flat=True)) == ["sample"]
    assert get_json(f"http://127.0.0.1:{base + 3}/")["version"] == "1.0.0"
    with pytest.raises(CommandError, match="--apps 'billing' is not one of sample, web, tool"):
        call_command("demo", base_port=base, apps="billing", stdout=StringIO())


@pytest.mark.django_db
def test_demo_override_can_be_met_whichever_override_approver_asks(settings):
    from opsweb.management.commands.demo import PEOPLE

    members = [name for name, groups in PEOPLE.items() if "override approvers" in groups]
    # The requester's own approval does not count: the others must be enough.
    assert len(members) - 1 >= settings.OPSWEB["OVERRIDE_APPROVALS"]


def test_demo_people_log_in_with_their_printed_passwords(demo_settings):
    """Hashed together in threads (``hash_passwords``), stored as ``set_password`` would."""
    out = StringIO()
    call_command("demo", base_port=free_block(4), apps="sample", stdout=out)
    for username in ("alice", "bob", "carol", "dave"):
        password = remember_password(username)
        assert f"{username:<6} {password}" in out.getvalue()
        assert User.objects.get(username=username).check_password(password), username
    assert not User.objects.get(username="ci").has_usable_password()


def test_hash_passwords_takes_what_prehash_started_and_hashes_the_rest(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        local_admin.prehash(pool, ["first secret"])
        ahead = local_admin._PREHASHED["first secret"].result()
        hashed = local_admin.hash_passwords(["first secret", "second secret", "first secret"])
    assert hashed["first secret"] == ahead  # taken, not hashed again
    assert set(hashed) == {"first secret", "second secret"}
    for password, encoded in hashed.items():
        assert check_password(password, encoded)
        assert encoded.startswith(f"pbkdf2_sha256${PBKDF2PasswordHasher.iterations}$")
    assert local_admin._PREHASHED == {}
    with ThreadPoolExecutor(max_workers=1) as pool:
        local_admin.prehash(pool, ["third secret"])
        local_admin.forget_prehashed()
    assert local_admin._PREHASHED == {}


def test_demo_walks_its_applications_at_once_and_prints_each_walk_whole(demo_settings):
    """The three live histories run side by side (each its own runs in order, on its own
    ports), and what they print stays grouped per application, in the applications' order;
    every version the demo shows as running answers on its port."""
    base = free_block(11)
    out = StringIO()
    call_command("demo", base_port=base, stdout=out)

    live = Run.objects.exclude(note="Demo history (backdated)")
    spans = {
        app: (
            min(r.started_at for r in live.filter(environment__application__slug=app)),
            max(r.finished_at for r in live.filter(environment__application__slug=app)),
        )
        for app in ("sample", "web", "tool")
    }
    assert spans["web"][0] < spans["sample"][1] and spans["tool"][0] < spans["sample"][1]
    for app in ("sample", "web", "tool"):
        runs = list(live.filter(environment__application__slug=app).order_by("pk"))
        assert all(r.status == "succeeded" for r in runs)
        assert all(a.finished_at <= b.started_at for a, b in zip(runs, runs[1:], strict=False))
    text = out.getvalue()
    starts = [text.index(f"Deploying {name} through the flow:") for name in APP_NAMES]
    assert starts == sorted(starts)
    sample_walk = text[starts[0] : starts[1]]
    assert sample_walk.count("\n") == 1 + 7  # its heading and its seven runs, nothing else
    assert "Sample service in Local Development: 1.2.1" in sample_walk
    for target in Target.objects.select_related("current_image"):
        port = target.backend_settings["port"]
        assert get_json(f"http://127.0.0.1:{port}/")["version"] == target.current_image.tag


APP_NAMES = ("Sample service", "Web front end", "Internal tool")
