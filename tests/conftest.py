"""Personas and builders shared by the suite.

`make test` runs it on SQLite; with DATABASE_URL=postgres://… the same tests run on PostgreSQL
and the tests marked `postgres` (row locks, races) run too.
"""

import hashlib
import itertools

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from opsweb.models import Environment, ImageVersion, Run, RunStatus

_counter = itertools.count(1)


def pytest_collection_modifyitems(config, items):
    # Decided here rather than per test: these only mean something with PostgreSQL row locks.
    if connection.vendor == "postgresql" or not any("postgres" in i.keywords for i in items):
        return
    skip = pytest.mark.skip(
        reason="needs PostgreSQL (row locks and races); run with DATABASE_URL=postgres://…"
    )
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def fake_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def fake_sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 (a test commit id, not security)


def make_image(tag: str | None = None, **fields) -> ImageVersion:
    tag = tag or f"1.0.{next(_counter)}"
    fields.setdefault("repository", "example/app")
    fields.setdefault("digest", fake_digest(f"{fields['repository']}:{tag}"))
    fields.setdefault("git_sha", fake_sha(tag))
    fields.setdefault("commit_message", f"Release {tag}")
    return ImageVersion.objects.create(tag=tag, **fields)


def make_user(username: str, *groups: str, **fields) -> User:
    user = User.objects.create_user(username, password="pw-" + username, is_staff=True, **fields)
    for name in groups:
        user.groups.add(Group.objects.get(name=name))
    return user


def succeed_in(environment: Environment, image: ImageVersion, **fields) -> Run:
    """Record that ``image`` was deployed successfully to ``environment`` (history setup)."""
    now = timezone.now()
    run = Run.objects.create(
        kind="deploy",
        environment=environment,
        image=image,
        status=RunStatus.SUCCEEDED,
        created_at=now,
        queued_at=now,
        started_at=now,
        finished_at=now,
        **fields,
    )
    Environment.objects.filter(pk=environment.pk).update(current_image=image, current_since=now)
    environment.refresh_from_db()
    return run


@pytest.fixture
def flow(db):
    """The seed's four environments, groups and schedules, as `manage.py bootstrap` makes them."""
    call_command("bootstrap", verbosity=0)
    return {env.slug: env for env in Environment.objects.all()}


@pytest.fixture
def alice(flow):
    return make_user("alice", "deployers")


@pytest.fixture
def bob(flow):
    return make_user("bob", "staging approvers", "production approvers")


@pytest.fixture
def carol(flow):
    return make_user("carol", "staging approvers", "production approvers")


@pytest.fixture
def dave(flow):
    return make_user("dave", "production approvers")


@pytest.fixture
def ci_user(flow):
    return make_user("ci", "ci")


@pytest.fixture
def outsider(flow):
    return make_user("mallory")
