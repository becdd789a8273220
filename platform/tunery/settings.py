"""Tunery settings. Every value comes from an environment variable with a safe default, so the
same code runs embedded (SQLite, filesystem broker, local storage, CPU) and in production
(PostgreSQL, Redis, S3-compatible storage, GPU workers). README.md lists every variable."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import dj_database_url
from tunery_storage import S3Settings

from tunery.core.env import env_bool, env_int, env_list

BASE_DIR = Path(__file__).resolve().parent.parent.parent
#: Everything the embedded setup writes: database, uploads, artifacts, broker folders.
DATA_DIR = Path(os.environ.get("TUNERY_DATA_DIR", BASE_DIR / "var")).resolve()

DEBUG = env_bool("TUNERY_DEBUG", False)
# The embedded default generates and keeps a local key; production must set one.
SECRET_KEY = os.environ.get("TUNERY_SECRET_KEY") or "embedded-insecure-key-set-TUNERY_SECRET_KEY-in-production"
ALLOWED_HOSTS = env_list("TUNERY_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("TUNERY_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # the API docs' JS/CSS served locally (air-gapped: no CDN)
    "tunery.core",
    "tunery.tenants",
    "tunery.verticals",
    "tunery.files",
    "tunery.catalog",
    "tunery.jobs",
    "tunery.batches",
    "tunery.evaluations",
    "tunery.serving",
    "tunery.feedback",
    "tunery.monitoring",
    "tunery.dashboard",
]

MIDDLEWARE = [
    "tunery.monitoring.middleware.RequestIdMiddleware",
    "tunery.core.middleware.RejectNulBytesMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "tunery.dashboard.middleware.PredictionUsageMiddleware",
]

ROOT_URLCONF = "tunery.urls"
WSGI_APPLICATION = "tunery.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{DATA_DIR / 'tunery.sqlite3'}"),
        conn_max_age=env_int("TUNERY_DB_CONN_MAX_AGE", 60),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (web, worker, scheduler) share the embedded database: wait on locks
    # instead of failing, and use WAL so readers do not block the writer.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
#: Records the request path hands off (usage counts, last-use times, log rows) are written by a
#: background thread at most this many seconds later (tunery.core.writebehind; 0: at once).
TUNERY_WRITE_BEHIND_SECONDS = float(os.environ.get("TUNERY_WRITE_BEHIND_SECONDS") or 1.0)
TUNERY_WRITE_BEHIND_MAX_ITEMS = env_int("TUNERY_WRITE_BEHIND_MAX_ITEMS", 1000)
#: Seconds an API key or a model's deployment looked up by one process is reused without a query
#: (tunery.core.lookupcache): the bound within which a revocation or an undeploy reaches other
#: processes (0: no cache).
TUNERY_LOOKUP_CACHE_SECONDS = float(os.environ.get("TUNERY_LOOKUP_CACHE_SECONDS") or 2.0)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# WhiteNoise serves the admin's static files from the WSGI app (collectstatic output, else the apps' own).
WHITENOISE_USE_FINDERS = True
STATIC_ROOT = DATA_DIR / "static"
MEDIA_ROOT = Path(os.environ.get("TUNERY_MEDIA_ROOT", DATA_DIR / "media"))

# Storage: local filesystem by default; S3-compatible when TUNERY_S3_BUCKET is set (the same
# variables configure the models' object storage: tunery_storage.S3Settings, tunery.core.artifacts).
_s3 = S3Settings.from_env()
if _s3 is not None:
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {**_s3.django_storage_options(), "file_overwrite": False},
    }
else:
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Uploads: bodies above this go to a temporary file, never all into memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
#: Uploads stream into temporary files here, not the system temp directory: the files app sweeps
#: what a killed web process left behind (tunery.files.uploads.sweep_stale_upload_files).
FILE_UPLOAD_TEMP_DIR = str(Path(os.environ.get("TUNERY_UPLOAD_TEMP_DIR", DATA_DIR / "tmp" / "uploads")))
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("TUNERY_MAX_REQUEST_BYTES", 1024 * 1024)
#: Largest training file a tenant may upload.
TUNERY_MAX_UPLOAD_BYTES = env_int("TUNERY_MAX_UPLOAD_BYTES", 512 * 1024 * 1024)
# a tenant's own base model (POST /v1/models): the archive and what it unpacks to
# experiment tracking (jobs' `integrations`): the MLflow server jobs log to; empty = no mlflow integration
TUNERY_MLFLOW_TRACKING_URI = os.environ.get("TUNERY_MLFLOW_TRACKING_URI", "")
TUNERY_MAX_MODEL_IMPORT_BYTES = env_int("TUNERY_MAX_MODEL_IMPORT_BYTES", 2 * 1024 * 1024 * 1024)
TUNERY_MAX_IMPORTED_MODELS = env_int("TUNERY_MAX_IMPORTED_MODELS", 10)
#: Where fine-tuned models, checkpoints and logs of jobs are written (shared by web and workers).
TUNERY_ARTIFACTS_DIR = Path(os.environ.get("TUNERY_ARTIFACTS_DIR", DATA_DIR / "artifacts"))
#: With object storage for models: the local copies of models this host serves (LRU, size-bounded).
TUNERY_ARTIFACT_CACHE_DIR = Path(os.environ.get("TUNERY_ARTIFACT_CACHE_DIR", DATA_DIR / "cache" / "artifacts"))
TUNERY_ARTIFACT_CACHE_BYTES = env_int("TUNERY_ARTIFACT_CACHE_BYTES", 20 * 1024**3)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tunery.core.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tunery.core.permissions.IsTenantMember"],
    "EXCEPTION_HANDLER": "tunery.core.errors.openai_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["tunery.core.renderers.OrjsonRenderer"],
    # JSON bodies only, size-, depth- and NUL-checked; uploads set MultiPartParser on their view.
    "DEFAULT_PARSER_CLASSES": ["tunery.core.parsers.BoundedJSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "tunery.core.negotiation.IgnoreClientAccept",
    # Tenant.requests_per_minute on every API call: atomic in Redis, the database without it.
    "DEFAULT_THROTTLE_CLASSES": ["tunery.serving.ratelimit.TenantRateThrottle"],
    "UNAUTHENTICATED_USER": None,
    # OPTIONS describes the endpoint without building a serializer (the OpenAPI schema documents bodies).
    "DEFAULT_METADATA_CLASS": "tunery.core.metadata.EndpointMetadata",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tunery API",
    "DESCRIPTION": (
        "Fine-tuning for business verticals. Speaks OpenAI's fine-tuning API under /v1.\n\n"
        'Every error is OpenAI\'s error object, `{"error": {"message", "type", "param", "code"}}`. '
        "No string in a request body may hold a NUL character (\\u0000): it is refused with a 400 "
        '`invalid_characters`. List endpoints answer `{"object": "list", "data": [...], "has_more"}`; '
        "cursor-paged ones add `first_id` and `last_id` and take `after` (an id on the list) and `limit`."
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery: the broker only wakes workers; job state lives in the database.
# Embedded default: a filesystem broker under DATA_DIR (no server). Production: Redis.
CELERY_BROKER_URL = os.environ.get("TUNERY_BROKER_URL", "filesystem://")
CELERY_BROKER_DIR = DATA_DIR / "broker"
CELERY_TASK_ALWAYS_EAGER = env_bool("TUNERY_TASKS_EAGER", False)

REDIS_URL = os.environ.get("TUNERY_REDIS_URL", "")  # rate limits; falls back to the database when empty

#: Seconds a running job's lease lasts without a heartbeat before the reconciler re-queues it.
TUNERY_JOB_LEASE_SECONDS = env_int("TUNERY_JOB_LEASE_SECONDS", 120)
#: A batch's partial output while it runs (on storage every worker sees, so another can resume it).
TUNERY_BATCH_WORK_DIR = Path(os.environ.get("TUNERY_BATCH_WORK_DIR", DATA_DIR / "batches"))
#: Lines a batch worker scores between two progress records (a resumed batch redoes at most these).
TUNERY_BATCH_CHUNK_LINES = env_int("TUNERY_BATCH_CHUNK_LINES", 32)
#: Most rows an evaluation file (/v1/evaluations) may hold.
TUNERY_EVALUATION_MAX_ROWS = env_int("TUNERY_EVALUATION_MAX_ROWS", 20_000)
#: Evaluations a tenant may have queued or running at once.
TUNERY_EVALUATION_MAX_PENDING = env_int("TUNERY_EVALUATION_MAX_PENDING", 10)
#: Most rows a causal-LM evaluation with ``generate`` may hold (each is generated one at a time).
TUNERY_EVALUATION_MAX_GENERATIONS = env_int("TUNERY_EVALUATION_MAX_GENERATIONS", 200)
# Learning from production (tunery.feedback): the prediction log, monitoring and alert webhooks.
#: Days a prediction's log row (label, confidence, hand-off) is kept; feedback is accepted this long.
TUNERY_PREDICTION_LOG_DAYS = env_int("TUNERY_PREDICTION_LOG_DAYS", 90)
#: Allow alert webhooks to loopback, private and link-local addresses (off: an SSRF guard).
TUNERY_WEBHOOKS_ALLOW_PRIVATE = env_bool("TUNERY_WEBHOOKS_ALLOW_PRIVATE", False)
#: Seconds one webhook delivery attempt may take (connect and answer).
TUNERY_WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("TUNERY_WEBHOOK_TIMEOUT_SECONDS") or 5)
#: Attempts per webhook delivery (retried with exponential backoff: 10 s, 20 s, 40 s, ...).
TUNERY_WEBHOOK_MAX_ATTEMPTS = env_int("TUNERY_WEBHOOK_MAX_ATTEMPTS", 5)
#: Seconds between two evaluations of the tenants' alert rules (celery beat).
TUNERY_ALERTS_EVERY_SECONDS = env_int("TUNERY_ALERTS_EVERY_SECONDS", 60)
TUNERY_JOB_MAX_ATTEMPTS = env_int("TUNERY_JOB_MAX_ATTEMPTS", 3)
TUNERY_RECONCILE_EVERY_SECONDS = env_int("TUNERY_RECONCILE_EVERY_SECONDS", 30)
# Job queue (tunery.jobs): how the runner starts the engine and how often it renews and checks.
#: The engine's command line; the job's SPEC.json path is appended (shlex syntax).
TUNERY_ENGINE_COMMAND = shlex.split(os.environ.get("TUNERY_ENGINE_COMMAND", "")) or [
    sys.executable,
    "-m",
    "tunery_engine",
    "run",
]
#: Seconds between lease renewals / pause-cancel checks of a running job (also bounds cancel latency).
TUNERY_JOB_POLL_SECONDS = float(os.environ.get("TUNERY_JOB_POLL_SECONDS") or 2)
#: A queued or validating job whose wake-up message is older than this is sent again.
TUNERY_JOB_REDISPATCH_SECONDS = env_int("TUNERY_JOB_REDISPATCH_SECONDS", 120)
#: Redis only: an unacknowledged message is redelivered after this many seconds (the lease, not
#: this, decides who owns a job; a redelivered message for a running job does nothing).
TUNERY_BROKER_VISIBILITY_TIMEOUT = env_int("TUNERY_BROKER_VISIBILITY_TIMEOUT", 3600)

#: Bytes of models the inference runtime keeps loaded per process (least recently used out).
TUNERY_MODEL_CACHE_BYTES = env_int("TUNERY_MODEL_CACHE_BYTES", 2 * 1024**3)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "tunery.monitoring.logging.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": os.environ.get("TUNERY_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
