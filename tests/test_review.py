"""Regressions found reviewing the fixes of issues #20 and #21: each test is one case of a
kind of defect that survived them."""

from opsweb import services
from opsweb.models import RunStatus
from tests.conftest import make_image, succeed_in


def staging_history(flow, *tags):
    env = flow["staging"]
    images = [make_image(tag) for tag in tags]
    for image in images:
        succeed_in(env, image)
    return env, images


# -- a rollback never restores a version marked bad ---------------------------------------


def test_queued_rollback_whose_target_is_marked_bad_goes_to_the_next_good_version(flow, bob, carol):
    env, (oldest, old, new) = staging_history(flow, "1.0.0", "1.1.0", "1.2.0")
    rollback = services.roll_back(user=bob, environment=env, reason="critical_errors")
    assert rollback.image == old
    services.mark_bad(user=carol, image=old, reason="leaks memory")

    claimed = services.claim_next_run(environment_id=env.pk)

    assert claimed.pk == rollback.pk
    assert claimed.image == oldest
    messages = list(rollback.events.values_list("message", flat=True))
    assert any("1.1.0" in m and "marked bad after this rollback" in m for m in messages)
    new.refresh_from_db()
    assert new.is_bad  # what it replaces is taken back, as for any rollback that starts


def test_queued_rollback_with_no_good_version_left_fails_and_leaves_what_runs(flow, bob, carol):
    env, (old, new) = staging_history(flow, "1.0.0", "1.1.0")
    rollback = services.roll_back(user=bob, environment=env, reason="critical_errors")
    services.mark_bad(user=carol, image=old, reason="leaks memory")

    assert services.claim_next_run(environment_id=env.pk) is None

    rollback.refresh_from_db()
    assert rollback.status == RunStatus.FAILED
    assert "nothing to roll back to" in rollback.error
    env.refresh_from_db()
    new.refresh_from_db()
    assert env.current_image == new and not new.is_bad and not env.auto_deploy_paused
