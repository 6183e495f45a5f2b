"""What every service shares: changing a run's status, supersession, what the person saw (seals),
the audit trail, run events and handing runs to workers."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsweb.errors import NotAllowed, ReleaseError
from opsweb.limits import TEXT_MAX, text_problem
from opsweb.models import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATUSES,
    AuditEntry,
    ImageVersion,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    UsedSeal,
)
from opsweb.reads.history import actor_name, describe, is_older, who_deployed

log = logging.getLogger(__name__)

# The API token the current request acts through (opsweb.api sets it for the request), so that
# every audit entry of a change made through the API names it.
acting_token: ContextVar = ContextVar("acting_token", default=None)


def transition(run: Run, *, to: str, **fields) -> bool:
    """Move ``run`` from the status it was loaded with to ``to`` with one conditional UPDATE
    (``UPDATE … WHERE id = … AND status = <from>``); True if this call won.

    Raises ValueError for a move the transitions table does not allow (a bug, not a user's
    mistake). Terminal statuses set ``finished_at`` unless given. On success ``run`` holds
    the new values.
    """
    source = run.status
    if to not in ALLOWED_TRANSITIONS.get(source, set()):
        raise ValueError(f"A run cannot go from {source} to {to}.")
    if to in TERMINAL_STATUSES:
        fields.setdefault("finished_at", timezone.now())
    fields.setdefault("step", RunStatus(to).label.lower())
    won = Run.objects.filter(pk=run.pk, status=source).update(status=to, **fields)
    if won:
        for name, value in {"status": to, **fields}.items():
            setattr(run, name, value)
        run._loaded_status = to
        if source == RunStatus.PENDING or to in TERMINAL_STATUSES:
            # Every way a run stops waiting or ends passes here, so no caller can forget it.
            from opsweb import events

            events.run_decided(run)
    return bool(won)


def supersede(run: Run, *, by: Run | None, reason: str) -> bool:
    """End a pending or queued run whose version the environment has moved past."""
    if not transition(run, to=RunStatus.SUPERSEDED, error=reason, step="superseded"):
        return False
    add_event(run, reason, level=RunEvent.Level.WARNING)
    audit(None, "supersede_run", f"Run #{run.pk} superseded: {reason}", run=run)
    return True


def superseded_reason(run: Run) -> str:
    """Why a waiting promotion or deploy should not go ahead: its environment now runs its
    version, or a newer one (rollbacks are exempt: going back is what they are for)."""
    if run.kind == RunKind.ROLLBACK:
        return ""
    environment = run.environment
    current = environment.current_image
    if current is None:
        return ""
    by = who_deployed(environment, current)
    by_text = f" by run #{by.pk}" if by else ""
    if current.pk == run.image_id:
        return f"{environment} already runs {run.image.tag} (deployed{by_text}); nothing to do."
    if is_older(run.image, current, environment):
        return (
            f"{environment} has moved past {run.image.tag}: it now runs {current.tag} "
            f"(deployed{by_text}). Going back on purpose is what rollback is for."
        )
    return ""


# -- what the person saw ---------------------------------------------------------------------

_SEEN_SALT = "opsweb.seen"


@dataclass(frozen=True)
class Seal:
    """What one confirmation page showed, as posted back and verified (``unseal``): the object
    the page was for (``bound_to``, "opsweb.run:42", and ``bound_text``, how the page named
    it), the page (``page``, the confirmation's name), the version it showed as chosen
    (``chosen``, "opsweb.imageversion:7 sha256:…", or ""), when it was shown (``issued_at``,
    UTC), a ``nonce`` consumed by the one service call it allows, and the ``facts`` it showed
    (``services.facts``)."""

    bound_to: str
    bound_text: str
    page: str
    chosen: str
    chosen_text: str
    issued_at: datetime
    nonce: str
    facts: dict[str, str]

    def get(self, label: str, default: str | None = None) -> str | None:
        """One fact as the page showed it."""
        return self.facts.get(label, default)


# What a confirmation page showed, posted back; None from a command line.
Seen = Seal | None


def bound_key(obj) -> str:
    """How a seal names a model instance: "<app>.<model>:<pk>"; "" for None."""
    return f"{obj._meta.label_lower}:{obj.pk}" if obj is not None else ""


def _chosen_key(image: ImageVersion | None) -> str:
    # The digest too: a version is what it deploys, not only its row.
    return f"{bound_key(image)} {image.digest}" if image is not None else ""


def seal(
    facts: Mapping[str, str],
    *,
    bound_to,
    page: str,
    chosen: ImageVersion | None = None,
    at: datetime | None = None,
) -> str:
    """The token a confirmation page posts back: ``facts`` it showed, the object it was for
    (``bound_to``, a model instance), the ``page`` (confirmation name), the version it showed
    as ``chosen``, the moment it was shown (``at``, UTC; default now) and a fresh nonce,
    signed with SECRET_KEY. ``check_seen`` verifies each against the service's call."""
    at = at or timezone.now()
    payload = {
        "o": bound_key(bound_to),
        "ot": str(bound_to),
        "p": page,
        "c": _chosen_key(chosen),
        "ct": describe(chosen) if chosen is not None else "",
        "t": at.timestamp(),
        "n": secrets.token_urlsafe(18),
        "f": dict(facts),
    }
    return signing.dumps(payload, salt=_SEEN_SALT, compress=True)


def unseal(token: str) -> Seal | None:
    """The seal a page posted back, or None when it was altered, forged or has another shape
    (an older opsweb's). Its age is checked by ``check_seen``, which can say so."""
    try:
        data = signing.loads(token, salt=_SEEN_SALT)
        return Seal(
            bound_to=str(data["o"]),
            bound_text=str(data["ot"]),
            page=str(data["p"]),
            chosen=str(data["c"]),
            chosen_text=str(data["ct"]),
            issued_at=datetime.fromtimestamp(float(data["t"]), tz=UTC),
            nonce=str(data["n"]),
            facts={str(k): str(v) for k, v in dict(data["f"]).items()},
        )
    except (signing.BadSignature, KeyError, TypeError, ValueError, OverflowError):
        return None


def seal_max_age() -> timedelta:
    return timedelta(seconds=settings.OPSWEB["CONFIRMATION_MAX_AGE_SECONDS"])


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds % 60 == 0:
        minutes = seconds // 60
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def check_seen(
    seen: Seal | None,
    now,
    *,
    subject,
    action: str,
    bound_to,
    page: str,
    chosen: ImageVersion | None = None,
) -> None:
    """Refuse unless the confirmation ``seen`` was shown for this very call: for ``bound_to``
    (the object the service acts through), as ``page`` (the confirmation's name), with
    ``chosen`` as the version, less than OPSWEB_CONFIRMATION_MAX_AGE_SECONDS ago, never used
    before, and showing the facts that are true ``now`` (the facts, or a function returning
    them: read only when there is something to compare). Consumes the seal's nonce (a
    ``UsedSeal`` row in the caller's transaction, so a refusal after it leaves none).

    ``seen`` None means the caller showed nothing (a command line): nothing to compare.
    Raises ReleaseError naming what differs, e.g. "AWS Staging changed since you looked: what
    it runs is now 1.2.1 (you saw 1.2.0). Review the UAT sign-off again before confirming.";
    TypeError for a ``seen`` that is not a ``Seal`` (a caller's mistake, not a person's).
    """
    if seen is None:
        return
    if not isinstance(seen, Seal):
        raise TypeError("check_seen takes the Seal a confirmation page posted back (unseal).")
    if seen.bound_to != bound_key(bound_to) or seen.page != page:
        raise ReleaseError(
            f"This confirmation page was shown to {seen.page.replace('-', ' ')} "
            f"{seen.bound_text or 'something else'}, not to {page.replace('-', ' ')} "
            f"{bound_to}; nothing was done. "
            f"Open the page of what you mean to confirm."
        )
    if timezone.now() - seen.issued_at > seal_max_age():
        raise ReleaseError(
            f"This page is more than {_age_text(seal_max_age())} old; reload it and check again."
        )
    if seen.chosen != _chosen_key(chosen):
        raise ReleaseError(
            f"{subject}: the page showed {seen.chosen_text or 'no version'}, but "
            f"{describe(chosen) if chosen is not None else 'no version'} was posted; nothing "
            f"was done. Reload the page and check again."
        )
    try:
        with transaction.atomic():
            UsedSeal.objects.create(nonce=seen.nonce, page=page, bound_to=seen.bound_to)
    except IntegrityError:
        raise ReleaseError(
            f"This confirmation of {page} for {seen.bound_text} was already used once; nothing "
            f"was done again. Reload the page to act again."
        ) from None
    if callable(now):
        now = now()
    changed = [
        f"{label} is now {now[label] or 'nothing'} (you saw {seen.get(label) or 'nothing'})"
        for label in now
        if seen.get(label) != now[label]
    ]
    if changed:
        raise ReleaseError(
            f"{subject} changed since you looked: {'; '.join(changed)}. Review the {action} "
            f"again before confirming."
        )


def forget_used_seals(now: datetime) -> int:
    """Delete the used seals that could not be posted again anyway (older than the seals'
    validity, with a minute's margin, at ``now`` UTC). Returns how many."""
    cutoff = now - seal_max_age() - timedelta(minutes=1)
    deleted, _ = UsedSeal.objects.filter(used_at__lt=cutoff).delete()
    return deleted


# -- recording ------------------------------------------------------------------------------


def audit(actor, action: str, message: str, *, environment=None, image=None, run=None) -> None:
    """An audit entry; for a run, its environment and image are recorded with it, and the API
    token the change came through (``acting_token``), named in the message too."""
    token = acting_token.get()
    if token is not None:
        message = f"{message} (through {token})"
    AuditEntry.objects.create(
        token=token,
        actor=actor if actor and actor.is_authenticated else None,
        action=action,
        message=message,
        environment_id=environment.pk if environment else run and run.environment_id,
        image_id=image.pk if image else run and run.image_id,
        run=run,
        application_id=_application_id(environment, image, run),
    )
    log.info("%s: %s", action, message)


def _application_id(environment, image, run) -> int | None:
    """The application an audit entry names: its target's, else its version's."""
    if environment is not None:
        return environment.application_id
    if run is not None:
        return run.environment.application_id
    return image.application_id if image is not None else None


def add_event(run: Run, message: str, *, level=RunEvent.Level.INFO, seconds=None) -> None:
    RunEvent.objects.create(run=run, message=message, level=level, duration_seconds=seconds)


def dispatch_on_commit(run: Run) -> None:
    """Hand the run to a worker once the transaction that queued it has committed."""
    transaction.on_commit(lambda: enqueue(run.pk))


def enqueue(run_id: int) -> None:
    from django_q.tasks import async_task

    task_id = async_task("opsweb.tasks.execute_run", run_id, task_name=f"run-{run_id}")
    Run.objects.filter(pk=run_id, task_id="").update(task_id=task_id or "")


# -- rules shared by several requests --------------------------------------------------------


def require_perm(user, perm: str, action: str) -> None:
    if not (user and user.is_active and user.has_perm(f"opsweb.{perm}")):
        raise NotAllowed(f"User {actor_name(user)} is not allowed to {action}.")


def validation_sentence(exc: ValidationError) -> str:
    """A ValidationError as one sentence naming each field."""
    if hasattr(exc, "error_dict"):
        return " ".join(
            f"{field}: {' '.join(str(m) for m in messages)}"
            for field, messages in exc.message_dict.items()
        )
    return " ".join(exc.messages)


def check_lengths(limit: int = TEXT_MAX, **texts: str | None) -> None:
    """Raise ReleaseError, naming the text, when one of ``texts`` (its name → what a person
    wrote) is over ``limit`` characters: the admin, the commands and the tasks all come here,
    so none stores a 20,000-character comment or sends PostgreSQL more than its column holds."""
    for name, value in texts.items():
        problem = text_problem(name.replace("_", " "), value, limit)
        if problem:
            raise ReleaseError(problem)
