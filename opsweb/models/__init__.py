"""The release domain: environments, image versions, runs and the record of every decision.

Models hold one-row invariants (a valid digest, a terminal run stays terminal, an approval is
never edited). Everything that spans rows or has side effects lives in ``opsweb.services``.

One module per concept; every public name is re-exported here, so ``from opsweb.models import
Run`` is the way to import them. Every model keeps the ``opsweb`` app label (Django derives it
from this package), so migrations and string references (``"opsweb.Run"``) are unchanged.
"""

from .api import (
    SCOPES,
    TOKEN_PREFIX,
    ApiToken,
    CredentialFailure,
    IdempotentRequest,
    TrustPolicy,
    UsedTokenId,
    WebhookDelivery,
    secret_digest,
)
from .environments import (
    Application,
    ApplicationRepository,
    ApprovalRule,
    ChangeWindow,
    Environment,
    Target,
    alarm_problems,
    link_flow,
    scope_problem,
)
from .identity import GroupMapping, OidcIdentity, SlackLink, SlackLinkCode, UserProfile
from .immutable import ImmutableModel, ImmutableQuerySet
from .notifications import (
    NotificationChannel,
    NotificationDelivery,
    NotificationEvent,
    SlackMessage,
)
from .records import AuditEntry, UsedSeal
from .runs import (
    ACTIVE_STATUSES,
    ALLOWED_TRANSITIONS,
    STATUS_PHRASES,
    TERMINAL_STATUSES,
    Approval,
    RollbackReason,
    Run,
    RunEvent,
    RunKind,
    RunStatus,
    Signoff,
    check_transition,
)
from .versions import (
    DIGEST_RE,
    GIT_SHA_RE,
    REPOSITORY_RE,
    TAG_RE,
    ImageVersion,
    validate_digest,
    validate_git_sha,
    validate_repository,
    validate_tag,
)

__all__ = [
    "GroupMapping",
    "OidcIdentity",
    "SlackLink",
    "UserProfile",
    "SlackLinkCode",
    "SlackMessage",
    "SCOPES",
    "TOKEN_PREFIX",
    "ApiToken",
    "CredentialFailure",
    "IdempotentRequest",
    "TrustPolicy",
    "UsedTokenId",
    "WebhookDelivery",
    "secret_digest",
    "ACTIVE_STATUSES",
    "ALLOWED_TRANSITIONS",
    "DIGEST_RE",
    "GIT_SHA_RE",
    "REPOSITORY_RE",
    "STATUS_PHRASES",
    "TAG_RE",
    "TERMINAL_STATUSES",
    "Application",
    "ApplicationRepository",
    "Approval",
    "ApprovalRule",
    "AuditEntry",
    "ChangeWindow",
    "Environment",
    "ImageVersion",
    "ImmutableModel",
    "ImmutableQuerySet",
    "NotificationChannel",
    "NotificationDelivery",
    "NotificationEvent",
    "RollbackReason",
    "Run",
    "RunEvent",
    "RunKind",
    "RunStatus",
    "Signoff",
    "Target",
    "UsedSeal",
    "alarm_problems",
    "check_transition",
    "link_flow",
    "scope_problem",
    "validate_digest",
    "validate_git_sha",
    "validate_repository",
    "validate_tag",
]
