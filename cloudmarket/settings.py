"""Settings, read from the environment with safe local defaults.

With no variables set the platform runs on SQLite, a file-system Celery broker, the Sandbox
cloud backend and the sandbox payment method. `DATABASE_URL`, `REDIS_URL` and the cloud and
payment credentials switch to the real services.
"""

import base64
import hashlib
from pathlib import Path

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is missing: set it in the environment (DEBUG is off).")
    SECRET_KEY = "insecure-local-development-key-do-not-use-in-production"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_filters",
    "django_htmx",
    "django_celery_beat",
    "allauth",
    "allauth.account",
    "marketplace",
    "provisioning",
    "recipes",
    "notifications",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "cloudmarket.urls"
WSGI_APPLICATION = "cloudmarket.wsgi.application"

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
                "marketplace.context_processors.platform",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and scheduler are separate processes; WAL and immediate transactions let
    # them share one SQLite file without "database is locked" errors under light load.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "marketplace.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every request when it is missing.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "marketplace:dashboard"
LOGOUT_REDIRECT_URL = "marketplace:catalog"

# Accounts: email and password, verified email before the first sign-in.
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = env.str("ACCOUNT_EMAIL_VERIFICATION", default="mandatory")
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Cloudmarket] "
ACCOUNT_ADAPTER = "marketplace.adapters.AccountAdapter"
ACCOUNT_RATE_LIMITS = {
    "login_failed": "10/m/ip,5/5m/key",
    "signup": "20/m/ip",
    "confirm_email": "1/3m/key",
    "reset_password": "20/m/ip,5/m/key",
}

EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Cloudmarket <noreply@cloudmarket.local>")

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    # Per process: rate limits count per web process until REDIS_URL is set.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery: Redis when REDIS_URL is set, otherwise a file-system broker under VAR_DIR that the
# web, worker and scheduler processes on one machine share.
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
else:
    _broker_dir = VAR_DIR / "broker"
    (_broker_dir / "queue").mkdir(parents=True, exist_ok=True)
    (_broker_dir / "control").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        # Broadcast (remote control) messages; kombu's default is a "control" folder in the cwd.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The console email backend prints to stdout, which Celery would log as warnings.
CELERY_WORKER_REDIRECT_STDOUTS_LEVEL = "INFO"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Provisioning tasks use the default queue ("celery") and can wait minutes for a server to
# boot; notifications and periodic checks have their own queues, so a worker that consumes only
# those is never blocked behind them (`manage.py up` runs one of each).
CELERY_TASK_ROUTES = {
    "notifications.tasks.*": {"queue": "notifications"},
    "marketplace.tasks.*": {"queue": "periodic"},
    "billing.tasks.*": {"queue": "periodic"},
    "provisioning.tasks.resume_stalled_provisioning_task": {"queue": "periodic"},
    "provisioning.tasks.agent_contracts_fail_overdue_task": {"queue": "periodic"},
    "provisioning.tasks.reconcile_cloud_accounts_task": {"queue": "periodic"},
    "billing.tasks.payouts_create_monthly_task": {"queue": "periodic"},
    "provisioning.tasks.health_probe_due_task": {"queue": "periodic"},
    "provisioning.tasks.health_probe_contracts_task": {"queue": "periodic"},
    "provisioning.tasks.health_checks_prune_task": {"queue": "periodic"},
    "provisioning.tasks.health_rollups_update_task": {"queue": "periodic"},
}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "end-expired-rentals": {
        "task": "marketplace.tasks.end_expired_rentals_task",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "resume-stalled-provisioning": {
        "task": "provisioning.tasks.resume_stalled_provisioning_task",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "create-monthly-payouts": {
        "task": "billing.tasks.payouts_create_monthly_task",
        # Early on the 1st, once the previous month (UTC) is closed.
        "schedule": crontab(minute=30, hour=1, day_of_month=1),
        "options": {"expires": 6 * 3600},
    },
    "reconcile-cloud-accounts": {
        "task": "provisioning.tasks.reconcile_cloud_accounts_task",
        "schedule": crontab(minute="*/10"),
        "options": {"expires": 540},
    },
    "retry-due-refunds": {
        "task": "billing.tasks.refunds_retry_due_task",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "sync-stripe": {
        "task": "billing.tasks.stripe_sync_task",
        "schedule": crontab(minute="*/15"),
        "options": {"expires": 840},
    },
    "reject-unanswered-rentals": {
        "task": "marketplace.tasks.reject_unanswered_rentals_task",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 290},
    },
    "fail-overdue-agent-rentals": {
        "task": "provisioning.tasks.agent_contracts_fail_overdue_task",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 290},
    },
    "probe-contract-health": {
        "task": "provisioning.tasks.health_probe_due_task",
        # Claims only contracts whose interval (HEALTH_PROBE_INTERVAL_SECONDS) has passed, so
        # running it more often than the interval costs one query.
        "schedule": 15.0,
        "options": {"expires": 14},
    },
    "roll-up-health-checks": {
        "task": "provisioning.tasks.health_rollups_update_task",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 290},
    },
    "prune-health-checks": {
        "task": "provisioning.tasks.health_checks_prune_task",
        "schedule": crontab(minute=15, hour=3),
        "options": {"expires": 3600},
    },
    "retry-pending-notifications": {
        "task": "notifications.tasks.retry_pending_notifications_task",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 290},
    },
}

REST_FRAMEWORK = {
    # Token first: DRF answers unauthenticated requests with the first class's WWW-Authenticate
    # header, so a missing or revoked token gets 401 (Session alone would give 403). Token
    # requests need no CSRF token; session requests still do.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "marketplace.api.tokens.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "marketplace.api.parsers.NestingSafeJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 24,
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": "600/min", "rent": "20/min"},
    "EXCEPTION_HANDLER": "marketplace.api.exceptions.api_exception_handler",
}
# API tokens: stored as hashes, sent as "Authorization: Token <key>", valid until revoked.
REST_KNOX = {"TOKEN_TTL": None, "AUTO_REFRESH": False, "AUTH_HEADER_PREFIX": "Token"}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cloudmarket API",
    "DESCRIPTION": "Rent VMs and services, sell capacity, follow provisioning.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Serve Swagger UI from our own static files; the default loads it from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a `status` field; each choice set gets its own schema name.
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "marketplace.models.ContractStatus",
        "ResourceStatusEnum": "provisioning.models.ResourceStatus",
        "AgentWorkActionEnum": ["provision", "terminate"],
        "ProvisioningStepEnum": "marketplace.models.ProvisioningStep",
        # The onboarding API uses the step choices in two fields; both refer to this one schema enum.
        "OnboardingStepEnum": "marketplace.services.onboarding.OnboardingStepKey",
    },
}


def _encryption_keys() -> dict[str, bytes]:
    """Parse `FIELD_ENCRYPTION_KEYS` ("id:base64key,id2:base64key"); the first key encrypts."""
    raw = env.str("FIELD_ENCRYPTION_KEYS", default="")
    if not raw:
        if not DEBUG:
            raise ImproperlyConfigured(
                "FIELD_ENCRYPTION_KEYS is missing: set it to 'k1:<32 random bytes, base64>' "
                "(generate one with: python -c \"import os,base64;print(base64.b64encode(os.urandom(32)).decode())\")."
            )
        # Local development only: derived from the development SECRET_KEY.
        return {"dev": hashlib.sha256(("field-encryption:" + SECRET_KEY).encode()).digest()}
    keys: dict[str, bytes] = {}
    for item in raw.split(","):
        key_id, _, encoded = item.strip().partition(":")
        key = base64.b64decode(encoded)
        if not key_id or len(key) != 32:
            raise ImproperlyConfigured(
                f"FIELD_ENCRYPTION_KEYS entry {key_id!r} is invalid: expected 'id:<base64 of 32 bytes>'."
            )
        keys[key_id] = key
    return keys


FIELD_ENCRYPTION_KEYS = _encryption_keys()
FIELD_ENCRYPTION_KEY_ID = next(iter(FIELD_ENCRYPTION_KEYS))
# The "Re-validate" action checks one cloud account against its API at most once per this
# many seconds.
CLOUD_ACCOUNT_VALIDATE_INTERVAL_SECONDS = env.int("CLOUD_ACCOUNT_VALIDATE_INTERVAL_SECONDS", default=30)

# Marketplace rules.
# The catalog counts matches up to this number and then says "more than"; exact counts of
# broad filters over a large catalog cost more than the rest of the page.
CATALOG_COUNT_CAP = env.int("CATALOG_COUNT_CAP", default=1000)
PLATFORM_COMMISSION_BPS = env.int("PLATFORM_COMMISSION_BPS", default=2000)  # 20 %
# The recipe author's share of a rental's payments when the author is not the provider.
RECIPE_AUTHOR_SHARE_BPS = env.int("RECIPE_AUTHOR_SHARE_BPS", default=500)  # 5 %
# A paid rental that its provider neither accepts nor rejects within this many hours is
# rejected with a full refund (checked every 5 minutes).
PROVIDER_RESPONSE_DEADLINE_HOURS = env.int("PROVIDER_RESPONSE_DEADLINE_HOURS", default=24)
if PROVIDER_RESPONSE_DEADLINE_HOURS < 1:
    raise ImproperlyConfigured(
        f"PROVIDER_RESPONSE_DEADLINE_HOURS is {PROVIDER_RESPONSE_DEADLINE_HOURS}: set it to 1 or more hours."
    )
# How long the offering form reuses a cloud account's server types, locations and images, in
# seconds. Saving an offering always checks it against a fresh copy.
OFFERING_CATALOG_CACHE_SECONDS = env.int("OFFERING_CATALOG_CACHE_SECONDS", default=60)
# CSV import of offerings: the largest file in bytes, the most offering rows per file, and
# how long an uploaded file waits for "Apply" after its preview, in seconds.
OFFERING_CSV_MAX_BYTES = env.int("OFFERING_CSV_MAX_BYTES", default=2 * 1024 * 1024)
OFFERING_CSV_MAX_ROWS = env.int("OFFERING_CSV_MAX_ROWS", default=1000)
OFFERING_CSV_PREVIEW_SECONDS = env.int("OFFERING_CSV_PREVIEW_SECONDS", default=3600)
# Stripe. With a secret key set, rentals of paid offerings are paid by card through Stripe
# Checkout. Without one, only the sandbox method (no money moves) exists.
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
# Base address of the Stripe API; tests and local demos point it at a loopback fake.
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="https://api.stripe.com")
# Signed webhooks older than this many seconds are refused (replay protection).
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env.int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", default=300)
STRIPE_MAX_NETWORK_RETRIES = env.int("STRIPE_MAX_NETWORK_RETRIES", default=2)
PAYMENT_METHOD = "stripe" if STRIPE_SECRET_KEY else "sandbox"
# Pay Sandbox offerings by card too: a Stripe test-mode demo where no machine is created.
STRIPE_FOR_SANDBOX_OFFERINGS = env.bool("STRIPE_FOR_SANDBOX_OFFERINGS", default=False)
if STRIPE_FOR_SANDBOX_OFFERINGS and STRIPE_SECRET_KEY.startswith(("sk_live_", "rk_live_")):
    raise ImproperlyConfigured(
        "STRIPE_FOR_SANDBOX_OFFERINGS is true with a live Stripe key: real cards would pay for simulated "
        "machines. Use a test key (sk_test_...) or turn STRIPE_FOR_SANDBOX_OFFERINGS off."
    )
# Failed Stripe refunds are retried with backoff, this many times in all, then left to staff.
BILLING_REFUND_MAX_ATTEMPTS = env.int("BILLING_REFUND_MAX_ATTEMPTS", default=8)
# A card-paid rental whose renewal has not been confirmed this long after its paid period ended
# is checked against Stripe (a lost webhook must not keep or end a rental wrongly).
STRIPE_RENEWAL_SYNC_AFTER_SECONDS = env.int("STRIPE_RENEWAL_SYNC_AFTER_SECONDS", default=3600)
# A card rental whose renewal stays unpaid this long after its paid period ended is ended, even
# if Stripe is configured to keep retrying or to leave the subscription past due.
STRIPE_PAST_DUE_GRACE_DAYS = env.int("STRIPE_PAST_DUE_GRACE_DAYS", default=30)
# An unpaid rental request whose checkout never completed is cancelled after this long.
CHECKOUT_ABANDONED_AFTER_SECONDS = env.int("CHECKOUT_ABANDONED_AFTER_SECONDS", default=2 * 24 * 3600)
# Pay providers and recipe authors by Stripe Connect transfers to Express accounts. Off: staff
# pay each payout outside the platform and mark it paid out in the admin.
STRIPE_CONNECT_ENABLED = env.bool("STRIPE_CONNECT_ENABLED", default=False)
if STRIPE_CONNECT_ENABLED and not STRIPE_SECRET_KEY:
    raise ImproperlyConfigured(
        "STRIPE_CONNECT_ENABLED is true but STRIPE_SECRET_KEY is empty: set the platform's Stripe secret key "
        "or turn STRIPE_CONNECT_ENABLED off."
    )
# Let sandbox payments (no money moves) pay for offerings on real clouds. Only for development
# against a fake cloud API: with it on, anyone can make a provider's real cloud create servers.
SANDBOX_PAYMENTS_FOR_REAL_BACKENDS = env.bool("SANDBOX_PAYMENTS_FOR_REAL_BACKENDS", default=False)

# Invoices. The seller's details are copied onto every invoice and credit note when it is
# issued; BILLING_SELLER_ADDRESS may span lines (a literal \n in the variable starts a new line).
BILLING_SELLER_NAME = env.str("BILLING_SELLER_NAME", default="Cloudmarket")
BILLING_SELLER_ADDRESS = env.str("BILLING_SELLER_ADDRESS", default="", multiline=True)
# ISO 3166-1 code; the reverse charge applies to EU business buyers in another member state.
BILLING_SELLER_COUNTRY = env.str("BILLING_SELLER_COUNTRY", default="DE")
if not (len(BILLING_SELLER_COUNTRY) == 2 and BILLING_SELLER_COUNTRY.isascii() and BILLING_SELLER_COUNTRY.isupper()):
    raise ImproperlyConfigured(
        f"BILLING_SELLER_COUNTRY is {BILLING_SELLER_COUNTRY!r}: set it to an ISO 3166-1 code in capitals, for example DE."
    )
BILLING_SELLER_VAT_ID = env.str("BILLING_SELLER_VAT_ID", default="")
BILLING_SELLER_EMAIL = env.str("BILLING_SELLER_EMAIL", default="billing@cloudmarket.local")
# Tax included in prices when the payment processor computed none, in basis points (1900 = 19 %).
BILLING_TAX_RATE_BPS = env.int("BILLING_TAX_RATE_BPS", default=0)
if not 0 <= BILLING_TAX_RATE_BPS <= 10_000:
    raise ImproperlyConfigured(
        f"BILLING_TAX_RATE_BPS is {BILLING_TAX_RATE_BPS}: set it to 0 to 10000 basis points (1900 = 19 %)."
    )
# Fonts of invoice PDFs: the folder of DejaVuSans.ttf and DejaVuSans-Bold.ttf (Debian package
# fonts-dejavu-core) and a font for CJK characters (fonts-droid-fallback).
BILLING_PDF_FONT_DIR = env.str("BILLING_PDF_FONT_DIR", default="/usr/share/fonts/truetype/dejavu")
BILLING_PDF_CJK_FONT = env.str(
    "BILLING_PDF_CJK_FONT", default="/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"
)
if STRIPE_SECRET_KEY and not DEBUG and not BILLING_SELLER_ADDRESS:
    raise ImproperlyConfigured(
        "BILLING_SELLER_ADDRESS is missing: invoices for card payments need the seller's postal address."
    )

# Provisioning.
# Written into the labels of every cloud object, so two deployments sharing a cloud account
# never touch each other's servers.
DEPLOYMENT_NAME = env.str("DEPLOYMENT_NAME", default="local")
PROVISIONING_LEASE_SECONDS = env.int("PROVISIONING_LEASE_SECONDS", default=120)
# Retries of cloud calls: jittered exponential backoff from this base (seconds), doubled per try.
PROVISIONING_BACKOFF_BASE_SECONDS = env.float("PROVISIONING_BACKOFF_BASE_SECONDS", default=2.0)
# Tries of server deletion before a contract is marked termination_failed and staff are alerted;
# at most MAX_TERMINATION_RETRIES (6), the Celery task's own limit.
PROVISIONING_TERMINATION_RETRIES = env.int("PROVISIONING_TERMINATION_RETRIES", default=6)
# A labelled server that no live contract owns is deleted this many seconds after the
# reconciler first reported it.
RECONCILE_ORPHAN_GRACE_SECONDS = env.int("RECONCILE_ORPHAN_GRACE_SECONDS", default=3600)
HCLOUD_API_ENDPOINT = env.str("HCLOUD_API_ENDPOINT", default="https://api.hetzner.cloud/v1")
# Seconds to wait for one Proxmox VE task (clone, resize, start, stop, destroy). A full clone
# copies the template's disks, so it can take minutes on slow storage.
PROXMOX_TASK_TIMEOUT = env.float("PROXMOX_TASK_TIMEOUT", default=600.0)
# Port of the SSH server on created machines; tests point it at a loopback sshd.
PROVISIONING_SSH_PORT = env.int("PROVISIONING_SSH_PORT", default=22)
PROVISIONING_SSH_USERNAME = env.str("PROVISIONING_SSH_USERNAME", default="root")
PROVISIONING_BOOT_TIMEOUT = env.float("PROVISIONING_BOOT_TIMEOUT", default=300.0)
PROVISIONING_SSH_TIMEOUT = env.float("PROVISIONING_SSH_TIMEOUT", default=300.0)
PROVISIONING_POLL_INTERVAL = env.float("PROVISIONING_POLL_INTERVAL", default=2.0)
PROVISIONING_STALL_SECONDS = env.int("PROVISIONING_STALL_SECONDS", default=900)
SANDBOX_BOOT_SECONDS = env.float("SANDBOX_BOOT_SECONDS", default=4.0)
# Simulated duration of the Sandbox's SSH and recipe steps.
SANDBOX_STEP_SECONDS = env.float("SANDBOX_STEP_SECONDS", default=2.0)
# Provider agents. Offerings of an agent pool leave the catalog when no agent of the pool sent
# a heartbeat for this many seconds. Agents send one every 30 seconds by default.
AGENT_OFFLINE_AFTER_SECONDS = env.int("AGENT_OFFLINE_AFTER_SECONDS", default=180)
AGENT_SETUP_TOKEN_TTL_SECONDS = env.int("AGENT_SETUP_TOKEN_TTL_SECONDS", default=86400)
# An agent's lease on a contract; the agent renews it with every progress report.
AGENT_LEASE_SECONDS = env.int("AGENT_LEASE_SECONDS", default=300)
# Retryable failures an agent may report for one contract before it is failed and refunded.
AGENT_MAX_RETRIES = env.int("AGENT_MAX_RETRIES", default=5)
# An accepted agent rental that no agent has finished this many seconds after it was accepted,
# and that no agent holds a live lease on, is failed and refunded (the pool may be offline).
AGENT_PROVISIONING_DEADLINE_SECONDS = env.int("AGENT_PROVISIONING_DEADLINE_SECONDS", default=3600)
RECIPE_TIMEOUT_SECONDS = env.int("RECIPE_TIMEOUT_SECONDS", default=1800)
RECIPE_MAX_OUTPUT_BYTES = env.int("RECIPE_MAX_OUTPUT_BYTES", default=1_000_000)
# Most self-provisioned resources one user may have at a time; deleted ones do not count.
RESOURCE_QUOTA_PER_USER = env.int("RESOURCE_QUOTA_PER_USER", default=10)
# The file sshd reads root's authorized keys from on self-provisioned VMs. The rental hand-over
# rewrites it; tests point it at the loopback sshd's AuthorizedKeysFile.
RESOURCE_AUTHORIZED_KEYS_PATH = env.str("RESOURCE_AUTHORIZED_KEYS_PATH", default="/root/.ssh/authorized_keys")

# Health checks.
# Seconds between two platform probes of one active contract (TCP connect to its SSH port).
HEALTH_PROBE_INTERVAL_SECONDS = env.int("HEALTH_PROBE_INTERVAL_SECONDS", default=60)
# Seconds the probe waits for the TCP connection before it records the server as down.
HEALTH_PROBE_TIMEOUT_SECONDS = env.float("HEALTH_PROBE_TIMEOUT_SECONDS", default=5.0)
# Contracts one run of the probe scheduler claims at most; the rest wait for the next run.
HEALTH_PROBE_BATCH_SIZE = env.int("HEALTH_PROBE_BATCH_SIZE", default=2000)
# Contracts per probe task, and TCP connects one task runs at once.
HEALTH_PROBE_TASK_SIZE = env.int("HEALTH_PROBE_TASK_SIZE", default=50)
HEALTH_PROBE_CONCURRENCY = env.int("HEALTH_PROBE_CONCURRENCY", default=25)
# Backends whose servers the platform does not probe: the Sandbox's addresses lead nowhere, and
# agents probe their own servers from the host (their addresses are often private).
HEALTH_PROBE_SKIP_BACKENDS = env.list("HEALTH_PROBE_SKIP_BACKENDS", default=["sandbox", "agent"])
# Seconds one check vouches for at most; a longer silence counts as unknown time in uptime.
HEALTH_CHECK_MAX_COVER_SECONDS = env.int(
    "HEALTH_CHECK_MAX_COVER_SECONDS", default=2 * HEALTH_PROBE_INTERVAL_SECONDS
)
# Extra seconds before an hour's checks are summed into rollups. A report for an hour already
# summed makes the platform sum that contract's hours again, so this only saves work.
HEALTH_ROLLUP_DELAY_SECONDS = env.int("HEALTH_ROLLUP_DELAY_SECONDS", default=600)
# Failed checks in a row before the tenant and the provider are notified.
HEALTH_FAILURES_BEFORE_ALERT = env.int("HEALTH_FAILURES_BEFORE_ALERT", default=3)
# Fraction of an uptime window that checks must cover before a percentage is shown.
HEALTH_UPTIME_MIN_COVERAGE = env.float("HEALTH_UPTIME_MIN_COVERAGE", default=0.5)
HEALTH_CHECK_RETENTION_DAYS = env.int("HEALTH_CHECK_RETENTION_DAYS", default=90)
# Seconds the public provider page reuses a provider's computed uptime.
HEALTH_PROVIDER_UPTIME_CACHE_SECONDS = env.int("HEALTH_PROVIDER_UPTIME_CACHE_SECONDS", default=300)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's default config gives "django" its own console handler (when DEBUG is on) and
        # lets records propagate to the root handler too, so every request warning was printed
        # twice. This replaces that handler with ours and stops propagation.
        "django": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO"), "propagate": False},
        "django.db.backends": {"level": "WARNING"},
        # fpdf2's font subsetting logs dozens of INFO lines per PDF.
        "fontTools": {"level": "WARNING"},
    },
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
