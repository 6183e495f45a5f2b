"""Approvals from Slack: the buttons on a "waits for approval" message, the requests Slack
sends when they are clicked, and the one-time-code link between Slack users and opsweb users.

Every request from Slack is checked before anything is read from it: the ``v0=`` HMAC-SHA256
of ``v0:<timestamp>:<raw body>`` keyed with OPSWEB_SLACK_SIGNING_SECRET (slack_sdk's
``SignatureVerifier``), a timestamp within five minutes of now, and a signature never seen
before (a replay within those five minutes is refused too). A refused request changes
nothing and leaves an audit entry.

A click is answered at once (Slack waits three seconds at most); the decision itself goes
through ``services.approve_run`` / ``reject_run``, bound to the run and the digests the message
showed, and the message is then updated through the click's ``response_url`` by a django-q2
task. Reject opens a dialog (``views.open``) asking for the comment, as the admin does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from urllib.parse import parse_qs

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpResponse, JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from slack_sdk.signature import SignatureVerifier

from opsweb import policy, services
from opsweb.models import Approval, Run, RunStatus, SlackMessage, UsedSeal
from orchestration import outbound

log = logging.getLogger(__name__)

MAX_SKEW_SECONDS = 5 * 60
BODY_MAX = 64 * 1024
APPROVE, REJECT, REJECT_DIALOG = "opsweb_approve", "opsweb_reject", "opsweb_reject_dialog"


class Forbidden(Exception):
    """A request that is not Slack's (or no longer valid); the message says why."""


def configured() -> bool:
    return bool(settings.SLACK_SIGNING_SECRET)


# -- checking a request ---------------------------------------------------------------------


def verify(request) -> None:
    """Raise Forbidden unless ``request`` is a fresh, correctly signed request from Slack that
    was not seen before."""
    body = request.body
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    signature = request.headers.get("X-Slack-Signature", "")
    if not timestamp or not signature:
        raise Forbidden("The request is not signed (no X-Slack-Signature or timestamp).")
    try:
        skew = abs(time.time() - int(timestamp))
    except ValueError:
        raise Forbidden("The request's timestamp is not a number.") from None
    if skew > MAX_SKEW_SECONDS:
        raise Forbidden(
            f"The request's timestamp is {int(skew)} seconds away from now (more than 5 minutes)."
        )
    verifier = SignatureVerifier(settings.SLACK_SIGNING_SECRET)
    if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        raise Forbidden("The request's signature does not match its body (forged or altered).")
    digest = hashlib.sha256(signature.encode()).hexdigest()
    try:
        with transaction.atomic():
            UsedSeal.objects.create(nonce=digest, page="slack", bound_to="slack request")
    except IntegrityError:
        raise Forbidden("The request was already received once (a replay).") from None


def refused(request, reason: str, *, status: int = 401) -> HttpResponse:
    where = request.META.get("REMOTE_ADDR", "")
    services.audit(
        None, "slack_refused", f"Request to {request.path} from {where} refused: {reason}"
    )
    return HttpResponse(reason, status=status, content_type="text/plain")


def checked(view):
    """Refuse what ``verify`` refuses, before the view reads anything."""

    @csrf_exempt
    @require_POST
    def wrapper(request):
        if not configured():
            return HttpResponse("Slack is not configured here.", status=404)
        if len(request.body) > BODY_MAX:
            return refused(request, "The request is larger than Slack sends.", status=413)
        try:
            verify(request)
        except Forbidden as exc:
            return refused(request, str(exc))
        return view(request)

    return wrapper


# -- the message ----------------------------------------------------------------------------


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12] if digest else "—"


def escape(text) -> str:
    from opsweb.notifications import slack_escape

    return slack_escape(text)


def run_summary(run: Run) -> dict:
    """What a message shows of ``run`` and binds its buttons to (notification payloads carry
    it as ``run.approval``)."""
    current = run.environment.current_image
    return {
        "application": run.environment.application.name,
        "environment": run.environment.environment.name,
        "to": {"tag": run.image.tag, "digest": run.image.digest},
        "from": {"tag": current.tag, "digest": current.digest} if current else None,
        "requested_by": run.requested_by.get_username() if run.requested_by else "opsweb",
        "note": run.note[:500],
        "approvals": services.approvals_text(run),
    }


def binding(summary: dict, run_id: int) -> str:
    """The button's value: the run and the digests the message showed."""
    return json.dumps(
        {
            "run": run_id,
            "to": summary["to"]["digest"],
            "from": (summary.get("from") or {}).get("digest", ""),
        }
    )


def run_text(summary: dict, run_id: int, title: str) -> str:
    was = summary.get("from")
    from_text = f"{escape(was['tag'])} (`{short(was['digest'])}`)" if was else "nothing"
    to = summary["to"]
    lines = [
        f"*{escape(title)}*: run #{run_id}",
        f"*{escape(summary['application'])}* in *{escape(summary['environment'])}*: "
        f"{from_text} → {escape(to['tag'])} (`{short(to['digest'])}`)",
        f"Asked by {escape(summary['requested_by'])}"
        + (f": {escape(summary['note'])}" if summary.get("note") else ""),
    ]
    if summary.get("approvals"):
        lines.append(f"Approvals: {escape(summary['approvals'])}")
    return "\n".join(lines)


def approval_blocks(summary: dict, run_id: int, url: str, *, title: str, buttons: bool) -> list:
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": run_text(summary, run_id, title)}}
    ]
    elements = []
    if buttons:
        value = binding(summary, run_id)
        elements += [
            {
                "type": "button",
                "action_id": APPROVE,
                "style": "primary",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": value,
            },
            {
                "type": "button",
                "action_id": REJECT,
                "style": "danger",
                "text": {"type": "plain_text", "text": "Reject"},
                "value": value,
            },
        ]
    elements.append(
        {
            "type": "button",
            "action_id": "opsweb_open",
            "text": {"type": "plain_text", "text": f"Open run #{run_id}"},
            "url": url,
        }
    )
    blocks.append({"type": "actions", "block_id": f"opsweb_run_{run_id}", "elements": elements})
    return blocks


def fresh_summary(run: Run) -> dict:
    run = Run.objects.select_related(
        "environment__environment",
        "environment__application",
        "environment__current_image",
        "image",
        "requested_by",
    ).get(pk=run.pk)
    return run_summary(run)


def outcome_message(run: Run, headline: str) -> dict:
    """The message as it reads after a decision: the run now, with buttons while it waits."""
    run.refresh_from_db()
    summary = fresh_summary(run)
    waiting = run.status == RunStatus.PENDING
    title = "Waits for approval" if waiting else f"Run #{run.pk} {run.status_phrase}"
    url = run_url(run.pk)
    blocks = approval_blocks(summary, run.pk, url, title=title, buttons=waiting)
    blocks.insert(
        0, {"type": "context", "elements": [{"type": "mrkdwn", "text": escape(headline)}]}
    )
    return {"replace_original": True, "text": headline, "blocks": blocks}


def run_url(run_id: int) -> str:
    return f"{settings.OPSWEB_BASE_URL}{reverse('admin:opsweb_run_change', args=[run_id])}"


# -- talking to Slack -----------------------------------------------------------------------


def post_json(url: str, body: dict, *, token: str = "") -> dict:
    """POST ``body`` to Slack (a response_url or the Web API) through the outbound rule."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    answer = outbound.request(
        url,
        method="POST",
        body=json.dumps(body).encode(),
        headers=headers,
        timeout=5,
        limit=64 * 1024,
        what="Slack",
    )
    try:
        return (
            json.loads(answer.body or b"{}")
            if answer.ok
            else {"ok": False, "status": answer.status}
        )
    except ValueError:
        return {"ok": answer.ok}


def respond(response_url: str, message: dict) -> str:
    """django-q2 task: put ``message`` through the click's response_url."""
    if not response_url:
        return "no response_url"
    try:
        answer = post_json(response_url, message)
    except (outbound.OutboundRefused, OSError) as exc:
        log.warning("Slack response_url: %s", exc)
        return f"not sent: {type(exc).__name__}"
    return "sent" if answer.get("ok", True) else f"Slack answered {answer}"


def respond_later(response_url: str, message: dict) -> None:
    """Send after this request's transaction commits, from a worker (the click is answered now)."""
    from django_q.tasks import async_task

    transaction.on_commit(
        lambda: async_task("opsweb.slack.respond", response_url, message, task_name="slack-respond")
    )


def ephemeral(text: str) -> dict:
    return {"response_type": "ephemeral", "replace_original": False, "text": text}


def open_reject_dialog(
    trigger_id: str, run: Run, value: str, response_url: str, *, message=("", "")
) -> dict:
    metadata = json.dumps(
        {"binding": json.loads(value), "response_url": response_url, "message": list(message)}
    )
    view = {
        "type": "modal",
        "callback_id": REJECT_DIALOG,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": f"Reject run #{run.pk}"[:24]},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "comment",
                "label": {"type": "plain_text", "text": "Why do you reject it?"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": "comment",
                    "multiline": True,
                    "max_length": 2000,
                },
            }
        ],
    }
    return post_json(
        f"{settings.SLACK_API_URL}views.open",
        {"trigger_id": trigger_id, "view": view},
        token=settings.SLACK_BOT_TOKEN,
    )


# -- messages posted with the Web API, updated when the run is decided elsewhere -------------


def post_message(delivery) -> None:
    """Send ``delivery`` with ``chat.postMessage`` to its channel's Slack channel ID and keep
    the message's ts, so that ``update_messages`` can rewrite it later. Raises DeliveryError
    when Slack refuses (the notification's retries take over)."""
    from opsweb.notifications import DeliveryError, slack_body

    body = json.loads(slack_body(delivery.payload))
    body["channel"] = delivery.channel.slack_channel_id
    answer = post_json(f"{settings.SLACK_API_URL}chat.postMessage", body, token=bot_token())
    if not answer.get("ok"):
        raise DeliveryError(f"Slack answered {answer.get('error') or answer.get('status')}.")
    if delivery.run_id and delivery.event == "approval_needed" and answer.get("ts"):
        SlackMessage.objects.get_or_create(
            channel=str(answer.get("channel") or body["channel"]),
            ts=str(answer["ts"]),
            defaults={
                "run_id": delivery.run_id,
                "delivery": delivery,
                # What the posted body shows: the run as it was requested, before any decision.
                "shows": f"{RunStatus.PENDING}:0",
            },
        )


def bot_token() -> str:
    return settings.SLACK_BOT_TOKEN


def outcome_headline(run: Run) -> str:
    """What became of ``run``, however it was decided (admin, API, Slack, a rule, the worker)."""
    decided = list(run.approvals.select_related("user").order_by("pk"))
    rejection = next((a for a in reversed(decided) if a.decision == Approval.Decision.REJECT), None)
    if rejection is not None:
        return f"Rejected by {rejection.user.get_username()}: {rejection.comment}"
    said = f"Run #{run.pk} {run.status_phrase}" + (
        f": {run.error.rstrip('.')}" if run.error else ""
    )
    names = [a.user.get_username() for a in decided]
    return said + (f". Approved by {', '.join(names)}." if names else ".")


def update_messages(run_id: int) -> str:
    """django-q2 task: rewrite every message posted about run ``run_id`` with what became of it
    (buttons gone once it no longer waits). A failure is recorded on the message, never raised."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        return "no such run"
    results = [update_message(message, run) for message in run.slack_messages.all()]
    return "; ".join(results) or "no message"


def showing(run: Run) -> str:
    """What a message about ``run`` shows, as ``SlackMessage.shows`` records it: the status and
    how many decisions it counts ("pending:1" after the first of two approvals)."""
    return f"{run.status}:{run.approvals.count()}"[:20]


def update_message(message: SlackMessage, run: Run) -> str:
    # The conditional UPDATE claims "show this": a second task for the same change sends nothing.
    shows = showing(run)
    claimed = (
        SlackMessage.objects.filter(pk=message.pk, shows=message.shows)
        .exclude(shows=shows)
        .update(shows=shows, updated_at=timezone.now())
    )
    if not claimed:
        return "already shown"
    body = outcome_message(run, outcome_headline(run))
    body.pop("replace_original")
    body.update(channel=message.channel, ts=message.ts)
    try:
        answer = post_json(f"{settings.SLACK_API_URL}chat.update", body, token=bot_token())
        error = "" if answer.get("ok") else f"Slack answered {answer.get('error') or answer}."
    except outbound.OutboundRefused as exc:
        error = str(exc)
    except Exception as exc:  # the worker's, never the decision's; the detail goes to the log
        log.warning("chat.update of %s failed", message, exc_info=True)
        error = f"Could not reach Slack ({type(exc).__name__}); see the log."
    if error:
        # Shown as it was: the next change of the run tries again.
        SlackMessage.objects.filter(pk=message.pk).update(
            shows=message.shows, last_error=error[:500]
        )
        return f"not updated: {error}"
    SlackMessage.objects.filter(pk=message.pk).update(last_error="")
    return "updated"


def update_messages_later(run: Run) -> None:
    """Once the caller's transaction commits, have a worker update ``run``'s Slack messages."""
    if not SlackMessage.objects.filter(run_id=run.pk).exists():
        return

    def enqueue():
        from django_q.tasks import async_task

        try:
            async_task("opsweb.slack.update_messages", run.pk, task_name=f"slack-update-{run.pk}")
        except Exception:  # the broker is down: the decision stands, the message stays as it was
            log.exception("Slack update of run %s not queued", run.pk)

    transaction.on_commit(enqueue)


# -- deciding -------------------------------------------------------------------------------


class Stale(services.ReleaseError):
    """The message no longer shows the run as it is: its buttons must go."""


def bound_run(value) -> Run:
    """The run a button's value names, refused (Stale) when it changed since the message."""
    try:
        data = json.loads(value) if isinstance(value, str) else dict(value)
        run_id, to, was = int(data["run"]), str(data["to"]), str(data.get("from") or "")
    except (ValueError, TypeError, KeyError):
        raise services.ReleaseError("The button carries no run opsweb recognises.") from None
    run = (
        Run.objects.select_related("environment__current_image", "image").filter(pk=run_id).first()
    )
    if run is None:
        raise Stale(f"Run #{run_id} no longer exists.")
    if run.image.digest != to:
        raise Stale(f"Run #{run_id} deploys {run.image.digest}, not what this message showed.")
    current = run.environment.current_image
    if run.status == RunStatus.PENDING and (current.digest if current else "") != was:
        now = current.tag if current else "nothing"
        raise Stale(
            f"{run.environment} changed since this message: it now runs {now}. Review run "
            f"#{run_id} in opsweb before deciding."
        )
    if run.status != RunStatus.PENDING:
        detail = f": {run.error.rstrip('.')}" if run.error else ""
        raise Stale(f"Run #{run_id} {run.status_phrase}{detail}; it no longer waits for approval.")
    return run


def clicked_message(payload: dict) -> tuple[str, str]:
    """The (channel ID, ts) of the message whose button was clicked; ("", "") when the payload
    does not say (an ephemeral message, or a payload from elsewhere)."""
    container = payload.get("container") or {}
    channel = container.get("channel_id") or (payload.get("channel") or {}).get("id") or ""
    ts = container.get("message_ts") or (payload.get("message") or {}).get("ts") or ""
    return str(channel)[:40], str(ts)[:40]


def decide(
    kind: str,
    *,
    team_id: str,
    slack_user_id: str,
    value,
    comment: str = "",
    message: tuple[str, str] = ("", ""),
):
    """Approve or reject as the linked user; returns (run, headline). Raises ReleaseError.

    ``message`` (channel ID, ts) is the message clicked: the click's ``response_url`` rewrites
    it, so it is recorded as showing the decision in the same transaction, and the worker's
    ``update_messages`` (queued on commit) leaves it alone instead of sending a second update.
    """
    user = services.slack_actor(team_id=team_id, slack_user_id=slack_user_id)
    run = bound_run(value)
    # The clock's rules first, committed on their own (``settle``): a run past its approval
    # window stays expired, audited, when the decision below is refused because of it.
    services.settle(run)
    name = user.get_username()
    with transaction.atomic():
        if kind == APPROVE:
            run = services.approve_run(user=user, run=run, comment="via Slack")
            headline = f"Approved by {name} from Slack."
        else:
            run = services.reject_run(
                user=user,
                run=run,
                comment=f"{comment.strip()} (via Slack)" if comment.strip() else "",
            )
            headline = f"Rejected by {name} from Slack: {comment.strip()}"
        channel, ts = message
        if channel and ts:
            SlackMessage.objects.filter(run=run, channel=channel, ts=ts).update(
                shows=showing(run), updated_at=timezone.now(), last_error=""
            )
    return run, headline


def refusal(exc: services.ReleaseError, *, team_id: str, slack_user_id: str, action: str) -> None:
    services.audit(
        None,
        "slack_refused",
        f"Slack user {slack_user_id} in {team_id}: {action} refused: {exc}"[:2000],
    )


# -- the endpoints --------------------------------------------------------------------------


@checked
def interactions(request) -> HttpResponse:
    """Slack's interactivity request URL: button clicks and the rejection dialog."""
    try:
        payload = json.loads(parse_qs(request.body.decode())["payload"][0])
        team_id = (
            str(payload["team"]["id"]) if payload.get("team") else str(payload["user"]["team_id"])
        )
        slack_user_id = str(payload["user"]["id"])
    except (KeyError, IndexError, ValueError, TypeError, UnicodeDecodeError):
        return refused(request, "The request carries no interaction payload.", status=400)
    if payload.get("type") == "view_submission":
        return dialog_submitted(payload, team_id, slack_user_id)
    if payload.get("type") != "block_actions":
        return HttpResponse(status=200)
    response_url = str(payload.get("response_url") or "")
    actions = [a for a in payload.get("actions") or [] if a.get("action_id") in (APPROVE, REJECT)]
    if not actions:
        return HttpResponse(status=200)  # the Open run link
    action = actions[0]
    try:
        if action["action_id"] == REJECT:
            user = services.slack_actor(team_id=team_id, slack_user_id=slack_user_id)
            run = bound_run(action.get("value"))
            policy.may_reject(user, run).enforce()
            answer = open_reject_dialog(
                str(payload.get("trigger_id", "")),
                run,
                action["value"],
                response_url,
                message=clicked_message(payload),
            )
            if not answer.get("ok"):
                log.warning("views.open: %s", answer)
                respond_later(
                    response_url,
                    ephemeral(
                        "Slack did not open the rejection dialog; reject from the run page: "
                        f"{run_url(run.pk)}"
                    ),
                )
            return HttpResponse(status=200)
        run, headline = decide(
            APPROVE,
            team_id=team_id,
            slack_user_id=slack_user_id,
            value=action.get("value"),
            message=clicked_message(payload),
        )
    except services.ReleaseError as exc:
        refusal(exc, team_id=team_id, slack_user_id=slack_user_id, action="the click")
        respond_later(response_url, refusal_message(exc, action.get("value")))
        return HttpResponse(status=200)
    respond_later(response_url, outcome_message(run, headline))
    return HttpResponse(status=200)


def refusal_message(exc: services.ReleaseError, value) -> dict:
    """A stale message is replaced for everyone (its buttons go); any other refusal is told to
    the one who clicked."""
    if isinstance(exc, Stale):
        try:
            run = Run.objects.get(pk=json.loads(value)["run"])
        except (Run.DoesNotExist, ValueError, TypeError, KeyError):
            return {"replace_original": True, "text": str(exc)}
        message = outcome_message(run, f"Not decided: {exc}")
        for block in message["blocks"]:
            if block["type"] == "actions":
                block["elements"] = [
                    e for e in block["elements"] if e["action_id"] == "opsweb_open"
                ]
        return message
    return ephemeral(f"{exc}")


def dialog_message(metadata: dict) -> tuple[str, str]:
    """The (channel ID, ts) the rejection dialog was opened from, as its metadata kept it."""
    kept = metadata.get("message")
    if isinstance(kept, list) and len(kept) == 2:
        return str(kept[0])[:40], str(kept[1])[:40]
    return "", ""


def dialog_submitted(payload: dict, team_id: str, slack_user_id: str) -> HttpResponse:
    view = payload.get("view") or {}
    if view.get("callback_id") != REJECT_DIALOG:
        return HttpResponse(status=200)
    try:
        metadata = json.loads(view.get("private_metadata") or "{}")
        comment = view["state"]["values"]["comment"]["comment"]["value"] or ""
    except (ValueError, KeyError, TypeError):
        return JsonResponse(
            {"response_action": "errors", "errors": {"comment": "Say why you reject it."}}
        )
    response_url = str(metadata.get("response_url") or "")
    try:
        run, headline = decide(
            REJECT,
            team_id=team_id,
            slack_user_id=slack_user_id,
            value=metadata.get("binding"),
            comment=str(comment),
            message=dialog_message(metadata),
        )
    except services.ReleaseError as exc:
        refusal(exc, team_id=team_id, slack_user_id=slack_user_id, action="the rejection")
        if isinstance(exc, Stale):
            respond_later(response_url, refusal_message(exc, json.dumps(metadata.get("binding"))))
        return JsonResponse({"response_action": "errors", "errors": {"comment": str(exc)[:2000]}})
    respond_later(response_url, outcome_message(run, headline))
    return JsonResponse({"response_action": "clear"})


@checked
def commands(request) -> HttpResponse:
    """The ``/opsweb`` slash command: ``/opsweb link CODE``."""
    form = {k: v[0] for k, v in parse_qs(request.body.decode(errors="replace")).items()}
    words = form.get("text", "").split()
    if len(words) == 2 and words[0].lower() == "link":
        try:
            link = services.link_slack_user(
                code=words[1],
                team_id=form.get("team_id", ""),
                slack_user_id=form.get("user_id", ""),
                slack_name=form.get("user_name", ""),
            )
        except services.ReleaseError as exc:
            refusal(
                exc,
                team_id=form.get("team_id", ""),
                slack_user_id=form.get("user_id", ""),
                action="linking",
            )
            return JsonResponse(ephemeral(str(exc)))
        return JsonResponse(
            ephemeral(
                f"Linked: your clicks on opsweb's Approve and Reject buttons now act as "
                f"{link.user.get_username()}."
            )
        )
    return JsonResponse(
        ephemeral("Usage: /opsweb link <code>. Get the code in opsweb: Link Slack (top right).")
    )
