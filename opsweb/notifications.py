"""Notifications: what happened in the release flow, told to email, Slack or a signed webhook.

Events are named and called by the service that decided (``opsweb/events.py``, e.g.
``events.run_finished(run)``), never derived from audit entries or saves. ``notify`` writes
one ``NotificationDelivery`` per matching channel in the same transaction as the change, and
hands them to django-q2 only after it commits; the ``deliver`` task sends, and on failure
schedules itself again with backoff (30 s, 2 min, 8 min, 32 min; five attempts in all).
Nothing here ever raises into a release: a failure to record or send is logged and kept on
the delivery row.

Generic webhooks receive the JSON payload as the body, with these headers:

* ``X-Opsweb-Event``: the event name, e.g. ``run_failed``;
* ``X-Opsweb-Delivery``: the delivery id (the same on every retry);
* ``X-Opsweb-Timestamp``: Unix seconds when this attempt was sent;
* ``X-Opsweb-Signature``: ``sha256=`` + the hex HMAC-SHA256, keyed with the channel's secret,
  of ``<timestamp>.<raw body>``. A receiver recomputes it over the raw bytes it received,
  compares with ``hmac.compare_digest``, and refuses timestamps older than a few minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import re
import time
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from opsweb.metrics import human_duration
from opsweb.models import (
    NotificationChannel,
    NotificationDelivery,
    NotificationEvent,
    RollbackReason,
    Run,
    RunStatus,
)
from opsweb.reads.change import change_of
from opsweb.reads.quorum import run_rules
from orchestration import outbound

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BACKOFF_SECONDS = 30  # then ×4 per attempt: 30 s, 2 min, 8 min, 32 min
HTTP_TIMEOUT = 10
SIGNATURE_HEADER = "X-Opsweb-Signature"
TIMESTAMP_HEADER = "X-Opsweb-Timestamp"
Status = NotificationDelivery.Status


class DeliveryError(Exception):
    """A channel did not take the message; the text says why."""


# -- what happened --------------------------------------------------------------------------


def approval_text(run: Run) -> str:
    names = ", ".join(user.get_username() for user in approvers(run)) or "nobody yet"
    wanted = " and ".join(f"{rule.count} from {rule.label}" for rule in run_rules(run))
    override = (
        f" Emergency override of the freeze: {run.freeze_override_reason}."
        if run.freeze_override_reason
        else ""
    )
    contents = "\n".join(f"{label}: {text}" for label, text in change_of(run).lines)
    return (
        f"Run #{run.pk} waits for approval: {run.get_kind_display().lower()} of {run.image.tag} "
        f"to {run.environment}, asked by {run.requested_by or 'opsweb'}. It needs "
        f"{run.required_approvals} approval(s), {wanted}: {names}.{override}\n{contents}"
    )


def rollback_started_text(run: Run, *, by: str | None) -> str:
    """The sentence for a rollback that started; ``by`` is the username who asked for it,
    None when opsweb did."""
    by = by or "opsweb (failed health check)"
    reason = RollbackReason(run.reason).label if run.reason else "no reason"
    if run.resolve_at_start:
        was = "what runs when the deploy in progress ends"
    else:
        was = run.from_image.tag if run.from_image else "nothing"
    return (
        f"Rollback started in {run.environment} (run #{run.pk}) by {by}: from {was} to "
        f"{run.image.tag}, {reason.lower()}. {run.note}".strip()
    )


def rollback_finished_text(run: Run) -> str:
    rto = run.environment.rto_seconds
    if run.status != RunStatus.SUCCEEDED:
        return f"Rollback FAILED in {run.environment} (run #{run.pk}): {run.error[:300]}"
    restored = run.restore_seconds
    verdict = "met" if restored <= rto else "MISSED"
    return (
        f"Rollback finished in {run.environment} (run #{run.pk}): {run.image.tag} runs again. "
        f"Restored in {human_duration(restored)}; RTO target {rto}s {verdict}."
    )


def approvers(run: Run) -> list:
    """Who may approve ``run``: active members of the groups its approval rules name (and the
    override approvers for an emergency override), never the requester."""
    from django.contrib.auth import get_user_model

    groups = [rule.group_id for rule in run_rules(run) if rule.group_id]
    if not groups:
        return []
    people = get_user_model().objects.filter(groups__in=groups, is_active=True).distinct()
    if run.requested_by_id:
        people = people.exclude(pk=run.requested_by_id)
    return list(people.order_by("username"))


# -- recording ------------------------------------------------------------------------------


def notify(event: str, *, text: str, run: Run | None = None, environment=None) -> list:
    """Record a delivery of ``event`` for every enabled channel of the environment (or of all
    environments) that subscribed to it; send them once the transaction commits."""
    environment = environment or (run.environment if run else None)
    channels = NotificationChannel.objects.filter(enabled=True)
    if environment is not None:
        channels = channels.filter(
            Q(environment_id=environment.environment_id) | Q(environment__isnull=True)
        ).filter(Q(application_id=environment.application_id) | Q(application__isnull=True))
    payload = build_payload(event, text=text, run=run, environment=environment)
    deliveries = [
        NotificationDelivery.objects.create(
            channel=channel,
            event=event,
            run=run,
            payload=payload,
            recipients=recipients(channel, event, run),
        )
        for channel in channels
        if event in channel.events
    ]
    ids = [delivery.pk for delivery in deliveries]
    if ids:
        transaction.on_commit(lambda: enqueue_all(ids))
    return deliveries


def build_payload(event: str, *, text: str, run: Run | None, environment) -> dict:
    base = settings.OPSWEB_BASE_URL
    application = getattr(environment, "application", None)
    title = NotificationEvent(event).label
    payload = {
        "event": event,
        # Every channel shows the title first: it names the application (many share a channel).
        "title": f"{title}: {application.name}" if application else title,
        "text": text,
        "application": (
            {"slug": application.slug, "name": application.name} if application else None
        ),
        "environment": (
            {"slug": environment.slug, "name": environment.name} if environment else None
        ),
        "url": f"{base}{reverse('admin:index')}",
        "at": timezone.now().isoformat(),
    }
    if run is not None:
        payload["url"] = f"{base}{reverse('admin:opsweb_run_change', args=[run.pk])}"
        payload["run"] = {
            "id": run.pk,
            "kind": run.kind,
            "status": run.status,
            "image": {"tag": run.image.tag, "digest": run.image.digest},
            "replaces": run.replaces.tag if run.replaces else None,
            "restore_seconds": run.restore_seconds,
            "rto_seconds": run.environment.rto_seconds,
        }
        if event == NotificationEvent.APPROVAL_NEEDED:
            from opsweb import slack

            # What a Slack message with Approve / Reject buttons shows and binds them to.
            payload["run"]["approval"] = slack.run_summary(run)
    return payload


def recipients(channel: NotificationChannel, event: str, run: Run | None) -> list[str]:
    if channel.kind != NotificationChannel.Kind.EMAIL:
        return []
    if event == NotificationEvent.APPROVAL_NEEDED and run is not None:
        # Those who may approve, and whoever the channel names too (a team list is where
        # people look; without it the delivery was "Skipped" when nobody had an address).
        addresses = [user.email for user in approvers(run) if user.email] + channel.emails
        firsts = {}
        for address in addresses:
            firsts.setdefault(address.lower(), address)
        return list(firsts.values())
    return channel.emails


def enqueue_all(ids: list[int]) -> None:
    from django_q.tasks import async_task

    for delivery_id in ids:
        try:
            async_task(
                "opsweb.notifications.deliver", delivery_id, task_name=f"notify-{delivery_id}"
            )
        except Exception:  # the broker is down: the row stays pending, visible in the admin
            log.exception("notification %s not queued", delivery_id)


# -- sending --------------------------------------------------------------------------------


def deliver(delivery_id: int) -> str:
    """django-q2 task: send one delivery once. Claims the attempt with a conditional UPDATE
    (a second delivery of the same task finds it claimed and does nothing)."""
    delivery = NotificationDelivery.objects.select_related("channel").filter(pk=delivery_id).first()
    if delivery is None or delivery.status not in {Status.PENDING, Status.RETRYING}:
        return "nothing to send"
    if delivery.next_attempt_at and delivery.next_attempt_at > timezone.now():
        return "not due yet"  # a second copy of the retry must not skip the backoff
    attempt = delivery.attempts + 1
    claimed = NotificationDelivery.objects.filter(
        pk=delivery.pk, attempts=delivery.attempts, status=delivery.status
    ).update(attempts=F("attempts") + 1, next_attempt_at=None)
    if not claimed:
        return "claimed by another worker"
    if not delivery.channel.enabled:
        return record(delivery, Status.SKIPPED, "The channel was disabled before sending.")
    if delivery.channel.kind == NotificationChannel.Kind.EMAIL and not delivery.recipients:
        return record(delivery, Status.SKIPPED, "Nobody to write to: no email address.")
    try:
        send(delivery)
    except (DeliveryError, outbound.OutboundRefused) as exc:
        # Both are opsweb's own sentences (a refusal names the host, never a URL's path).
        return failed(delivery, attempt, str(exc))
    except Exception as exc:  # any failure is the delivery's, never the caller's
        # Stored and shown is a fixed sentence: an exception's text can quote the target URL
        # (a Slack token), a recipient or what a server answered. The detail goes to the log.
        log.warning("notification %s failed", delivery.pk, exc_info=True)
        return failed(delivery, attempt, f"Sending failed ({type(exc).__name__}); see the log.")
    return record(delivery, Status.SENT, "")


def retry_due(*, late: timedelta = timedelta(minutes=2)) -> list[int]:
    """Queue deliveries whose turn passed more than ``late`` ago without a worker taking them
    (the broker lost the task, or its retry schedule was deleted). For the reconciler."""
    now = timezone.now()
    stuck = NotificationDelivery.objects.filter(
        Q(status=Status.RETRYING, next_attempt_at__lt=now - late)
        | Q(status=Status.PENDING, attempts=0, created_at__lt=now - late)
    ).values_list("pk", flat=True)
    ids = list(stuck[:500])
    enqueue_all(ids)
    return ids


def record(delivery: NotificationDelivery, status: str, error: str, **fields) -> str:
    NotificationDelivery.objects.filter(pk=delivery.pk).update(
        status=status, last_error=error, updated_at=timezone.now(), **fields
    )
    return f"{status}: {error}" if error else status


def failed(delivery: NotificationDelivery, attempt: int, error: str) -> str:
    if attempt >= MAX_ATTEMPTS:
        return record(delivery, Status.FAILED, f"Attempt {attempt} of {MAX_ATTEMPTS}: {error}")
    when = timezone.now() + timedelta(seconds=BACKOFF_SECONDS * 4 ** (attempt - 1))
    outcome = record(
        delivery,
        Status.RETRYING,
        f"Attempt {attempt} of {MAX_ATTEMPTS}: {error}",
        next_attempt_at=when,
    )
    try:
        from django_q.models import Schedule
        from django_q.tasks import schedule

        schedule(
            "opsweb.notifications.deliver",
            delivery.pk,
            name=f"notify-{delivery.pk}-{attempt + 1}",
            schedule_type=Schedule.ONCE,
            repeats=1,
            next_run=when,
        )
    except Exception:
        log.exception("retry of notification %s not scheduled", delivery.pk)
    return outcome


def send(delivery: NotificationDelivery) -> None:
    channel = delivery.channel
    if channel.kind == NotificationChannel.Kind.EMAIL:
        send_email(delivery)
    elif channel.slack_channel_id:
        from opsweb import slack

        slack.post_message(delivery)
    elif channel.kind == NotificationChannel.Kind.SLACK:
        post(channel.target, slack_body(delivery.payload), {})
    else:
        send_webhook(delivery)


def send_email(delivery: NotificationDelivery) -> None:
    payload = delivery.payload
    where = f" in {payload['environment']['name']}" if payload.get("environment") else ""
    subject = f"[opsweb] {payload['title']}{where}"
    body = f"{payload['text']}\n\n{payload['url']}\n"
    EmailMessage(subject, body, None, delivery.recipients).send(fail_silently=False)


def slack_body(payload: dict) -> bytes:
    """An incoming-webhook message (Slack, Mattermost, Rocket.Chat): text with a link. Every
    piece of text goes through ``slack_escape``; the only markup is the bold title and the
    link opsweb writes itself."""
    label = f"Open run #{payload['run']['id']}" if payload.get("run") else "Open opsweb"
    title, text = slack_escape(payload["title"]), slack_escape(payload["text"])
    link = f"<{slack_escape(payload['url'])}|{slack_escape(label)}>"
    message = {"text": f"*{title}*\n{text}\n{link}"}
    approval = (payload.get("run") or {}).get("approval")
    if approval and settings.SLACK_SIGNING_SECRET:
        from opsweb import slack

        # A Slack app's webhook: Approve / Reject buttons (opsweb/slack.py answers them).
        message["blocks"] = slack.approval_blocks(
            approval, payload["run"]["id"], payload["url"], title=payload["title"], buttons=True
        )
    return json.dumps(message).encode()


# Mattermost and Rocket.Chat notify everyone for these words even without angle brackets.
_BROADCAST = re.compile(r"@(?=(?:channel|here|all|everyone)\b)", re.IGNORECASE)


def slack_escape(text: str) -> str:
    """``text`` (notes, comments, reasons, tags, commit messages, user names…) made inert for
    Slack's mrkdwn: ``&``, ``<`` and ``>`` become entities, so ``<https://evil|Open run>`` or
    ``<!channel>`` shows as typed instead of becoming a link or a mention; a zero-width space
    after ``@`` keeps ``@channel`` from pinging on Mattermost and Rocket.Chat."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub("@\u200b", text)


def send_webhook(delivery: NotificationDelivery) -> None:
    body = json.dumps(delivery.payload, sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {
        "X-Opsweb-Event": delivery.event,
        "X-Opsweb-Delivery": str(delivery.pk),
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(delivery.channel.secret, timestamp, body),
    }
    post(delivery.channel.target, body, headers)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 keyed with ``secret`` over ``<timestamp>.<body>``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def post(url: str, body: bytes, headers: dict) -> None:
    """POST JSON to ``url`` through ``orchestration.outbound`` (the target checked, the
    connection pinned to the checked address, redirects not followed); raise DeliveryError
    with the reason unless the receiver answers 2xx within HTTP_TIMEOUT seconds."""
    try:
        answer = outbound.request(
            url,
            method="POST",
            body=body,
            headers={"Content-Type": "application/json", **headers},
            timeout=HTTP_TIMEOUT,
            limit=1024,
            what="The webhook URL",
        )
    except outbound.OutboundRefused as exc:
        # The refusal names the host and the address, never the URL's path (Slack's token).
        raise DeliveryError(f"{exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        # The reason is logged, not stored: it can repeat the URL, whose path holds a token.
        log.warning("notification POST failed: %s", exc)
        # The operating system's own words ("Connection refused", "timed out") say nothing secret.
        words = exc.strerror if isinstance(exc, OSError) and exc.strerror else ""
        if isinstance(exc, TimeoutError):
            words = "timed out"
        raise DeliveryError(
            f"Could not reach the receiver ({words.lower()})."
            if words
            else "Could not reach the receiver."
        ) from None
    if 300 <= answer.status < 400:
        # Not followed, and the Location is not stored (it is the receiver's text).
        raise DeliveryError(
            f"HTTP {answer.status} from the receiver: a redirect, not followed (give the final URL)."
        )
    if not answer.ok:
        # Only the status: a receiver's body can echo the request, its headers or a token.
        raise DeliveryError(f"HTTP {answer.status} from the receiver.")
