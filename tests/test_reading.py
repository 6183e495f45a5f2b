"""``opsweb.reading``: what it primes must be what the rules read on their own."""

from __future__ import annotations

from itertools import product

from opsweb import reads, services
from opsweb.models import Approval, Environment, Run, RunStatus, Target
from opsweb.reading import read_environments
from opsweb.reads import quorum
from tests.conftest import make_image, make_user


def test_read_environments_primes_the_same_quorum_facts_as_each_run_reads_alone(flow, alice):
    """Pending runs over every combination of requester, commit author and the environment's
    self-approval and author settings: the approvals that may count and the people who may
    count, read for all runs at once (runs sharing a ``may_count`` filter read together), are
    exactly those each run's own queries find."""
    bob = make_user("bob", "staging approvers", "production approvers", email="bob@example.com")
    carol = make_user("carol", "staging approvers", "production approvers", email="Carol@X.org")
    dave = make_user("dave", "production approvers", email="dave@example.com")
    Environment.objects.filter(slug="production").update(
        allow_self_approval=False, forbid_author_approval=True
    )
    Environment.objects.filter(slug="staging").update(
        allow_self_approval=True, forbid_author_approval=True
    )
    authors = ["", "carol@x.ORG", "bob@example.com"]
    requesters = [None, alice, bob, carol]
    runs = []
    for n, (slug, author, requester) in enumerate(
        product(["staging", "production"], authors, requesters)
    ):
        image = make_image(f"2.0.{n}", author_email=author)
        run = Run.objects.create(
            kind="deploy",
            environment=flow[slug],
            image=image,
            status=RunStatus.PENDING,
            requested_by=requester,
            required_approvals=1,
        )
        for user in (bob, carol, dave):
            if slug == "staging" and user is dave:
                continue
            Approval.objects.create(
                run=run, user=user, decision=Approval.Decision.APPROVE, digest=image.digest
            )
        runs.append(run)
    # An approval of another digest (here another pending run's) never counts.
    erin = make_user("erin", "production approvers", email="erin@example.com")
    Approval.objects.create(
        run=runs[12], user=erin, decision=Approval.Decision.APPROVE, digest=runs[13].image.digest
    )
    dave.is_active = False  # deactivated since approving: no longer counts
    dave.save()

    def alone(run: Run) -> tuple[list[int], set[int]]:
        with services.one_reading():
            approvals = [a.pk for a in quorum._valid_approvals(run)]
            return approvals, quorum.may_count_people(run)

    targets = Target.objects.filter(pk__in=[t.pk for t in flow.values()]).in_flow()
    by_pk = {t.pk: t for t in targets}
    loaded = list(
        Run.objects.filter(pk__in=[r.pk for r in runs])
        .select_related("image", "requested_by")
        .order_by("id")
    )
    for run in loaded:
        run.environment = by_pk[run.environment_id]
    expected = {run.pk: alone(run) for run in loaded}
    with services.one_reading():
        read_environments(targets, runs=loaded, user=bob)
        primed = {
            run.pk: (
                [a.pk for a in reads.primed(("valid_approvals", run.pk))],
                reads.primed(("may_count_people", run.pk)),
            )
            for run in loaded
        }
    assert primed == expected
    # The cases differ: some runs count everyone, some nobody but a few.
    assert len({frozenset(people) for _a, people in expected.values()}) > 2
