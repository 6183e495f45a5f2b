"""Applications: create one (its repositories and its targets on an ordered subset of the
shared flow), and list every application with what runs where. The admin's add form and the
``create_application`` command call ``create_application``; ``bootstrap`` and ``demo`` call
``build_application`` for their seed data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Prefetch

from opsweb import policy
from opsweb.errors import ReleaseError
from opsweb.models import Application, ApplicationRepository, Environment, Target
from opsweb.services.base import audit, validation_sentence

# The local backend's ports when none are given: the first application from here on.
FIRST_LOCAL_PORT = 8101


@dataclass(frozen=True)
class ApplicationSpec:
    """What ``create_application`` checks before it writes anything."""

    slug: str
    name: str
    repositories: tuple[str, ...]
    environments: tuple[Environment, ...]
    team: Group | None
    branch: str
    repository_url: str = ""


def flow_of(slugs: list[str] | None) -> tuple[Environment, ...]:
    """The environments ``slugs`` names, in flow order; all of them when None. Raises
    ReleaseError for an unknown slug, a repeated one, or an order that is not the flow's
    (``production,dev``): an application's flow is an ordered subset of the shared one."""
    shared = list(Environment.objects.order_by("position"))
    if slugs is None:
        return tuple(shared)
    by_slug = {env.slug: env for env in shared}
    known = ", ".join(by_slug) or "none"
    if not slugs:
        raise ReleaseError(f"Name at least one environment; the flow is {known}.")
    unknown = [slug for slug in slugs if slug not in by_slug]
    if unknown:
        raise ReleaseError(f"No environment {unknown[0]!r}; the flow is {known}.")
    if len(set(slugs)) != len(slugs):
        raise ReleaseError(f"Each environment may be named once, not {','.join(slugs)}.")
    chosen = [by_slug[slug] for slug in slugs]
    if chosen != sorted(chosen, key=lambda env: env.position):
        in_order = ",".join(env.slug for env in sorted(chosen, key=lambda env: env.position))
        raise ReleaseError(
            f"{','.join(slugs)} is not in the order of the flow ({known}); give {in_order}."
        )
    return tuple(chosen)


def check_application(
    *,
    slug: str,
    name: str,
    repositories: list[str],
    environments: list[str] | None = None,
    team: str = "",
    branch: str = "",
    repository_url: str = "",
) -> ApplicationSpec:
    """The checks every way of creating an application shares, read-only: raises
    ReleaseError with one sentence for a taken slug or name, a repository another application
    releases, an unknown environment or team, or a flow out of order."""
    slug, name = slug.strip(), name.strip()
    candidate = Application(
        slug=slug,
        name=name or slug,
        auto_deploy_branch=branch.strip(),
        repository_url=repository_url.strip(),
    )
    try:
        candidate.full_clean(exclude=["team"], validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        raise ReleaseError(validation_sentence(exc)) from None
    if Application.objects.filter(slug=slug).exists():
        raise ReleaseError(f"An application with slug {slug!r} already exists; choose another.")
    if Application.objects.filter(name__iexact=candidate.name).exists():
        raise ReleaseError(f"An application named {candidate.name!r} already exists.")
    repositories = [r.strip() for r in repositories if r.strip()]
    if not repositories:
        raise ReleaseError("Give the image repository CI registers its versions from.")
    for repository in repositories:
        try:
            candidate_repository = ApplicationRepository(repository=repository)
            candidate_repository.clean_fields(exclude=["application"])  # its length, too
            candidate_repository.clean()
        except ValidationError as exc:
            raise ReleaseError(f"Repository {repository!r}: {' '.join(exc.messages)}") from None
        owner = ApplicationRepository.objects.filter(repository=repository).first()
        if owner is not None:
            raise ReleaseError(
                f"Repository {repository!r} is released by {owner.application.slug}; a "
                f"repository belongs to one application."
            )
    group = None
    if team.strip():
        group = Group.objects.filter(name=team.strip()).first()
        if group is None:
            raise ReleaseError(f"No team (group) {team.strip()!r}; create it in the admin first.")
    return ApplicationSpec(
        slug=slug,
        name=candidate.name,
        repositories=tuple(dict.fromkeys(repositories)),
        environments=flow_of(environments),
        team=group,
        branch=candidate.auto_deploy_branch,
        repository_url=candidate.repository_url,
    )


def next_free_port() -> int:
    """The first port after every port a local target uses, so a new application's processes
    never meet another's."""
    ports = [
        int(settings_.get("port") or 0)
        for settings_ in Target.objects.filter(backend="local").values_list(
            "backend_settings", flat=True
        )
        if isinstance(settings_, dict)
    ]
    return max([FIRST_LOCAL_PORT - 1, *ports]) + 1


def demo_source() -> str:
    """The demo's sample service repository (``manage.py demo`` creates it)."""
    return str(Path(settings.OPSWEB["LOCAL_STATE_DIR"]) / "demo-app")


def build_application(
    spec: ApplicationSpec, *, base_port: int | None = None, source: str = ""
) -> Application:
    """Write the application, its repositories and one target per environment of its flow on
    the local backend, the n-th listening on ``base_port`` + n (switch a target to ECS or EC2
    in the admin). No checks: ``check_application`` made them."""
    base_port = next_free_port() if base_port is None else base_port
    state_dir = str(settings.OPSWEB["LOCAL_STATE_DIR"])
    application = Application.objects.create(
        slug=spec.slug,
        name=spec.name,
        team=spec.team,
        auto_deploy_branch=spec.branch,
        repository_url=spec.repository_url,
    )
    ApplicationRepository.objects.bulk_create(
        ApplicationRepository(application=application, repository=r) for r in spec.repositories
    )
    for n, environment in enumerate(spec.environments):
        port = base_port + n
        target = Target(
            application=application,
            environment=environment,
            backend="local",
            backend_settings={
                "repository": source or demo_source(),
                "port": port,
                "state_dir": state_dir,
            },
            health_check_url=f"http://127.0.0.1:{port}/healthz",
        )
        try:
            target.full_clean(
                exclude=["application", "environment"],
                validate_unique=False,
                validate_constraints=False,
            )
        except ValidationError as exc:
            raise ReleaseError(f"{target.label}: {validation_sentence(exc)}") from None
        target.save()
    return application


@transaction.atomic
def create_application(
    *,
    user,
    slug: str,
    name: str,
    repositories: list[str],
    environments: list[str] | None = None,
    team: str = "",
    branch: str = "",
    repository_url: str = "",
    base_port: int | None = None,
    source: str = "",
) -> Application:
    """Create an application deployed into ``environments`` (slugs, an ordered subset of the
    flow; default all), releasing ``repositories``, owned by ``team``, its source at
    ``repository_url`` (for compare links); the command and the admin's add form call it.
    Raises NotAllowed without ``add_application``, ReleaseError (nothing written) for what
    ``check_application`` refuses."""
    policy.may_create_application(user).enforce()
    spec = check_application(
        slug=slug,
        name=name,
        repositories=repositories,
        environments=environments,
        team=team,
        branch=branch,
        repository_url=repository_url,
    )
    application = build_application(spec, base_port=base_port, source=source)
    audit(
        user,
        "create_application",
        f"Created application {application.slug} ({application.name}): repositories "
        f"{', '.join(spec.repositories)}; flow {' → '.join(e.slug for e in spec.environments)}"
        + (f"; team {spec.team.name}" if spec.team else ""),
    )
    return application


# -- reading --------------------------------------------------------------------------------


def application_listing(application: Application | None = None) -> list[dict]:
    """Every application (or one) with its repositories, team and targets in flow order, each
    with what runs there and since when. Three queries whatever the number of applications."""
    applications = Application.objects.select_related("team").prefetch_related(
        "repositories",
        Prefetch(
            "targets",
            queryset=Target.objects.select_related("environment", "current_image").order_by(
                "environment__position"
            ),
        ),
    )
    if application is not None:
        applications = applications.filter(pk=application.pk)
    return [
        {
            "slug": app.slug,
            "name": app.name,
            "repositories": [r.repository for r in app.repositories.all()],
            "team": app.team.name if app.team else None,
            "auto_deploy_branch": app.auto_deploy_branch,
            "environments": [t.environment.slug for t in app.targets.all()],
            "targets": [
                {
                    "environment": t.environment.slug,
                    "backend": t.backend,
                    "version": t.current_image.tag if t.current_image else None,
                    "digest": t.current_image.digest if t.current_image else None,
                    "since": t.current_since.isoformat() if t.current_since else None,
                }
                for t in app.targets.all()
            ],
        }
        for app in applications.order_by("slug")
    ]
