"""Regressions found by attacking self-provisioned resources and their marketplace listings.

Covers the listing form's errors on the resource page and a currency change between viewing
and renting a listing. Also covers races of a rent or a creation against a concurrent stop or
deletion, and the listing's stock after a failed rental or a failed stop.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection, transaction
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace.models import Contract, ContractStatus, Offering, StockStatus
from marketplace.services import contracts as contract_services
from notifications.models import Event, Notification
from provisioning import pipeline
from provisioning.models import Backend, CloudAccount, Resource, ResourceStatus
from provisioning.resource_services import (
    listing_stock_return,
    resource_create,
    resource_list,
    resource_mark_power_failed,
    resource_stop,
)
from provisioning.tasks import cleanup_contract_servers_task
from tests.factories import (
    make_cloud_account,
    make_provider,
    make_superuser,
    make_user,
    ssh_public_key,
)

pytestmark = pytest.mark.django_db

#: Seconds the lock holder in the race tests keeps its transaction open while the other thread waits.
LOCK_HOLD_SECONDS = 1.0


def make_resource(*, owner, status: str = ResourceStatus.RUNNING) -> Resource:
    """Create a resource row directly, as if a worker had provisioned it on the Sandbox."""
    account = make_cloud_account(owner=owner, backend=Backend.SANDBOX)
    return Resource.objects.create(
        owner=owner, cloud_account=account, name="Build box", status=status, backend=Backend.SANDBOX,
        location_code="fsn1", country="DE", city="Falkenstein", server_type="cx22", vcpu=2, memory_mib=4096,
        disk_gb=40, image="ubuntu-24.04", ssh_public_key=ssh_public_key("owner@laptop"),
        ssh_key_fingerprint="SHA256:owner", cloud_server_id="1", ip_address="203.0.113.9",
    )


def list_resource_in(resource: Resource, currency: str, *, price_cents: int = 1500):
    return resource_list(
        resource=resource, actor=resource.owner, name="Rent my build box", description="", price_cents=price_cents,
        currency=currency, remove_owner_keys=False,
    )


def _logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- listing form on the resource page --------------------------------------------------------


def test_list_page_price_above_max_shows_error():
    resource = make_resource(owner=make_provider().user)

    response = _logged_in(resource.owner).post(
        reverse("resources:list_on_marketplace", kwargs={"public_id": resource.public_id}),
        {"name": "Rent my build box", "price": "1000000.01", "currency": "EUR"},
    )

    assert response.status_code == 400
    assert "The price is too high: the maximum is 1,000,000 per month." in response.content.decode()
    assert not Offering.objects.filter(resource=resource).exists()


def test_list_page_without_profile_shows_error():
    resource = make_resource(owner=make_user())

    response = _logged_in(resource.owner).post(
        reverse("resources:list_on_marketplace", kwargs={"public_id": resource.public_id}),
        {"name": "Rent my build box", "price": "15.00", "currency": "EUR"},
    )

    assert response.status_code == 400
    assert "Create your provider profile before you list a resource" in response.content.decode()


# --- currency change between viewing and renting ----------------------------------------------


def test_rent_rejects_changed_currency():
    resource = make_resource(owner=make_provider().user)
    list_resource_in(resource, "EUR")
    offering = list_resource_in(resource, "USD")

    with pytest.raises(ValidationError) as caught:
        contract_services.contract_create(
            tenant=make_user(), offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="stale-eur-form",
            expected_price_cents=1500, expected_currency="EUR",
        )

    assert "changed from EUR to USD" in " ".join(caught.value.messages)
    assert Contract.objects.count() == 0


def test_rent_page_stale_currency_rejected():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource_in(resource, "EUR")
    tenant = make_user()
    client = _logged_in(tenant)
    rent_url = reverse("marketplace:rent", kwargs={"slug": offering.slug})
    form = client.get(rent_url).context["form"]
    values = {
        "idempotency_key": form.initial["idempotency_key"],
        "expected_price_cents": form.initial["expected_price_cents"],
        "expected_currency": form.initial["expected_currency"],
        "expected_recipe_version_id": form.initial["expected_recipe_version_id"],
        "public_key": ssh_public_key(),
    }
    list_resource_in(resource, "CHF")

    response = client.post(rent_url, values)

    assert form.initial["expected_currency"] == "EUR"
    assert response.status_code == 200
    assert "changed from EUR to CHF" in response.content.decode()
    assert Contract.objects.count() == 0


def test_api_rent_stale_currency_is_400():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource_in(resource, "GBP")
    client = APIClient()
    client.force_login(make_user())

    response = client.post(
        "/api/v1/rentals/",
        {"offering": offering.slug, "ssh_public_key": ssh_public_key(), "expected_price_cents": 1500, "expected_currency": "EUR"},
        format="json",
    )

    body = response.json()
    assert response.status_code == 400
    assert list(body) == ["expected_currency"]
    assert "GBP" in body["expected_currency"][0]
    assert Contract.objects.count() == 0


# --- races against a concurrent stop or deletion ----------------------------------------------


def _hold_lock_then(change, *, locked: threading.Event) -> threading.Thread:
    """Start a thread that locks rows in `change`, signals `locked`, waits and then commits."""

    def run():
        try:
            with transaction.atomic():
                change()
                locked.set()
                time.sleep(LOCK_HOLD_SECONDS)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_rent_waits_for_concurrent_stop():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource_in(resource, "EUR")
    locked = threading.Event()

    def stop_resource():
        # The row changes resource_stop makes under its resource lock.
        Resource.objects.select_for_update().get(pk=resource.pk)
        Resource.objects.filter(pk=resource.pk).update(status=ResourceStatus.STOPPING)

    stopper = _hold_lock_then(stop_resource, locked=locked)
    assert locked.wait(timeout=10)
    try:
        with pytest.raises(ValidationError) as caught:
            contract_services.contract_create(
                tenant=make_user(), offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="rent-during-stop",
            )
    finally:
        stopper.join(timeout=30)
        close_old_connections()

    assert "not running" in " ".join(caught.value.messages)
    assert Contract.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_create_sees_account_deleted_meanwhile():
    owner = make_user()
    account = make_cloud_account(owner=owner, backend=Backend.SANDBOX, label="Lab")
    started = threading.Event()
    outcome: list[object] = []

    def create():
        try:
            started.set()
            outcome.append(
                resource_create(
                    owner=owner, cloud_account=account, name="Build box", location_code="fsn1", server_type="cx22",
                    image="ubuntu-24.04", ssh_public_key=ssh_public_key(),
                )
            )
        except ValidationError as exc:
            outcome.append(exc)
        finally:
            connection.close()

    # The deletion holds the account's row lock while the creation runs its checks.
    with transaction.atomic():
        CloudAccount.objects.select_for_update().get(pk=account.pk)
        creator = threading.Thread(target=create)
        creator.start()
        assert started.wait(timeout=10)
        time.sleep(LOCK_HOLD_SECONDS)
        CloudAccount.objects.filter(pk=account.pk).update(deleted_at=account.created_at)
    creator.join(timeout=30)

    assert len(outcome) == 1
    assert isinstance(outcome[0], ValidationError), outcome[0]
    assert "was deleted" in " ".join(outcome[0].messages)
    assert Resource.objects.count() == 0


# --- stock after a failed rental ----------------------------------------------------------------


def test_relist_keeps_stock_until_hand_back():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource_in(resource, "EUR")
    tenant = make_user()
    contract, _created = contract_services.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="rent-then-fail"
    )
    contract_services.contract_pay(contract=contract, actor=tenant)
    # The failure's cleanup task, which hands the VM back and returns the stock, has not run yet.
    contract_services.contract_fail(contract_id=contract.pk, reason="Key hand-over failed over SSH.")

    relisted = list_resource_in(resource, "EUR", price_cents=900)

    contract.refresh_from_db()
    assert contract.status == ContractStatus.FAILED
    assert relisted.price_cents == 900
    assert relisted.stock_status == StockStatus.OUT_OF_STOCK

    listing_stock_return(offering_id=offering.pk)

    offering.refresh_from_db()
    assert offering.stock_status == StockStatus.IN_STOCK


def test_failed_stop_returns_stock():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource_in(resource, "EUR")
    resource_stop(resource=resource, actor=resource.owner)

    resource_mark_power_failed(resource_id=resource.pk, worker="worker-1", error="Action timed out.")

    resource.refresh_from_db()
    offering.refresh_from_db()
    assert resource.status == ResourceStatus.RUNNING
    assert offering.stock_status == StockStatus.IN_STOCK


def test_hand_back_failing_for_good_alerts_staff():
    # Found by a review: staff learned of a VM stuck with the tenant's key only from a log line.
    staff = make_superuser(email="staff@example.com")
    resource = make_resource(owner=make_provider().user)
    hetzner = make_cloud_account(owner=resource.owner, backend=Backend.HETZNER)
    Resource.objects.filter(pk=resource.pk).update(cloud_account=hetzner, backend=Backend.HETZNER)
    resource.refresh_from_db()
    pipeline._ensure_keys(resource)  # A provisioned resource has its platform key; the row made here does not.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    Resource.objects.filter(pk=resource.pk).update(ip_address="127.0.0.1", ssh_port=closed_port)
    offering = list_resource_in(resource, "EUR")
    tenant = make_user()
    contract, _created = contract_services.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="rent-then-stuck"
    )
    contract_services.contract_pay(contract=contract, actor=tenant)
    contract_services.contract_fail(contract_id=contract.pk, reason="Key hand-over failed over SSH.")

    cleanup_contract_servers_task.apply(args=[contract.pk], retries=cleanup_contract_servers_task.max_retries)

    alerts = Notification.objects.filter(event=Event.TERMINATION_FAILED, contract=contract)
    offering.refresh_from_db()
    assert alerts.filter(recipient=staff).exists()
    assert alerts.filter(recipient=resource.owner).exists()
    assert not alerts.filter(recipient=tenant).exists()
    assert alerts.get(recipient=staff).subject == f"Hand-back of the VM of contract {contract.public_id} failed"
    assert offering.stock_status == StockStatus.OUT_OF_STOCK
