"""Shared fixtures: loopback-only networking, the real peers, and a real Celery worker process."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers.sshd import loopback_sshd  # noqa: F401  (fixture re-export)

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_HCLOUD_TOKEN = "test-hcloud-token-0123456789abcdef"

_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex


def _check_address(address) -> None:
    if isinstance(address, tuple) and address:
        host = address[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if host not in ("localhost",):
                raise OSError(f"Tests may only connect to loopback; refused connection to {host!r}.") from None
            return
        if not ip.is_loopback:
            raise OSError(f"Tests may only connect to loopback; refused connection to {host}.")


def _guarded_connect(self, address):
    _check_address(address)
    return _original_connect(self, address)


def _guarded_connect_ex(self, address):
    _check_address(address)
    return _original_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _loopback_only_network():
    """Fail any test that tries to reach a host outside 127.0.0.0/8 (or ::1)."""
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    yield
    socket.socket.connect = _original_connect
    socket.socket.connect_ex = _original_connect_ex


def database_url_for_workers() -> str:
    """A DATABASE_URL for the test database pytest-django created, for worker subprocesses."""
    from django.db import connection

    settings_dict = connection.settings_dict
    if settings_dict["ENGINE"] != "django.db.backends.postgresql":
        pytest.fail(
            "Journey tests run real worker processes and need PostgreSQL: set DATABASE_URL "
            "(for example postgres://postgres@127.0.0.1:5432/cloudmarket) or use tests/run."
        )
    user = settings_dict.get("USER") or ""
    password = settings_dict.get("PASSWORD") or ""
    auth = ""
    if password:
        auth = f"{user}:{password}@"
    elif user:
        auth = f"{user}@"
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or "5432"
    return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"


def redis_url_for_tests() -> str:
    url = os.environ.get("REDIS_URL", "")
    if not url:
        pytest.fail("Journey tests need Redis as the Celery broker: set REDIS_URL or use tests/run.")
    return url


class WorkerProcess:
    """A real `celery worker` subprocess with its own environment and log file."""

    def __init__(self, *, env: dict[str, str], log_path: Path, concurrency: int = 2, name: str = "w1"):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "cloudmarket", "worker",
                "--loglevel=INFO", "-P", "prefork", f"--concurrency={concurrency}",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                f"--hostname={name}@%h", "-Q", "celery,notifications,periodic",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Celery worker exited with {self.process.returncode}:\n{self.log_tail()}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"Celery worker not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, size: int = 6000) -> str:
        return self.log_path.read_bytes()[-size:].decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def session_sshd():
    from tests.peers.sshd import LoopbackSshd

    with LoopbackSshd() as sshd:
        yield sshd


@pytest.fixture(scope="session")
def session_hetzner_api(session_sshd):
    from tests.peers.hetzner_api import HetznerApiServer

    with HetznerApiServer(tokens={TEST_HCLOUD_TOKEN}, sshd=session_sshd, boot_delay=0.3) as api:
        yield api


STRIPE_TEST_SECRET_KEY = "sk_test_platform_loopback"
STRIPE_TEST_WEBHOOK_SECRET = "whsec_platform_loopback"


@pytest.fixture(scope="session")
def session_stripe_api():
    from tests.peers.stripe_api import StripeApiServer

    with StripeApiServer(secret_key=STRIPE_TEST_SECRET_KEY, webhook_secret=STRIPE_TEST_WEBHOOK_SECRET) as api:
        yield api


@pytest.fixture
def stripe_api(session_stripe_api, settings):
    """The fake Stripe API with card payments switched on in this process (workers always have them)."""
    session_stripe_api.skip_pending_events()
    session_stripe_api.now = None
    settings.STRIPE_SECRET_KEY = STRIPE_TEST_SECRET_KEY
    settings.STRIPE_WEBHOOK_SECRET = STRIPE_TEST_WEBHOOK_SECRET
    settings.STRIPE_API_BASE = session_stripe_api.url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    settings.STRIPE_FOR_SANDBOX_OFFERINGS = True
    settings.SANDBOX_PAYMENTS_FOR_REAL_BACKENDS = False
    yield session_stripe_api
    session_stripe_api.now = None


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, session_sshd, session_hetzner_api, session_stripe_api, tmp_path_factory):
    """Environment for worker subprocesses: the test database, Redis, and the loopback peers."""
    import redis
    from django.conf import settings

    with django_db_blocker.unblock():
        database_url = database_url_for_workers()
    redis_url = redis_url_for_tests()
    redis.Redis.from_url(redis_url).flushdb()
    var_dir = tmp_path_factory.mktemp("worker-var")
    keys = ",".join(f"{key_id}:{__import__('base64').b64encode(key).decode()}" for key_id, key in settings.FIELD_ENCRYPTION_KEYS.items())
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "VAR_DIR": str(var_dir),
        "FIELD_ENCRYPTION_KEYS": keys,
        "HCLOUD_API_ENDPOINT": session_hetzner_api.url,
        "PROVISIONING_SSH_PORT": str(session_sshd.port),
        "PROVISIONING_SSH_USERNAME": session_sshd.username,
        "RESOURCE_AUTHORIZED_KEYS_PATH": str(session_sshd.authorized_keys_path),
        "PROVISIONING_POLL_INTERVAL": "0.2",
        "PROVISIONING_BOOT_TIMEOUT": "30",
        "PROVISIONING_SSH_TIMEOUT": "30",
        "SANDBOX_BOOT_SECONDS": "0.5",
        "SANDBOX_STEP_SECONDS": "0.3",
        "RECIPE_TIMEOUT_SECONDS": "60",
        "PYTHONUNBUFFERED": "1",
        "SANDBOX_PAYMENTS_FOR_REAL_BACKENDS": "true",
        # Card payments against the fake Stripe API; only rentals created as card-paid use them.
        "STRIPE_SECRET_KEY": STRIPE_TEST_SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": STRIPE_TEST_WEBHOOK_SECRET,
        "STRIPE_API_BASE": session_stripe_api.url,
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "STRIPE_FOR_SANDBOX_OFFERINGS": "true",
    }
    return env


@pytest.fixture(scope="session")
def celery_worker_process(worker_env, tmp_path_factory):
    worker = WorkerProcess(env=worker_env, log_path=tmp_path_factory.mktemp("worker-log") / "worker.log")
    yield worker
    worker.stop()


@pytest.fixture
def hetzner_api(session_hetzner_api):
    session_hetzner_api.reset()
    yield session_hetzner_api
    session_hetzner_api.reset()


@pytest.fixture(autouse=True)
def _test_settings(settings):
    """Give each test an empty in-process cache (so rate-limit counters never carry over) and fast hashing.

    The Redis database the tests use is also the Celery broker, so it is never flushed here.
    """
    from django.core.cache import cache

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    cache.clear()
    # The default hasher's work factor dominates test time; tests check no hash strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Rentals of Hetzner offerings against the fake API pay with sandbox payments; the test of
    # the production rule turns this off again.
    settings.SANDBOX_PAYMENTS_FOR_REAL_BACKENDS = True


@pytest.fixture(autouse=True)
def _settings_for_peers(request, settings):
    """Point this process at the loopback peers when a test uses them, else at a dead loopback port."""
    settings.HCLOUD_API_ENDPOINT = "http://127.0.0.1:9/v1"
    if "session_hetzner_api" in request.fixturenames:
        api = request.getfixturevalue("session_hetzner_api")
        sshd = request.getfixturevalue("session_sshd")
        settings.HCLOUD_API_ENDPOINT = api.url
        settings.PROVISIONING_SSH_PORT = sshd.port
        settings.PROVISIONING_SSH_USERNAME = sshd.username
        settings.RESOURCE_AUTHORIZED_KEYS_PATH = str(sshd.authorized_keys_path)


# Provisioning at scale: many servers at once, each with its own loopback address and SSH keys.

SCALE_QUEUE = "provisioning-scale"


class ScaleWorker(WorkerProcess):
    """A `celery worker` subprocess on the scale tests' queue, with a choice of pool.

    Unlike `WorkerProcess` it returns before the worker is ready, so several can start at
    once; call `wait_ready()` before relying on it.
    """

    def __init__(self, *, env: dict[str, str], log_path: Path, name: str, pool: str = "prefork", concurrency: int = 2):
        self.log_path = log_path
        self.name = name
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "cloudmarket", "worker",
                "--loglevel=INFO", "-P", pool, f"--concurrency={concurrency}",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                f"--hostname={name}@%h",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """SIGKILL the worker process, as a crashed machine would stop it, and reap it."""
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def ssh_fleet():
    from tests.peers.ssh_fleet import SshFleet

    with SshFleet() as fleet:
        yield fleet


@pytest.fixture(scope="session")
def session_fleet_hetzner_api(ssh_fleet):
    """A fake Hetzner API that gives every server its own loopback address on the SSH fleet."""
    from tests.peers.hetzner_api import HetznerApiServer

    with HetznerApiServer(
        tokens={TEST_HCLOUD_TOKEN}, sshd=ssh_fleet, boot_delay=0.2, per_server_addresses=True
    ) as api:
        yield api


@pytest.fixture
def fleet_hetzner_api(session_fleet_hetzner_api, ssh_fleet):
    session_fleet_hetzner_api.reset()
    session_fleet_hetzner_api.boot_delay = 0.2
    yield session_fleet_hetzner_api
    session_fleet_hetzner_api.reset()
    session_fleet_hetzner_api.boot_delay = 0.2


@pytest.fixture
def scale_queue(worker_env, monkeypatch):
    """Route the Celery tasks this test process sends to the scale workers' queue, emptied first."""
    import redis

    from cloudmarket.celery import app

    redis.Redis.from_url(worker_env["REDIS_URL"]).delete(SCALE_QUEUE)
    monkeypatch.setitem(app.conf, "task_default_queue", SCALE_QUEUE)
    yield SCALE_QUEUE
    redis.Redis.from_url(worker_env["REDIS_URL"]).delete(SCALE_QUEUE)


@pytest.fixture
def start_scale_workers(worker_env, session_fleet_hetzner_api, ssh_fleet, scale_queue, tmp_path):
    """Return `start(count, *, pool, concurrency, env)`, which starts worker processes on the SSH
    fleet's fake cloud and waits until they are ready. Every worker is stopped after the test."""
    started: list[ScaleWorker] = []
    base_env = {
        **worker_env,
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "CLOUDMARKET_TEST_CELERY_QUEUE": scale_queue,
        "HCLOUD_API_ENDPOINT": session_fleet_hetzner_api.url,
        "PROVISIONING_SSH_PORT": str(ssh_fleet.port),
        "PROVISIONING_SSH_USERNAME": ssh_fleet.username,
        "PROVISIONING_SSH_TIMEOUT": "20",
        "PROVISIONING_BOOT_TIMEOUT": "20",
    }

    def start(count: int = 1, *, pool: str = "prefork", concurrency: int = 2, env: dict[str, str] | None = None) -> list[ScaleWorker]:
        workers = [
            ScaleWorker(
                env={**base_env, **(env or {})},
                log_path=tmp_path / f"scale-worker-{len(started) + index}.log",
                name=f"scale{len(started) + index}",
                pool=pool,
                concurrency=concurrency,
            )
            for index in range(count)
        ]
        started.extend(workers)
        for worker in workers:
            worker.wait_ready()
        return workers

    yield start
    for worker in started:
        worker.stop()


# Proxmox VE: a fake API whose VMs are the loopback sshd.

TEST_PROXMOX_TOKEN_ID = "cloudmarket@pve!provisioning"
TEST_PROXMOX_TOKEN_SECRET = "0b6a3f4e-5d21-4c8e-9a77-3e1f2d4c5b6a"


@pytest.fixture(scope="session")
def session_proxmox_api(session_sshd):
    from tests.peers.proxmox_api import ProxmoxApiServer

    with ProxmoxApiServer(
        tokens={TEST_PROXMOX_TOKEN_ID: TEST_PROXMOX_TOKEN_SECRET}, sshd=session_sshd, agent_delay=0.3
    ) as api:
        yield api


@pytest.fixture
def proxmox_api(session_proxmox_api):
    session_proxmox_api.reset()
    yield session_proxmox_api
    session_proxmox_api.reset()
