"""Provision many contracts with several worker processes, and recover from workers killed mid-step.

Every server of the fake Hetzner API gets its own loopback address on the SSH fleet, so
concurrent contracts keep their own host keys and authorized keys. The workers consume a queue
of their own (see `tests/worker_settings.py`).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from django.db import close_old_connections
from django.utils import timezone

from marketplace.models import Contract, ContractStatus, ProvisioningStep
from marketplace.services import contracts as contract_services
from provisioning.tasks import resume_stalled_provisioning_task
from recipes.models import RecipeRunStatus
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.journeys import make_offering, make_provider, make_tenant, wait_for_status, wait_until

pytestmark = [pytest.mark.journey, pytest.mark.django_db(transaction=True)]

CONTRACT_LABEL = "cloudmarket-contract"
SETTLED = {ContractStatus.ACTIVE, ContractStatus.FAILED}
LEASE_SECONDS = 3


def rent_many(*, offering, tenants: list[tuple], count: int) -> list[Contract]:
    """Create and pay `count` contracts, spread round-robin over `tenants` (user, public key)."""
    contracts = []
    for index in range(count):
        tenant, public_key = tenants[index % len(tenants)]
        contract, _ = contract_services.contract_create(
            tenant=tenant, offering=offering, ssh_public_key=public_key, idempotency_key=f"scale-{index}"
        )
        contracts.append(contract_services.contract_pay(contract=contract, actor=tenant))
    return contracts


def wait_all_settled(contract_ids: list[int], *, timeout: float) -> dict[int, Contract]:
    """Poll until every contract is active or failed; return them by id."""
    deadline = time.monotonic() + timeout
    while True:
        close_old_connections()
        contracts = {contract.pk: contract for contract in Contract.objects.filter(pk__in=contract_ids)}
        pending = [contract for contract in contracts.values() if contract.status not in SETTLED]
        if not pending:
            return contracts
        if time.monotonic() > deadline:
            sample = ", ".join(f"{c.pk}:{c.status}/{c.provisioning_step}" for c in pending[:10])
            raise AssertionError(f"{len(pending)} contracts not settled after {timeout} s, for example {sample}")
        time.sleep(0.5)


def successful_creates_by_contract(api) -> Counter:
    return Counter(
        request.body["labels"][CONTRACT_LABEL] for request in api.requests_matching("POST", "/servers", status=201)
    )


def test_four_workers_provision_200_contracts(start_scale_workers, fleet_hetzner_api, ssh_fleet):
    script = "echo provisioned > provisioned.txt\necho done\n"
    _, account = make_provider(token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script=script)
    tenants = [make_tenant(email=f"tenant{index}@example.com") for index in range(10)]
    workers = start_scale_workers(4, concurrency=4)

    contracts = rent_many(offering=offering, tenants=tenants, count=200)
    settled = wait_all_settled([contract.pk for contract in contracts], timeout=150)

    statuses = Counter(contract.status for contract in settled.values())
    failed = {pk: c.status_reason for pk, c in settled.items() if c.status != ContractStatus.ACTIVE}
    assert statuses[ContractStatus.ACTIVE] == 200, (failed, workers[0].log_tail())
    servers = fleet_hetzner_api.servers
    assert len(servers) == 200
    servers_by_contract = Counter(server["labels"][CONTRACT_LABEL] for server in servers.values())
    assert set(servers_by_contract) == {str(pk) for pk in settled}
    assert max(servers_by_contract.values()) == 1
    for contract in settled.values():
        server = servers[int(contract.cloud_server_id)]
        assert server["labels"][CONTRACT_LABEL] == str(contract.pk)
        assert server["public_net"]["ipv4"]["ip"] == contract.ip_address
        assert contract.lease_owner == ""
        assert contract.provisioning_step == ""
    assert len({contract.ip_address for contract in settled.values()}) == 200
    assert max(successful_creates_by_contract(fleet_hetzner_api).values()) == 1

    keys = fleet_hetzner_api.ssh_keys.values()
    key_lines = Counter(key["public_key"].split()[1] for key in keys)
    expected_lines = {contract.platform_public_key.split()[1] for contract in settled.values()}
    expected_lines |= {public_key.split()[1] for _, public_key in tenants}
    assert set(key_lines) == expected_lines
    assert max(key_lines.values()) == 1
    assert {key["labels"][CONTRACT_LABEL] for key in keys} <= {str(pk) for pk in settled}

    for contract in settled.values():
        address = contract.ip_address
        authorized = " ".join(ssh_fleet.authorized_keys(address))
        assert contract.platform_public_key.split()[1] in authorized
        assert contract.ssh_public_key.split()[1] in authorized
        assert ssh_fleet.host_public_key(address).split()[1] == contract.host_public_key.split()[1]
        assert (ssh_fleet.workdir(address) / "provisioned.txt").read_text() == "provisioned\n"
        assert contract.recipe_runs.get().status == RecipeRunStatus.SUCCEEDED


def hold_after_create(api, ssh_fleet):
    """Hold the create request's response for 30 s after the server was created."""
    api.add_fault("POST", "/servers", response_delay=30)
    return lambda contract: bool(api.servers)


def hold_while_booting(api, ssh_fleet):
    api.boot_delay = 120
    return lambda contract: contract.provisioning_step == ProvisioningStep.WAITING_FOR_BOOT and bool(api.servers)


def hold_in_recipe(api, ssh_fleet):
    return lambda contract: any((ssh_fleet.workdir(address) / "runs").exists() for address in ssh_fleet.addresses)


# The first run sleeps long enough for the kill; a run after recovery finishes at once.
SLOW_FIRST_RUN = """\
runs=$(cat runs 2>/dev/null || echo 0)
echo $((runs + 1)) > runs
if [ "$runs" -eq 0 ]; then sleep 60; fi
echo recipe finished
"""


@pytest.mark.parametrize(
    ("hold", "script"),
    [
        pytest.param(hold_after_create, None, id="after-create"),
        pytest.param(hold_while_booting, None, id="waiting-for-boot"),
        pytest.param(hold_in_recipe, SLOW_FIRST_RUN, id="running-recipe"),
    ],
)
def test_killed_worker_recovered_by_another(start_scale_workers, fleet_hetzner_api, ssh_fleet, hold, script):
    lease_env = {"PROVISIONING_LEASE_SECONDS": str(LEASE_SECONDS)}
    _, account = make_provider(token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script=script)
    tenant, tenant_key = make_tenant()
    in_step = hold(fleet_hetzner_api, ssh_fleet)
    [first] = start_scale_workers(1, pool="solo", concurrency=1, env=lease_env)

    [contract] = rent_many(offering=offering, tenants=[(tenant, tenant_key)], count=1)

    def reached_step() -> bool:
        contract.refresh_from_db()
        return in_step(contract)

    wait_until(reached_step, timeout=30, message="the first worker to reach the step")
    first.kill()
    server_ids = list(fleet_hetzner_api.servers)
    fleet_hetzner_api.boot_delay = 0.2
    for server_id in server_ids:
        fleet_hetzner_api.set_server_status(server_id, "running")
    start_scale_workers(1, pool="prefork", concurrency=2, env=lease_env)
    contract.refresh_from_db()
    assert contract.status == ContractStatus.PROVISIONING
    wait_until(
        lambda: Contract.objects.filter(pk=contract.pk, lease_expires_at__lt=timezone.now()).exists(),
        timeout=LEASE_SECONDS + 10,
        message="the killed worker's lease to expire",
    )

    resume_stalled_provisioning_task()

    contract = wait_for_status(contract, SETTLED, timeout=60)
    assert contract.status == ContractStatus.ACTIVE, contract.status_reason
    servers = fleet_hetzner_api.servers
    assert list(servers) == server_ids
    assert contract.cloud_server_id == str(server_ids[0])
    # The held create of the killed worker is the only one: the second worker found its server.
    assert len(fleet_hetzner_api.requests_matching("POST", "/servers")) == 1
    assert {key["labels"][CONTRACT_LABEL] for key in fleet_hetzner_api.ssh_keys.values()} == {str(contract.pk)}
    assert len(fleet_hetzner_api.ssh_keys) == 2
    assert contract.lease_owner == ""
    assert contract.attempts == 2
    if script is not None:
        workdir = ssh_fleet.workdir(contract.ip_address)
        assert (workdir / "runs").read_text() == "2\n"
        runs = list(contract.recipe_runs.order_by("started_at", "pk"))
        assert [run.status for run in runs] == [RecipeRunStatus.FAILED, RecipeRunStatus.SUCCEEDED]
        assert "interrupted" in runs[0].error
        assert "recipe finished" in runs[1].output
