"""Events (opsweb/events.py): each outcome a channel can subscribe to is recorded by the service
that decided it, in its transaction, and nothing hangs off a model's save or an audit action's
name. Deliveries are recorded, not sent: sending is tests/test_notifications.py's part."""

from datetime import timedelta

import pytest
from django.apps import apps
from django.db.models import signals
from django.utils import timezone
from django_q.models import OrmQ

from opsweb import services
from opsweb.models import (
    Application,
    AuditEntry,
    Environment,
    NotificationChannel,
    NotificationDelivery,
    NotificationEvent,
    Run,
    RunStatus,
    Target,
)
from tests.conftest import fake_digest, make_image, make_user, succeed_in

HOOK = "https://hooks.example.com/services/T000/B000/test"


def channel(*, environment=None, events=None) -> NotificationChannel:
    item = NotificationChannel(
        name="ops",
        kind="slack",
        target=HOOK,
        environment=environment and environment.environment,
        events=list(NotificationEvent.values) if events is None else events,
    )
    item.full_clean()
    item.save()
    return item


def recorded() -> list[str]:
    return list(NotificationDelivery.objects.order_by("id").values_list("event", flat=True))


def running(user, environment, tag: str) -> Run:
    run = services.request_deploy(user=user, environment=environment, image=make_image(tag))
    assert services.claim_next_run(environment_id=environment.pk).pk == run.pk
    return run


def test_no_model_signal_receivers_for_opsweb_models(flow):
    """Consequences are called by name from the service that decided; a receiver on a save
    would run for every save, and not for an ``update()``."""
    connected = {
        f"{signal_name} {model.__name__}"
        for model in apps.get_app_config("opsweb").get_models()
        for signal_name in ("pre_save", "post_save", "pre_delete", "post_delete")
        if any(getattr(signals, signal_name)._live_receivers(model))
    }
    assert connected == set()


def test_an_audit_entry_alone_notifies_nobody(flow, alice):
    """Renaming or writing an audit action changes no notification: the audit trail records."""
    channel()
    run = running(alice, flow["dev"], "1.0.0")
    AuditEntry.objects.create(action="run_failed", message="by hand", run=run)
    AuditEntry.objects.create(action="mark_bad", message="by hand", image=run.image)
    assert recorded() == []


def test_a_stopped_run_notifies_run_stopped_with_who_and_why(flow, alice):
    channel(environment=flow["dev"], events=["run_stopped", "run_failed"])
    run = running(alice, flow["dev"], "1.0.0")
    services.stop_run(user=alice, run=run, reason="wrong config")
    assert recorded() == []  # asked to stop: it still runs until its worker stops it
    services.finish_stopped(run_id=run.pk, running=None)
    (delivery,) = NotificationDelivery.objects.all()
    assert delivery.event == "run_stopped" and delivery.run_id == run.pk
    assert delivery.payload["title"] == "A run was stopped: Sample service"
    assert f"Run #{run.pk} (1.0.0) was stopped in AWS Dev" in delivery.payload["text"]
    assert "Stopped by alice (wrong config)" in delivery.payload["text"]
    assert delivery.payload["run"]["status"] == RunStatus.STOPPED


def test_run_stopped_is_selectable_on_a_channel(flow, client):
    client.force_login(make_user("root", is_superuser=True))
    page = client.get("/admin/opsweb/notificationchannel/add/")
    assert page.status_code == 200
    assert 'value="run_stopped"' in page.content.decode() and "A run was stopped" in (
        page.content.decode()
    )
    assert channel(events=["run_stopped"]).events == ["run_stopped"]


def test_a_run_refused_at_start_notifies_run_failed(flow, alice, bob):
    channel(environment=flow["staging"], events=["approval_needed", "run_failed"])
    image = make_image("2.0.0")
    succeed_in(flow["dev"], image)
    run = services.request_promotion(user=alice, target=flow["staging"], image=image)
    services.approve_run(user=bob, run=run)
    bob.is_active = False
    bob.save()
    assert services.claim_next_run(environment_id=flow["staging"].pk) is None
    assert recorded() == ["approval_needed", "run_failed"]
    failed = NotificationDelivery.objects.get(event="run_failed")
    assert "Not started: only 0 of 1 approvals still count" in failed.payload["text"]


def test_mark_bad_notifies_every_channel(flow, bob):
    channel(environment=flow["production"], events=["version_marked_bad"])
    image = make_image("3.0.0")
    services.mark_bad(user=bob, image=image, reason="corrupts invoices")
    (delivery,) = NotificationDelivery.objects.all()
    assert delivery.payload["text"] == "Marked example/app:3.0.0 bad: corrupts invoices"


def test_an_auto_deploy_waiting_for_approval_notifies_the_approvers(flow, ci_user):
    Environment.objects.filter(slug="dev").update(auto_deploy=False)
    Environment.objects.filter(slug="staging").update(auto_deploy=True)
    Application.objects.filter(slug="sample").update(auto_deploy_branch="release")
    channel(events=["approval_needed"])
    registration = services.register_image(
        user=ci_user,
        repository="example/app",
        tag="4.0.0",
        digest=fake_digest("4"),
        branch="release",
    )
    (run,) = registration.runs
    assert run.status == RunStatus.PENDING
    (delivery,) = NotificationDelivery.objects.all()
    assert delivery.run_id == run.pk
    assert (
        f"Run #{run.pk} waits for approval: deploy of 4.0.0 to AWS Staging"
        in (delivery.payload["text"])
    )


def test_a_lost_worker_notifies_only_how_the_run_ended(flow, alice):
    """Losing the worker is not the run's end: the reconciler finds out what runs and ends it;
    only that end is told (it used to say "failed" first, then "succeeded")."""
    channel()
    run = running(alice, flow["dev"], "1.0.0")
    (lost,) = services.take_over_lost_runs(now=timezone.now() + timedelta(hours=1))
    assert lost.pk == run.pk and recorded() == []
    services.finish_lost_run(run_id=lost.pk, lost_step="health check", switched=True, healthy=True)
    assert recorded() == ["run_succeeded"]


@pytest.mark.parametrize(("backend", "scans"), [("ecs", 1), ("local", 0)])
def test_a_registered_version_has_its_scan_queued_once_committed(
    flow, ci_user, django_capture_on_commit_callbacks, backend, scans
):
    Target.objects.exclude(environment__slug="local").update(backend=backend)
    with django_capture_on_commit_callbacks(execute=True):
        image = services.register_image(
            user=ci_user, repository="example/app", tag="5.0.0", digest=fake_digest("5")
        ).image
        assert OrmQ.objects.count() == 0  # not before the version is committed
    queued = [task.name() for task in OrmQ.objects.all()]
    assert queued.count(f"scan-{image.pk}") == scans
    with django_capture_on_commit_callbacks(execute=True):
        again = services.register_image(
            user=ci_user, repository="example/app", tag="5.0.0", digest=fake_digest("5")
        )
    assert not again.created and OrmQ.objects.count() == len(queued)


def test_a_failing_event_never_fails_the_change(flow, alice, monkeypatch):
    channel()
    monkeypatch.setattr(
        "opsweb.notifications.notify", lambda *a, **k: (_ for _ in ()).throw(OSError("disk"))
    )
    run = running(alice, flow["dev"], "1.0.0")
    services.record_switch(run_id=run.pk, backend_ref={})
    assert services.finish_run(run_id=run.pk, succeeded=True).status == RunStatus.SUCCEEDED
    assert Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED and recorded() == []
