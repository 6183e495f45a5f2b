"""HTTP health verification after a deploy: retried within a window, since a new version may
need a few seconds before it answers."""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass

from orchestration import outbound
from orchestration.base import Progress, no_progress


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    attempts: int
    detail: str
    stopped: bool = False  # should_stop() said so between two attempts


def check_once(
    url: str, timeout: float = 3.0, *, allow: outbound.AllowList | None = None
) -> tuple[bool, str]:
    """One GET of ``url`` (``timeout`` seconds): (healthy, what it answered). Healthy is a 2xx;
    a redirect is an answer like any other (not followed), and a target ``allow`` (default:
    the configured allow-list) does not admit is unhealthy without a request."""
    try:
        answer = outbound.request(
            url, timeout=timeout, allow=allow, limit=200, what="The health URL"
        )
    except outbound.OutboundRefused as exc:
        return False, f"not checked: {exc}"
    except OSError as exc:
        return False, f"no answer ({exc})"
    except (http.client.HTTPException, ValueError) as exc:  # a malformed reply is unhealthy
        return False, f"unusable answer ({exc.__class__.__name__}: {exc})"
    body = answer.body.decode(errors="replace")
    if 300 <= answer.status < 400:
        body = f"redirect to {answer.location or '?'} (not followed) {body}"
    return answer.ok, f"HTTP {answer.status} {body}".strip()


def verify_health(
    url: str,
    *,
    window: float,
    interval: float = 1.0,
    progress: Progress = no_progress,
    allow: outbound.AllowList | None = None,
    should_stop=lambda: False,
) -> HealthResult:
    """Poll ``url`` every ``interval`` seconds until it answers 2xx or ``window`` seconds have
    passed; ``allow`` is passed to ``check_once``; between two attempts, stop (``stopped``)
    when ``should_stop()`` is true."""
    deadline = time.monotonic() + window
    attempts = 0
    while True:
        attempts += 1
        healthy, detail = check_once(url, allow=allow)
        if healthy:
            return HealthResult(True, attempts, detail)
        if time.monotonic() + interval > deadline:
            return HealthResult(False, attempts, detail)
        progress(f"Health check attempt {attempts}: {detail}; retrying", None)
        if should_stop():
            return HealthResult(False, attempts, detail, stopped=True)
        time.sleep(interval)
