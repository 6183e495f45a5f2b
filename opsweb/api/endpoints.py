"""The endpoints: each resolves what the path names (as the commands do, with the same
sentences), calls one service as the token's user, and answers with the command's message and
the record. Environment-scoped endpoints exist twice: under ``/applications/{app}/`` and in a
short form (``/environments/…``) that takes ``?application=`` or, without it, the token's
application or the only application there is."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated

from django.conf import settings
from django.core.management.base import CommandError
from ninja import Path, Query, Router

from opsweb import metrics, policy, services
from opsweb.api.auth import APPROVE, DEPLOY, READ, check_application
from opsweb.api.idempotency import idempotent
from opsweb.api.problems import ApiProblem, lookup_problem
from opsweb.api.schemas import (
    ActionOut,
    ApplicationOut,
    ApplicationPage,
    CommentIn,
    DeployIn,
    DoraOut,
    EnvironmentsOut,
    ImageMarkedOut,
    ImageOut,
    ImagePage,
    LiftBadMarkIn,
    MarkBadIn,
    PromoteIn,
    RegisterIn,
    RegistrationOut,
    RollbackIn,
    RunOut,
    RunPage,
    SignoffIn,
    SignoffOut,
    StopIn,
    TargetOut,
    text_problem,
)
from opsweb.cli import (
    find_environment,
    find_image,
    image_payload,
    iso,
    run_payload,
)
from opsweb.models import (
    Application,
    ImageVersion,
    Run,
    RunStatus,
    Target,
)
from opsweb.reading import read_configuration

router = Router()

RunId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Limit = Annotated[int, Query(ge=1, le=100)]
Slug = Annotated[str, Path(max_length=100)]
POLL_SECONDS = 0.5
MAX_DORA_DAYS = 3650


# -- lookups ---------------------------------------------------------------------------------


def _text(name: str, value: str) -> str:
    problem = text_problem(name, value)
    if problem:
        raise ApiProblem(422, problem)
    return value.strip()


def application_for(request, value: str | None) -> Application:
    """The application ``value`` names (slug, or name ignoring case); without one, the token's
    application or the only one there is."""
    value = _text("application", value or "")
    token = request.token
    applications = Application.objects.select_related("team").order_by("slug")
    if not value:
        if token.application_id:
            return token.application
        first_two = list(applications[:2])
        if len(first_two) == 1:
            return first_two[0]
        if not first_two:
            raise ApiProblem(404, "No application yet: create one (manage.py create_application).")
        raise ApiProblem(
            422,
            "Several applications are released here: name one in the path "
            "(/api/v1/applications/{app}/…) or with ?application=SLUG.",
        )
    found = (
        applications.filter(slug=value).first() or applications.filter(name__iexact=value).first()
    )
    if found is None:
        raise ApiProblem(404, f"No application {value!r}.")
    check_application(request, found)
    return found


def target_for(request, application: str | None, environment: str) -> Target:
    app = application_for(request, application)
    try:
        return find_environment(_text("environment", environment), app)
    except CommandError as exc:
        raise lookup_problem(exc) from None


def image_for(app: Application, value: str) -> ImageVersion:
    try:
        return find_image(_text("image", value), application=app.slug)
    except CommandError as exc:
        raise lookup_problem(exc) from None


def run_for(request, run_id: int) -> Run:
    run = (
        Run.objects.select_related(
            "environment__environment", "environment__application", "image", "requested_by"
        )
        .filter(pk=run_id)
        .first()
    )
    if run is None:
        raise ApiProblem(404, f"Run #{run_id} does not exist.")
    check_application(request, run.environment.application)
    return run


# -- payloads --------------------------------------------------------------------------------


def run_out(run: Run) -> dict:
    return {**run_payload(run), "terminal": run.is_terminal}


def image_out(image: ImageVersion) -> dict:
    return {**image_payload(image), "application": image.application.slug}


def application_out(app: Application) -> dict:
    return {
        "slug": app.slug,
        "name": app.name,
        "team": app.team.name if app.team_id else None,
        "auto_deploy_branch": app.auto_deploy_branch,
        "repository_url": app.repository_url,
        "repositories": sorted(r.repository for r in app.repositories.all()),
        "environments": [t.environment.slug for t in app.targets.all()],
    }


def action(message: str, run: Run) -> dict:
    return {"message": message, "run": run_out(run)}


# -- cursor pagination -------------------------------------------------------------------------


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int | None:
    if not cursor:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, number = text.partition(":")
        value = int(number)
        if kind != "id" or not 0 < value < 2**63:
            raise ValueError
        return value
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiProblem(
            422, "The cursor is not one this API gave: use next_cursor from the previous page."
        ) from None


def page(queryset, cursor: str, limit: int, serialize) -> dict:
    """Newest first, by id: ``next_cursor`` continues after the last item (stable while new
    rows arrive, unlike an offset)."""
    after = decode_cursor(cursor)
    if after is not None:
        queryset = queryset.filter(pk__lt=after)
    rows = list(queryset.order_by("-pk")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [serialize(row) for row in rows],
        "next_cursor": encode_cursor(rows[-1].pk) if more else None,
    }


# -- applications and environments -------------------------------------------------------------


@router.get("/applications", response=ApplicationPage, auth=READ, tags=["read"])
def list_applications(request, cursor: str = "", limit: Limit = 50):
    """The applications released here (a token for one application sees that one)."""
    apps = Application.objects.select_related("team").prefetch_related(
        "repositories", "targets__environment"
    )
    if request.token.application_id:
        apps = apps.filter(pk=request.token.application_id)
    return page(apps, cursor, limit, application_out)


@router.get("/applications/{app}", response=ApplicationOut, auth=READ, tags=["read"])
def get_application(request, app: Slug):
    return application_out(application_for(request, app))


def _environments(request, application: str | None) -> dict:
    from opsweb.management.commands.environments import environment_row

    app = application_for(request, application)
    with services.one_reading():
        targets = Target.objects.filter(application=app).in_flow()
        read_configuration(targets)
        rows = [environment_row(target) for target in targets]
    return {"application": app.slug, "environments": rows}


@router.get("/applications/{app}/environments", response=EnvironmentsOut, auth=READ, tags=["read"])
def list_environments(request, app: Slug):
    """What runs where, since when and by whom, what waits, paused and frozen flags, drift
    (manage.py environments)."""
    return _environments(request, app)


@router.get("/environments", response=EnvironmentsOut, auth=READ, tags=["read"])
def list_environments_short(request, application: str = ""):
    return _environments(request, application)


def _environment(request, application, environment) -> dict:
    from opsweb.management.commands.environments import environment_row

    target = target_for(request, application, environment)
    return environment_row(target)


@router.get("/applications/{app}/environments/{env}", response=TargetOut, auth=READ, tags=["read"])
def get_environment(request, app: Slug, env: Slug):
    return _environment(request, app, env)


@router.get("/environments/{env}", response=TargetOut, auth=READ, tags=["read"])
def get_environment_short(request, env: Slug, application: str = ""):
    return _environment(request, application, env)


# -- images ----------------------------------------------------------------------------------


@router.post(
    "/images",
    response={200: RegistrationOut, 201: RegistrationOut},
    auth=DEPLOY,
    tags=["images"],
)
def register_image(request, body: RegisterIn):
    """Record a built image (idempotent by digest) and queue its deploy where its branch
    auto-deploys (manage.py register_image). 201 when it is new, 200 when it was known."""

    def act():
        from opsweb.management.commands.register_image import registration_fields

        fields = body.dict()
        named = fields.pop("application")
        try:
            fields = registration_fields(fields)
        except CommandError as exc:
            raise ApiProblem(422, str(exc)) from None
        owner = services_application_of(fields["repository"])
        if named:
            app = application_for(request, named)
            if owner is not None and owner.pk != app.pk:
                raise ApiProblem(
                    409,
                    f"Repository {fields['repository']!r} is released by {owner.slug}, not {app.slug}.",
                )
        if owner is not None:
            check_application(request, owner)
        registration = services.register_image(user=request.auth, **fields)
        return 201 if registration.created else 200, {
            "message": registration.message,
            "created": registration.created,
            "image": image_out(registration.image),
            "runs": [run_out(run) for run in registration.runs],
            "not_deployed": registration.not_deployed,
        }

    return idempotent(request, act)


def services_application_of(repository: str) -> Application | None:
    from opsweb.models import ApplicationRepository

    found = (
        ApplicationRepository.objects.filter(repository=repository)
        .select_related("application")
        .first()
    )
    return found.application if found else None


def _images(request, application: str | None, cursor: str, limit: int) -> dict:
    app = application_for(request, application)
    images = ImageVersion.objects.filter(application=app).select_related("application")
    return page(images, cursor, limit, image_out)


@router.get("/applications/{app}/images", response=ImagePage, auth=READ, tags=["images"])
def list_images(request, app: Slug, cursor: str = "", limit: Limit = 50):
    """The application's versions, newest first."""
    return _images(request, app, cursor, limit)


@router.get("/images", response=ImagePage, auth=READ, tags=["images"])
def list_images_short(request, application: str = "", cursor: str = "", limit: Limit = 50):
    return _images(request, application, cursor, limit)


def image_by_id(request, image_id: int) -> ImageVersion:
    image = ImageVersion.objects.select_related("application").filter(pk=image_id).first()
    if image is None:
        raise ApiProblem(404, f"Image #{image_id} does not exist.")
    check_application(request, image.application)
    return image


@router.get("/images/{image_id}", response=ImageOut, auth=READ, tags=["images"])
def get_image(request, image_id: RunId):
    return image_out(image_by_id(request, image_id))


@router.post(
    "/images/{image_id}/mark-bad", response={200: ImageMarkedOut}, auth=DEPLOY, tags=["images"]
)
def mark_bad(request, image_id: RunId, body: MarkBadIn):
    """Mark a version bad: it is not deployed or promoted again, nor rolled back to, until an
    approver of the environment that answers for the mark lifts it (POST
    /images/{id}/lift-bad-mark, or the admin's Lift bad mark)."""

    def act():
        image = image_by_id(request, image_id)
        image = services.mark_bad(user=request.auth, image=image, reason=body.reason)
        return 200, {
            "message": f"Marked {services.describe(image)} bad: {image.bad_reason}",
            "image": image_out(image),
        }

    return idempotent(request, act)


@router.post(
    "/images/{image_id}/lift-bad-mark",
    response={200: ImageMarkedOut},
    auth=APPROVE,
    tags=["images"],
)
def lift_bad_mark(request, image_id: RunId, body: LiftBadMarkIn):
    """Lift a version's bad mark, saying why (manage.py lift_bad_mark): an approver of the
    environment that answers for the mark (where a rollback last took it back), with a token
    of the ``approve`` scope (an approver's decision: a CI token that deploys cannot undo the
    stop a rollback put on a version). It may be deployed and promoted again; auto-deploy
    paused by that rollback stays paused."""

    def act():
        from opsweb.management.commands.lift_bad_mark import lifted_message

        image = image_by_id(request, image_id)
        environment = policy.bad_mark_environment(image) if image.is_bad else None
        image = services.lift_bad_mark(user=request.auth, image=image, reason=body.reason)
        return 200, {"message": lifted_message(image, environment), "image": image_out(image)}

    return idempotent(request, act)


# -- requests that start runs ----------------------------------------------------------------


def _deploy(request, application, environment, body: DeployIn):
    def act():
        target = target_for(request, application, environment)
        image = image_for(target.application, body.image)
        run = services.request_deploy(
            user=request.auth,
            environment=target,
            image=image,
            note=body.note,
            override_reason=body.override_reason,
        )
        return 202, action(
            f"Requested run #{run.pk}: deploy {services.describe(image)} to {target}.", run
        )

    return idempotent(request, act)


@router.post(
    "/applications/{app}/environments/{env}/deploys",
    response={202: ActionOut},
    auth=DEPLOY,
    tags=["runs"],
)
def deploy(request, app: Slug, env: Slug, body: DeployIn):
    """Deploy a chosen version to an environment that takes direct deploys (manage.py
    deploy). 202: the run is accepted; follow it with GET /runs/{id}?wait=."""
    return _deploy(request, app, env, body)


@router.post("/environments/{env}/deploys", response={202: ActionOut}, auth=DEPLOY, tags=["runs"])
def deploy_short(request, env: Slug, body: DeployIn, application: str = ""):
    return _deploy(request, application, env, body)


def _promote(request, application, environment, body: PromoteIn):
    def act():
        target = target_for(request, application, environment)
        if body.source:
            source = target_for(request, target.application.slug, body.source)
        elif target.upstream is not None:
            source = target.upstream
        else:
            raise ApiProblem(
                409, f"{target} takes no promotions: nothing is upstream of it. Deploy instead."
            )
        image = image_for(target.application, body.image) if body.image else None
        run = services.request_promotion(
            user=request.auth,
            target=target,
            source=source,
            image=image,
            note=body.note,
            override_reason=body.override_reason,
        )
        waiting = (
            f" It waits for {run.required_approvals} approval(s): "
            f"{services.quorum_progress(run).text}."
            if run.required_approvals
            else ""
        )
        return 202, action(
            f"Requested run #{run.pk}: promote {services.describe(run.image)} from {source} to "
            f"{target}.{waiting}",
            run,
        )

    return idempotent(request, act)


@router.post(
    "/applications/{app}/environments/{env}/promotions",
    response={202: ActionOut},
    auth=DEPLOY,
    tags=["runs"],
)
def promote(request, app: Slug, env: Slug, body: PromoteIn):
    """Promote a version into ``env`` from its upstream (or ``source``), by default what the
    source runs (manage.py promote). The run waits for the environment's approvals."""
    return _promote(request, app, env, body)


@router.post(
    "/environments/{env}/promotions", response={202: ActionOut}, auth=DEPLOY, tags=["runs"]
)
def promote_short(request, env: Slug, body: PromoteIn, application: str = ""):
    return _promote(request, application, env, body)


def _roll_back(request, application, environment, body: RollbackIn):
    def act():
        target = target_for(request, application, environment)
        current = target.current_image
        run = services.roll_back(
            user=request.auth, environment=target, reason=body.reason, note=body.note
        )
        return 202, action(
            f"Rolling back {target} from {services.describe(current)} to "
            f"{services.describe(run.image)}: run #{run.pk}.",
            run,
        )

    return idempotent(request, act)


@router.post(
    "/applications/{app}/environments/{env}/rollbacks",
    response={202: ActionOut},
    auth=DEPLOY,
    tags=["runs"],
)
def roll_back(request, app: Slug, env: Slug, body: RollbackIn):
    """Redeploy the newest earlier version that succeeded there and is not bad (manage.py
    rollback); auto-deploy pauses with it."""
    return _roll_back(request, app, env, body)


@router.post("/environments/{env}/rollbacks", response={202: ActionOut}, auth=DEPLOY, tags=["runs"])
def roll_back_short(request, env: Slug, body: RollbackIn, application: str = ""):
    return _roll_back(request, application, env, body)


def _sign_off(request, application, environment, body: SignoffIn):
    def act():
        target = target_for(request, application, environment)
        image = image_for(target.application, body.image)
        signoff = services.sign_off_uat(
            user=request.auth, environment=target, image=image, note=body.note
        )
        return 201, {
            "message": f"Recorded: UAT passed for {services.describe(image)} in {target} "
            f"(sign-off #{signoff.pk} by {request.auth.get_username()}).",
            "id": signoff.pk,
            "application": target.application.slug,
            "environment": target.slug,
            "image": image_out(image),
            "user": request.auth.get_username(),
            "note": signoff.note,
            "at": iso(signoff.created_at),
        }

    return idempotent(request, act)


@router.post(
    "/applications/{app}/environments/{env}/signoffs",
    response={201: SignoffOut},
    auth=APPROVE,
    tags=["runs"],
)
def sign_off(request, app: Slug, env: Slug, body: SignoffIn):
    """Record that UAT passed for a version in an environment (manage.py signoff_uat)."""
    return _sign_off(request, app, env, body)


@router.post(
    "/environments/{env}/signoffs", response={201: SignoffOut}, auth=APPROVE, tags=["runs"]
)
def sign_off_short(request, env: Slug, body: SignoffIn, application: str = ""):
    return _sign_off(request, application, env, body)


# -- runs ------------------------------------------------------------------------------------


@router.get("/runs", response=RunPage, auth=READ, tags=["runs"])
def list_runs(
    request,
    application: str = "",
    environment: str = "",
    status: RunStatus | None = None,
    cursor: str = "",
    limit: Limit = 20,
):
    """Runs, newest first; filtered by application, environment (slug) and status."""
    runs = Run.objects.select_related(
        "environment__environment", "environment__application", "image", "requested_by"
    )
    if application or request.token.application_id:
        runs = runs.filter(environment__application=application_for(request, application))
    if environment:
        runs = runs.filter(environment__environment__slug=_text("environment", environment))
    if status:
        runs = runs.filter(status=status)
    return page(runs, cursor, limit, run_out)


@router.get("/runs/{run_id}", response=RunOut, auth=READ, tags=["runs"])
def get_run(request, run_id: RunId, wait: Annotated[float, Query(ge=0, le=3600)] = 0):
    """A run: status, step, timings, approvals, last events (manage.py run_status). With
    ``?wait=N``, answers when the run ends or after N seconds (at most the server's limit,
    OPSWEB_API_MAX_WAIT_SECONDS), whichever comes first."""
    run = run_for(request, run_id)
    deadline = time.monotonic() + min(wait, settings.OPSWEB_API["MAX_WAIT_SECONDS"])
    while not run.is_terminal and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        run.refresh_from_db()
    return run_out(run)


def _decide(request, run_id: int, decide, message) -> tuple[int, dict]:
    run = decide(run_for(request, run_id))
    return 200, action(message(run), run)


@router.post("/runs/{run_id}/approve", response={200: ActionOut}, auth=APPROVE, tags=["runs"])
def approve(request, run_id: RunId, body: CommentIn):
    """Approve a pending run (manage.py approve); queued when the quorum is reached."""

    def message(run):
        state = (
            "fully approved and queued"
            if run.status == RunStatus.QUEUED
            else run.get_status_display().lower()
        )
        return f"Approved run #{run.pk} ({services.approvals_text(run)}); it is {state}."

    return idempotent(
        request,
        lambda: _decide(
            request,
            run_id,
            lambda run: services.approve_run(user=request.auth, run=run, comment=body.comment),
            message,
        ),
    )


@router.post("/runs/{run_id}/reject", response={200: ActionOut}, auth=APPROVE, tags=["runs"])
def reject(request, run_id: RunId, body: CommentIn):
    """Reject a pending run, saying why (manage.py reject)."""
    return idempotent(
        request,
        lambda: _decide(
            request,
            run_id,
            lambda run: services.reject_run(user=request.auth, run=run, comment=body.comment),
            lambda run: f"Rejected run #{run.pk}.",
        ),
    )


@router.post("/runs/{run_id}/cancel", response={200: ActionOut}, auth=DEPLOY, tags=["runs"])
def cancel(request, run_id: RunId, body: CommentIn):
    """Cancel a run that has not started."""
    return idempotent(
        request,
        lambda: _decide(
            request,
            run_id,
            lambda run: services.cancel_run(user=request.auth, run=run, comment=body.comment),
            lambda run: f"Cancelled run #{run.pk}.",
        ),
    )


@router.post("/runs/{run_id}/stop", response={202: ActionOut}, auth=DEPLOY, tags=["runs"])
def stop(request, run_id: RunId, body: StopIn):
    """Stop a running run at its next safe point (manage.py stop_run). 202: it is stopping."""

    def act():
        run = services.stop_run(user=request.auth, run=run_for(request, run_id), reason=body.reason)
        return 202, action(f"Asked run #{run.pk} to stop: it stops at its next safe point.", run)

    return idempotent(request, act)


# -- DORA ------------------------------------------------------------------------------------


def _dora(request, application, environment: str, days: int) -> dict:
    target = target_for(request, application, environment or metrics.DEFAULT_ENVIRONMENT)
    report = metrics.dora_report(target, days=days)
    return {
        "application": target.application.slug,
        "environment": target.slug,
        "report": report.as_json(),
    }


Days = Annotated[int, Query(ge=1, le=MAX_DORA_DAYS)]


@router.get("/applications/{app}/dora", response=DoraOut, auth=READ, tags=["read"])
def dora(request, app: Slug, environment: str = "", days: Days = metrics.DEFAULT_DAYS):
    """The four DORA keys for one environment (manage.py dora)."""
    return _dora(request, app, environment, days)


@router.get("/dora", response=DoraOut, auth=READ, tags=["read"])
def dora_short(
    request, application: str = "", environment: str = "", days: Days = metrics.DEFAULT_DAYS
):
    return _dora(request, application, environment, days)
