"""The API's shapes (pydantic, through django-ninja): what each endpoint takes and returns.
Times are ISO 8601 strings; nested records the commands print as JSON keep that shape."""

from __future__ import annotations

from typing import Any, Literal

from ninja import Field, Schema
from pydantic import model_validator

from opsweb.limits import TEXT_MAX
from opsweb.models import RollbackReason


def Text():  # noqa: N802 (reads as a type in the schemas)
    return Field("", max_length=TEXT_MAX)


def text_problem(name: str, value: str) -> str:
    """Text no database stores faithfully: NUL characters, unpaired surrogates."""
    if "\x00" in value:
        return f"{name} contains a NUL character; remove it."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} is not valid UTF-8 text."
    return ""


class In(Schema):
    """A request body: every text field is refused with NUL characters or invalid UTF-8."""

    @model_validator(mode="after")
    def _storable_text(self):
        for name, value in self.__dict__.items():
            if isinstance(value, str) and (problem := text_problem(name, value)):
                raise ValueError(problem)
        return self


class Problem(Schema):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


class ImageOut(Schema):
    id: int
    application: str | None = None
    repository: str
    tag: str
    digest: str
    git_sha: str
    branch: str
    committed_at: str | None
    build_url: str
    registered_at: str | None
    is_bad: bool
    bad_reason: str
    scan: dict[str, Any]


class EventOut(Schema):
    at: str | None
    level: str
    message: str


class RunOut(Schema):
    id: int
    kind: str
    status: str
    terminal: bool
    step: str
    application: str
    environment: str
    source_environment: str | None
    image: ImageOut | None
    replaces: ImageOut | None
    requested_by: str | None
    reason: str
    note: str
    required_approvals: int
    approvals_counting: int | None
    approval_rules: Any
    freeze_override_reason: str | None
    quorum_unreachable: str | None
    triggered_by: int | None
    stop: dict[str, Any] | None
    approvals: list[dict[str, Any]]
    created_at: str | None
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    error: str
    events: list[EventOut]


class ActionOut(Schema):
    """A request that resulted in a run: the sentence the command prints, and the run."""

    message: str
    run: RunOut


class RegistrationOut(Schema):
    message: str
    created: bool
    image: ImageOut
    runs: list[RunOut]
    not_deployed: dict[str, str]


class SignoffOut(Schema):
    message: str
    id: int
    application: str
    environment: str
    image: ImageOut
    user: str
    note: str
    at: str | None


class ImageMarkedOut(Schema):
    message: str
    image: ImageOut


class TargetOut(Schema):
    """An application in an environment: what runs there, since when, what waits."""

    application: str
    slug: str
    name: str
    upstream: str | None
    current: ImageOut | None
    deployed_at: str | None
    deployed_by: str | None
    deployed_by_run: int | None
    pending_runs: list[dict[str, Any]]
    auto_deploy_branch: str
    auto_deploy_paused: bool
    paused_reason: str
    frozen: bool
    frozen_until: str | None
    freeze: str | None
    approval_rules: list[dict[str, Any]]
    runs_bad_version: bool
    behind: dict[str, Any] | None
    drift: Any
    drift_checked_at: str | None
    notices: list[str]


class EnvironmentsOut(Schema):
    application: str
    environments: list[TargetOut]


class ApplicationOut(Schema):
    slug: str
    name: str
    team: str | None
    auto_deploy_branch: str
    repository_url: str
    repositories: list[str]
    environments: list[str]


class ApplicationPage(Schema):
    items: list[ApplicationOut]
    next_cursor: str | None


class ImagePage(Schema):
    items: list[ImageOut]
    next_cursor: str | None


class RunPage(Schema):
    items: list[RunOut]
    next_cursor: str | None


class RegisterIn(In):
    repository: str = Field(..., max_length=255)
    tag: str = Field(..., max_length=128)
    digest: str = Field(..., max_length=71, description="sha256:<64 hex>")
    git_sha: str = Field("", max_length=40)
    branch: str = Field("", max_length=255)
    commit_message: str = Text()
    committed_at: str = Field("", max_length=64, description="ISO 8601")
    build_url: str = Field("", max_length=500)
    author_email: str = Field("", max_length=254)
    application: str = Field(
        "", max_length=50, description="Optional: refused unless it releases the repository."
    )


class DeployIn(In):
    image: str = Field(..., max_length=400, description="id, repo:tag, repo@sha256:… or a tag")
    note: str = Text()
    override_reason: str = Text()


class PromoteIn(In):
    source: str = Field("", max_length=100, description="Default: the upstream environment.")
    image: str = Field("", max_length=400, description="Default: what the source runs.")
    note: str = Text()
    override_reason: str = Text()


class RollbackIn(In):
    reason: Literal[tuple(RollbackReason.values)]  # type: ignore[valid-type]
    note: str = Text()


class SignoffIn(In):
    image: str = Field(..., max_length=400)
    note: str = Text()


class CommentIn(In):
    comment: str = Text()


class StopIn(In):
    reason: str = Text()


class MarkBadIn(In):
    reason: str = Field(..., max_length=TEXT_MAX)


class LiftBadMarkIn(In):
    reason: str = Field(
        ..., max_length=TEXT_MAX, description="Why it is no longer bad; kept in the audit trail."
    )


class OidcIn(In):
    token: str = Field(..., max_length=16000, description="The CI job's OIDC token (a JWT).")


class OidcOut(Schema):
    token: str
    expires_at: str
    user: str
    scopes: list[str]
    application: str | None
    trust_policy: str


class DoraOut(Schema):
    application: str
    environment: str
    report: dict[str, Any]


class WebhookOut(Schema):
    message: str
    registered: list[ImageOut]
