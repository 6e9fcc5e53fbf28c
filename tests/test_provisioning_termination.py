"""Ending rentals against a failing cloud: SSH never reachable, cancel in flight, deletion failing.

Real worker processes on the scale tests' queue and the fake Hetzner API with one loopback
address per server (fixtures in `tests/conftest.py`).
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from billing.models import PaymentStatus
from marketplace.models import ContractStatus
from marketplace.services import contracts as contract_services
from marketplace.services.staff import contract_force_terminate
from notifications.models import Notification
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.journeys import make_offering, make_provider, make_tenant, wait_for_status, wait_until
from tests.test_provisioning_scale import rent_many

pytestmark = [pytest.mark.journey, pytest.mark.django_db(transaction=True)]

FAST_RETRIES = {
    "PROVISIONING_LEASE_SECONDS": "3",
    "PROVISIONING_BACKOFF_BASE_SECONDS": "0.2",
    "PROVISIONING_TERMINATION_RETRIES": "2",
}


def test_ssh_never_reachable_fails_and_deletes(start_scale_workers, fleet_hetzner_api):
    _, account = make_provider(token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script="echo never runs\n")
    tenant = make_tenant()
    # Port 9 (discard) has no listener on any loopback address, so every SSH attempt is refused.
    start_scale_workers(1, env={**FAST_RETRIES, "PROVISIONING_SSH_PORT": "9", "PROVISIONING_SSH_TIMEOUT": "4"})

    [contract] = rent_many(offering=offering, tenants=[tenant], count=1)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=60)

    assert contract.status == ContractStatus.FAILED
    assert "never became reachable over SSH" in contract.status_reason
    assert contract.payments.get().status == PaymentStatus.REFUNDED
    assert not contract.recipe_runs.exists()
    wait_until(lambda: not fleet_hetzner_api.servers, message="the unreachable server to be deleted")
    wait_until(lambda: not fleet_hetzner_api.ssh_keys, message="its SSH keys to be deleted")


def test_cancel_during_boot_leaves_nothing(start_scale_workers, fleet_hetzner_api):
    fleet_hetzner_api.boot_delay = 6.0
    _, account = make_provider(token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script=None)
    tenant, tenant_key = make_tenant()
    start_scale_workers(1, env=FAST_RETRIES)
    [contract] = rent_many(offering=offering, tenants=[(tenant, tenant_key)], count=1)

    def waiting_for_boot() -> bool:
        contract.refresh_from_db()
        return contract.provisioning_step == "waiting_for_boot" and bool(contract.cloud_server_id)

    wait_until(waiting_for_boot, timeout=30, message="the worker to wait for boot")
    contract = contract_services.contract_cancel(contract=contract, actor=tenant)
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED}, timeout=60)

    assert contract.status == ContractStatus.TERMINATED
    assert contract.payments.get().status == PaymentStatus.REFUNDED
    assert not fleet_hetzner_api.servers
    assert not fleet_hetzner_api.ssh_keys
    assert not contract.events.filter(to_status=ContractStatus.ACTIVE).exists()


def test_deletion_failing_alerts_staff_then_retry(start_scale_workers, fleet_hetzner_api):
    staff = get_user_model().objects.create_superuser(email="ops@example.com", password="ops-password-1")
    _, account = make_provider(token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script=None)
    tenant, tenant_key = make_tenant()
    start_scale_workers(1, env=FAST_RETRIES)
    [contract] = rent_many(offering=offering, tenants=[(tenant, tenant_key)], count=1)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=60)
    assert contract.status == ContractStatus.ACTIVE
    fault = fleet_hetzner_api.add_fault("DELETE", r"/servers/\d+", status=503, times=None)

    contract = contract_services.contract_terminate(
        contract=contract, actor=None, actor_label="provider", reason="Hardware retired."
    )
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED}, timeout=60)

    assert contract.status == ContractStatus.TERMINATION_FAILED
    assert fault.hits == 3  # the first try and PROVISIONING_TERMINATION_RETRIES retries
    assert len(fleet_hetzner_api.servers) == 1
    wait_until(
        lambda: Notification.objects.filter(event="termination_failed", recipient=staff).exists(),
        message="the staff alert",
    )

    fleet_hetzner_api.clear_faults()
    contract = contract_force_terminate(contract_id=contract.pk, actor=staff)
    contract = wait_for_status(contract, {ContractStatus.TERMINATED}, timeout=60)

    assert not fleet_hetzner_api.servers
    assert not fleet_hetzner_api.ssh_keys
