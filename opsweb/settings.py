"""opsweb settings: one file, configured from the environment (12-factor).

With no environment variables at all it runs locally on SQLite. ``DJANGO_ENV=production``
turns on the production profile, which refuses to start without SECRET_KEY, ALLOWED_HOSTS and
DATABASE_URL.
"""

import os
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from orchestration import outbound

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
DJANGO_ENV = env.str("DJANGO_ENV", default="development")
if DJANGO_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(
        f"DJANGO_ENV is {DJANGO_ENV!r}; set it to 'development' or 'production'."
    )
PRODUCTION = DJANGO_ENV == "production"


def required(name: str) -> str:
    """Return a variable the production profile cannot do without, naming it when absent."""
    value = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(
            f"{name} is not set. DJANGO_ENV=production needs SECRET_KEY, ALLOWED_HOSTS and "
            f"DATABASE_URL in the environment."
        )
    return value


if PRODUCTION:
    SECRET_KEY = required("SECRET_KEY")
    ALLOWED_HOSTS = [h.strip() for h in required("ALLOWED_HOSTS").split(",") if h.strip()]
    required("DATABASE_URL")
    DEBUG = env.bool("DEBUG", default=False)
else:
    # Local only: a fixed key is fine for a laptop database, never used in production.
    SECRET_KEY = env.str("SECRET_KEY", default="django-insecure-local-development-only")
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
    DEBUG = env.bool("DEBUG", default=True)

CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_q",
    "axes",
    # django-ninja, listed so that /api/v1/docs serves its bundled Swagger UI files from here
    # (without it the page would load them from a CDN).
    "ninja",
    "opsweb",
]

MIDDLEWARE = [
    "opsweb.middleware.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "opsweb.live.LivePagesMiddleware",  # a live page's idle refresh: 304 after one query
    "opsweb.middleware.UserTimeZoneMiddleware",  # the user's zone; after the 304s, no query
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "opsweb.api.auth.ForgetTokenMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: turns lockouts into a page
]

ROOT_URLCONF = "opsweb.urls"
WSGI_APPLICATION = "opsweb.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.csp",
                "opsweb.sso.context",
            ],
        },
    },
]

# SQLite by default. WAL lets the web server read while the django-q2 cluster writes; the busy
# timeout and IMMEDIATE transactions make writers queue instead of failing "database is locked".
SQLITE_PATH = env.path("SQLITE_PATH", default=BASE_DIR / "var" / "opsweb.sqlite3")
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{SQLITE_PATH}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so that worker processes started by tests see the same database;
    # one per test session, so that two suites running at once do not share it.
    DATABASES["default"]["TEST"] = {
        "NAME": str(BASE_DIR / "var" / f"test_opsweb_{os.getpid()}.sqlite3")
    }
else:
    # Keep connections: the django-q2 cluster polls the ORM broker every second.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # One test database per test session, so that two suites running at once do not collide.
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# One date format across the console: opsweb/formats/en/formats.py.
FORMAT_MODULE_PATH = ["opsweb.formats"]
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "var" / "static")
if not PRODUCTION:
    Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing root
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"  # where a sign-in without ?next= lands (SSO)

# Login throttling (django-axes, opsweb/login_throttle.py): failures count per username and
# client address; the address comes from X-Forwarded-For only behind OPSWEB_TRUSTED_PROXIES.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Django's ModelBackend, refusing passwords of all but superusers under
    # OPSWEB_PASSWORD_LOGIN=off (opsweb/sso.py).
    "opsweb.sso.PasswordBackend",
    # OpenID Connect sign-in; answers nothing unless OPSWEB_OIDC_ISSUER is set.
    "opsweb.sso.OidcBackend",
]
AXES_FAILURE_LIMIT = env.int("OPSWEB_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("OPSWEB_LOGIN_COOLOFF_MINUTES", default=15.0) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "opsweb.login_throttle.client_ip"
AXES_LOCKOUT_CALLABLE = "opsweb.login_throttle.locked_out"

# django-q2. The ORM broker needs no extra service. `retry` must exceed `timeout`, or a task
# still running would be handed to a second worker. Runs are claimed with a conditional UPDATE,
# so a redelivery after a worker died is harmless; the reconciler ends runs whose worker died.
Q_CLUSTER = {
    "name": "opsweb",
    "orm": "default",
    # The ORM broker plus a wake-up on enqueue (LISTEN/NOTIFY on PostgreSQL, a local socket on
    # SQLite): a queued run starts at once; `poll` is only the safety net when idle.
    # Q_BROKER_CLASS= (empty) selects django-q2's plain ORM broker, e.g. to compare.
    "broker_class": env.str("Q_BROKER_CLASS", default="opsweb.broker.WakingORM") or None,
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": env.int("Q_TIMEOUT", default=1800),
    "retry": env.int("Q_RETRY", default=2100),
    "max_attempts": 3,
    "ack_failures": True,
    "catch_up": False,
    "poll": 0.5,
    "save_limit": 500,
    "sync": env.bool("Q_SYNC", default=False),
}

OPSWEB = {
    # Pending runs older than this expire (rule: approvals do not wait forever).
    "APPROVAL_WINDOW_SECONDS": env.int("OPSWEB_APPROVAL_WINDOW_SECONDS", default=7 * 24 * 3600),
    # A confirmation page may be confirmed for this long after it was shown; later, it is
    # refused ("reload it and check again"): what it showed is a decision about then.
    "CONFIRMATION_MAX_AGE_SECONDS": env.int("OPSWEB_CONFIRMATION_MAX_AGE_SECONDS", default=15 * 60),
    # A running run whose heartbeat is older than this has lost its worker. A working run beats
    # from a background thread five times per window, whatever its step (manage.py worker).
    "HEARTBEAT_STALE_SECONDS": env.int("OPSWEB_HEARTBEAT_STALE_SECONDS", default=15),
    # How often `manage.py worker` looks for lost runs and stalled queues.
    "RECONCILE_SECONDS": env.float("OPSWEB_RECONCILE_SECONDS", default=3.0),
    # How long `manage.py worker` lets the running step finish after SIGTERM before it kills
    # the cluster (the run is then recovered like a lost one). Keep it under ECS stopTimeout.
    "WORKER_STOP_SECONDS": env.float("OPSWEB_WORKER_STOP_SECONDS", default=30.0),
    # Where the local process backend keeps exported versions, pid files and logs.
    "LOCAL_STATE_DIR": env.path("OPSWEB_LOCAL_STATE_DIR", default=BASE_DIR / "var" / "local"),
    # Proxies in front of opsweb that append to X-Forwarded-For (the AWS load balancer: 1).
    "TRUSTED_PROXIES": env.int("OPSWEB_TRUSTED_PROXIES", default=0),
    "LOGIN_COOLOFF_MINUTES": env.float("OPSWEB_LOGIN_COOLOFF_MINUTES", default=15.0),
    # How often a bake reads its alarms (docs/alarms.md).
    "BAKE_POLL_SECONDS": env.float("OPSWEB_BAKE_POLL_SECONDS", default=5.0),
    # An emergency override of a freeze needs this many approvals from "override approvers".
    "OVERRIDE_APPROVALS": env.int("OPSWEB_OVERRIDE_APPROVALS", default=2),
}

# The HTTP API (opsweb/api/, docs/design.md "HTTP API").
OPSWEB_API = {
    # Failed sign-ins (bad token, bad CI token, bad webhook signature) from one address within
    # the window; past the limit that address is answered 429 until the window ends.
    "FAILURE_LIMIT": env.int("OPSWEB_API_FAILURE_LIMIT", default=20),
    "FAILURE_WINDOW_SECONDS": env.int("OPSWEB_API_FAILURE_WINDOW_SECONDS", default=600),
    # GET /runs/{id}?wait=N waits at most this long (it holds a web worker meanwhile).
    "MAX_WAIT_SECONDS": env.int("OPSWEB_API_MAX_WAIT_SECONDS", default=30),
    # How long a trust policy's JWKS (the issuer's public keys) is kept; an unknown key id
    # fetches it again, at most once per JWKS_MIN_REFRESH_SECONDS.
    "JWKS_CACHE_SECONDS": env.int("OPSWEB_JWKS_CACHE_SECONDS", default=600),
    "JWKS_MIN_REFRESH_SECONDS": env.int("OPSWEB_JWKS_MIN_REFRESH_SECONDS", default=30),
    "JWKS_TIMEOUT_SECONDS": env.float("OPSWEB_JWKS_TIMEOUT_SECONDS", default=5.0),
    # Webhooks: GitHub's signing secret, and the API key EventBridge sends for ECR pushes.
    # Empty: that webhook answers 404. What they find is registered as WEBHOOK_USER.
    "GITHUB_WEBHOOK_SECRET": env.str("OPSWEB_GITHUB_WEBHOOK_SECRET", default=""),
    "ECR_WEBHOOK_KEY": env.str("OPSWEB_ECR_WEBHOOK_KEY", default=""),
    "WEBHOOK_USER": env.str("OPSWEB_WEBHOOK_USER", default="ci"),
}

# Outbound targets (orchestration/outbound.py): opsweb sends nothing to loopback, link-local
# (cloud metadata), private, shared or reserved addresses, except to these networks and host
# names, e.g. "10.20.0.0/16,relay.internal". Empty by default; the local backend adds
# loopback for its own health checks and alarms.
OPSWEB_OUTBOUND_ALLOW = env.list("OPSWEB_OUTBOUND_ALLOW", default=[])
try:
    outbound.AllowList.parse(OPSWEB_OUTBOUND_ALLOW)
except ValueError as exc:
    raise ImproperlyConfigured(f"OPSWEB_OUTBOUND_ALLOW: {exc}") from None

# Single sign-on with OpenID Connect (opsweb/sso.py, mozilla-django-oidc). Off unless
# OPSWEB_OIDC_ISSUER is set; the endpoints are discovered from the issuer's
# /.well-known/openid-configuration when first needed. The provider is reached through
# orchestration.outbound like every target; a provider on a private network (or loopback, in
# the tests) is allowed for the sign-in alone by OPSWEB_OIDC_OUTBOUND_ALLOW.


def secret_value(name: str) -> str:
    """``name`` from the environment, or the contents of the file ``<name>_FILE`` names (a
    secret mounted by the orchestrator or a secrets manager's agent)."""
    path = env.str(f"{name}_FILE", default="")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(
                f"{name}_FILE: cannot read {path} ({exc.strerror})."
            ) from None
    return env.str(name, default="")


OIDC_ISSUER = env.str("OPSWEB_OIDC_ISSUER", default="").strip().rstrip("/")
OIDC_RP_CLIENT_ID = env.str("OPSWEB_OIDC_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = secret_value("OPSWEB_OIDC_CLIENT_SECRET")
OIDC_RP_SCOPES = env.str("OPSWEB_OIDC_SCOPES", default="openid email profile")
# Where the groups are, in the ID token or the userinfo answer: a claim name, or a dotted path
# such as realm_access.roles (Keycloak).
OIDC_GROUPS_CLAIM = env.str("OPSWEB_OIDC_GROUPS_CLAIM", default="groups")
OIDC_TIMEOUT = env.float("OPSWEB_OIDC_TIMEOUT_SECONDS", default=5.0)
OPSWEB_OIDC_OUTBOUND_ALLOW = env.list("OPSWEB_OIDC_OUTBOUND_ALLOW", default=[])
OIDC_RP_SIGN_ALGO = env.str("OPSWEB_OIDC_SIGN_ALGO", default="RS256")
OIDC_USE_PKCE = True
OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_authentication_callback"
# Signing out of opsweb ends the provider's session too (RP-initiated logout): the ID token is
# kept in the session for the end_session_endpoint's id_token_hint.
OIDC_STORE_ID_TOKEN = True
OIDC_OP_LOGOUT_URL_METHOD = "opsweb.sso.provider_logout_url"
# A session that SSO opened lasts this long; then the provider is asked again (and the groups
# set again): someone who left the company is out by then at the latest.
OIDC_SESSION_SECONDS = env.int("OPSWEB_SSO_SESSION_SECONDS", default=8 * 3600)
# OPSWEB_PASSWORD_LOGIN=off: only superusers (break-glass) sign in with a password.
PASSWORD_LOGIN = env.str("OPSWEB_PASSWORD_LOGIN", default="on").strip().lower()
if PASSWORD_LOGIN not in {"on", "off"}:
    raise ImproperlyConfigured(f"OPSWEB_PASSWORD_LOGIN is {PASSWORD_LOGIN!r}; use on or off.")
if OIDC_ISSUER:
    if not (OIDC_RP_CLIENT_ID and OIDC_RP_CLIENT_SECRET):
        raise ImproperlyConfigured(
            "OPSWEB_OIDC_ISSUER is set but OPSWEB_OIDC_CLIENT_ID or OPSWEB_OIDC_CLIENT_SECRET is "
            "not: set both (the secret may come from OPSWEB_OIDC_CLIENT_SECRET_FILE)."
        )
    try:
        _oidc_allow = outbound.AllowList.parse(
            [*OPSWEB_OUTBOUND_ALLOW, *OPSWEB_OIDC_OUTBOUND_ALLOW]
        )
    except ValueError as exc:
        raise ImproperlyConfigured(f"OPSWEB_OIDC_OUTBOUND_ALLOW: {exc}") from None
    if problem := outbound.url_problem(OIDC_ISSUER, allow=_oidc_allow, what="OPSWEB_OIDC_ISSUER"):
        raise ImproperlyConfigured(
            problem.replace("OPSWEB_OUTBOUND_ALLOW", "OPSWEB_OIDC_OUTBOUND_ALLOW")
        )

# Approvals from Slack (opsweb/slack.py): the Slack app's signing secret checks every request
# Slack sends to /slack/; the bot token opens the rejection dialog. Off without the secret.
SLACK_SIGNING_SECRET = secret_value("OPSWEB_SLACK_SIGNING_SECRET")
SLACK_BOT_TOKEN = secret_value("OPSWEB_SLACK_BOT_TOKEN")
SLACK_API_URL = env.str("OPSWEB_SLACK_API_URL", default="https://slack.com/api/").rstrip("/") + "/"
# A Slack click of someone who signs in with SSO counts only if the provider confirmed them and
# their groups this recently (they signed in to opsweb since).
SLACK_SSO_MAX_AGE_HOURS = env.float("OPSWEB_SLACK_SSO_MAX_AGE_HOURS", default=24.0)

# Notifications. Mail uses Django's mailers, configured from EMAIL_URL (django-environ syntax,
# e.g. smtp+tls://user:password@smtp.example.com:587); without it, locally, mail is printed.


def mailer(url: str, *, allow: tuple[str, ...] = ()) -> dict:
    """One entry of Django's MAILERS from an EMAIL_URL. An SMTP relay goes through
    ``opsweb.mail.EmailBackend`` (checked and pinned when sending) and is refused here, naming
    the variable, when it is an address opsweb does not send to (``allow`` adds exceptions to
    OPSWEB_OUTBOUND_ALLOW)."""
    config = environ.Env.email_url_config(url)
    if config["EMAIL_BACKEND"] != "django.core.mail.backends.smtp.EmailBackend":
        return {"BACKEND": config["EMAIL_BACKEND"]}
    options = {
        "host": config.get("EMAIL_HOST") or "localhost",
        "port": config.get("EMAIL_PORT") or 25,
        "username": config.get("EMAIL_HOST_USER") or "",
        "password": config.get("EMAIL_HOST_PASSWORD") or "",
        "use_tls": bool(config.get("EMAIL_USE_TLS")),
        "use_ssl": bool(config.get("EMAIL_USE_SSL")),
        "timeout": env.int("EMAIL_TIMEOUT", default=10),
        "allow": list(allow),
    }
    problem = outbound.host_problem(
        options["host"],
        allow=outbound.AllowList.parse([*OPSWEB_OUTBOUND_ALLOW, *allow]),
        what="EMAIL_URL's relay",
    )
    if problem:
        raise ImproperlyConfigured(problem)
    return {"BACKEND": "opsweb.mail.EmailBackend", "OPTIONS": options}


if env.str("EMAIL_URL", default=""):
    MAILERS = {"default": mailer(env.str("EMAIL_URL"))}
elif PRODUCTION:
    # Django's own default, an SMTP server on this machine: set by nobody, changed by no
    # console user, so its loopback address is allowed for it alone.
    MAILERS = {"default": mailer("smtp://localhost:25", allow=("localhost",))}
else:
    MAILERS = {"default": mailer("consolemail://")}
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="opsweb@localhost")
# The console's address as people reach it: notifications link to run pages under it. Unset,
# the port the console serves on (PORT, as `make run` and gunicorn.conf.py read it), not 8000.
OPSWEB_BASE_URL = env.str(
    "OPSWEB_BASE_URL", default=f"http://127.0.0.1:{env.str('PORT', default='8000')}"
).rstrip("/")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "axes.apps": {"level": "WARNING"},  # its start-up banner in every command's output
    },
}

if PRODUCTION:
    # Behind an AWS load balancer that terminates TLS and sets X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SESSION_COOKIE_HTTPONLY = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"

from django.utils.csp import CSP  # noqa: E402

SECURE_CSP = {
    "default-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "script-src": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
