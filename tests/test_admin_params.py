"""Every admin list answers malformed filters, ordering and paging with 400 or the admin's
"invalid lookup" redirect (?e=1), never a server error."""

import pytest
from django.contrib import admin
from django.test import Client

from opsweb.models import Run
from tests.conftest import make_image, make_user, succeed_in

pytestmark = pytest.mark.django_db

MALFORMED = [
    "created_at__year=99999999999",
    "created_at__year=2026&created_at__month=99999999999",
    "created_at__year=2026&created_at__month=1&created_at__day=99999999999",
    "created_at__gte=99999999999-01-01",
    "created_at__range=a,b",
    "registered_at__year=-1",
    "o=abc",
    "o=99999999999999999999",
    "o=1.-2.x",
    "p=-1",
    "p=abc",
    "p=99999999999999999999",
    "all=&p=99999999999999999999",
    "id__exact=abc",
    "id=99999999999999999999999",
    "id__in=1,a",
    "pk__gt=1e999",
    "status__exact=%00",
    "environment__id__exact=abc",
    "environment__id__exact=99999999999999999999999",
    "q=%00",
    "q=" + "x" * 5000,
    "_to_field=password",
    "_popup=1&_to_field=id",
    "nonexistent_field=1",
    "is_bad__exact=maybe",
    "created_at__isnull=perhaps",
    "run__id__exact=abc",
]


def changelists():
    return sorted(
        f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        for model in admin.site._registry
        if model._meta.app_label == "opsweb"
    )


@pytest.mark.parametrize("url", changelists())
def test_every_list_answers_malformed_parameters_without_a_server_error(flow, url):
    image = make_image()
    succeed_in(flow["dev"], image)
    client = Client(raise_request_exception=False)
    client.force_login(make_user("root", is_superuser=True))
    failures = []
    for query in MALFORMED:
        response = client.get(f"{url}?{query}")
        if response.status_code >= 500:
            failures.append(f"{query} -> {response.status_code}")
        elif response.status_code == 302:
            assert "e=1" in response["Location"] or "?" in response["Location"], query
    assert not failures, failures
    assert Run.objects.count() == 1  # nothing written by any of it


# -- no list filters by what it does not show ----------------------------------------------


def opsweb_admins():
    return sorted(
        (
            (model, model_admin)
            for model, model_admin in admin.site._registry.items()
            if model._meta.app_label == "opsweb"
        ),
        key=lambda pair: pair[0]._meta.model_name,
    )


def _list_url(model) -> str:
    return f"/admin/opsweb/{model._meta.model_name}/"


@pytest.mark.parametrize(
    ("model", "model_admin"), opsweb_admins(), ids=lambda x: getattr(x, "__name__", "")
)
def test_every_list_refuses_lookups_on_fields_it_does_not_filter_by(flow, model, model_admin):
    from django.test import RequestFactory

    from opsweb.admin.lists import filter_parameters

    root = make_user("root", is_superuser=True)
    request = RequestFactory().get("/")
    request.user = root
    allowed = filter_parameters(model_admin, request)
    client = Client(raise_request_exception=False)
    client.force_login(root)
    refused = []
    for field in model._meta.concrete_fields:
        for lookup in (field.name, f"{field.name}__exact", f"{field.name}__startswith"):
            if lookup in allowed:
                continue
            response = client.get(f"{_list_url(model)}?{lookup}=1")
            if response.status_code != 400:
                refused.append(f"{lookup} -> {response.status_code}")
            elif "cannot be filtered that way" not in response.content.decode():
                refused.append(f"{lookup}: no sentence")
    assert not refused, refused


@pytest.mark.parametrize(
    ("model", "model_admin"), opsweb_admins(), ids=lambda x: getattr(x, "__name__", "")
)
def test_every_link_a_list_draws_is_accepted(flow, model, model_admin):
    """The filters' own links (and the date range's presets), as the list draws them."""
    import html
    import re

    image = make_image()
    succeed_in(flow["dev"], image)
    client = Client(raise_request_exception=False)
    client.force_login(make_user("root", is_superuser=True))
    page = client.get(_list_url(model)).content.decode()
    links = {html.unescape(link) for link in re.findall(r'href="(\?[^"#]*)"', page)}
    failures = []
    for link in sorted(links):
        response = client.get(f"{_list_url(model)}{link}")
        if response.status_code != 200:
            failures.append(f"{link} -> {response.status_code}")
    assert not failures, failures
    assert links or not model_admin.list_filter


def test_a_secret_cannot_be_guessed_through_the_list_query_string(flow):
    from django.contrib.auth.models import Permission

    from opsweb.models import NotificationChannel

    secret = "5ecret0123456789abcdef"
    token_url = "https://hooks.example.com/services/T000/B000/tokentokentoken"
    NotificationChannel.objects.create(
        name="signed hook", kind="webhook", target="https://example.com/h", secret=secret
    )
    NotificationChannel.objects.create(name="chat", kind="slack", target=token_url)
    viewer = make_user("viewer")
    viewer.user_permissions.add(Permission.objects.get(codename="view_notificationchannel"))
    client = Client(raise_request_exception=False)
    client.force_login(viewer)
    url = "/admin/opsweb/notificationchannel/"
    answers = set()
    for guess in ["5", "6", "5e", "5f", "https://hooks.example.com/services/T000", "x"]:
        for lookup in ("secret__startswith", "target__startswith", "secret", "target__contains"):
            response = client.get(url, {lookup: guess})
            body = response.content.decode()
            assert response.status_code == 400, (lookup, guess)
            assert "signed hook" not in body and "chat" not in body
            answers.add(body)
    assert len(answers) == 1  # the same refusal whatever was guessed: nothing to learn
    assert client.get(url, {"kind__exact": "webhook"}).status_code == 200
