"""An environment's own switches and its intake: resume auto-deploy, freeze, record configuration,
register a built image and deploy it automatically."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from opsweb import events, policy
from opsweb.errors import ReleaseError
from opsweb.limits import COMMIT_MESSAGE_MAX
from opsweb.models import (
    Application,
    ApplicationRepository,
    ChangeWindow,
    ImageVersion,
    Run,
    RunKind,
    Target,
)
from opsweb.reads import facts
from opsweb.reads.history import describe, waiting_builds
from opsweb.services.base import (
    Seen,
    actor_name,
    audit,
    check_lengths,
    check_seen,
    require_perm,
    validation_sentence,
)
from opsweb.services.requests import lock_environment, new_run
from opsweb.windows import freeze_status, hand_freezes


@transaction.atomic
def resume_auto_deploy(*, user, environment: Target, seen: Seen = None) -> Target:
    """Resume auto-deploy after a rollback paused it, and deploy the newest build of the branch
    left behind meanwhile (``catch_up``). Raises NotAllowed (not an approver and no
    ``resume_auto_deploy`` permission) or ReleaseError (not paused; changed since seen)."""
    environment = lock_environment(environment)
    check_seen(
        seen,
        lambda: facts.environment_facts(environment),
        subject=environment,
        action="resume",
        bound_to=environment,
        page="resume",
    )
    policy.may_resume(user, environment).enforce()
    environment.auto_deploy_paused = False
    environment.paused_reason = ""
    Target.objects.filter(pk=environment.pk).update(auto_deploy_paused=False, paused_reason="")
    audit(
        user, "resume_auto_deploy", f"Resumed auto-deploy in {environment}", environment=environment
    )
    catch_up(environment, user=user, opened="auto-deploy was resumed")
    return environment


@transaction.atomic
def set_frozen(
    *, user, environment: Target, frozen: bool, reason: str = "", seen: Seen = None
) -> Target:
    """Freeze (rollbacks only) or unfreeze one application in one environment (the target
    ``environment``) by hand: freezing opens a one-off deny window with no end for it;
    unfreezing ends its open-ended ones. A freeze of a whole environment, or of every
    environment, is a change window without an application. A freeze by a recurring or dated
    window is lifted by editing that window (or overridden in an emergency). Unfreezing deploys
    the newest build of the auto-deploy branch left behind meanwhile (``catch_up``), if no other
    window still freezes it. Raises NotAllowed
    without the ``freeze_environment`` permission, ReleaseError if there is nothing to do, or
    if what the page showed changed since."""
    check_lengths(ChangeWindow._meta.get_field("reason").max_length, reason=reason)
    environment = lock_environment(environment)
    check_seen(
        seen,
        lambda: facts.environment_facts(environment),
        subject=environment,
        action="freeze" if frozen else "unfreeze",
        bound_to=environment,
        page="freeze",
    )
    policy.may_freeze(user, environment).enforce()
    now = timezone.now()
    if frozen:
        if environment.is_frozen:
            raise ReleaseError(f"{environment} is already frozen.")
        ChangeWindow.objects.create(
            environment=environment.environment,
            application=environment.application,
            kind=ChangeWindow.Kind.DENY,
            starts_at=now,
            reason=reason or f"frozen by {actor_name(user)}",
            created_by=user,
        )
    else:
        by_hand = hand_freezes(environment, now)
        if not by_hand:  # frozen by a window: policy.may_freeze refused above
            raise ReleaseError(f"{environment} is already not frozen.")
        ChangeWindow.objects.filter(pk__in=[w.pk for w in by_hand]).update(ends_at=now)
    verb = "Froze" if frozen else "Unfroze"
    audit(
        user,
        "set_frozen",
        f"{verb} {environment}" + (f": {reason}" if reason else ""),
        environment=environment,
    )
    if not frozen:
        catch_up(environment, user=user, opened="the freeze ended")
    return environment


@contextmanager
def changing_windows(*, user) -> Iterator[None]:
    """Wrap an edit of change windows made outside ``set_frozen`` (the admin's window pages:
    add, change, delete). Every environment that auto-deploys and was frozen before the edit
    but not after it has its gate opened as by **Unfreeze**: the newest build of its branch
    left behind meanwhile is queued (``catch_up``, as ``user``). Needed because the reconciler
    recognises a held-back build by the windows as they are now, so a build held by a window
    that was deleted would never go. Call inside the edit's transaction."""
    now = timezone.now()
    gated = Target.objects.auto_deploying().filter(auto_deploy_paused=False)
    frozen = [env.pk for env in gated if freeze_status(env, now).frozen]
    yield
    for pk in frozen:
        environment = lock_environment(Target(pk=pk))
        if not freeze_status(environment, timezone.now()).frozen:
            catch_up(environment, user=user, opened="its change window was lifted")


def record_configuration(*, user, environment: Target, message: str) -> None:
    """An environment's settings were edited in the admin (who, when, which fields)."""
    audit(user, "configure_environment", message, environment=environment)


@dataclass
class Registration:
    """What ``register_image`` did: the version, whether it is new, the runs it queued and,
    per environment that auto-deploys its branch but did not take it, why not."""

    image: ImageVersion
    created: bool
    run: Run | None
    message: str
    runs: list[Run] = field(default_factory=list)
    not_deployed: dict[str, str] = field(default_factory=dict)


@transaction.atomic
def register_image(
    *,
    user,
    repository: str,
    tag: str,
    digest: str,
    git_sha: str = "",
    branch: str = "",
    commit_message: str = "",
    committed_at: datetime | None = None,
    build_url: str = "",
    author_email: str = "",
) -> Registration:
    """Record a built image (idempotent by digest) and auto-deploy it where its branch says.

    The version belongs to the application that releases ``repository`` and deploys only into
    that application's targets. Registering a known digest again deploys it where its branch
    auto-deploys and it never ran; otherwise ``not_deployed`` says why not, per environment
    (slug), so a CI retry is never mistaken for a deploy. Raises NotAllowed without
    ``add_imageversion``, ReleaseError for a repository no
    application releases, an invalid field or a tag that already names another digest (tags
    are immutable).
    """
    check_lengths(COMMIT_MESSAGE_MAX, commit_message=commit_message)
    require_perm(user, "add_imageversion", "register images")
    application = application_of(repository)
    existing = ImageVersion.objects.filter(repository=repository, digest=digest).first()
    if existing:
        if existing.tag != tag:
            raise ReleaseError(
                f"Version {repository}@{digest} is already registered as tag {existing.tag!r}, not {tag!r}."
            )
        return _auto_deploy(
            Registration(existing, False, None, f"{existing} is already registered."), user, branch
        )
    clash = ImageVersion.objects.filter(repository=repository, tag=tag).first()
    if clash:
        raise ReleaseError(
            f"Version {repository}:{tag} is already registered with digest {clash.digest}; tags are "
            f"immutable, build a new tag."
        )
    image = ImageVersion(
        application=application,
        repository=repository,
        tag=tag,
        digest=digest,
        git_sha=git_sha,
        branch=branch,
        commit_message=commit_message,
        committed_at=committed_at,
        build_url=build_url,
        author_email=author_email,
        registered_by=user,
    )
    try:
        image.full_clean()
    except ValidationError as exc:
        raise ReleaseError(validation_sentence(exc)) from None
    try:
        with transaction.atomic():
            image.save()
            events.image_registered(image)
    except IntegrityError:
        # A concurrent registration of the same digest won the race: same answer as a rerun.
        existing = ImageVersion.objects.filter(repository=repository, digest=digest).first()
        if existing and existing.tag == tag:
            return Registration(existing, False, None, f"{existing} is already registered.")
        raise ReleaseError(
            f"Version {repository}:{tag} was registered by someone else at the same moment; "
            f"run the command again."
        ) from None
    audit(
        user,
        "register_image",
        f"Registered {describe(image)} from {branch or 'no branch'}",
        image=image,
    )
    return _auto_deploy(Registration(image, True, None, f"Registered {image}."), user, branch)


def _auto_deploy(registration: Registration, user, branch: str) -> Registration:
    image = registration.image
    if not branch:
        return registration
    targets = Target.objects.auto_deploying(branch).filter(application_id=image.application_id)
    for environment in targets.select_for_update(of=("self",)).select_related(
        "application", "environment"
    ):
        why_not = auto_deploy_refusal(environment, image, branch)
        if why_not:
            registration.not_deployed[environment.slug] = why_not
            registration.message += f" Not deployed to {environment}: {why_not}"
            continue
        run = new_run(
            kind=RunKind.DEPLOY,
            environment=environment,
            image=image,
            user=user,
            note=f"auto-deploy of branch {branch}",
        )
        audit(
            user,
            "auto_deploy",
            f"Queued run #{run.pk}: auto-deploy {describe(image)} to {environment}",
            run=run,
        )
        events.run_waiting(run)
        registration.runs.append(run)
        registration.run = registration.run or run
        registration.message += f" Queued run #{run.pk} to deploy it to {environment}."
    return registration


def application_of(repository: str) -> Application:
    """The application that releases image ``repository``. Raises ReleaseError naming how to
    add it when none does."""
    found = (
        ApplicationRepository.objects.filter(repository=repository)
        .select_related("application")
        .first()
    )
    if found is None:
        raise ReleaseError(
            f"No application releases repository {repository!r}: add it to one (the "
            f"application's page in the admin, or manage.py create_application --repository "
            f"{repository} …)."
        )
    return found.application


def catch_up(environment: Target, *, user, opened: str) -> Run | None:
    """The gate ``environment`` kept closed has opened (``opened`` says how: "the freeze
    ended", "auto-deploy was resumed"): queue the newest build of its auto-deploy branch left
    behind meanwhile (``waiting_builds``), asked the same rules as any auto-deploy
    (``auto_deploy_refusal``: still paused or frozen, bad, scan findings, already on its way…).
    Only the newest: older builds of the branch are what it replaces. Returns the run, or None
    when nothing waits or the newest may not go. Call with ``environment`` locked."""
    branch = environment.auto_deploy_branch
    build = waiting_builds(environment).first() if branch else None
    if build is None or auto_deploy_refusal(environment, build, branch):
        return None
    run = new_run(
        kind=RunKind.DEPLOY,
        environment=environment,
        image=build,
        user=user,
        note=f"auto-deploy of branch {branch}, held back until {opened}",
    )
    audit(
        user,
        "auto_deploy",
        f"Queued run #{run.pk}: auto-deploy {describe(build)} to {environment}, the newest "
        f"{branch} build held back until {opened}",
        run=run,
    )
    events.run_waiting(run)
    return run


def auto_deploy_refusal(environment: Target, image: ImageVersion, branch: str) -> str:
    """Why a version CI registered on ``branch`` does not deploy to ``environment``, or "":
    auto-deploy paused, a freeze, then the rules every request meets
    (``policy.version_refusal`` for a build, ``policy.scan_refusal``)."""
    if environment.auto_deploy_paused:
        return (
            f"auto-deploy is paused ({environment.paused_reason or 'no reason given'}); the "
            f"newest {branch} build deploys when it is resumed."
        )
    status = freeze_status(environment, timezone.now())
    if status.frozen:
        return (
            f"{status.sentence} The version is recorded, not deployed; the newest {branch} build "
            f"deploys by itself when the freeze ends."
        )
    # The version rules a person's request meets, said of a build (docs/design.md).
    return policy.version_refusal(environment, image, branch=branch) or policy.scan_refusal(
        environment, image
    )
