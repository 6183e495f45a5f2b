"""The settings of an EC2 environment: which keys there are, their defaults, and the sentence
for each wrong one."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from orchestration.base import SettingsError
from orchestration.ecs import (
    DEFAULT_MAX_ATTEMPTS,
    REGION_RE,
    _number,
    aws_settings_errors,
    endpoint_url_problem,
)

DEFAULT_PORT = 8000
DEFAULT_HEALTH_PATH = "/healthz"
DEFAULT_HEALTH_TIMEOUT = 120.0
DEFAULT_COMMAND_TIMEOUT = 600.0
DEFAULT_TARGET_TIMEOUT = 300.0
DEFAULT_POLL_INTERVAL = 5.0

CONTAINER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HEALTH_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/-]*$")
FILE_PATH_RE = re.compile(r"^(/[A-Za-z0-9_][A-Za-z0-9._-]*)+$")
PARAMETER_RE = re.compile(r"^/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
TAG_KEY_RE = re.compile(r"^[A-Za-z0-9 _.:/=+@-]{1,128}$")
TAG_VALUE_RE = re.compile(r"^[A-Za-z0-9 _.:/=+@-]{1,256}$")
GROUP_RE = re.compile(r"^[^:*?\s][^\s]{0,254}$")
COUNT_RE = re.compile(r"^(?P<number>\d{1,4})(?P<percent>%?)$")
TARGET_GROUP_RE = re.compile(
    r"^arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:\d{12}:targetgroup/[A-Za-z0-9-]{1,32}/"
    r"[0-9a-f]{16}$"
)
SETTINGS_KEYS = {
    "region",
    "auto_scaling_group",
    "tag_key",
    "tag_value",
    "container_name",
    "port",
    "health_path",
    "env_file",
    "batch_size",
    "max_errors",
    "target_group_arn",
    "image_parameter",
    "health_timeout",
    "command_timeout",
    "target_timeout",
    "poll_interval",
    "endpoint_url",
    "max_attempts",
}


def validate_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of an EC2 environment, checked and normalised (defaults filled in, numbers
    as numbers, batch sizes as "2" or "25%"); SettingsError with a sentence per wrong key."""
    errors = aws_settings_errors(settings, SETTINGS_KEYS, "EC2")
    text = {key: str(settings.get(key) or "").strip() for key in SETTINGS_KEYS}
    if not REGION_RE.match(text["region"]):
        errors["region"] = "Give the AWS region the instances are in, such as 'eu-west-1'."
    _check_selector(text, errors)
    if not CONTAINER_NAME_RE.match(text["container_name"]):
        errors["container_name"] = (
            "Give the name of the app's Docker container on the instances (letters, digits, "
            "'.', '-' and '_', at most 63)."
        )
    _pattern(
        text,
        "health_path",
        HEALTH_PATH_RE,
        "Give the path the container answers its health check on, such as '/healthz' "
        "(letters, digits and . _ ~ / - only).",
        errors,
    )
    _pattern(
        text,
        "env_file",
        FILE_PATH_RE,
        "Give the absolute path of the environment file on the instance, such as "
        "'/etc/app/app.env', or leave it empty.",
        errors,
    )
    _pattern(
        text,
        "target_group_arn",
        TARGET_GROUP_RE,
        "Give the ARN of an ELBv2 target group (arn:aws:elasticloadbalancing:…:targetgroup/"
        "name/id), or leave it empty for instances behind no load balancer.",
        errors,
    )
    _pattern(
        text,
        "image_parameter",
        PARAMETER_RE,
        "Give an SSM parameter name such as '/app/production/image', or leave it empty.",
        errors,
    )
    if problem := endpoint_url_problem(text["endpoint_url"]):
        errors["endpoint_url"] = problem
    batch_size = _count(settings, "batch_size", "1", low=1, errors=errors)
    max_errors = _count(settings, "max_errors", "0", low=0, errors=errors)
    seconds = "Give a number of seconds between {low:g} and {high:g}."
    numbers = {
        "port": _number(
            settings,
            "port",
            DEFAULT_PORT,
            (1, 65535),
            "Give the TCP port the app listens on, {low:g}–{high:g}.",
            errors,
            whole=True,
        ),
        "health_timeout": _number(
            settings, "health_timeout", DEFAULT_HEALTH_TIMEOUT, (1, 1800), seconds, errors
        ),
        "command_timeout": _number(
            settings, "command_timeout", DEFAULT_COMMAND_TIMEOUT, (1, 3600), seconds, errors
        ),
        "target_timeout": _number(
            settings, "target_timeout", DEFAULT_TARGET_TIMEOUT, (1, 3600), seconds, errors
        ),
        "poll_interval": _number(
            settings, "poll_interval", DEFAULT_POLL_INTERVAL, (0.01, 60), seconds, errors
        ),
        "max_attempts": _number(
            settings,
            "max_attempts",
            DEFAULT_MAX_ATTEMPTS,
            (1, 20),
            "Give a whole number of attempts between {low:g} and {high:g}.",
            errors,
            whole=True,
        ),
    }
    if errors:
        raise SettingsError(errors)
    return {
        "region": text["region"],
        "auto_scaling_group": text["auto_scaling_group"],
        "tag_key": text["tag_key"],
        "tag_value": text["tag_value"],
        "container_name": text["container_name"],
        "port": int(numbers["port"]),
        "health_path": text["health_path"] or DEFAULT_HEALTH_PATH,
        "env_file": text["env_file"],
        "batch_size": batch_size,
        "max_errors": max_errors,
        "target_group_arn": text["target_group_arn"],
        "image_parameter": text["image_parameter"],
        "health_timeout": numbers["health_timeout"],
        "command_timeout": numbers["command_timeout"],
        "target_timeout": numbers["target_timeout"],
        "poll_interval": numbers["poll_interval"],
        "endpoint_url": text["endpoint_url"],
        "max_attempts": int(numbers["max_attempts"]),
    }


def _check_selector(text: Mapping[str, str], errors: dict[str, str]) -> None:
    group, key, value = text["auto_scaling_group"], text["tag_key"], text["tag_value"]
    if group and (key or value):
        errors["auto_scaling_group"] = (
            "Give either auto_scaling_group or tag_key and tag_value, not both."
        )
    elif group:
        if not GROUP_RE.match(group):
            errors["auto_scaling_group"] = (
                "Give the Auto Scaling group's name (no spaces, at most 255 characters)."
            )
    elif not (key or value):
        errors["auto_scaling_group"] = (
            "Give the Auto Scaling group whose instances run the app, or tag_key and tag_value "
            "that those instances carry."
        )
    else:
        if not TAG_KEY_RE.match(key) or key.lower().startswith("aws:"):
            errors["tag_key"] = "Give the tag key the instances carry (not 'aws:…')."
        if not TAG_VALUE_RE.match(value):
            errors["tag_value"] = "Give the tag value the instances carry."


def _pattern(text, key, pattern, message, errors) -> None:
    if text[key] and not pattern.match(text[key]):
        errors[key] = message


def _count(settings, key, default, *, low, errors) -> str:
    """A whole number (at least ``low``) or a percentage 1–100, as a string such as "2" or
    "25%"; records a message in ``errors`` otherwise."""
    raw = str(settings.get(key) if settings.get(key) not in (None, "") else default).strip()
    found = COUNT_RE.match(raw)
    if found and found["percent"] and 1 <= int(found["number"]) <= 100:
        return f"{int(found['number'])}%"
    if found and not found["percent"] and int(found["number"]) >= low:
        return str(int(found["number"]))
    errors[key] = (
        f"Give a whole number of instances (at least {low}) or a percentage such as '25%'."
    )
