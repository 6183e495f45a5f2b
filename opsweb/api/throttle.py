"""Repeated bad credentials from one address are throttled: after ``FAILURE_LIMIT`` failed
sign-ins (unknown, expired or revoked token, refused CI token, bad webhook signature) within
``FAILURE_WINDOW_SECONDS``, the address is answered 429 until the window ends, even with good
credentials. Counted in the database, so every web worker process sees the same count."""

from __future__ import annotations

import math
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsweb.api.problems import ApiProblem
from opsweb.login_throttle import client_ip
from opsweb.models import CredentialFailure


def _limits() -> tuple[int, timedelta]:
    config = settings.OPSWEB_API
    return config["FAILURE_LIMIT"], timedelta(seconds=config["FAILURE_WINDOW_SECONDS"])


def check_throttle(request) -> None:
    """Raise 429 when the client's address is over its limit of failed sign-ins."""
    limit, window = _limits()
    row = CredentialFailure.objects.filter(address=client_ip(request)[:64]).first()
    if row is None or row.count < limit:
        return
    ends = row.window_started_at + window
    wait = (ends - timezone.now()).total_seconds()
    if wait <= 0:
        return
    raise ApiProblem(
        429,
        f"Too many failed sign-ins from your address: try again in {math.ceil(wait)} seconds.",
        headers={"Retry-After": str(math.ceil(wait))},
    )


def record_failure(request) -> None:
    """Count one failed sign-in for the client's address (outside the request's transaction:
    the failure is counted even though the request writes nothing else)."""
    limit, window = _limits()
    address = client_ip(request)[:64]
    now = timezone.now()
    try:
        with transaction.atomic():
            row, _ = CredentialFailure.objects.select_for_update().get_or_create(address=address)
            if row.window_started_at <= now - window:
                row.window_started_at, row.count = now, 0
            row.count += 1
            row.save(update_fields=["window_started_at", "count"])
    except IntegrityError:  # two first failures at once: the other one counted
        pass
    CredentialFailure.objects.filter(window_started_at__lt=now - 2 * window).delete()
