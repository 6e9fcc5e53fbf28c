"""Catalog benchmark: the marketplace page over 100,000 offerings on PostgreSQL.

Usage: .venv/bin/python bench/catalog.py [--offerings 100000] [--requests 200]

Uses the database `cloudmarket_bench` on BENCH_DATABASE_URL's server (default: local
PostgreSQL, user postgres). Fills it once with generated offerings, then times the catalog page
with three filters and a sort through Django's test client (server time: URL routing, view,
queries and template rendering, without the network), and prints p50 and p95 in a table.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DATABASE_URL"] = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cloudmarket_bench"
)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloudmarket.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

QUERIES = [
    "/?country=DE&min_vcpu=4&price_max=80&sort=-memory",
    "/?product_type=vm&min_memory_gib=8&price_min=10&sort=price",
    "/?country=FI&min_disk_gb=160&min_vcpu=8&sort=-vcpu",
    "/?has_recipe=true&country=US&price_max=40&sort=-price",
    "/?gpu=true&min_vcpu=8&price_max=2000&sort=price&page=2",
]


def ensure_database() -> None:
    import psycopg

    url = os.environ["DATABASE_URL"]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')


def fill(count: int) -> None:
    from django.core.management import call_command

    from marketplace.models import Offering, ProductType, ProviderProfile, User
    from provisioning.models import CloudAccount

    call_command("migrate", verbosity=0, interactive=False)
    existing = Offering.objects.count()
    if existing >= count:
        return
    rng = random.Random(42)
    providers = []
    for index in range(20):
        user, _ = User.objects.get_or_create(email=f"bench-provider-{index}@example.com")
        profile, _ = ProviderProfile.objects.get_or_create(
            user=user, defaults={"display_name": f"Bench provider {index}", "slug": f"bench-{index}"}
        )
        account, _ = CloudAccount.objects.get_or_create(
            owner=user, label="bench", defaults={"backend": "sandbox", "validation_status": "valid"}
        )
        providers.append((profile, account))
    places = [("DE", "Falkenstein", "fsn1"), ("DE", "Nuremberg", "nbg1"), ("FI", "Helsinki", "hel1"),
              ("US", "Ashburn", "ash"), ("US", "Hillsboro", "hil"), ("SG", "Singapore", "sin")]
    batch = []
    for index in range(existing, count):
        profile, account = rng.choice(providers)
        country, city, code = rng.choice(places)
        vcpu = rng.choice([1, 2, 2, 4, 4, 8, 16, 32, 48])
        gpu = rng.random() < 0.05
        batch.append(Offering(
            provider=profile, cloud_account=account, name=f"Bench offering {index}", slug=f"bench-{index}",
            description="Generated for the catalog benchmark.",
            product_type=ProductType.GPU if gpu else rng.choice([ProductType.VM, ProductType.VM, ProductType.SERVICE]),
            vcpu=vcpu, memory_mib=vcpu * rng.choice([1024, 2048, 4096]), disk_gb=rng.choice([20, 40, 80, 160, 240, 360]),
            gpu_model="L4" if gpu else "", gpu_count=1 if gpu else 0,
            country=country, city=city, location_code=code, server_type="cx22", image="ubuntu-24.04",
            price_cents=rng.randint(300, 150_000), currency="EUR",
        ))
        if len(batch) == 5000:
            Offering.objects.bulk_create(batch)
            batch.clear()
    if batch:
        Offering.objects.bulk_create(batch)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE marketplace_offering")


def measure(requests: int) -> list[tuple[str, float, float]]:
    from django.test import Client

    client = Client()
    rows = []
    per_query = max(1, requests // len(QUERIES))
    for url in QUERIES:
        for _ in range(3):  # warm-up
            assert client.get(url).status_code == 200
        timings = []
        for _ in range(per_query):
            start = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.status_code
        timings.sort()
        rows.append((url, statistics.median(timings), timings[int(len(timings) * 0.95) - 1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offerings", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    ensure_database()
    import django

    django.setup()
    fill(args.offerings)
    from marketplace.models import Offering

    rows = measure(args.requests)
    print(f"Catalog page, {Offering.objects.count()} offerings, {args.requests} requests")
    print(f"{'query':<62} {'p50 ms':>8} {'p95 ms':>8}")
    for url, p50, p95 in rows:
        print(f"{url:<62} {p50:>8.1f} {p95:>8.1f}")
    all_p95 = max(p95 for _, _, p95 in rows)
    print(f"worst p95: {all_p95:.1f} ms (target: under 50 ms)")


if __name__ == "__main__":
    main()
