"""History reads: what ran where, the previous stable version, which builds an environment is
behind. Writes nothing, decides nothing."""

from __future__ import annotations

from django.db.models import Exists, F, Func, Max, Min, OuterRef, Q, Subquery
from django.db.models.lookups import IsNull

from opsweb.models import (
    ImageVersion,
    Run,
    RunStatus,
    Target,
)
from opsweb.reads.memo import once, primed


def last_success(environment: Target, image: ImageVersion) -> Run | None:
    """The newest succeeded run of ``image`` in ``environment`` (once within ``one_reading``)."""
    return once(
        ("last_success", environment.pk, image.pk),
        lambda: (
            Run.objects.filter(environment=environment, image=image, status=RunStatus.SUCCEEDED)
            .order_by("-finished_at")
            .first()
        ),
    )


def previous_stable_version(
    environment: Target, *, exclude: ImageVersion | None = None
) -> ImageVersion | None:
    """The newest version that succeeded in ``environment`` and is not bad, other than
    ``exclude`` (the version being rolled back). Read once within ``one_reading``."""
    return once(
        ("previous_stable", environment.pk, exclude.pk if exclude else None),
        lambda: _previous_stable_version(environment, exclude),
    )


def _previous_stable_version(environment: Target, exclude: ImageVersion | None):
    succeeded_here = Q(runs__environment=environment, runs__status=RunStatus.SUCCEEDED)
    candidates = (
        ImageVersion.objects.filter(
            succeeded_here, application_id=environment.application_id, is_bad=False
        )
        .annotate(last_success=Max("runs__finished_at", filter=succeeded_here))
        .order_by("-last_success", "-id")
    )
    if exclude is not None:
        candidates = candidates.exclude(pk=exclude.pk)
    return candidates.first()


def describe(image: ImageVersion | None) -> str:
    if image is None:
        return "nothing"
    return f"{image.tag} ({image.short_digest})"


def is_older(image: ImageVersion, than: ImageVersion | None, environment: Target) -> bool:
    """Whether ``image`` is older than ``than`` (what ``environment`` runs).

    The environment's own history decides first: a version first deployed there before
    ``than`` was first deployed there is older (so after a rollback from 1.1 to 1.0, 1.1 is
    still the newer one). Otherwise the commit time decides, then the registration time
    (docs/design.md, "Older"). The same version is not older than itself.
    """
    return image.pk in older_than([image], than, environment)


def older_than(
    images: list[ImageVersion], than: ImageVersion | None, environment: Target
) -> set[int]:
    """The ids of those of ``images`` older than ``than`` in ``environment`` by the rule of
    ``is_older``, in one query whatever their number (for a page that offers versions).
    Empty when ``than`` is None."""
    if than is None:
        return set()
    keys = [("first_switched", environment.pk, i.pk) for i in [*images, than]]
    firsts = [primed(key) for key in keys]
    if all(first is not None for first in firsts):  # primed: a datetime, or "never"
        switched = {k[2]: f for k, f in zip(keys, firsts, strict=True) if f != "never"}
    else:
        switched = dict(
            Run.objects.filter(environment=environment, image__in=[*images, than])
            .exclude(switched_at=None)
            .values_list("image_id")
            .annotate(first=Min("switched_at"))
            .order_by()
        )
    older = set()
    for image in images:
        if image.pk == than.pk:
            continue
        if image.pk in switched and than.pk in switched:
            older_one = switched[image.pk] < switched[than.pk]
        elif image.committed_at and than.committed_at:
            older_one = image.committed_at < than.committed_at
        else:
            older_one = (image.registered_at, image.pk) < (than.registered_at, than.pk)
        if older_one:
            older.add(image.pk)
    return older


def waiting_builds(environment: Target):
    """Builds of the branch ``environment`` auto-deploys that it has been left behind by: newer
    than what it runs (by ``is_older``'s rule: the commit time where both have one, else the
    registration order), never tried there (no run of them there at all, so a build that
    failed, was cancelled or was refused is never retried by itself), and not bad. A queryset,
    newest first; empty where nothing auto-deploys."""
    branch = environment.auto_deploy_branch
    if not branch:
        return ImageVersion.objects.none()
    tried = Run.objects.filter(environment_id=environment.pk, image=OuterRef("pk"))
    builds = ImageVersion.objects.filter(
        application_id=environment.application_id, branch=branch, is_bad=False
    ).exclude(Exists(tried))
    current = environment.current_image
    if current is not None:
        registered_later = Q(registered_at__gt=current.registered_at) | Q(
            registered_at=current.registered_at, pk__gt=current.pk
        )
        newer = registered_later
        if current.committed_at is not None:
            newer = Q(committed_at__gte=current.committed_at) | Q(
                Q(committed_at=None) & registered_later
            )
        builds = builds.exclude(pk=current.pk).filter(newer)
    return builds.order_by(F("committed_at").desc(nulls_last=True), "-registered_at", "-id")


# Builds behind are read, not counted, up to this many (then "100+"): a Dev paused for months
# must not make the board count every build since.
BEHIND_CAP = 100


def builds_behind(environment: Target) -> int:
    """How many builds ``environment`` is behind its auto-deploy branch (``waiting_builds``),
    at most ``BEHIND_CAP`` + 1 (one bounded read of ids)."""
    if not environment.auto_deploy_branch:
        return 0
    return once(
        ("behind", environment.pk),
        lambda: len(waiting_builds(environment).values_list("pk", flat=True)[: BEHIND_CAP + 1]),
    )


def behind_counts(environments) -> dict[int, int]:
    """``builds_behind`` of each of ``environments`` (id → count, at most ``BEHIND_CAP`` + 1)
    in one query: ``waiting_builds``' rule written against each environment's row, read at
    most ``BEHIND_CAP`` + 1 ids per environment, for pages that show every environment."""

    def outer(name: str):  # the environment's row, two subqueries out
        return OuterRef(OuterRef(name))

    tried = Run.objects.filter(
        environment_id=OuterRef(OuterRef(OuterRef("pk"))), image=OuterRef("pk")
    )
    registered_later = Q(registered_at__gt=outer("current_image__registered_at")) | Q(
        registered_at=outer("current_image__registered_at"), pk__gt=outer("current_image_id")
    )
    committed_known = Q(IsNull(outer("current_image__committed_at"), False))
    newer = (
        committed_known
        & (
            Q(committed_at__gte=outer("current_image__committed_at"))
            | (Q(committed_at=None) & registered_later)
        )
    ) | (~committed_known & registered_later)
    waiting = (
        ImageVersion.objects.filter(
            application_id=outer("application_id"),
            branch=outer("application__auto_deploy_branch"),
            is_bad=False,
        )
        .exclude(Exists(tried))
        .filter(
            Q(IsNull(outer("current_image_id"), True)) | (~Q(pk=outer("current_image_id")) & newer)
        )
        .order_by(F("committed_at").desc(nulls_last=True), "-registered_at", "-id")
        .values("pk")[: BEHIND_CAP + 1]
    )
    capped = (
        ImageVersion.objects.filter(pk__in=waiting)
        .order_by()
        .annotate(n=Func(F("pk"), function="COUNT"))
        .values("n")
    )
    rows = (
        Target.objects.filter(pk__in=[env.pk for env in environments])
        .auto_deploying()
        .annotate(behind=Subquery(capped))
        .values_list("pk", "behind")
    )
    counts = {env.pk: 0 for env in environments}
    counts.update({pk: behind or 0 for pk, behind in rows})
    return counts


def behind_sentence(environment: Target, count: int | None = None) -> str:
    """ "behind develop by 2 builds" where ``environment`` has been left behind by builds of
    the branch it auto-deploys (``waiting_builds``), else "". ``count``: ``builds_behind``
    already read."""
    count = builds_behind(environment) if count is None else count
    if not count:
        return ""
    many = f"{BEHIND_CAP}+" if count > BEHIND_CAP else str(count)
    return f"behind {environment.auto_deploy_branch} by {many} build{'' if count == 1 else 's'}"


def who_deployed(environment: Target, image: ImageVersion | None) -> Run | None:
    """The run that last switched ``environment`` to ``image``."""
    if image is None:
        return None
    return (
        Run.objects.filter(environment=environment, image=image)
        .exclude(switched_at=None)
        .order_by("-switched_at", "-id")
        .first()
    )


def actor_name(user) -> str:
    """The name history records for ``user``: the username, or "opsweb" for the system."""
    return user.get_username() if user else "opsweb"


__all__ = [
    "last_success",
    "previous_stable_version",
    "describe",
    "is_older",
    "older_than",
    "waiting_builds",
    "BEHIND_CAP",
    "builds_behind",
    "behind_counts",
    "behind_sentence",
    "who_deployed",
    "actor_name",
]
