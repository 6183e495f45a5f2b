"""Smaller defects from the approver's walk (issue #24), each kept as a kind: durations read
as people read them (never a raw float, never "0s" for 0.2 s), times with seconds, and the
run event list newest first."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils.html import strip_tags

from opsweb import notifications
from opsweb.metrics import human_duration
from opsweb.models import RunEvent, RunKind
from tests.conftest import make_image, succeed_in
from tests.test_admin import login

pytestmark = pytest.mark.django_db
START = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "seconds, text",
    [(0.010034381999503239, "under 0.1s"), (0.2, "0.2s"), (4.25, "4.2s"), (75, "1m 15s")],
)
def test_human_duration_keeps_tenths_under_a_minute(seconds, text):
    assert human_duration(seconds) == text


def test_rollback_restored_in_a_fifth_of_a_second_does_not_say_0s(flow):
    run = succeed_in(
        flow["dev"],
        make_image("1.0.0"),
        kind=RunKind.ROLLBACK,
        created_at=START,
        finished_at=START + timedelta(seconds=0.2),
    )
    text = notifications.rollback_finished_text(run)
    assert "Restored in 0.2s" in text and "Restored in 0s" not in text


def test_run_event_list_is_newest_first_with_readable_durations(flow, bob):
    bob.is_superuser = True
    bob.save()
    run = succeed_in(flow["dev"], make_image("1.0.0"))
    RunEvent.objects.create(run=run, message="older step", created_at=START)
    RunEvent.objects.create(
        run=run,
        message="newer step",
        created_at=START + timedelta(minutes=1),
        duration_seconds=0.010034381999503239,
    )
    page = login(bob).get(reverse("admin:opsweb_runevent_changelist"))
    text = strip_tags(page.text)
    assert text.index("newer step") < text.index("older step")
    assert "0.010034381999503239" not in text and "under 0.1s" in text


def test_run_page_shows_seconds_of_a_fifth_of_a_second_run(flow, bob):
    run = succeed_in(
        flow["dev"],
        make_image("1.0.0"),
        created_at=START,
        started_at=START + timedelta(seconds=1),
        switched_at=START + timedelta(seconds=1.1),
        finished_at=START + timedelta(seconds=1.2),
    )
    RunEvent.objects.create(run=run, message="switched", duration_seconds=0.2)
    page = login(bob).get(reverse("admin:opsweb_run_change", args=[run.pk]))
    text = strip_tags(page.text)
    assert "2026-01-15 12:00:01 UTC" in text
    assert "0.2s" in text


def test_target_page_says_auto_deploy_paused_in_words_not_a_green_tick(flow, bob):
    from opsweb.models import Target

    Target.objects.filter(pk=flow["dev"].pk).update(
        auto_deploy_paused=True, paused_reason="1.0.0 failed"
    )
    page = login(bob).get(reverse("admin:opsweb_target_change", args=[flow["dev"].pk]))
    assert page.status_code == 200
    row = page.text.split('class="form-row field-auto_deploy')[1].split('class="form-row')[0]
    assert "icon-yes.svg" not in row
    assert '<span class="opsweb-attention">Paused</span>' in row


def test_promote_picker_does_not_offer_what_the_next_environment_runs(flow, alice):
    old, current = make_image("1.0.0"), make_image("2.0.0")
    for image in (old, current):
        succeed_in(flow["dev"], image)
    succeed_in(flow["staging"], current)
    url = reverse("admin:opsweb_target_promote", args=[flow["dev"].pk])
    page = login(alice).get(url).text
    picker = page[page.index('id="choose"') : page.index("</form>", page.index('id="choose"'))]
    assert f'value="{current.pk}"' not in picker
    refusal = strip_tags(page[page.index('id="refusal"') :][:600])
    assert "AWS Staging already runs" in refusal and "choose another version" in refusal


def test_unfreeze_button_is_disabled_with_why_where_a_window_freezes(flow, dave):
    from django.utils import timezone

    from opsweb.models import ChangeWindow

    production = flow["production"]
    ChangeWindow.objects.create(kind="deny", starts_at=timezone.now(), reason="year end")
    page = login(dave).get(reverse("admin:opsweb_target_change", args=[production.pk])).text
    assert "Unfreeze</a>" not in page
    assert re.search(r'aria-disabled="true" title="[^"]*Edit its change windows to lift it', page)


def test_unfreeze_button_is_enabled_for_a_freeze_set_by_hand(flow, dave):
    from opsweb import services

    production = flow["production"]
    services.set_frozen(user=dave, environment=production, frozen=True, reason="incident")
    page = login(dave).get(reverse("admin:opsweb_target_change", args=[production.pk])).text
    assert "Unfreeze</a>" in page


def test_live_run_json_fills_the_fields_the_end_set(flow, bob):
    old = make_image("1.0.0")
    succeed_in(flow["dev"], old)
    run = succeed_in(
        flow["dev"],
        make_image("2.0.0"),
        status="failed",
        replaces=old,
        error="health check failed: 502 from /healthz",
    )
    answer = login(bob).get(reverse("admin:opsweb_run_live", args=[run.pk])).json()
    assert answer["active"] is False
    fields = answer["fields"]
    assert fields["error"] == "health check failed: 502 from /healthz"
    assert "1.0.0" in fields["replaces"]
    assert fields["finished_at"] != "-" and fields["status"] == "Failed"


def test_target_page_now_says_health_and_links_the_service(flow, bob):
    from opsweb.models import Target

    run = succeed_in(flow["dev"], make_image("1.0.0"))
    Target.objects.filter(pk=flow["dev"].pk).update(
        health_check_url="http://127.0.0.1:8101/healthz"
    )
    page = login(bob).get(reverse("admin:opsweb_target_change", args=[flow["dev"].pk])).text
    now = strip_tags(page.split('class="form-row field-health')[1].split("</fieldset>")[0])
    assert f"healthy: its health check passed (run #{run.pk} succeeded" in now
    assert 'href="http://127.0.0.1:8101/"' in page
