"""Every input carries the limits of what stores and uses it (opsweb.limits): too long or too
large is a form error, a ReleaseError or exit 2 with a sentence, never a 500, and nothing is
written. Times with sub-seconds come back unchanged through the admin's forms."""

import inspect
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest
from django import forms
from django.contrib import admin
from django.db import models
from django.test import Client, RequestFactory
from django.urls import reverse

import opsweb.admin  # noqa: F401  (registers every admin and declares every form)
from opsweb import services
from opsweb.limits import TEXT_MAX
from opsweb.models import Approval, ChangeWindow, ImageVersion, Run, RunStatus
from opsweb.services import ReleaseError
from tests.conftest import make_user
from tests.test_admin import login, pending, post_form  # noqa: F401  (pending: a fixture)
from tests.test_commands import register_args, run_command

pytestmark = pytest.mark.django_db

NUMBERS = (forms.IntegerField, forms.FloatField, forms.DecimalField)


# -- every field of every form ----------------------------------------------------------------


def opsweb_form_classes() -> list[type[forms.BaseForm]]:
    """Every form class declared in opsweb's modules (confirmations, login, admin forms)."""
    found, todo = set(), [forms.Form, forms.ModelForm]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("opsweb."):
                found.add(sub)
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__))


def admin_model_forms(rf_user) -> list[tuple[str, type[forms.BaseForm]]]:
    """The ModelForm of every opsweb model's admin page and of each of its inlines."""
    request = RequestFactory().get("/")
    request.user = rf_user
    built = []
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label != "opsweb":
            continue
        built.append((model.__name__, model_admin.get_form(request, None)))
        for inline in model_admin.get_inline_instances(request):
            built.append(
                (f"{model.__name__} › {inline.model.__name__}", inline.get_formset(request).form)
            )
    return built


def column_of(model, name):
    try:
        return model._meta.get_field(name) if model is not None else None
    except Exception:  # a form-only field (ChannelForm.events is a column; "seen" is not)
        return None


def field_problems(where: str, form_class, model=None) -> list[str]:
    """What is unbounded in ``form_class``: text without a checked max_length (or one over its
    column's), numbers without min_value and max_value (or over PostgreSQL's integer)."""
    problems = []
    for name, field in form_class.base_fields.items():
        column = column_of(model, name)
        column_length = getattr(column, "max_length", None)
        if isinstance(field, forms.CharField) and not isinstance(field, forms.ChoiceField):
            checked = [getattr(v, "limit_value", None) for v in field.validators]
            if field.max_length is None or field.max_length not in checked:
                problems.append(f"{where}.{name} has no max_length it checks")
            elif column_length and field.max_length > column_length:
                problems.append(f"{where}.{name} takes {field.max_length}, its column less")
        if isinstance(field, NUMBERS):
            if field.min_value is None or field.max_value is None:
                problems.append(f"{where}.{name} has no min_value or max_value")
            elif isinstance(column, models.IntegerField) and field.max_value > 2147483647:
                problems.append(f"{where}.{name} takes more than PostgreSQL's integer")
    return problems


def test_every_form_field_carries_the_limits_of_its_column(flow):
    root = make_user("root", is_superuser=True)
    classes = opsweb_form_classes()
    assert {"CommentForm", "NoteForm", "OverrideForm", "FreezeForm", "LoginForm"} <= {
        c.__name__ for c in classes
    }
    problems = []
    for form_class in classes:
        if not inspect.isabstract(form_class):
            model = getattr(getattr(form_class, "_meta", None), "model", None)
            problems += field_problems(form_class.__qualname__, form_class, model)
    model_forms = admin_model_forms(root)
    assert len(model_forms) >= 8
    for where, form_class in model_forms:
        problems += field_problems(where, form_class, form_class._meta.model)
    assert problems == []


# -- the examples of the attack ---------------------------------------------------------------


def test_a_freeze_reason_longer_than_its_column_is_a_form_error(flow):
    ops = make_user("ops", "production approvers")
    staging = flow["staging"]
    url = reverse("admin:opsweb_target_freeze", args=[staging.pk])
    response = post_form(login(ops), url, {"comment": "x" * 301})
    assert response.status_code == 200
    assert "Ensure this value has at most 300 characters (it has 301)." in response.text
    assert not ChangeWindow.objects.exists()
    with pytest.raises(ReleaseError, match="The reason has 301 characters; at most 300"):
        services.set_frozen(user=ops, environment=staging, frozen=True, reason="x" * 301)
    assert not ChangeWindow.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_login_name_longer_than_the_columns_is_refused_with_a_sentence(flow):
    from axes.models import AccessAttempt

    response = Client().post(
        reverse("admin:login"), {"username": "x" * 300, "password": "whatever"}
    )
    assert response.status_code == 200
    assert "Ensure this value has at most 150 characters (it has 300)." in response.text
    assert not AccessAttempt.objects.exists()
    # A wrong password for a name that fits still counts as a failure, as before.
    response = Client().post(reverse("admin:login"), {"username": "x" * 150, "password": "no"})
    assert response.status_code == 200 and "Please enter the correct username" in response.text
    assert AccessAttempt.objects.count() == 1


def change_window_data(**fields) -> dict:
    return {
        "kind": "deny",
        "rrule": "",
        "cron": "",
        "duration_seconds": "",
        "time_zone": "UTC",
        "reason": "",
        **fields,
    }


@pytest.mark.parametrize(
    "fields, sentence",
    [
        (
            {"cron": "* * * * *", "duration_seconds": "99999999999999"},
            "Ensure this value is less than or equal to 31622400.",
        ),
        ({"cron": "* * * * *", "duration_seconds": "0"}, "greater than or equal to 1."),
        ({"cron": "0 0 30 2 *", "duration_seconds": "3600"}, "never fires"),
        ({"rrule": "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "duration_seconds": "60"}, "never"),
        ({"reason": "x" * 301, "starts_at_0": "2026-12-24", "starts_at_1": "00:00"}, "300"),
    ],
)
def test_a_change_window_beyond_its_limits_is_a_form_error(flow, fields, sentence):
    root = make_user("root", is_superuser=True)
    client = login(root)
    url = reverse("admin:opsweb_changewindow_add")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get(url).text)
    response = client.post(url, {**change_window_data(**fields), "csrfmiddlewaretoken": token[1]})
    assert response.status_code == 200 and sentence in response.text
    assert not ChangeWindow.objects.exists()


def test_a_comment_of_twenty_thousand_characters_is_refused_everywhere(pending, bob):  # noqa: F811
    url = reverse("admin:opsweb_run_approve", args=[pending.pk])
    response = post_form(login(bob), url, {"comment": "x" * 20_000})
    assert response.status_code == 200 and f"at most {TEXT_MAX} characters" in response.text
    with pytest.raises(ReleaseError, match="The comment has 20,000 characters; at most 2,000"):
        services.approve_run(user=bob, run=pending, comment="x" * 20_000)
    code, _, err = run_command("approve", str(pending.pk), "--as", "bob", "--comment", "x" * 20_000)
    assert code != 0 and "at most 2,000 are kept" in err
    assert not Approval.objects.exists()
    assert Run.objects.get(pk=pending.pk).status == RunStatus.PENDING


# -- sub-seconds ------------------------------------------------------------------------------


class FormValues(HTMLParser):
    """The values a browser would post back from a page's change form."""

    def __init__(self):
        super().__init__()
        self.values, self._select, self._textarea = {}, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("name") and a.get("type") not in ("submit", "checkbox"):
            self.values[a["name"]] = a.get("value") or ""
        elif tag == "input" and a.get("type") == "checkbox" and "checked" in a:
            self.values[a["name"]] = a.get("value") or "on"
        elif tag == "select":
            self._select = a.get("name")
        elif tag == "option" and self._select and "selected" in a:
            self.values[self._select] = a.get("value") or ""
        elif tag == "textarea":
            self._textarea = a.get("name")
            self.values[self._textarea] = ""

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea:
            self.values[self._textarea] += data.removeprefix("\n")


def test_a_freeze_lifted_within_its_second_round_trips_through_the_admin(flow):
    root = make_user("root", is_superuser=True)
    production = flow["production"]
    window = ChangeWindow.objects.create(
        environment=production.environment,
        starts_at=datetime(2026, 12, 1, 9, 30, 5, 120000, tzinfo=UTC),
        ends_at=datetime(2026, 12, 1, 9, 30, 5, 870000, tzinfo=UTC),
        reason="frozen by root",
    )
    client = login(root)
    for url in (
        reverse("admin:opsweb_changewindow_change", args=[window.pk]),
        reverse("admin:opsweb_target_change", args=[production.pk]),
    ):
        parser = FormValues()
        parser.feed(client.get(url).text)
        response = client.post(url, parser.values)
        assert response.status_code == 302, re.findall(r"errorlist[^>]*>(.*?)</ul>", response.text)
        window.refresh_from_db()
        assert window.starts_at == datetime(2026, 12, 1, 9, 30, 5, 120000, tzinfo=UTC)
        assert window.ends_at == datetime(2026, 12, 1, 9, 30, 5, 870000, tzinfo=UTC)


@pytest.mark.parametrize(
    "args, words",
    [
        (["worker", "--stop-seconds", "nan"], "'nan' is not from 0 to 3600 seconds"),
        (["worker", "--reconcile-seconds", "1e300"], "is not from 0 to 86400 seconds"),
        (
            register_args("9.9.9", "--commit-message", "x" * 20_001),
            "The commit message has 20,001 characters; at most 20,000 are kept.",
        ),
        (register_args("9.9.9", "--branch", "b" * 256), "at most 255 characters"),
    ],
)
def test_command_arguments_beyond_their_limits_are_refused_with_a_sentence(
    flow, ci_user, args, words
):
    code, _, err = run_command(*args)
    assert code != 0 and words in err
    assert not ImageVersion.objects.exists()
