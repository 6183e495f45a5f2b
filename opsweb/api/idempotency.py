"""``Idempotency-Key`` on every POST: a retried request (same token, same key) does nothing
twice. The first successful (2xx) response is stored with the key, in the transaction of the
change it reports, and replayed to every retry, marked ``Idempotent-Replayed: true``. The same
key with a different request is refused (422). A refusal (4xx) is not stored: a retry is asked
again, since the rule that refused may allow it by then."""

from __future__ import annotations

import hashlib

from django.db import IntegrityError, transaction
from ninja import Status

from opsweb.api.problems import ApiProblem
from opsweb.api.schemas import text_problem
from opsweb.models import IdempotentRequest

MAX_KEY_LENGTH = 200


def fingerprint(request) -> str:
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.path.encode(), request.body):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()


def _replay(request, stored: IdempotentRequest, seen: str):
    if stored.fingerprint != seen:
        raise ApiProblem(
            422,
            "This Idempotency-Key was used for a different request; use a new key for each "
            "distinct request.",
        )
    request.idempotent_replay = True
    return Status(stored.status, stored.body)


def idempotent(request, act):
    """Run ``act`` (returns status and body) once per Idempotency-Key of the token."""
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return Status(*act())
    if len(key) > MAX_KEY_LENGTH or text_problem("Idempotency-Key", key):
        raise ApiProblem(422, f"The Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.")
    seen = fingerprint(request)
    stored = IdempotentRequest.objects.filter(token=request.token, key=key).first()
    if stored:
        return _replay(request, stored, seen)
    try:
        with transaction.atomic():
            status, body = act()
            if 200 <= status < 300:
                IdempotentRequest.objects.create(
                    token=request.token, key=key, fingerprint=seen, status=status, body=body
                )
    except IntegrityError:
        # The same key at the same moment: the other request's change is the one kept.
        stored = IdempotentRequest.objects.filter(token=request.token, key=key).first()
        if stored is None:
            raise
        return _replay(request, stored, seen)
    return Status(status, body)
