"""Trigger alarms opsweb watches after a switch and on a schedule: CloudWatch alarms and local
HTTP metrics during a bake, and ECR image scan findings. Plain dataclasses out; which reader an
environment uses is its backend's choice (``DeployBackend.read_alarms``).

Errors are ``DeployError`` with a sentence (an alarm that does not exist, a metric endpoint
that does not answer, a scan ECR has not made), so the caller records and decides.
"""

from __future__ import annotations

import http.client
import json
import math
from dataclasses import dataclass, field

from orchestration import outbound
from orchestration.base import DeployError

# boto3 loads only when an AWS alarm or scan is read: a registration or a local bake does not
# pay for it (tests/test_commands.py pins it).

SEVERITIES = ["INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"]


@dataclass(frozen=True)
class AlarmState:
    """One alarm as read now: ``state`` is OK, ALARM or INSUFFICIENT_DATA."""

    name: str
    kind: str
    state: str
    reason: str = ""
    value: float | None = None

    @property
    def firing(self) -> bool:
        return self.state == "ALARM"

    def sentence(self) -> str:
        value = "" if self.value is None else f" (value {self.value:g})"
        return f"alarm {self.name} is {self.state}{value}: {self.reason or 'no reason given'}"


@dataclass(frozen=True)
class ScanFindings:
    """An image's scan: counts by severity (``CRITICAL`` → 2) and the worst CVE ids first."""

    status: str
    counts: dict[str, int] = field(default_factory=dict)
    top_ids: list[str] = field(default_factory=list)
    detail: str = ""


def read_alarms(
    names: list[str], kinds: dict[str, str], *, region: str, endpoint_url: str = "", client=None
) -> list[AlarmState]:
    """CloudWatch alarms by name (cloudwatch:DescribeAlarms), in the order asked. An alarm
    CloudWatch does not have is a DeployError: a bake must not pass because it watched
    nothing. The value is the newest datapoint in the state reason's data, when present."""
    if not names:
        return []
    from botocore.exceptions import BotoCoreError, ClientError

    from orchestration.ecs import aws_error, make_client

    client = client or make_client("cloudwatch", region=region, endpoint_url=endpoint_url)
    try:
        found = client.describe_alarms(AlarmNames=names)["MetricAlarms"]
    except (ClientError, BotoCoreError) as exc:
        raise aws_error(exc, service="cloudwatch", docs="docs/alarms.md") from exc
    by_name = {alarm["AlarmName"]: alarm for alarm in found}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise DeployError(
            f"CloudWatch has no alarm named {', '.join(missing)} in {region}; fix the "
            f"environment's alarms."
        )
    return [_alarm_state(by_name[name], kinds.get(name, "errors")) for name in names]


def _alarm_state(alarm: dict, kind: str) -> AlarmState:
    value = None
    try:
        data = json.loads(alarm.get("StateReasonData") or "{}")
        points = data.get("recentDatapoints") or []
        value = float(points[-1]) if points else None
    except (ValueError, TypeError):
        pass
    return AlarmState(
        name=alarm["AlarmName"],
        kind=kind,
        state=alarm.get("StateValue", "INSUFFICIENT_DATA"),
        reason=alarm.get("StateReason", ""),
        value=value,
    )


def read_http_metric(
    spec: dict, *, timeout: float = 5.0, allow: outbound.AllowList | None = None
) -> AlarmState:
    """A local alarm: GET ``spec['url']`` (JSON, within ``timeout`` seconds), read
    ``spec['field']`` (dotted path) and compare with ``spec['threshold']``: above it is ALARM.
    An endpoint that does not answer (or answers other than 2xx, redirects included: they are
    not followed), a target ``allow`` refuses, a missing field or a value that is no usable
    number (NaN, too large for a float) is INSUFFICIENT_DATA with the
    reason (a process restarting is not an alarm; the health check already judged whether it
    runs)."""
    name = spec.get("name") or f"{spec['field']} at {spec['url']}"
    kind = spec.get("kind", "errors")
    try:
        answer = outbound.request(
            spec["url"], timeout=timeout, allow=allow, limit=1024 * 1024, what="The alarm URL"
        )
        if not answer.ok:
            raise ValueError(f"HTTP {answer.status}")
        value: object = json.loads(answer.body)
        for part in str(spec["field"]).split("."):
            value = value[part]  # type: ignore[index]
        number = float(value)  # type: ignore[arg-type]
        if math.isnan(number):  # compares as neither above nor below: an alarm that never fires
            raise ValueError(f"{spec['field']} is not a number ({value!r})")
    except (
        OverflowError,  # an integer too large for a float
        OSError,
        outbound.OutboundRefused,
        http.client.HTTPException,
        ValueError,
        KeyError,
        TypeError,
    ) as exc:
        return AlarmState(name, kind, "INSUFFICIENT_DATA", f"could not read it: {exc}")
    threshold = float(spec["threshold"])
    if number > threshold:
        return AlarmState(name, kind, "ALARM", f"{number:g} is above {threshold:g}", number)
    return AlarmState(name, kind, "OK", f"{number:g} is at most {threshold:g}", number)


def scan_findings(
    *, repository: str, digest: str, region: str, endpoint_url: str = "", client=None
) -> ScanFindings:
    """ECR's scan findings for ``repository@digest`` (ecr:DescribeImageScanFindings): counts
    by severity and up to five CVE ids, worst first. A scan ECR has not made (or is still
    making) comes back with its status and no counts; a repository or image ECR lacks is a
    DeployError."""
    from botocore.exceptions import BotoCoreError, ClientError

    from orchestration.ecs import aws_error, make_client, split_ecr_repository

    registry, repo_region, name = split_ecr_repository(repository)
    client = client or make_client("ecr", region=repo_region or region, endpoint_url=endpoint_url)
    params = {"repositoryName": name, "imageId": {"imageDigest": digest}}
    if registry:
        params["registryId"] = registry
    try:
        answer = client.describe_image_scan_findings(**params)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ScanNotFoundException":
            return ScanFindings("NOT_SCANNED", detail="ECR has no scan of this image")
        raise aws_error(exc, service="ecr", docs="docs/alarms.md") from exc
    except BotoCoreError as exc:
        raise aws_error(exc, service="ecr", docs="docs/alarms.md") from exc
    status = answer.get("imageScanStatus", {}).get("status", "COMPLETE")
    found = answer.get("imageScanFindings", {})
    counts = {k: int(v) for k, v in (found.get("findingSeverityCounts") or {}).items() if v}
    rank = {severity: i for i, severity in enumerate(SEVERITIES)}
    findings = sorted(
        found.get("findings") or [], key=lambda f: -rank.get(f.get("severity", ""), -1)
    )
    top = [f["name"] for f in findings if f.get("name")][:5]
    return ScanFindings(
        status, counts, top, answer.get("imageScanStatus", {}).get("description", "")
    )


def at_or_above(counts: dict[str, int], severity: str) -> dict[str, int]:
    """The counts of ``severity`` and worse ({} when ``severity`` is empty or none)."""
    if severity not in SEVERITIES:
        return {}
    worse = SEVERITIES[SEVERITIES.index(severity) :]
    return {s: counts[s] for s in reversed(worse) if counts.get(s)}
