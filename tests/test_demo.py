"""`manage.py demo`: the walkthrough's starting point, with real processes."""

import random
import socket
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from opsweb import services
from opsweb.models import AuditEntry, ImageVersion, Run, Target
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


def test_demo_starts_four_environments_on_different_versions_and_is_idempotent(demo_settings):
    base = free_block()
    out = StringIO()
    call_command("demo", base_port=base, stdout=out)

    versions = [get_json(f"http://127.0.0.1:{base + i}/")["version"] for i in range(4)]
    assert versions == ["1.2.1", "1.2.0", "1.1.0", "1.0.0"]
    assert [e.current_image.tag for e in Target.objects.all()] == versions
    assert "alice" in out.getvalue() and "bob" in out.getvalue()
    counts = (ImageVersion.objects.count(), Run.objects.count())
    # The backdated history reads like a real one: its promotions had their approvals, it has
    # an audit trail, and it comes before today's runs.
    history = Run.objects.filter(note="Demo history (backdated)")
    promoted = history.filter(kind="promotion", status="succeeded")
    assert promoted.exists()
    assert all(services.quorum_progress(run).met for run in promoted)
    assert AuditEntry.objects.filter(run__in=history, action="approve_run").exists()
    assert AuditEntry.objects.filter(run__in=history, action="run_succeeded").exists()
    today = Run.objects.exclude(note="Demo history (backdated)").order_by("pk").first()
    assert not history.filter(pk__gt=today.pk).exists()

    call_command("demo", base_port=base, stdout=StringIO())
    assert (ImageVersion.objects.count(), Run.objects.count()) == counts

    call_command("demo", base_port=base, stop=True, stdout=StringIO())
    with pytest.raises(OSError):
        get_json(f"http://127.0.0.1:{base + 3}/")
    call_command("demo", base_port=base, stdout=StringIO())  # restarts what was deployed
    assert get_json(f"http://127.0.0.1:{base + 3}/")["version"] == "1.0.0"
    assert Run.objects.count() == counts[1]
