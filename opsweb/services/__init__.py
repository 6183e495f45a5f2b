"""Every state change in opsweb. Admin buttons, management commands and tasks call these and
nothing else changes a run's status.

Functions take keyword-only arguments and ``user=``; they are atomic and raise ``ReleaseError``
(or ``NotAllowed`` for a missing permission) with a sentence a person can act on.

The one entry point for callers (admin, commands, tasks, board): it also re-exports the reads
(``opsweb.reads``) and errors (``opsweb.errors``) they need, and the namespaces ``alarms``,
``running`` and ``facts``. Callers never import ``opsweb.services.<module>`` themselves
(``tests/test_layers.py``).
"""

from opsweb.errors import NotAllowed, ReleaseError
from opsweb.reads import (
    OVERRIDE_GROUP,
    approval_deadline,
    approval_rules,
    decided_ids,
    facts,  # services.facts: what a confirmation page shows (a read)
    may_count,
    older_than,
    one_reading,
    rule_counts,
)
from opsweb.reads.history import (
    behind_sentence,
    builds_behind,
    describe,
    last_success,
    previous_stable_version,
    waiting_builds,
)
from opsweb.reads.quorum import (
    approval_counts,
    approvals_count,
    approvals_text,
    counting_approvals,
    counting_approvals_annotation,
    eligible_approvers,
    is_approver,
    quorum_progress,
    rule_count_annotation,
    rule_filled_by,
    unreachable_quorum,
)
from opsweb.services import (
    alarms,  # services.alarms: what opsweb decides from trigger alarms
    running,  # services.running: a worker running one claimed run
)
from opsweb.services.accounts import (
    issue_slack_link_code,
    link_slack_user,
    record_refused_sign_in,
    set_time_zone,
    sign_in_with_sso,
    slack_actor,
    user_time_zone,
)
from opsweb.services.applications import (
    ApplicationSpec,
    application_listing,
    build_application,
    check_application,
    create_application,
)
from opsweb.services.base import (
    acting_token,
    actor_name,
    audit,
    check_seen,
    enqueue,
    forget_used_seals,
    seal,
    transition,
    unseal,
    validation_sentence,
)
from opsweb.services.decisions import approve_run, cancel_run, reject_run, sign_off_uat, stop_run
from opsweb.services.environments import (
    Registration,
    changing_windows,
    record_configuration,
    register_image,
    resume_auto_deploy,
    set_frozen,
)
from opsweb.services.execution import (
    catch_up_after_freezes,
    claim_next_run,
    drift_watch,
    expire_pending_runs,
    finish_lost_run,
    finish_run,
    finish_stopped,
    heartbeat,
    heartbeat_seconds,
    heartbeating,
    previous_ref,
    record_drift,
    record_lost_state,
    record_progress,
    record_switch,
    restart_stalled_queues,
    stalled_environments,
    stop_requested,
    take_over_lost_runs,
)
from opsweb.services.requests import request_deploy, request_promotion, settle
from opsweb.services.rollbacks import lift_bad_mark, mark_bad, roll_back
from opsweb.services.tokens import create_api_token, mint_ci_token, revoke_api_token

__all__ = [
    "set_time_zone",
    "user_time_zone",
    "acting_token",
    "create_api_token",
    "mint_ci_token",
    "revoke_api_token",
    "facts",
    "issue_slack_link_code",
    "link_slack_user",
    "record_refused_sign_in",
    "sign_in_with_sso",
    "slack_actor",
    "running",
    "OVERRIDE_GROUP",
    "approval_deadline",
    "approval_rules",
    "audit",
    "check_seen",
    "decided_ids",
    "forget_used_seals",
    "may_count",
    "older_than",
    "one_reading",
    "rule_counts",
    "seal",
    "unseal",
    "validation_sentence",
    "alarms",
    "NotAllowed",
    "ReleaseError",
    "Registration",
    "changing_windows",
    "actor_name",
    "ApplicationSpec",
    "application_listing",
    "build_application",
    "check_application",
    "create_application",
    "approval_counts",
    "approvals_count",
    "approvals_text",
    "approve_run",
    "behind_sentence",
    "builds_behind",
    "catch_up_after_freezes",
    "cancel_run",
    "claim_next_run",
    "counting_approvals",
    "counting_approvals_annotation",
    "describe",
    "eligible_approvers",
    "enqueue",
    "expire_pending_runs",
    "finish_lost_run",
    "drift_watch",
    "finish_run",
    "finish_stopped",
    "heartbeat",
    "heartbeat_seconds",
    "heartbeating",
    "is_approver",
    "last_success",
    "lift_bad_mark",
    "mark_bad",
    "previous_ref",
    "previous_stable_version",
    "quorum_progress",
    "rule_filled_by",
    "rule_count_annotation",
    "record_configuration",
    "record_drift",
    "record_lost_state",
    "record_progress",
    "record_switch",
    "register_image",
    "restart_stalled_queues",
    "reject_run",
    "request_deploy",
    "request_promotion",
    "resume_auto_deploy",
    "roll_back",
    "set_frozen",
    "settle",
    "sign_off_uat",
    "stalled_environments",
    "stop_requested",
    "stop_run",
    "take_over_lost_runs",
    "transition",
    "unreachable_quorum",
    "waiting_builds",
]
