"""Provisioning against a fake Hetzner API that fails: random faults, a revoked token, no credit.

Real worker processes on the scale tests' queue, with one loopback address per server (see
`tests/test_provisioning_scale.py`).
"""

from __future__ import annotations

from collections import Counter

import pytest

from billing.models import PaymentStatus
from marketplace.models import Contract, ContractStatus
from marketplace.selectors import catalog_offerings
from notifications.models import Notification
from provisioning.models import ValidationStatus
from provisioning.tasks import MAX_TRANSIENT_RETRIES
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.journeys import make_offering, make_provider, make_tenant, wait_until
from tests.test_provisioning_scale import (
    CONTRACT_LABEL,
    rent_many,
    successful_creates_by_contract,
    wait_all_settled,
)

pytestmark = [pytest.mark.journey, pytest.mark.django_db(transaction=True)]

FAULT_SEED = 20240607
REVOKABLE_TOKEN = "revokable-hcloud-token-0123456789"


def add_random_faults(api) -> list:
    """Script faults that hit a seeded random share of all requests, about 8 % in total."""
    return [
        # A lost response after the server (or SSH key) was created: the retry must find it.
        api.add_fault("POST", "/servers|/ssh_keys", drop_connection=True, process=True, probability=0.05, times=None),
        api.add_fault("*", ".*", status=429, retry_after=1, probability=0.02, times=None),
        api.add_fault("*", ".*", status=503, probability=0.02, times=None),
        api.add_fault("*", ".*", drop_connection=True, probability=0.015, times=None),
        api.add_fault("*", ".*", delay=0.4, probability=0.03, times=None),
    ]


def test_random_faults_end_active_or_failed(start_scale_workers, fleet_hetzner_api):
    fleet_hetzner_api.seed_faults(FAULT_SEED)
    faults = add_random_faults(fleet_hetzner_api)
    _, account = make_provider(token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script="echo ready\n")
    tenants = [make_tenant(email=f"tenant{index}@example.com") for index in range(4)]
    start_scale_workers(2, concurrency=4)

    contracts = rent_many(offering=offering, tenants=tenants, count=40)
    settled = wait_all_settled([contract.pk for contract in contracts], timeout=150)

    for contract in settled.values():
        assert contract.status in {ContractStatus.ACTIVE, ContractStatus.FAILED}
        if contract.status == ContractStatus.FAILED:
            assert contract.status_reason
        assert contract.lease_owner == ""
        assert contract.attempts <= MAX_TRANSIENT_RETRIES + 1
    assert max(successful_creates_by_contract(fleet_hetzner_api).values()) <= 1
    assert sum(fault.hits for fault in faults) > 0
    assert any(contract.attempts > 1 for contract in settled.values())

    fleet_hetzner_api.clear_faults()
    active = {str(pk) for pk, contract in settled.items() if contract.status == ContractStatus.ACTIVE}
    assert active

    def only_active_servers_left() -> bool:
        labels = Counter(server["labels"][CONTRACT_LABEL] for server in fleet_hetzner_api.servers.values())
        keys = {key["labels"][CONTRACT_LABEL] for key in fleet_hetzner_api.ssh_keys.values()}
        return set(labels) == active and max(labels.values()) == 1 and keys <= active

    wait_until(only_active_servers_left, timeout=90, message="failed contracts' servers and keys to be deleted")
    servers = fleet_hetzner_api.servers
    for pk in active:
        assert servers[int(settled[int(pk)].cloud_server_id)]["labels"][CONTRACT_LABEL] == pk


def test_revoked_token_fails_and_hides_offerings(start_scale_workers, fleet_hetzner_api):
    fleet_hetzner_api.tokens.add(REVOKABLE_TOKEN)
    provider, account = make_provider(token=REVOKABLE_TOKEN)
    offering = make_offering(account=account, script=None)
    tenant, tenant_key = make_tenant()
    assert offering in catalog_offerings()
    start_scale_workers(1, concurrency=2)
    fleet_hetzner_api.tokens.discard(REVOKABLE_TOKEN)

    contracts = rent_many(offering=offering, tenants=[(tenant, tenant_key)], count=3)
    settled = wait_all_settled([contract.pk for contract in contracts], timeout=60)

    for contract in settled.values():
        assert contract.status == ContractStatus.FAILED
        assert "credentials" in contract.status_reason
        assert REVOKABLE_TOKEN not in contract.status_reason
        assert contract.payments.get().status == PaymentStatus.REFUNDED
    account.refresh_from_db()
    assert account.validation_status == ValidationStatus.INVALID
    assert offering not in catalog_offerings()
    assert Notification.objects.filter(event="credentials_invalid", recipient=provider).count() == 1
    wait_until(
        lambda: Notification.objects.filter(event="rental_failed").count() == 6,
        message="rental_failed notifications to tenant and provider",
    )
    assert not fleet_hetzner_api.servers
    assert not fleet_hetzner_api.ssh_keys


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        pytest.param(403, "resource_limit_exceeded", "server limit reached for this project", id="limit-403"),
        pytest.param(402, "payment_required", "the account balance is insufficient", id="payment-402"),
    ],
)
def test_out_of_credit_fails_and_refunds(start_scale_workers, fleet_hetzner_api, status, code, message):
    fleet_hetzner_api.add_fault("POST", "/servers", status=status, code=code, message=message, times=None)
    provider, account = make_provider(token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script=None)
    tenant, tenant_key = make_tenant()
    start_scale_workers(1, concurrency=2)

    [contract] = rent_many(offering=offering, tenants=[(tenant, tenant_key)], count=1)
    contract = wait_all_settled([contract.pk], timeout=60)[contract.pk]

    assert contract.status == ContractStatus.FAILED
    assert message in contract.status_reason
    assert contract.attempts == 1
    assert contract.payments.get().status == PaymentStatus.REFUNDED
    account.refresh_from_db()
    assert account.validation_status == ValidationStatus.VALID
    assert offering in catalog_offerings()
    wait_until(
        lambda: Notification.objects.filter(contract=contract, event="rental_failed").count() == 2,
        message="rental_failed notifications to tenant and provider",
    )
    for recipient in (tenant, provider):
        notification = Notification.objects.get(contract=contract, event="rental_failed", recipient=recipient)
        assert message in notification.body
    wait_until(lambda: not fleet_hetzner_api.ssh_keys, message="the failed contract's SSH keys to be deleted")
    assert not fleet_hetzner_api.servers
    assert not Contract.objects.exclude(status=ContractStatus.FAILED).exists()
