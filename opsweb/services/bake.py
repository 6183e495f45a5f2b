"""The bake: a deploy that passed its health check watches the environment's alarms for
``bake_seconds`` before it counts as good (docs/alarms.md, docs/design.md "Alarms").

What an alarm is and how it is read belongs to the backend (``DeployBackend.read_alarms``);
what a reading means (fail, roll back, cut short, stop) is decided here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings

from opsweb.models import Run, RunKind, Target
from opsweb.services import alarms
from opsweb.services.execution import stop_requested
from orchestration.alarms import AlarmState
from orchestration.base import DeployError, backend_class


@dataclass(frozen=True)
class Bake:
    """How a bake ended: ``broken`` starts a rollback (where auto_rollback is on) for
    ``reason``."""

    ok: bool
    error: str = ""
    broken: bool = False
    stopped: bool = False  # someone stopped the run during its bake
    reason: str = alarms.ROLLBACK_REASONS["errors"]


def read_alarms(environment: Target) -> list[AlarmState]:
    """Every alarm of the environment as it reads now, the way its backend reads them
    (``DeployBackend.read_alarms``: HTTP metrics for the local backend, CloudWatch alarms for
    ECS and EC2). Raises DeployError when they cannot be read."""
    return backend_class(environment.backend).read_alarms(
        environment.alarms,
        settings=environment.backend_settings,
        allow=environment.outbound_allow,
    )


def bake(run: Run, environment: Target) -> Bake:
    """Watch the environment's alarms for ``bake_seconds`` after a healthy switch, polling
    every ``BAKE_POLL_SECONDS``. An alarm entering ALARM fails the run with its name, reason
    and value, and breaks the environment (rollback for the alarm's kind). An alarm already in
    ALARM at the start fails the run without a rollback (docs/design.md: opsweb cannot tell
    whether the new version is fine, nor whether going back would help). A rollback asked for
    during the bake cuts it short: the run fails, and the rollback starts at once."""
    seconds = environment.bake_seconds
    if not seconds:
        return Bake(ok=True)
    poll = settings.OPSWEB["BAKE_POLL_SECONDS"]
    deadline = time.monotonic() + seconds
    try:
        states = read_alarms(environment)
    except DeployError as exc:
        error = f"Bake not started: could not read the alarms: {exc}"
        alarms.record_reading(run, error, warning=True)
        return Bake(ok=False, error=error)
    alarms.record_reading(run, f"Bake started for {seconds}s: {_states_sentence(states)}")
    firing = [s for s in states if s.firing]
    if firing:
        error = (
            f"Bake refused: {'; '.join(s.sentence() for s in firing)} already when the bake "
            f"started, so opsweb cannot tell whether {run.image.tag} is fine; no automatic "
            f"rollback (going back is not known to help). Roll back or deploy again by hand."
        )
        _save(run, seconds, deadline, states, decision=error)
        return Bake(ok=False, error=error)
    while (left := deadline - time.monotonic()) > 0:
        _save(run, seconds, deadline, states)
        time.sleep(min(poll, left))
        rollback = alarms.rollback_waiting(environment.pk)
        if rollback:
            error = f"Bake cut short by rollback #{rollback.pk}"
            _save(run, seconds, deadline, states, decision=error)
            alarms.record_reading(run, error, warning=True)
            return Bake(ok=False, error=error)
        if stop_requested(run.pk):
            error = f"Stopped during the bake, {deadline - time.monotonic():.0f}s before its end"
            _save(run, seconds, deadline, states, decision=error)
            return Bake(ok=False, error=error, stopped=True)
        try:
            fresh = read_alarms(environment)
        except DeployError as exc:
            # One failed read is not an alarm: the next poll tries again; the record says so.
            alarms.record_reading(run, f"Could not read the alarms: {exc}", warning=True)
            continue
        for before, now in zip(states, fresh, strict=False):
            if before.state != now.state:
                said = now.sentence()
                alarms.record_reading(run, said[0].upper() + said[1:], warning=now.firing)
        states = fresh
        firing = [s for s in states if s.firing]
        if firing:
            alarm = firing[0]
            error = f"Bake failed: {'; '.join(s.sentence() for s in firing)}"
            _save(run, seconds, deadline, states, decision=error)
            return Bake(
                ok=False,
                error=error,
                broken=True,
                reason=alarms.ROLLBACK_REASONS.get(alarm.kind, alarms.ROLLBACK_REASONS["errors"]),
            )
    decision = f"Bake passed: {seconds}s, {_states_sentence(states)}"
    _save(run, seconds, 0, states, decision=decision)
    alarms.record_reading(run, decision)
    return Bake(ok=True)


def _states_sentence(states: list[AlarmState]) -> str:
    if not states:
        return "no alarms to watch"
    counts: dict[str, int] = {}
    for state in states:
        counts[state.state] = counts.get(state.state, 0) + 1
    return ", ".join(f"{n} alarm{'s' if n > 1 else ''} {state}" for state, n in counts.items())


def _save(run, seconds, deadline, states, *, decision: str = "") -> None:
    left = max(0.0, deadline - time.monotonic()) if deadline else 0.0
    step = decision or f"baking: {left:.0f} s left, {_states_sentence(states)}"
    alarms.record_bake(
        run_id=run.pk,
        step=step,
        signals={
            "bake_seconds": seconds,
            "bake_left_seconds": round(left),
            "alarms": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "state": s.state,
                    "value": s.value,
                    "reason": s.reason,
                }
                for s in states
            ],
            "decision": decision,
        },
    )


def unbaked(run: Run) -> bool:
    """A deploy whose environment bakes and whose bake had not passed when its worker was
    lost (a rollback is not baked)."""
    run.refresh_from_db(fields=["signals"])
    passed = str(run.signals.get("decision", "")).startswith("Bake passed")
    return bool(run.environment.bake_seconds) and run.kind != RunKind.ROLLBACK and not passed
