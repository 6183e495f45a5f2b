"""Requests and decisions, by their former single name: ``requests``, ``decisions``,
``rollbacks`` and ``environments`` hold them now. Kept so ``opsweb.services.releases.X`` still
works for callers written before the split; new code imports from ``opsweb.services``."""

from opsweb.services.decisions import (
    approve_run,
    cancel_run,
    reject_run,
    sign_off_uat,
    stop_run,
)
from opsweb.services.environments import (
    Registration,
    auto_deploy_refusal,
    catch_up,
    changing_windows,
    record_configuration,
    register_image,
    resume_auto_deploy,
    set_frozen,
)
from opsweb.services.requests import expire, expire_held, request_deploy, request_promotion, settle
from opsweb.services.rollbacks import mark_bad, resolve_rollback, roll_back, take_back

__all__ = [
    "Registration",
    "approve_run",
    "auto_deploy_refusal",
    "cancel_run",
    "catch_up",
    "changing_windows",
    "expire",
    "expire_held",
    "mark_bad",
    "record_configuration",
    "register_image",
    "reject_run",
    "request_deploy",
    "request_promotion",
    "resolve_rollback",
    "resume_auto_deploy",
    "roll_back",
    "set_frozen",
    "settle",
    "sign_off_uat",
    "stop_run",
    "take_back",
]
