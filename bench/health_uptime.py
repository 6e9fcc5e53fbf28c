"""Uptime benchmark: 1, 7 and 30-day uptime over 30 days of health checks on PostgreSQL.

Usage: .venv/bin/python bench/health_uptime.py [--contracts 1000] [--interval 300] [--runs 10]

Uses the database `cloudmarket_bench_health` on BENCH_DATABASE_URL's server (default: local
PostgreSQL, user postgres). Fills it once with N active contracts of one provider and a check
per contract every `--interval` seconds for 30 days, of which 1 % are down and 2 % missing.
Then it sums complete hours into rollups (timed on the first run) and times `contract_uptime`
for one contract, `provider_uptime` over all N contracts and the provider's latency series,
and prints p50 and max in a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DATABASE_URL"] = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cloudmarket_bench_health"
)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloudmarket.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def ensure_database() -> None:
    import psycopg

    url = os.environ["DATABASE_URL"]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')


def fill(*, contracts: int, interval: int, now) -> None:
    """Create the provider, its contracts and their checks, unless a previous run did."""
    from django.core.management import call_command
    from django.db import connection

    from marketplace.models import Contract, ContractStatus, Offering, ProviderProfile, User
    from provisioning.models import CloudAccount, HealthCheck

    call_command("migrate", verbosity=0, interactive=False)
    user, _ = User.objects.get_or_create(email="bench-health-provider@example.com")
    tenant, _ = User.objects.get_or_create(email="bench-health-tenant@example.com")
    profile, _ = ProviderProfile.objects.get_or_create(
        user=user, defaults={"display_name": "Bench health provider", "slug": "bench-health"}
    )
    account, _ = CloudAccount.objects.get_or_create(
        owner=user, label="bench", defaults={"backend": "hetzner", "validation_status": "valid"}
    )
    offering, _ = Offering.objects.get_or_create(
        provider=profile, slug="bench-health", defaults={
            "cloud_account": account, "name": "Bench health", "vcpu": 2, "memory_mib": 4096, "disk_gb": 40,
            "country": "DE", "city": "Falkenstein", "location_code": "fsn1", "server_type": "cx22",
            "image": "ubuntu-24.04", "price_cents": 500, "currency": "EUR",
        },
    )
    existing = Contract.objects.filter(provider=profile).count()
    Contract.objects.bulk_create([
        Contract(
            tenant=tenant, offering=offering, provider=profile, cloud_account=account, status=ContractStatus.ACTIVE,
            idempotency_key=f"bench-health-{index}", offering_name=offering.name, price_cents=500, currency="EUR",
            commission_bps=2000, vcpu=2, memory_mib=4096, disk_gb=40, country="DE", city="Falkenstein",
            location_code="fsn1", backend="hetzner", server_type="cx22", image="ubuntu-24.04",
            ssh_public_key="ssh-ed25519 AAAA bench", ssh_key_fingerprint="SHA256:bench", ip_address="127.0.0.1",
        )
        for index in range(existing, contracts)
    ])
    if HealthCheck.objects.exists():
        return
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO provisioning_healthcheck
                (contract_id, checked_at, source, status, latency_ms, hypervisor_state, detail, recorded_at)
            SELECT contract.id, moment, 'platform',
                   CASE WHEN random() < 0.01 THEN 'down' ELSE 'up' END, 5 + random() * 20, '', '', moment
            FROM marketplace_contract AS contract,
                 generate_series(%s::timestamptz - interval '30 days', %s::timestamptz, make_interval(secs => %s)) AS moment
            WHERE contract.provider_id = %s AND random() >= 0.02
            """,
            [now, now, interval, profile.pk],
        )
        cursor.execute("ANALYZE provisioning_healthcheck")


def timed(function, runs: int) -> tuple[float, float]:
    function()  # warm-up
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings), max(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contracts", type=int, default=1000)
    parser.add_argument("--interval", type=int, default=300, help="Seconds between two checks of one contract.")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    ensure_database()
    import django

    django.setup()
    from django.conf import settings
    from django.utils import timezone

    now = timezone.now().replace(microsecond=0)
    settings.HEALTH_CHECK_MAX_COVER_SECONDS = 2 * args.interval
    fill(contracts=args.contracts, interval=args.interval, now=now)

    from provisioning.health import health_rollups_update

    started = time.perf_counter()
    hours = 0
    while rolled := health_rollups_update(max_hours=200):
        hours += rolled
    if hours:
        print(f"rolled up {hours} hours in {time.perf_counter() - started:.1f} s")

    from marketplace.models import Contract, ProviderProfile
    from provisioning.models import HealthCheck
    from provisioning.uptime import contract_uptime, provider_latency_series, provider_uptime

    profile = ProviderProfile.objects.get(slug="bench-health")
    contract = Contract.objects.filter(provider=profile).order_by("pk").first()
    # Measure at the newest stored check, which is the fill's `now` on the first run and older
    # on later ones, so every run reads the same rollups and raw hours.
    now = HealthCheck.objects.order_by("-checked_at").values_list("checked_at", flat=True).first()
    rows = [
        ("contract_uptime, 1 contract", timed(lambda: contract_uptime(contract=contract, now=now), args.runs)),
        ("provider_uptime, all contracts", timed(lambda: provider_uptime(provider=profile, now=now), args.runs)),
        ("provider_latency_series, 24 h", timed(lambda: provider_latency_series(provider=profile, now=now), args.runs)),
    ]
    contract_count = Contract.objects.filter(provider=profile).count()
    check_count = HealthCheck.objects.count()
    print(f"Uptime over 30 days: {contract_count} contracts, {check_count} checks, {args.runs} runs each")
    print(f"{'query':<34} {'p50 ms':>9} {'max ms':>9}")
    for name, (p50, worst) in rows:
        print(f"{name:<34} {p50:>9.1f} {worst:>9.1f}")
    days = provider_uptime(provider=profile, now=now)
    print("provider uptime: " + ", ".join(f"{window.days} d {window.uptime_text} ({window.coverage_percent:.0f} % covered)" for window in days))


if __name__ == "__main__":
    main()
