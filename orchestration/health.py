"""HTTP health verification after a deploy: retried within a window, since a new version may
need a few seconds before it answers."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from orchestration.base import Progress, no_progress


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    attempts: int
    detail: str
    stopped: bool = False  # should_stop() said so between two attempts


def check_once(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    if not url.startswith(("http://", "https://")):
        return False, f"{url!r} is not an http(s) URL"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (scheme checked)
            body = response.read(200).decode(errors="replace")
            return 200 <= response.status < 300, f"HTTP {response.status} {body}".strip()
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode(errors="replace")
        return False, f"HTTP {exc.code} {body}".strip()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"no answer ({reason})"
    except Exception as exc:  # a malformed reply or URL is an unhealthy answer, not a crash
        return False, f"unusable answer ({exc.__class__.__name__}: {exc})"


def verify_health(
    url: str,
    *,
    window: float,
    interval: float = 1.0,
    progress: Progress = no_progress,
    should_stop=lambda: False,
) -> HealthResult:
    """Poll ``url`` every ``interval`` seconds until it answers 2xx or ``window`` seconds have
    passed; between two attempts, stop (``stopped``) when ``should_stop()`` is true."""
    deadline = time.monotonic() + window
    attempts = 0
    while True:
        attempts += 1
        healthy, detail = check_once(url)
        if healthy:
            return HealthResult(True, attempts, detail)
        if time.monotonic() + interval > deadline:
            return HealthResult(False, attempts, detail)
        progress(f"Health check attempt {attempts}: {detail}; retrying", None)
        if should_stop():
            return HealthResult(False, attempts, detail, stopped=True)
        time.sleep(interval)
