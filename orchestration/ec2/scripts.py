"""The shell scripts Run Command executes on each instance: switch its container to an image
(health-checked before the old one stops), or start the previous container again."""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from typing import Any

from orchestration.ecs import ECR_HOST_RE

HEALTH_FUNCTION = """\
healthy() {
  waited=0
  while [ "$waited" -lt "$HEALTH_TIMEOUT" ]; do
    if curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$1$HEALTH_PATH"; then return 0; fi
    sleep 2
    waited=$((waited + 2))
  done
  return 1
}"""

SWITCH_BODY = """\
if [ -n "$REGISTRY" ]; then
  aws ecr get-login-password --region "$REGISTRY_REGION" \\
    | docker login --username AWS --password-stdin "$REGISTRY" >/dev/null
fi
echo "opsweb: pulling $IMAGE"
docker pull "$IMAGE" >/dev/null
docker rm -f "$NAME-candidate" >/dev/null 2>&1 || true
start "$NAME-candidate" "127.0.0.1::$PORT"
CANDIDATE_PORT=$(docker port "$NAME-candidate" "$PORT/tcp" | head -n 1 | sed 's/.*://')
if ! healthy "$CANDIDATE_PORT"; then
  echo "opsweb: the new container failed $HEALTH_PATH for ${HEALTH_TIMEOUT}s; the old one still runs"
  docker logs --tail 20 "$NAME-candidate" 2>&1 || true
  docker rm -f "$NAME-candidate" >/dev/null
  exit 1
fi
docker rm -f "$NAME-candidate" >/dev/null
docker rm -f "$NAME-previous" >/dev/null 2>&1 || true
if docker inspect "$NAME" >/dev/null 2>&1; then
  docker stop "$NAME" >/dev/null
  docker rename "$NAME" "$NAME-previous"
fi
start "$NAME" "$PORT:$PORT"
if ! healthy "$PORT"; then
  echo "opsweb: $IMAGE failed $HEALTH_PATH on port $PORT; restarting the previous container"
  docker logs --tail 20 "$NAME" 2>&1 || true
  docker rm -f "$NAME" >/dev/null
  if docker inspect "$NAME-previous" >/dev/null 2>&1; then
    docker rename "$NAME-previous" "$NAME"
    docker start "$NAME" >/dev/null
  fi
  exit 1
fi
echo "opsweb: $NAME runs $IMAGE\""""

REVERT_BODY = """\
if ! docker inspect "$NAME-previous" >/dev/null 2>&1; then
  echo "opsweb: no stopped container $NAME-previous to restore"
  exit 1
fi
docker rm -f "$NAME" >/dev/null 2>&1 || true
docker rename "$NAME-previous" "$NAME"
docker start "$NAME" >/dev/null
if ! healthy "$PORT"; then
  echo "opsweb: the restored container failed $HEALTH_PATH on port $PORT"
  docker logs --tail 20 "$NAME" 2>&1 || true
  exit 1
fi
echo "opsweb: $NAME runs its previous container again\""""


def _assignments(values: Mapping[str, Any]) -> list[str]:
    """Shell variable assignments, every value quoted: nothing from a setting or a tag is ever
    parsed by the shell."""
    return [f"{name}={shlex.quote(str(value))}" for name, value in values.items()]


def switch_script(
    settings: Mapping[str, Any], *, image: str, version: str, rollback: bool
) -> list[str]:
    """The AWS-RunShellScript lines that make ``image`` (``repository@sha256:…``) the running
    container: pull, start a candidate on a loopback port, wait for its health check, then stop
    the old container and start the new one on ``port`` (the old one comes back if that fails).
    ECR login uses the instance's role."""
    repository = image.rpartition("@")[0]
    registry, region = ecr_registry(repository, settings["region"])
    env_file = ' --env-file "$ENV_FILE"' if settings["env_file"] else ""
    start = (
        "start() {\n"
        f'  docker run -d --name "$1" --restart unless-stopped -p "$2"{env_file} \\\n'
        '    -e PORT="$PORT" -e APP_VERSION="$APP_VERSION" -e ROLLBACK="$ROLLBACK" '
        '"$IMAGE" >/dev/null\n'
        "}"
    )
    values = {
        **_script_values(settings),
        "IMAGE": image,
        "APP_VERSION": version,
        "ROLLBACK": "true" if rollback else "false",
        "ENV_FILE": settings["env_file"],
        "REGISTRY": registry,
        "REGISTRY_REGION": region,
    }
    text = "\n".join(["set -eu", *_assignments(values), HEALTH_FUNCTION, start, SWITCH_BODY])
    return text.splitlines()


def revert_script(settings: Mapping[str, Any]) -> list[str]:
    """Lines that start the stopped ``<name>-previous`` container again in place of the new one:
    the way back for an instance whose earlier image opsweb never recorded."""
    text = "\n".join(
        ["set -eu", *_assignments(_script_values(settings)), HEALTH_FUNCTION, REVERT_BODY]
    )
    return text.splitlines()


def _script_values(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "NAME": settings["container_name"],
        "PORT": settings["port"],
        "HEALTH_PATH": settings["health_path"],
        "HEALTH_TIMEOUT": int(math.ceil(settings["health_timeout"])),
    }


def ecr_registry(repository: str, region: str) -> tuple[str, str]:
    """(registry host, its region) when ``repository`` is in ECR, else ("", "")."""
    host = repository.split("/", 1)[0] if "/" in repository else ""
    found = ECR_HOST_RE.match(host)
    if not found:
        return "", ""
    return host, found["region"] or region
