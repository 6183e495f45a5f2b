"""What is in a change: the versions (commits) between what runs and what is proposed, links
to the source repository, the build, the requester's note, the UAT sign-off and the scan —
what an approver reads before approving, on the approve page and in the notifications."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from opsweb.models import ImageVersion, Run, Signoff
from opsweb.reads.memo import once

MAX_VERSIONS = 20


def versions_between(old: ImageVersion | None, new: ImageVersion | None) -> list[ImageVersion]:
    """The versions a change carries, newest first: registered after what runs now, up to the
    new one (at most ``MAX_VERSIONS``); going back in time, only the new one."""
    if new is None:
        return []
    qs = ImageVersion.objects.filter(
        repository=new.repository, registered_at__lte=new.registered_at
    )
    if old is not None:
        if old.registered_at > new.registered_at:
            return [new]
        qs = qs.filter(registered_at__gt=old.registered_at)
    return list(qs.order_by("-registered_at", "-id")[:MAX_VERSIONS])


def _web(repository_url: str, what: str) -> str:
    """A page of the repository (GitHub and Gitea style; GitLab puts its pages under /-/)."""
    base = repository_url.rstrip("/")
    if not base:
        return ""
    dash = "/-" if "gitlab" in urlsplit(base).netloc else ""
    return f"{base}{dash}/{what}"


def commit_url(repository_url: str, sha: str) -> str:
    return _web(repository_url, f"commit/{sha}") if sha else ""


def compare_url(repository_url: str, old: ImageVersion | None, new: ImageVersion) -> str:
    if old is None or not old.git_sha or not new.git_sha or old.git_sha == new.git_sha:
        return ""
    return _web(repository_url, f"compare/{old.git_sha}...{new.git_sha}")


@dataclass
class Change:
    """What a run changes, read for a person about to decide on it."""

    run: Run
    versions: list[ImageVersion] = field(default_factory=list)
    commit_links: dict[int, str] = field(default_factory=dict)  # version id → commit page
    compare_url: str = ""
    signoff: Signoff | None = None

    @property
    def lines(self) -> list[tuple[str, str]]:
        """The change as (label, text) pairs, for notifications and commands."""
        image = self.run.image
        found = [("Build", image.build_url or "not given at registration")]
        if self.run.note:
            found.append(("Requester's note", self.run.note))
        if self.signoff is not None:
            s = self.signoff
            found.append(
                (
                    "UAT sign-off",
                    f"{s.user.get_username()} at {s.created_at:%Y-%m-%d %H:%M} UTC in "
                    f"{s.environment}" + (f": {s.note}" if s.note else ""),
                )
            )
        found.append(("Image scan", image.scan_summary or "not read"))
        commits = "; ".join(
            f"{v.short_sha} {v.commit_message.splitlines()[0] if v.commit_message else v.tag}"
            for v in self.versions
        )
        found.append(("Commits", commits or "none"))
        if self.compare_url:
            found.append(("Compare", self.compare_url))
        return found


def change_of(run: Run) -> Change:
    """What ``run`` changes: two queries (versions, sign-off), once per page
    (``one_reading``)."""
    return once(("change", run.pk), lambda: _change_of(run))


def _change_of(run: Run) -> Change:
    old = run.from_image
    versions = versions_between(old, run.image)
    repository_url = run.environment.application.repository_url
    signoff = (
        Signoff.objects.filter(
            image=run.image, environment__application_id=run.environment.application_id
        )
        .select_related("user", "environment__environment", "environment__application")
        .order_by("-created_at", "-id")
        .first()
    )
    for version in versions:
        version.commit_link = commit_url(repository_url, version.git_sha) if repository_url else ""
    return Change(
        run,
        versions,
        {v.pk: v.commit_link for v in versions},
        compare_url(repository_url, old, run.image) if repository_url else "",
        signoff,
    )
