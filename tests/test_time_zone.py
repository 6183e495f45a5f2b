"""Per-user time zone (issue #24): the console shows times in the reader's own zone, named;
a zone zoneinfo does not know is refused with a sentence and changes nothing."""

import re
from datetime import UTC, datetime

import pytest
from django.urls import reverse
from django.utils.html import strip_tags

from opsweb.models import AuditEntry, UserProfile
from tests.conftest import make_image, succeed_in
from tests.test_admin import login

pytestmark = pytest.mark.django_db
NOON_UTC = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


def set_zone(client, zone: str):
    page = client.get(reverse("time_zone"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return client.post(
        reverse("time_zone"), {"csrfmiddlewaretoken": token, "time_zone": zone}, follow=True
    )


def run_page_text(client, run) -> str:
    page = client.get(reverse("admin:opsweb_run_change", args=[run.pk]))
    assert page.status_code == 200
    return strip_tags(page.text)


def test_time_zone_run_page_shows_berlin_time_with_the_zone_named(flow, bob):
    run = succeed_in(flow["dev"], make_image("1.0.0"), created_at=NOON_UTC)
    client = login(bob)
    assert "2026-01-15 12:00" in run_page_text(client, run)  # UTC by default

    response = set_zone(client, "Europe/Berlin")

    assert "Times are now shown in Europe/Berlin." in response.text
    text = run_page_text(client, run)
    assert "2026-01-15 13:00" in text and "CET" in text
    assert "2026-01-15 12:00" not in text
    assert AuditEntry.objects.filter(action="time_zone", actor=bob).count() == 1


def test_time_zone_invalid_zone_is_refused_and_changes_nothing(flow, bob):
    client = login(bob)
    set_zone(client, "Europe/Berlin")

    for bad in ("Mars/Olympus_Mons", "../../etc/passwd", "localtime", ""):
        response = set_zone(client, bad)
        assert "is not a time zone opsweb knows" in response.text

    assert UserProfile.objects.get(user=bob).time_zone == "Europe/Berlin"
    assert AuditEntry.objects.filter(action="time_zone").count() == 1


def test_time_zone_page_is_linked_from_the_user_tools_and_needs_csrf(flow, bob):
    client = login(bob)
    index = client.get(reverse("admin:index"))
    assert 'id="link-time-zone"' in index.text
    refused = client.post(reverse("time_zone"), {"time_zone": "Asia/Tokyo"})
    assert refused.status_code == 403
    assert not UserProfile.objects.filter(user=bob).exists()


def test_time_zone_a_zone_unknown_here_reads_utc_instead_of_failing(flow, bob):
    UserProfile.objects.create(user=bob, time_zone="Nowhere/Gone")
    run = succeed_in(flow["dev"], make_image("1.0.0"), created_at=NOON_UTC)
    text = run_page_text(login(bob), run)
    assert "2026-01-15 12:00:00 UTC" in text
