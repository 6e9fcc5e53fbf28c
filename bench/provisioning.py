"""Provisioning benchmark: N contracts through the whole pipeline with 1, 2 and 4 worker processes.

Usage: .venv/bin/python bench/provisioning.py [--contracts 200] [--workers 1,2,4] [--concurrency 1]
       [--recipe] [--loglevel INFO] [--keep-database]

Each contract goes create server -> wait for boot -> wait for SSH -> (optional one-line recipe)
-> active, against the fake Hetzner API from tests/peers with no boot delay, and the SSH fleet
from tests/peers, both running in this process on loopback. Every server gets its own loopback
address, host key and authorized keys.

Uses its own PostgreSQL database `cloudmarket_bench_prov` (created afresh and dropped at the
end; BENCH_DATABASE_URL names another) and Redis database 10 (BENCH_REDIS_URL), which it
flushes. It starts `celery worker` processes and stops every one of them before it exits.

Per run the contracts are created and paid first, with their provisioning tasks held back.
Then the workers start, and once they are ready all tasks are queued at once. The clock runs
from there until the last contract is active. Columns:

- wall s, contracts/s: from queueing the tasks to the last activation.
- worker CPU ms/contract: user + system CPU time of all worker processes (the Celery main
  processes and their prefork children, read from /proc) from queueing until the queue is
  empty and every notification is sent, divided by N. It is the platform's own cost per
  contract: Django, the ORM and database driver, Celery, key generation and encryption, and
  the client side of the HTTP and SSH calls. The fake cloud and the SSH fleet are not in it.
- peers CPU ms/contract: this process (fake cloud, SSH fleet, polling), same window.
- postgres CPU ms/contract: all `postgres` processes on the machine, same window.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cloudmarket_bench_prov")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
TOKEN = "bench-hcloud-token-0123456789abcdef"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

os.environ["DATABASE_URL"] = DATABASE_URL
os.environ["REDIS_URL"] = REDIS_URL
os.environ.setdefault("FIELD_ENCRYPTION_KEYS", "bench:" + base64.b64encode(secrets.token_bytes(32)).decode())
os.environ.setdefault("VAR_DIR", tempfile.mkdtemp(prefix="bench-prov-var-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloudmarket.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# Production settings: with DEBUG on, Django also records every SQL query in memory.
os.environ.setdefault("DEBUG", "False")
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
# The fake cloud stands in for a real one, and contracts pay with sandbox payments.
os.environ.setdefault("SANDBOX_PAYMENTS_FOR_REAL_BACKENDS", "true")

logger = logging.getLogger("bench.provisioning")


def recreate_database(*, drop_only: bool = False) -> None:
    import psycopg

    admin_url = DATABASE_URL.rsplit("/", 1)[0] + "/postgres"
    name = DATABASE_URL.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            connection.execute(f'CREATE DATABASE "{name}"')


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, or 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime field 14 and stime field 15 (man 5 proc).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def processes() -> list[tuple[int, int, str]]:
    """Return (pid, parent pid, command name) of every process, read from /proc."""
    result = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_path.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        result.append((int(stat_path.parent.name), int(fields[1]), name))
    return result


def tree_cpu_seconds(root_pids: list[int]) -> float:
    """CPU seconds of the given processes and all their descendants."""
    table = processes()
    members = set(root_pids)
    changed = True
    while changed:
        changed = False
        for pid, parent, _ in table:
            if parent in members and pid not in members:
                members.add(pid)
                changed = True
    return sum(process_cpu_seconds(pid) for pid in members)


class NamedCpuTracker:
    """CPU seconds used by all processes with one command name since the tracker was made.

    Database backends come and go with connections, so `sample()` remembers each process's
    last reading, and a process that ended keeps what it used until its last sample.
    """

    def __init__(self, name: str):
        self.name = name
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._started = True
        self.sample()
        self._started = False

    def sample(self) -> None:
        for pid, _, command in processes():
            if command != self.name:
                continue
            seconds = process_cpu_seconds(pid)
            self._first.setdefault(pid, seconds if self._started else 0.0)
            self._last[pid] = seconds

    def total(self) -> float:
        self.sample()
        return sum(self._last[pid] - self._first[pid] for pid in self._last)


class Worker:
    """One `celery worker` process with its log in a temporary file."""

    def __init__(self, *, name: str, concurrency: int, env: dict[str, str], log_dir: Path, loglevel: str):
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "cloudmarket", "worker", f"--loglevel={loglevel}",
                "-P", "prefork", f"--concurrency={concurrency}", "--without-gossip", "--without-mingle",
                "--without-heartbeat", f"--hostname={name}@%h", "-Q", "celery,notifications,periodic",
            ],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}; log: {self.log_path}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def prepare_contracts(count: int, *, recipe: bool, run: int) -> list[int]:
    """Create and pay `count` contracts without queueing their provisioning tasks; return the ids."""
    from unittest import mock

    from marketplace.services import contracts as contract_services
    from provisioning.models import CloudAccount
    from provisioning.tasks import provision_contract_task
    from tests.journeys import make_offering, make_provider, make_tenant

    account = CloudAccount.objects.filter(label__startswith="hetzner").first()
    if account is None:
        _, account = make_provider(email="bench-provider@example.com", token=TOKEN)
    offering = make_offering(account=account, script="echo ready\n" if recipe else None, slug=f"bench-{run}")
    tenants = [make_tenant(email=f"bench-tenant-{run}-{index}@example.com") for index in range(10)]
    ids = []
    with mock.patch.object(provision_contract_task, "delay"):
        for index in range(count):
            tenant, public_key = tenants[index % len(tenants)]
            contract, _ = contract_services.contract_create(
                tenant=tenant, offering=offering, ssh_public_key=public_key, idempotency_key=f"bench-{run}-{index}"
            )
            ids.append(contract_services.contract_pay(contract=contract, actor=tenant).pk)
    return ids


def wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def run_once(*, workers: int, concurrency: int, count: int, recipe: bool, run: int, env: dict[str, str],
             log_dir: Path, loglevel: str, api, fleet) -> dict[str, float]:
    import redis
    from django.db import close_old_connections

    from marketplace.models import Contract, ContractStatus
    from notifications.models import DeliveryStatus, Notification
    from provisioning.tasks import provision_contract_task

    api.reset()
    broker = redis.Redis.from_url(REDIS_URL)
    ids = prepare_contracts(count, recipe=recipe, run=run)
    broker.flushdb()  # Drop the rental_paid notification tasks; only provisioning is measured.
    pool = [Worker(name=f"run{run}-worker{index}", concurrency=concurrency, env=env, log_dir=log_dir, loglevel=loglevel)
            for index in range(workers)]
    try:
        for worker in pool:
            worker.wait_ready()
        root_pids = [worker.process.pid for worker in pool]
        cpu_before = tree_cpu_seconds(root_pids)
        peers_before = time.process_time()
        postgres = NamedCpuTracker("postgres")
        last_sample = time.monotonic()
        started = time.monotonic()
        for contract_id in ids:
            provision_contract_task.delay(contract_id)

        def all_settled() -> bool:
            nonlocal last_sample
            if time.monotonic() - last_sample > 0.5:
                postgres.sample()
                last_sample = time.monotonic()
            close_old_connections()
            return not Contract.objects.filter(pk__in=ids).exclude(
                status__in=[ContractStatus.ACTIVE, ContractStatus.FAILED]
            ).exists()

        wait_for(all_settled, timeout=60 + count, what=f"{count} contracts to settle")
        wall = time.monotonic() - started
        wait_for(
            lambda: broker.llen("celery") == 0 and broker.llen("notifications") == 0 and not Notification.objects.filter(
                contract_id__in=ids, event="rental_active", status=DeliveryStatus.PENDING
            ).exists(),
            timeout=120, what="the notification tasks to finish",
        )
        cpu = tree_cpu_seconds(root_pids) - cpu_before
        peers = time.process_time() - peers_before
        postgres_seconds = postgres.total()
        failed = Contract.objects.filter(pk__in=ids, status=ContractStatus.FAILED).count()
    finally:
        for worker in pool:
            worker.stop()
    if failed:
        logger.warning("%s of %s contracts failed; see the worker logs in %s", failed, count, log_dir)
    if len(api.servers) != count - failed:
        raise RuntimeError(f"expected {count - failed} servers at the fake cloud, found {len(api.servers)}")
    return {
        "workers": workers, "concurrency": concurrency, "contracts": count, "failed": failed, "wall": wall,
        "rate": count / wall, "worker_cpu_ms": cpu * 1000 / count, "peers_cpu_ms": peers * 1000 / count,
        "postgres_cpu_ms": postgres_seconds * 1000 / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contracts", type=int, default=200, help="contracts per run")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker process counts, one run each")
    parser.add_argument("--concurrency", type=int, default=1, help="prefork child processes per worker process")
    parser.add_argument("--recipe", action="store_true", help="give the offering a one-line recipe (echo)")
    parser.add_argument("--loglevel", default="INFO", help="log level of the worker processes")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the database at the end")
    args = parser.parse_args()
    # Turn SIGTERM into SystemExit, so the finally blocks stop the workers and drop the database.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    counts = [int(item) for item in args.workers.split(",")]

    import django
    import redis

    recreate_database()
    django.setup()
    from django.core.management import call_command

    from tests.peers.hetzner_api import HetznerApiServer
    from tests.peers.ssh_fleet import SshFleet

    call_command("migrate", verbosity=0, interactive=False)
    redis.Redis.from_url(REDIS_URL).flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-prov-logs-"))
    rows = []
    try:
        with SshFleet() as fleet, HetznerApiServer(
            tokens={TOKEN}, sshd=fleet, boot_delay=0.0, per_server_addresses=True
        ) as api:
            env = {
                **os.environ,
                "HCLOUD_API_ENDPOINT": api.url,
                "PROVISIONING_SSH_PORT": str(fleet.port),
                "PROVISIONING_SSH_USERNAME": fleet.username,
                "PROVISIONING_POLL_INTERVAL": "0.2",
                "PYTHONUNBUFFERED": "1",
            }
            for run, workers in enumerate(counts):
                rows.append(run_once(
                    workers=workers, concurrency=args.concurrency, count=args.contracts, recipe=args.recipe,
                    run=run, env=env, log_dir=log_dir, loglevel=args.loglevel, api=api, fleet=fleet,
                ))
    finally:
        redis.Redis.from_url(REDIS_URL).flushdb()
        from django.db import connections

        connections.close_all()
        if not args.keep_database:
            recreate_database(drop_only=True)

    out = sys.stdout
    out.write(f"Provisioning, {args.contracts} contracts per run, recipe: {'echo' if args.recipe else 'none'}, "
              f"prefork concurrency {args.concurrency}, worker logs in {log_dir}\n")
    out.write(f"{'workers':>7} {'contracts':>9} {'failed':>6} {'wall s':>7} {'contracts/s':>11} "
              f"{'worker CPU ms/contract':>22} {'peers CPU ms/contract':>21} {'postgres CPU ms/contract':>24}\n")
    for row in rows:
        out.write(f"{row['workers']:>7} {row['contracts']:>9} {row['failed']:>6} {row['wall']:>7.1f} "
                  f"{row['rate']:>11.1f} {row['worker_cpu_ms']:>22.0f} {row['peers_cpu_ms']:>21.0f} "
                  f"{row['postgres_cpu_ms']:>24.0f}\n")


if __name__ == "__main__":
    main()
