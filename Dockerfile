# opsweb: one image, three roles chosen by the command (see docker-entrypoint.sh):
#   docker run IMAGE              the web server (gunicorn, WhiteNoise serves /static/)
#   docker run IMAGE worker       the django-q2 cluster
#   docker run IMAGE migrate      any `manage.py` command: migrate, register_image, ...
# Runtime configuration comes from the environment (opsweb/settings.py): SECRET_KEY,
# ALLOWED_HOSTS and DATABASE_URL are required because DJANGO_ENV is production.

# ---- build: a virtual environment with the locked runtime dependencies -----------------------
FROM python:3.12-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY requirements.lock /tmp/requirements.lock
# --no-deps: the lock file lists every package, so nothing unlocked is resolved here.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements.lock

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.12-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=opsweb.settings \
    DJANGO_ENV=production \
    STATIC_ROOT=/app/staticfiles \
    PORT=8000

RUN groupadd --system --gid 10001 opsweb \
 && useradd --system --uid 10001 --gid opsweb --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin opsweb

WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# Code and static files belong to root: the application user can read them, not change them.
COPY . /app

# Collect static files with the production storage (hashed names, a manifest, compressed
# copies) so that WhiteNoise serves exactly what the templates reference; a development build
# would have no manifest, and every page would fail in production. The production profile
# insists on its three variables: these placeholders exist only for this command, which reads
# no secret and opens no database connection, and are not kept in the image.
# tests/test_web_role.py runs the same command.
RUN DJANGO_ENV=production \
    SECRET_KEY=placeholder-for-collectstatic-at-build-time \
    ALLOWED_HOSTS=localhost \
    DATABASE_URL=sqlite:////tmp/collectstatic.sqlite3 \
    /app/docker-entrypoint.sh collectstatic --noinput \
 && python -m compileall -q /app/opsweb /app/orchestration

USER 10001:10001
EXPOSE 8000

# Docker's own check; on ECS the task definition declares the same command. The load balancer
# checks /healthz itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/app/docker-entrypoint.sh", "healthcheck"]

ENTRYPOINT ["/app/docker-entrypoint.sh"]
CMD ["web"]
