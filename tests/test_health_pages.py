"""Uptime and latency on the rental page, the provider page, the rental health API and the admin."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.models import Contract, ContractStatus
from provisioning.health import health_check_record, health_rollups_update
from provisioning.models import Backend, HealthSource
from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_superuser,
    make_user,
)

# Of 144 ten-minute checks, these are down: 30 of 1,440 minutes, so uptime is 97.916... %.
DOWN_INDEXES = {40, 41, 42}


@pytest.fixture(autouse=True)
def _health_settings(settings):
    settings.HEALTH_PROBE_INTERVAL_SECONDS = 600
    settings.HEALTH_CHECK_MAX_COVER_SECONDS = 1200
    settings.HEALTH_UPTIME_MIN_COVERAGE = 0.5
    settings.HEALTH_FAILURES_BEFORE_ALERT = 5


@pytest.fixture
def provider(db):
    return make_provider(display_name="Steady Servers")


@pytest.fixture
def tenant(db):
    return make_user(email="renter@example.com")


@pytest.fixture
def contract(provider, tenant):
    account = make_cloud_account(owner=provider.user, backend=Backend.HETZNER)
    contract = make_contract(tenant=tenant, offering=make_offering(provider=provider, cloud_account=account))
    # Test setup only: the server ran for the last day.
    Contract.objects.filter(pk=contract.pk).update(
        status=ContractStatus.ACTIVE,
        backend=Backend.HETZNER,
        ip_address="127.0.0.1",
        activated_at=timezone.now() - timedelta(days=1, hours=1),
    )
    contract.refresh_from_db()
    return contract


def _record_day(contract) -> None:
    now = timezone.now()
    for index in range(144, 0, -1):
        up = index not in DOWN_INDEXES
        health_check_record(
            contract=contract,
            source=HealthSource.PLATFORM,
            up=up,
            latency_ms=10.0 + index % 3 if up else None,
            checked_at=now - timedelta(minutes=10 * index),
        )


@pytest.mark.django_db
def test_rental_page_shows_uptime_and_chart(client, contract, tenant):
    _record_day(contract)
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert 'id="health-heading"' in html
    assert "97.91 %" in html
    assert html.count("Not enough data") == 2
    assert "<svg" in html
    assert 'role="img"' in html
    assert "<polyline" in html
    assert 'class="down-mark"' in html
    assert re.search(r"\d+ checks since [-0-9: ]+ UTC, 3 failed; mean latency 1\d\.\d ms, highest 12\.0 ms\.", html)


@pytest.mark.django_db
def test_rental_page_without_checks(client, contract, tenant):
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert 'id="health-empty"' in html
    assert "No health checks yet" in html
    assert "<svg" not in html
    assert "100" not in html.split('id="health-heading"')[1].split("</section>")[0]


@pytest.mark.django_db
def test_rental_page_sandbox_not_probed(client, contract, tenant):
    Contract.objects.filter(pk=contract.pk).update(backend=Backend.SANDBOX)
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert "this server is simulated, so the platform does not probe it" in html


@pytest.mark.django_db
def test_rental_page_before_activation_has_no_health(client, contract, tenant):
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.PROVISIONING, activated_at=None)
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert 'id="health-heading"' not in html


@pytest.mark.django_db
def test_rental_page_health_hidden_from_others(client, contract):
    _record_day(contract)
    client.force_login(make_user())

    response = client.get(contract.get_absolute_url())

    assert response.status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("rollups", [False, True], ids=["checks", "rollups"])
def test_provider_page_shows_uptime(client, contract, provider, rollups):
    _record_day(contract)
    if rollups:
        assert health_rollups_update() > 20

    html = client.get(provider.get_absolute_url()).content.decode()

    assert "Uptime of this provider&#x27;s rented servers" in html
    assert "97.91 %" in html
    assert "<svg" in html
    assert re.search(r"\d+ checks since [-0-9: ]+ UTC, 3 failed", html)


@pytest.mark.django_db
def test_provider_page_without_checks(client, provider):
    html = client.get(provider.get_absolute_url()).content.decode()

    assert "No health checks yet" in html
    assert "<svg" not in html
    assert "%" not in html.split('id="health-heading"')[1].split("</section>")[0]


# --- API ----------------------------------------------------------------------------------------


def _health_url(contract) -> str:
    return reverse("api-rental-health", kwargs={"public_id": contract.public_id})


@pytest.mark.django_db
def test_health_api_for_tenant(contract, tenant):
    _record_day(contract)
    api = APIClient()
    api.force_authenticate(tenant)

    response = api.get(_health_url(contract))
    body = response.json()

    assert response.status_code == 200
    assert [window["days"] for window in body["uptime"]] == [1, 7, 30]
    assert body["uptime"][0]["enough_data"] is True
    assert body["uptime"][0]["uptime_percent"] == pytest.approx(97.9167, abs=0.01)
    assert body["uptime"][0]["coverage_percent"] == pytest.approx(100.0, abs=0.01)
    assert body["uptime"][1]["enough_data"] is False
    assert body["uptime"][1]["uptime_percent"] is None
    assert len(body["latency_hours"]) == 24
    assert len(body["recent_checks"]) == 20
    assert body["recent_checks"][0]["status"] == "up"
    assert body["recent_checks"][0]["source"] == "platform"
    assert body["failing"] is False
    assert body["consecutive_failures"] == 0


@pytest.mark.django_db
def test_health_api_without_checks(contract, tenant):
    api = APIClient()
    api.force_authenticate(tenant)

    body = api.get(_health_url(contract)).json()

    assert [window["uptime_percent"] for window in body["uptime"]] == [None, None, None]
    assert [window["enough_data"] for window in body["uptime"]] == [False, False, False]
    assert body["recent_checks"] == []


@pytest.mark.django_db
def test_health_api_authorization(contract, provider):
    api = APIClient()

    anonymous = api.get(_health_url(contract))
    api.force_authenticate(provider.user)
    as_provider = api.get(_health_url(contract))
    api.force_authenticate(make_superuser())
    as_staff = api.get(_health_url(contract))
    api.force_authenticate(make_user())
    as_stranger = api.get(_health_url(contract))
    other_provider = make_provider()
    api.force_authenticate(other_provider.user)
    as_other_provider = api.get(_health_url(contract))

    assert anonymous.status_code == 401
    assert as_provider.status_code == 200
    assert as_staff.status_code == 200
    assert as_stranger.status_code == 404
    assert as_other_provider.status_code == 404


@pytest.mark.django_db
def test_health_api_in_openapi_schema(client):
    schema = client.get(reverse("api-schema"), {"format": "json"}).json()

    operation = schema["paths"]["/api/v1/rentals/{public_id}/health/"]["get"]
    assert operation["summary"] == "Show a rental's health checks and uptime"
    assert "RentalHealth" in str(operation["responses"]["200"])


# --- admin --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_health_check_list(client, contract):
    _record_day(contract)
    client.force_login(make_superuser())

    listing = client.get(reverse("admin:provisioning_healthcheck_changelist"), {"status__exact": "down"})
    states = client.get(reverse("admin:provisioning_healthprobestate_changelist"))
    add = client.get(reverse("admin:provisioning_healthcheck_add"))

    assert listing.status_code == 200
    assert listing.context["cl"].result_count == 3
    assert states.status_code == 200
    assert add.status_code == 403


@pytest.mark.django_db
def test_health_queries_do_not_grow_with_rentals(client, contract, provider, tenant, settings):
    settings.HEALTH_PROVIDER_UPTIME_CACHE_SECONDS = 0
    _record_day(contract)
    client.force_login(tenant)
    with CaptureQueriesContext(connection) as one_rental:
        client.get(provider.get_absolute_url())
    with CaptureQueriesContext(connection) as rental_page_one:
        client.get(contract.get_absolute_url())

    for _ in range(3):
        other = make_contract(tenant=tenant, offering=contract.offering)
        Contract.objects.filter(pk=other.pk).update(status=ContractStatus.ACTIVE, activated_at=timezone.now())
        _record_day(other)
    with CaptureQueriesContext(connection) as four_rentals:
        client.get(provider.get_absolute_url())
    with CaptureQueriesContext(connection) as rental_page_four:
        client.get(contract.get_absolute_url())

    assert len(four_rentals) == len(one_rental)
    assert len(rental_page_four) == len(rental_page_one)
