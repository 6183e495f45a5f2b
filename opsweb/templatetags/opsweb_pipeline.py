"""The pipeline at the top of the admin index: each environment, what runs there, what waits."""

from django import template
from django.db.models import Count, Q

from opsweb import services
from opsweb.models import Environment, Run, RunStatus

register = template.Library()


@register.inclusion_tag("admin/opsweb/pipeline.html", takes_context=True)
def pipeline(context):
    user = context["request"].user
    if not user.has_perm("opsweb.view_environment"):
        return {"environments": None}
    environments = Environment.objects.select_related("current_image").annotate(
        pending=Count("runs", filter=Q(runs__status=RunStatus.PENDING)),
        queued=Count("runs", filter=Q(runs__status=RunStatus.QUEUED)),
    )
    running = {
        run.environment_id: run
        for run in Run.objects.filter(status=RunStatus.RUNNING).select_related("image")
    }
    awaiting = list(
        Run.objects.filter(status=RunStatus.PENDING)
        .select_related("environment", "image", "requested_by")
        .annotate(given=services.counting_approvals_annotation())[:10]
    )
    return {
        "environments": [(env, running.get(env.pk)) for env in environments],
        "awaiting": [(run, services.unreachable_quorum(run)) for run in awaiting],
    }
