"""What every CI command shares: who acts, how names are looked up, what is printed, exit codes.

A pipeline trusts the exit code and reads the output, so the commands agree on both:

* ``--as USER`` (default ``$OPSWEB_USER``): an existing, active user. The services check the
  permission each action needs, exactly as they do for the admin.
* ``--json``: one JSON object on stdout (human-readable text otherwise); messages and the live
  log of a run followed with ``--wait`` go to stderr.
* Exit codes: 0 done (with ``--wait``: the run succeeded); 1 the run ended failed, rejected,
  cancelled, expired, superseded or stopped; 2 refused or invalid input, nothing written; 3
  ``--wait`` timed out (the run goes on); 4 (``register_image --wait``) registered, not deployed.

Commands are thin: ``act()`` parses, calls ``opsweb.services`` and returns an ``Outcome``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError, InterfaceError, OperationalError, close_old_connections
from django.db.models import Q

from opsweb import services
from opsweb.models import (
    TERMINAL_STATUSES,
    Application,
    Environment,
    ImageVersion,
    Run,
    RunStatus,
    Target,
)
from opsweb.services import validation_sentence

EXIT_DONE = 0
EXIT_RUN_FAILED = 1
EXIT_REFUSED = 2
EXIT_TIMED_OUT = 3
# register_image --wait only: the version is recorded, but no environment that auto-deploys its
# branch took it (paused, frozen, refused): CI must not read the build as deployed.
EXIT_NOT_DEPLOYED = 4

POLL_SECONDS = 0.5
DEFAULT_TIMEOUT = 1800.0
LAST_EVENTS = 10
# Ids are bigints; a longer string of digits cannot be one (and would overflow the lookup).
MAX_ID_DIGITS = 18
ENDED_BADLY = TERMINAL_STATUSES - {RunStatus.SUCCEEDED}

# Lookups match the whole string (fullmatch), never a prefix.
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

IMAGE_HELP = "An image id, repo:tag, repo@sha256:…, or a tag unique across repositories."


def refused(message: str) -> CommandError:
    """Exit 2: the command was refused or its input was invalid, and nothing was written."""
    return CommandError(message, returncode=EXIT_REFUSED)


def _usage_error(message: str):
    raise refused(f"Error: {message}")


@dataclass
class Outcome:
    """What a command did: a sentence for people, fields for JSON, the runs ``--wait`` follows."""

    message: str
    data: dict[str, Any] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)


class OpswebCommand(BaseCommand):
    """Base of the CI commands. Subclasses define ``add_command_arguments`` and ``act``."""

    # CI runs `manage.py check` once per pipeline; repeating the system checks in every
    # command only adds startup time (see benchmarks/register_image.py).
    requires_system_checks: list[str] = []
    # True when the action results in a run: adds --wait and --timeout and the "run" fields.
    waits = False
    # Read-only commands run without --as (a log reader or a cron job need no identity).
    read_only = False
    # Commands that name an environment take --app: the application deployed there.
    per_application = True

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        if not parser.called_from_command_line:
            # From a shell argparse exits 2 by itself; through call_command Django would raise
            # CommandError with returncode 1, which a caller would read as "the run failed".
            parser.error = _usage_error
        # How messages name each input: --option, or the metavar of a positional argument.
        self.input_names = {
            action.dest: min(action.option_strings, key=len)
            if action.option_strings
            else (action.metavar or action.dest.upper())
            for action in parser._actions
        }
        return parser

    def add_arguments(self, parser):
        self.add_command_arguments(parser)
        common = parser.add_argument_group("opsweb")
        common.add_argument(
            "--as",
            dest="as_user",
            metavar="USER",
            default="",
            help="The user to act as (default: $OPSWEB_USER).",
        )
        common.add_argument(
            "--json", dest="as_json", action="store_true", help="Print one JSON object on stdout."
        )
        if self.per_application:
            common.add_argument(
                "--app",
                metavar="SLUG",
                default="",
                help="The application (default: $OPSWEB_APP; may be left out where there is one).",
            )
        if self.waits:
            common.add_argument(
                "--wait",
                action="store_true",
                help="Follow the run to its end: exit 0 if it succeeded, 1 if not, 3 on timeout.",
            )
            common.add_argument(
                "--timeout",
                default=DEFAULT_TIMEOUT,
                metavar="SEC",
                help=f"How long --wait waits (default {DEFAULT_TIMEOUT:g}s); the run goes on.",
            )

    def add_command_arguments(self, parser) -> None:
        """Arguments of this command."""

    def act(self, user, options: dict[str, Any]) -> Outcome:
        raise NotImplementedError

    def exit_code_without_wait(self, runs: list[Run]) -> tuple[int, str]:
        """A request that was accepted is done, whatever its run does later."""
        return EXIT_DONE, ""

    # -- the common flow -----------------------------------------------------------------

    def handle(self, *args, **options):
        self.as_json = bool(options.get("as_json"))
        self.verbosity = options.get("verbosity", 1)
        try:
            check_text(options, getattr(self, "input_names", {}))
            username = options.get("as_user") or os.environ.get("OPSWEB_USER", "")
            user = None if self.read_only and not username else find_user(username)
            wait = bool(options.get("wait"))
            timeout = parse_timeout(options.get("timeout")) if wait else None
            outcome = self._act(user, options)
        except CommandError as exc:
            if self.as_json:
                self._print_json({"ok": False, "exit_code": exc.returncode, "error": str(exc)})
            raise
        if wait and outcome.runs:
            code, problem = self.wait_for(outcome.runs, timeout)
        else:
            code, problem = self.exit_code_without_wait(outcome.runs)
        self.report(outcome, code, problem)
        if code:
            raise CommandError(problem, returncode=code)

    def _act(self, user, options) -> Outcome:
        try:
            return self.act(user, options)
        except services.ReleaseError as exc:  # NotAllowed included: the services' sentence
            raise refused(str(exc)) from None
        except ValidationError as exc:
            raise refused(validation_sentence(exc)) from None
        except IntegrityError as exc:
            # Two requests raced and the database kept one; this one wrote nothing.
            raise refused(
                f"The database refused the change because another one got there first ({exc}); "
                f"nothing was written. Run the command again."
            ) from None

    def wait_for(self, runs: list[Run], timeout: float) -> tuple[int, str]:
        """Poll the runs until they end or the timeout passes, streaming their log to stderr."""
        deadline = time.monotonic() + timeout
        seen: dict[int, int] = {}
        while True:
            try:
                for run in runs:
                    run.refresh_from_db()
                    self.stream_events(run, seen)
            except (OperationalError, InterfaceError) as exc:
                # A long wait can outlive a database failover: reconnect at the next poll.
                self.stderr.write(f"Database unavailable while waiting ({exc}); retrying.")
                close_old_connections()
            if all(run.is_terminal for run in runs):
                return ending(runs)
            if time.monotonic() >= deadline:
                going_on = [run for run in runs if not run.is_terminal]
                return EXIT_TIMED_OUT, " ".join(
                    f"Run #{run.pk} is still {run.get_status_display().lower()} after "
                    f"{timeout:g}s; it goes on (follow it with: manage.py run_status {run.pk} "
                    f"--wait)."
                    for run in going_on
                )
            time.sleep(POLL_SECONDS)

    def stream_events(self, run: Run, seen: dict[int, int]) -> None:
        events = run.events.filter(pk__gt=seen.get(run.pk, 0)).order_by("id")
        for event in events:
            seen[run.pk] = event.pk
            if self.verbosity != 0:
                self.stderr.write(
                    f"run #{run.pk} {event.created_at:%H:%M:%S} {event.level}: {event.message}",
                    style_func=lambda text: text,
                )

    def report(self, outcome: Outcome, code: int, problem: str) -> None:
        if self.as_json:
            data = {"ok": code == EXIT_DONE, "exit_code": code, "message": outcome.message}
            if problem:
                data["error"] = problem
            data.update(outcome.data)
            if self.waits:
                data["run"] = run_payload(outcome.runs[0]) if outcome.runs else None
                data["runs"] = [run_payload(run) for run in outcome.runs]
            self._print_json(data)
            return
        lines = [outcome.message] if outcome.message else []
        for run in outcome.runs:
            lines += run_lines(run)
        self.stdout.write("\n".join(lines))

    def _print_json(self, data: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(data, default=str, ensure_ascii=False))


def ending(runs: list[Run]) -> tuple[int, str]:
    """Exit code and sentence for runs that have all ended."""
    bad = [run for run in runs if run.status in ENDED_BADLY]
    if not bad:
        return EXIT_DONE, ""
    return EXIT_RUN_FAILED, " ".join(problem_sentence(run) for run in bad)


def problem_sentence(run: Run) -> str:
    detail = run.error or (run.events.order_by("-id").values_list("message", flat=True).first())
    return f"Run #{run.pk} {run.status_phrase}" + (f": {detail}" if detail else ".")


# -- input ----------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(options: dict[str, Any], names: dict[str, str]) -> None:
    """Refuse text no database stores faithfully: NUL characters and unencodable surrogates
    (argv that was not UTF-8)."""
    for dest, value in options.items():
        if not isinstance(value, str):
            continue
        name = names.get(dest, "--" + dest.replace("_", "-"))
        if "\x00" in value:
            raise refused(f"{name} contains a NUL character; remove it.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise refused(f"{name} {value!r} is not valid UTF-8 text.") from None


def check_one_line(option: str, value: str) -> None:
    if _CONTROL.search(value):
        raise refused(
            f"{option} {value!r} contains a control character such as a newline; "
            f"give it on one line."
        )


def parse_timeout(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise refused(f"--timeout {value!r} is not a number of seconds.") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise refused(f"--timeout {value!r} must be a positive number of seconds.")
    return seconds


def parse_iso_datetime(option: str, value: str) -> datetime | None:
    """An ISO 8601 date and time; one without an offset is taken as UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise refused(
            f"{option} {value!r} is not an ISO 8601 date and time such as "
            f"2025-01-31T14:05:00+00:00 (`git log -1 --format=%cI` prints one)."
        ) from None


# -- lookups --------------------------------------------------------------------------------


def find_user(username: str):
    if not username:
        raise refused("No user to act as: pass --as USER or set OPSWEB_USER.")
    User = get_user_model()
    user = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()
    if user is None:
        raise refused(f"User {username!r} does not exist.")
    if not user.is_active:
        raise refused(f"User {username!r} is inactive.")
    return user


def require_perm(user, perm: str, action: str) -> None:
    """For read-only commands given ``--as``; the services check the permissions of every
    change. Without ``--as`` (``user`` None) a read-only command runs as the operator of this
    shell, who can read the database anyway."""
    if user is not None and not user.has_perm(f"opsweb.{perm}"):
        raise refused(f"User {user.get_username()} is not allowed to {action}.")


def find_application(value: str | None = None) -> Application:
    """The application ``value`` names (slug, or name ignoring case; default
    ``$OPSWEB_APP``); without one, the only application there is. Raises CommandError (exit 2)
    for an unknown slug, or when several applications exist and none was named."""
    value = (value or os.environ.get("OPSWEB_APP", "")).strip()
    applications = Application.objects.order_by("slug")
    if value:
        found = (
            applications.filter(slug=value).first()
            or applications.filter(name__iexact=value).first()
        )
        if found is None:
            known = ", ".join(applications.values_list("slug", flat=True)) or "none"
            raise refused(f"No application {value!r}; known applications: {known}.")
        return found
    first_two = list(applications[:2])
    if len(first_two) == 1:
        return first_two[0]
    if not first_two:
        raise refused(
            "No application yet: create one with manage.py create_application "
            "(or manage.py bootstrap for the sample)."
        )
    known = ", ".join(applications.values_list("slug", flat=True)[:20])
    raise refused(f"Several applications are released here ({known}): name one with --app SLUG.")


def find_environment(value: str, application: str | Application | None = None) -> Target:
    """The target of ``application`` (see ``find_application``) in the environment ``value``
    (slug, or name ignoring case). Raises CommandError (exit 2) when either is unknown or the
    application is not deployed there."""
    app = application if isinstance(application, Application) else find_application(application)
    targets = Target.objects.filter(application=app).select_related("application", "environment")
    environment = (
        targets.filter(environment__slug=value).first()
        or targets.filter(environment__name__iexact=value).first()
    )
    if environment is None:
        known = ", ".join(targets.values_list("environment__slug", flat=True)) or "none"
        if Environment.objects.filter(Q(slug=value) | Q(name__iexact=value)).exists():
            raise refused(f"{app} is not deployed into {value!r}; its environments: {known}.")
        raise refused(f"No environment {value!r}; known environments: {known}.")
    return environment


def _as_id(value: str) -> int | None:
    value = value.removeprefix("#")
    if value.isascii() and value.isdigit() and len(value) <= MAX_ID_DIGITS:
        return int(value)
    return None


def find_run(value: str, application: str | None = None) -> Run:
    """The run with id ``value``. A run id names one run whatever the application; when an
    application is named (``--app`` or ``$OPSWEB_APP``) the run must be one of its runs, so a
    pipeline of one application never approves or stops another's by a mistyped id."""
    run_id = _as_id(str(value).strip())
    if run_id is None:
        raise refused(f"{value!r} is not a run id; give a number such as 12.")
    run = (
        Run.objects.select_related("environment__environment", "environment__application", "image")
        .filter(pk=run_id)
        .first()
    )
    if run is None:
        raise refused(f"Run #{run_id} does not exist.")
    if application or os.environ.get("OPSWEB_APP"):
        app = find_application(application)
        if run.environment.application_id != app.pk:
            raise refused(
                f"Run #{run_id} is a run of {run.environment.application.slug}, not of "
                f"{app.slug}; give its application with --app "
                f"{run.environment.application.slug}."
            )
    return run


def find_image(value: str, *, application: str | None = None) -> ImageVersion:
    """An id, ``repo:tag``, ``repo@sha256:…``, ``sha256:…`` or a tag unique across
    repositories — among ``application``'s versions when one is named (or ``$OPSWEB_APP`` is
    set). A number that is both an id and a tag is ambiguous and refused."""
    value = str(value).strip()
    images = ImageVersion.objects.order_by("repository", "tag")
    if application or os.environ.get("OPSWEB_APP"):
        images = images.filter(application=find_application(application))
    if "@" in value:
        repository, _, digest = value.partition("@")
        if not DIGEST.fullmatch(digest):
            raise refused(
                f"Image {value!r}: {digest!r} after '@' is not a digest "
                f"('sha256:' followed by 64 lowercase hex characters)."
            )
        matches = list(images.filter(repository=repository, digest=digest))
    elif value.startswith("sha256:"):
        matches = list(images.filter(digest=value))
    else:
        repository, colon, tag = value.rpartition(":")
        if colon and repository and "/" not in tag:
            matches = list(images.filter(repository=repository, tag=tag))
        else:
            matches = list(images.filter(tag=value))
            image_id = _as_id(value)
            if image_id is not None:
                by_id = images.filter(pk=image_id).first()
                if by_id is not None and by_id not in matches:
                    matches.insert(0, by_id)
    if not matches:
        raise refused(f"No image {value!r}. {IMAGE_HELP}")
    if len(matches) > 1:
        candidates = ", ".join(image_label(image) for image in matches[:10])
        raise refused(
            f"Image {value!r} is ambiguous: it matches {candidates}. Give the id, repo:tag or "
            f"repo@digest."
        )
    return matches[0]


# -- output ---------------------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def when(moment: datetime | None) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if moment else "-"


def image_label(image: ImageVersion) -> str:
    return f"#{image.pk} {image.repository}:{image.tag} ({image.short_digest})"


def image_payload(image: ImageVersion | None) -> dict[str, Any] | None:
    if image is None:
        return None
    return {
        "id": image.pk,
        "repository": image.repository,
        "tag": image.tag,
        "digest": image.digest,
        "git_sha": image.git_sha,
        "branch": image.branch,
        "committed_at": iso(image.committed_at),
        "build_url": image.build_url,
        "registered_at": iso(image.registered_at),
        "is_bad": image.is_bad,
        "bad_reason": image.bad_reason,
        "scan": {
            "checked_at": iso(image.scan_checked_at),
            "status": image.scan_status,
            "counts": image.scan_counts,
            "top_ids": image.scan_top_ids,
        },
    }


def run_payload(run: Run, *, events: int = LAST_EVENTS) -> dict[str, Any]:
    duration = run.duration
    last = list(run.events.order_by("-id")[:events])[::-1]
    return {
        "id": run.pk,
        "kind": run.kind,
        "status": run.status,
        "step": run.step,
        "application": run.environment.application.slug,
        "environment": run.environment.slug,
        "source_environment": run.source_environment.slug if run.source_environment else None,
        "image": image_payload(run.image),
        "replaces": image_payload(run.from_image),
        "switched_at": iso(run.switched_at),
        "requested_by": services.actor_name(run.requested_by),
        "reason": run.reason,
        "note": run.note,
        "required_approvals": run.required_approvals,
        "approvals_counting": services.approvals_count(run) if run.required_approvals else None,
        "approval_rules": services.quorum_progress(run).as_json(),
        "freeze_override_reason": run.freeze_override_reason or None,
        "quorum_unreachable": services.unreachable_quorum(run) or None,
        "triggered_by": run.triggered_by_id,
        "stop": {
            "requested_at": iso(run.stop_requested_at),
            "requested_by": services.actor_name(run.stop_requested_by)
            if run.stop_requested_by_id
            else None,
            "reason": run.stop_reason,
        }
        if run.stop_requested_at
        else None,
        "approvals": [
            {
                "user": approval.user.get_username(),
                "decision": approval.decision,
                "comment": approval.comment,
                "digest": approval.digest,
                "at": iso(approval.created_at),
            }
            for approval in run.approvals.select_related("user")
        ],
        "created_at": iso(run.created_at),
        "queued_at": iso(run.queued_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_seconds": duration.total_seconds() if duration else None,
        "restore_seconds": run.restore_seconds,
        "error": run.error,
        "signals": run.signals,
        "events": [
            {"at": iso(event.created_at), "level": event.level, "message": event.message}
            for event in last
        ],
    }


def run_lines(run: Run, *, events: int = 0) -> list[str]:
    """A run for a log reader: what, where, status; with ``events``, its last log lines."""
    lines = [
        f"Run #{run.pk}: {run.get_kind_display().lower()} {services.describe(run.image)} to "
        f"{run.environment}: {run.get_status_display().lower()}"
        + (f" ({run.step})" if run.step and run.step != run.status else "")
    ]
    timings = [f"requested by {services.actor_name(run.requested_by)} at {when(run.created_at)}"]
    if run.started_at:
        timings.append(f"started {when(run.started_at)}")
    if run.finished_at:
        timings.append(f"finished {when(run.finished_at)}")
    if run.duration:
        timings.append(f"took {run.duration.total_seconds():.1f}s")
    lines.append("  " + "; ".join(timings))
    decisions = [
        f"{a.user.get_username()} {a.get_decision_display().lower()}"
        + (f" ({a.comment})" if a.comment else "")
        for a in run.approvals.select_related("user")
    ]
    if run.required_approvals:
        lines.append(
            f"  approvals: {services.approvals_text(run)}"
            + (": " + ", ".join(decisions) if decisions else "")
        )
    elif run.kind == "rollback" and run.requested_by is None and run.triggered_by_id:
        lines.append(f"  started by opsweb after run #{run.triggered_by_id} failed")
    elif decisions:
        lines.append("  no approvals needed; " + ", ".join(decisions))
    if run.freeze_override_reason:
        lines.append(f"  emergency override of the freeze: {run.freeze_override_reason}")
    unreachable = services.unreachable_quorum(run)
    if unreachable:
        lines.append(f"  warning: {unreachable}")
    if run.is_stopping:
        lines.append(
            f"  stopping: asked by {services.actor_name(run.stop_requested_by)} at "
            f"{when(run.stop_requested_at)}; it stops at its next safe point"
        )
    if run.error:
        lines.append(f"  error: {run.error}")
    if events:
        for event in list(run.events.order_by("-id")[:events])[::-1]:
            lines.append(f"  {event.created_at:%H:%M:%S} {event.level}: {event.message}")
    if not run.is_terminal:
        lines.append(f"  follow it with: manage.py run_status {run.pk} --wait")
    return lines
