#!/bin/sh
# opsweb's image runs one of three roles, chosen by the command (Dockerfile CMD, ECS `command`):
#   web              gunicorn with gunicorn.conf.py (the default)
#   worker           the django-q2 cluster that executes deploy, promotion and rollback runs
#   healthcheck      the Dockerfile's HEALTHCHECK and the ECS container health check
#   anything else    `python manage.py <args>`: migrate, register_image, createsuperuser, ...
# Every role replaces this shell with `exec`, so SIGTERM from Docker or ECS reaches gunicorn or
# `manage.py worker` itself, and they stop gracefully (the worker forwards it to the django-q2
# cluster's main pid only, lets the running step finish for OPSWEB_WORKER_STOP_SECONDS, and
# recovers lost runs every OPSWEB_RECONCILE_SECONDS while it runs).
# tests/test_web_role.py starts `docker-entrypoint.sh web` and `worker` as they are.
set -eu

cd "$(dirname "$0")"

role="${1:-web}"
[ "$#" -gt 0 ] && shift

case "$role" in
  web)
    exec gunicorn --config gunicorn.conf.py "$@"
    ;;
  worker)
    exec python manage.py worker "$@"
    ;;
  healthcheck)
    # Only the web role serves HTTP; a worker container is healthy while its process runs
    # (a worker that stops heart-beating is found by opsweb's reconciler).
    if tr '\0' ' ' </proc/1/cmdline 2>/dev/null | grep -q -e 'manage.py worker' -e qcluster; then
      exit 0
    fi
    exec python - <<'PY'
import os, sys, urllib.request
# Send a Host that the settings allow: the first ALLOWED_HOSTS entry (".example.com" allows
# "example.com"; "*" allows anything).
host = os.environ.get("ALLOWED_HOSTS", "localhost").split(",")[0].strip().lstrip(".")
host = "localhost" if host in ("", "*") else host
request = urllib.request.Request(
    f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz", headers={"Host": host}
)
try:
    with urllib.request.urlopen(request, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:
    print(f"healthcheck: {exc}", file=sys.stderr)
    sys.exit(1)
PY
    ;;
  *)
    exec python manage.py "$role" "$@"
    ;;
esac
