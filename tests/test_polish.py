"""What approvers read: one date format with the zone, history that leads somewhere, no
dead links, relative times that say "just now"."""

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from opsweb import services
from opsweb.templatetags.opsweb_format import ago
from tests.conftest import make_image, make_user, succeed_in
from tests.test_admin import login

pytestmark = pytest.mark.django_db


def test_lists_and_pages_show_one_date_format_with_the_zone(flow, alice, bob):
    succeed_in(flow["dev"], make_image("1.0.0"))
    root = login(make_user("root", is_superuser=True))
    for url in (
        reverse("admin:opsweb_run_changelist"),
        reverse("admin:opsweb_target_changelist"),
        reverse("admin:opsweb_imageversion_changelist"),
        reverse("admin:opsweb_target_change", args=[flow["dev"].pk]),
    ):
        page = root.get(url).text
        assert " UTC" in page, url
        assert " a.m." not in page and " p.m." not in page and "Nov." not in page, url


def test_history_shows_the_objects_audit_entries(flow, alice, bob):
    image = make_image("1.0.0")
    succeed_in(flow["dev"], image)
    services.mark_bad(user=bob, image=image, reason="leaks memory")
    root = login(make_user("root", is_superuser=True))
    page = root.get(reverse("admin:opsweb_imageversion_history", args=[image.pk])).text
    assert "doesn’t have a change history" not in page
    assert "Marked example/app:1.0.0 bad: leaks memory" in page and "bob" in page
    env_history = root.get(reverse("admin:opsweb_target_history", args=[flow["dev"].pk]))
    assert env_history.status_code == 200


def test_no_view_site_link_and_a_favicon(flow):
    page = login(make_user("root", is_superuser=True)).get(reverse("admin:index")).text
    assert "View site" not in page and 'rel="icon"' in page
    response = Client().get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")


def test_relative_times_say_just_now():
    now = timezone.now()
    assert ago(now - timedelta(seconds=20)) == "just now"
    assert ago(now - timedelta(minutes=5, seconds=3)) == "5\xa0minutes ago"


def test_rollback_reason_is_the_persons_choice(flow, bob):
    prod = flow["production"]
    succeed_in(prod, make_image("1.0.0"))
    succeed_in(prod, make_image("2.0.0"))
    client = login(bob)
    url = reverse("admin:opsweb_target_rollback", args=[prod.pk])
    page = client.get(url).text
    assert '<option value="" selected>— choose the reason —</option>' in page
    import re

    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
    response = client.post(url, fields)
    assert "This field is required" in response.text
