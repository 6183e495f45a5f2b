"""gunicorn settings for the image's `web` role (docker-entrypoint.sh web).

The Dockerfile, the ECS task definition and tests/test_web_role.py all start the web server
through `docker-entrypoint.sh web`, which runs `gunicorn --config gunicorn.conf.py`, so this file
is the one place where the web server is configured.
"""

import os

# Listen on every interface of the container: the task's security group admits only the load
# balancer. HOST lets a test bind to 127.0.0.1.
bind = [f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"]  # noqa: S104
wsgi_app = "opsweb.wsgi:application"

# gthread: a few processes with threads each. The sync worker ignores keep-alive, which an ALB
# needs: its connections to targets are reused, so the server must hold an idle connection open
# longer than the ALB's idle timeout (60 s) or the ALB sends a request on a socket gunicorn is
# closing, and the client gets a 502.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# ECS sends SIGTERM, waits stopTimeout (45 s in the task definition), then SIGKILL: finish the
# requests in flight well before that.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
# Recycle workers now and then so a slow leak cannot grow without bound.
max_requests = 2000
max_requests_jitter = 200
# Worker heartbeat files on a tmpfs, a private mount of the container: its root file system is
# read-only on ECS.
SHM = "/dev/shm"  # noqa: S108
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR", SHM if os.path.isdir(SHM) else None)

# The load balancer terminates TLS and sets X-Forwarded-Proto; its address is not fixed, and
# only it can reach the container, so trust the forwarded scheme from any peer.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "*")

# No control socket for `gunicornc`: it would be created under $HOME, which is read-only in the
# container, and nothing here uses it.
control_socket_disable = True

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
capture_output = True
