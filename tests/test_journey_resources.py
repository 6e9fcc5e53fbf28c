"""Self-provisioned resources end to end: real worker process, fake Hetzner API, loopback sshd.

The owner creates a VM and lists it. A tenant rents it, so the platform hands the keys over on
the sshd. The rental ends, the keys are handed back and the stock returns. Another test stops,
starts and deletes a VM.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import close_old_connections

from marketplace.models import ContractStatus, Offering, StockStatus
from marketplace.services import contracts as contract_services
from provisioning.models import Backend, Resource, ResourceStatus
from provisioning.resource_services import (
    ResourceRented,
    resource_create,
    resource_delete,
    resource_list,
    resource_start,
    resource_stop,
)
from recipes.keys import generate_keypair
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.journeys import make_provider, make_tenant, rent, wait_for_status, wait_until

pytestmark = [pytest.mark.journey, pytest.mark.django_db(transaction=True)]


def _key_body(line: str) -> str:
    return line.split()[1]


def _authorized_bodies(sshd) -> set[str]:
    return {_key_body(line) for line in sshd.authorized_keys()}


def _saved_owner_file(sshd) -> Path:
    return Path(f"{sshd.authorized_keys_path}.cloudmarket-owner")


def _create_running_resource(*, owner, account, owner_key: str) -> Resource:
    resource = resource_create(
        owner=owner, cloud_account=account, name="Owner box", location_code="fsn1", server_type="cx22",
        image="ubuntu-24.04", ssh_public_key=owner_key,
    )
    resource = wait_for_status(resource, {ResourceStatus.RUNNING, ResourceStatus.FAILED}, timeout=90)
    assert resource.status == ResourceStatus.RUNNING, resource.status_reason
    return resource


def test_listed_vm_rented_and_handed_back(celery_worker_process, hetzner_api, session_sshd):
    _saved_owner_file(session_sshd).unlink(missing_ok=True)
    owner, account = make_provider(token=TEST_HCLOUD_TOKEN)
    owner_key = generate_keypair("owner@laptop").public_line
    resource = _create_running_resource(owner=owner, account=account, owner_key=owner_key)
    server = hetzner_api.servers[int(resource.cloud_server_id)]
    assert server["labels"]["cloudmarket-resource"] == str(resource.pk)
    assert "cloudmarket-contract" not in server["labels"]
    assert _authorized_bodies(session_sshd) == {_key_body(owner_key), _key_body(resource.platform_public_key)}

    offering = resource_list(
        resource=resource, actor=owner, name="Owner box for rent", description="", price_cents=2500,
        currency="EUR", remove_owner_keys=True,
    )
    tenant, tenant_key = make_tenant()
    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    offering.refresh_from_db()
    assert offering.stock_status == StockStatus.OUT_OF_STOCK
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=60)

    assert contract.status == ContractStatus.ACTIVE, contract.status_reason
    assert contract.ip_address == resource.ip_address
    assert contract.cloud_server_id == resource.cloud_server_id
    assert contract.host_public_key == resource.host_public_key
    assert contract.commission_bps == 2000
    assert contract.price_cents == 2500
    assert _authorized_bodies(session_sshd) == {_key_body(tenant_key), _key_body(resource.platform_public_key)}
    assert _saved_owner_file(session_sshd).exists()
    assert len(hetzner_api.servers) == 1
    with pytest.raises(ResourceRented):
        resource_stop(resource=resource, actor=owner)
    with pytest.raises(ResourceRented):
        resource_delete(resource=resource, actor=owner)

    contract_services.contract_terminate(contract=contract, actor=None, actor_label="system", reason="Test ends it.")
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED}, timeout=60)

    assert contract.status == ContractStatus.TERMINATED, contract.last_error
    assert "handed back" in contract.status_reason
    assert _authorized_bodies(session_sshd) == {_key_body(owner_key), _key_body(resource.platform_public_key)}
    assert not _saved_owner_file(session_sshd).exists()
    assert int(resource.cloud_server_id) in hetzner_api.servers
    offering = Offering.objects.get(pk=offering.pk)
    assert offering.stock_status == StockStatus.IN_STOCK
    resource.refresh_from_db()
    assert resource.status == ResourceStatus.RUNNING


def test_handover_keeps_owner_keys_when_asked(celery_worker_process, hetzner_api, session_sshd):
    _saved_owner_file(session_sshd).unlink(missing_ok=True)
    owner, account = make_provider(token=TEST_HCLOUD_TOKEN)
    owner_key = generate_keypair("owner@laptop").public_line
    resource = _create_running_resource(owner=owner, account=account, owner_key=owner_key)
    offering = resource_list(
        resource=resource, actor=owner, name="Shared box", description="", price_cents=1000,
        currency="EUR", remove_owner_keys=False,
    )
    tenant, tenant_key = make_tenant()

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=60)

    assert contract.status == ContractStatus.ACTIVE, contract.status_reason
    assert _authorized_bodies(session_sshd) == {
        _key_body(owner_key), _key_body(tenant_key), _key_body(resource.platform_public_key)
    }
    contract_services.contract_terminate(contract=contract, actor=None, actor_label="system", reason="Test ends it.")
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED}, timeout=60)
    assert contract.status == ContractStatus.TERMINATED, contract.last_error
    assert _authorized_bodies(session_sshd) == {_key_body(owner_key), _key_body(resource.platform_public_key)}


def test_stop_start_delete_on_hetzner(celery_worker_process, hetzner_api, session_sshd):
    owner, account = make_provider(token=TEST_HCLOUD_TOKEN)
    resource = _create_running_resource(owner=owner, account=account, owner_key=generate_keypair("o@l").public_line)
    server_id = int(resource.cloud_server_id)

    resource_stop(resource=resource, actor=owner)
    resource = wait_for_status(resource, {ResourceStatus.STOPPED, ResourceStatus.RUNNING}, timeout=60)
    assert resource.status == ResourceStatus.STOPPED, resource.last_error
    assert hetzner_api.servers[server_id]["status"] == "off"

    resource_start(resource=resource, actor=owner)
    resource = wait_for_status(resource, {ResourceStatus.RUNNING, ResourceStatus.STOPPED}, timeout=60)
    assert resource.status == ResourceStatus.RUNNING, resource.last_error
    assert hetzner_api.servers[server_id]["status"] == "running"

    resource_delete(resource=resource, actor=owner)
    resource = wait_for_status(resource, {ResourceStatus.DELETED, ResourceStatus.DELETE_FAILED}, timeout=60)
    assert resource.status == ResourceStatus.DELETED, resource.last_error
    assert server_id not in hetzner_api.servers
    wait_until(lambda: not hetzner_api.ssh_keys, message="the resource's SSH keys to be deleted")


def test_sandbox_listing_rent_and_return(celery_worker_process):
    owner, account = make_provider(email="sandbox-owner@example.com", backend=Backend.SANDBOX)
    resource = _create_running_resource(owner=owner, account=account, owner_key=generate_keypair("o@l").public_line)
    offering = resource_list(
        resource=resource, actor=owner, name="Sandbox box", description="", price_cents=0, currency="EUR",
        remove_owner_keys=False,
    )
    tenant, tenant_key = make_tenant(email="sandbox-tenant@example.com")

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=60)
    assert contract.status == ContractStatus.ACTIVE, contract.status_reason
    contract_services.contract_cancel(contract=contract, actor=tenant)
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED}, timeout=60)

    assert contract.status == ContractStatus.TERMINATED, contract.last_error
    close_old_connections()
    assert Offering.objects.get(pk=offering.pk).stock_status == StockStatus.IN_STOCK
    assert Resource.objects.get(pk=resource.pk).status == ResourceStatus.RUNNING


def test_create_retry_after_dropped_response(celery_worker_process, hetzner_api, session_sshd):
    # The cloud creates the server but the response is lost, as in a crash right after the call.
    hetzner_api.add_fault("POST", "/servers", drop_connection=True, process=True)
    owner, account = make_provider(token=TEST_HCLOUD_TOKEN)

    resource = _create_running_resource(owner=owner, account=account, owner_key=generate_keypair("o@l").public_line)

    assert len(hetzner_api.servers) == 1
    assert resource.cloud_server_id == str(next(iter(hetzner_api.servers)))
    assert resource.attempts >= 2


def test_create_rejected_by_cloud_fails(celery_worker_process, hetzner_api, session_sshd):
    hetzner_api.add_fault("POST", "/servers", status=403, code="resource_limit_exceeded", message="server limit reached")
    owner, account = make_provider(token=TEST_HCLOUD_TOKEN)
    resource = resource_create(
        owner=owner, cloud_account=account, name="Over limit", location_code="fsn1", server_type="cx22",
        image="ubuntu-24.04", ssh_public_key=generate_keypair("o@l").public_line,
    )

    resource = wait_for_status(resource, {ResourceStatus.RUNNING, ResourceStatus.FAILED}, timeout=60)

    assert resource.status == ResourceStatus.FAILED
    assert "server limit reached" in resource.status_reason
    assert not hetzner_api.servers
    wait_until(lambda: not hetzner_api.ssh_keys, message="the failed resource's SSH keys to be deleted")


def test_proxmox_resource_lifecycle(celery_worker_process, proxmox_api, session_sshd):
    from tests.test_journey_proxmox import make_proxmox_provider

    _saved_owner_file(session_sshd).unlink(missing_ok=True)
    account = make_proxmox_provider(proxmox_api)
    owner = account.owner
    owner_key = generate_keypair("owner@laptop").public_line
    resource = resource_create(
        owner=owner, cloud_account=account, name="Rack box", location_code="pve", server_type="pve-small",
        image="ubuntu-24.04", ssh_public_key=owner_key,
    )
    resource = wait_for_status(resource, {ResourceStatus.RUNNING, ResourceStatus.FAILED}, timeout=90)
    assert resource.status == ResourceStatus.RUNNING, resource.status_reason
    offering = resource_list(
        resource=resource, actor=owner, name="Rack box for rent", description="", price_cents=3000,
        currency="EUR", remove_owner_keys=True, country="AT",
    )
    tenant, tenant_key = make_tenant()

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=60)
    assert contract.status == ContractStatus.ACTIVE, contract.status_reason
    assert _authorized_bodies(session_sshd) == {_key_body(tenant_key), _key_body(resource.platform_public_key)}
    contract_services.contract_terminate(contract=contract, actor=None, actor_label="system", reason="Test ends it.")
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED}, timeout=60)
    assert contract.status == ContractStatus.TERMINATED, contract.last_error
    assert _authorized_bodies(session_sshd) == {_key_body(owner_key), _key_body(resource.platform_public_key)}

    resource_stop(resource=resource, actor=owner)
    resource = wait_for_status(resource, {ResourceStatus.STOPPED, ResourceStatus.RUNNING}, timeout=60)
    assert resource.status == ResourceStatus.STOPPED, resource.last_error
    resource_start(resource=resource, actor=owner)
    resource = wait_for_status(resource, {ResourceStatus.RUNNING, ResourceStatus.STOPPED}, timeout=60)
    assert resource.status == ResourceStatus.RUNNING, resource.last_error
    assert resource.ip_address == "127.0.0.1"
    resource_delete(resource=resource, actor=owner)
    resource = wait_for_status(resource, {ResourceStatus.DELETED, ResourceStatus.DELETE_FAILED}, timeout=60)
    assert resource.status == ResourceStatus.DELETED, resource.last_error
    assert int(resource.cloud_server_id) not in proxmox_api.vms
