"""Rent Proxmox VE offerings end to end: real worker processes, the fake Proxmox VE API, loopback sshd."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import PaymentStatus
from marketplace.models import Contract, ContractStatus, Offering, ProviderProfile, User
from marketplace.services import contracts as contract_services
from provisioning.backends import get_backend
from provisioning.models import Backend, CloudAccount, ValidationStatus
from provisioning.pipeline import contract_labels
from provisioning.tasks import resume_stalled_provisioning_task
from recipes.models import RecipeRunStatus
from tests.conftest import TEST_PROXMOX_TOKEN_ID, TEST_PROXMOX_TOKEN_SECRET, ScaleWorker
from tests.journeys import make_offering, make_tenant, rent, wait_for_status, wait_until

pytestmark = [pytest.mark.journey, pytest.mark.django_db(transaction=True)]

CLONE_PATH = r"/nodes/pve/qemu/9000/clone"
SETTLED = {ContractStatus.ACTIVE, ContractStatus.FAILED}
LEASE_SECONDS = 3


def make_proxmox_provider(api, *, token_secret: str = TEST_PROXMOX_TOKEN_SECRET) -> CloudAccount:
    user = User.objects.create_user(email="pve-provider@example.com", password="provider-password-1")
    ProviderProfile.objects.create(user=user, display_name="Loopback Proxmox", slug="loopback-pve", auto_accept=True)
    account = CloudAccount(
        owner=user,
        backend=Backend.PROXMOX,
        label="Proxmox rack",
        validation_status=ValidationStatus.VALID,
        proxmox_api_url=api.url,
        proxmox_token_id=TEST_PROXMOX_TOKEN_ID,
        proxmox_node="pve",
    )
    account.set_token(token_secret)
    account.save()
    return account


def make_proxmox_offering(account: CloudAccount, *, script: str | None) -> Offering:
    offering = make_offering(account=account, script=script, slug="loopback-pve-small")
    Offering.objects.filter(pk=offering.pk).update(server_type="pve-small", image="ubuntu-24.04", location_code="pve")
    offering.refresh_from_db()
    return offering


def test_recipe_runs_and_termination_destroys_vm(celery_worker_process, proxmox_api, session_sshd):
    marker = session_sshd.workdir / "pve-recipe-ran.txt"
    script = f"echo 'installing service'\necho \"user=$(id -un)\" > '{marker}'\necho 'service ready'\n"
    account = make_proxmox_provider(proxmox_api)
    offering = make_proxmox_offering(account, script=script)
    tenant, tenant_key = make_tenant()

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, SETTLED, timeout=90)

    assert contract.status == ContractStatus.ACTIVE, contract.status_reason + celery_worker_process.log_tail()
    assert contract.ip_address == "127.0.0.1"
    [(vmid, vm)] = proxmox_api.vms.items()
    assert contract.cloud_server_id == str(vmid)
    assert f'"cloudmarket-contract":"{contract.pk}"' in vm["config"]["description"]
    assert (vm["config"]["cores"], vm["config"]["memory"]) == ("1", "2048")
    authorized = "\n".join(session_sshd.authorized_keys())
    assert tenant_key.split()[1] in authorized
    assert contract.platform_public_key.split()[1] in authorized
    assert session_sshd.host_public_key.split()[1] == contract.host_public_key.split()[1]
    run = contract.recipe_runs.get()
    assert run.status == RecipeRunStatus.SUCCEEDED
    assert "service ready" in run.output
    assert marker.read_text().strip() == f"user={session_sshd.username}"
    steps = list(contract.events.exclude(step="").values_list("step", flat=True))
    assert steps[:4] == ["creating_server", "waiting_for_boot", "waiting_for_ssh", "running_recipe"]

    contract = contract_services.contract_cancel(contract=contract, actor=tenant)
    Contract.objects.filter(pk=contract.pk).update(paid_until=timezone.now() - timedelta(seconds=1))
    assert contract_services.contracts_end_expired() == [contract.pk]
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED})

    assert contract.status == ContractStatus.TERMINATED
    assert proxmox_api.vms == {}
    [destroy] = proxmox_api.requests_matching("DELETE", rf"/nodes/pve/qemu/{vmid}", status=200)
    assert destroy.params["purge"] == ["1"]


def test_failed_clone_task_fails_and_refunds(celery_worker_process, proxmox_api):
    proxmox_api.fail_next_task("qmclone", "clone failed: no space left on device")
    account = make_proxmox_provider(proxmox_api)
    offering = make_proxmox_offering(account, script=None)
    tenant, tenant_key = make_tenant()

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, SETTLED, timeout=60)

    assert contract.status == ContractStatus.FAILED
    assert "no space left on device" in contract.status_reason
    assert contract.payments.get().status == PaymentStatus.REFUNDED
    assert proxmox_api.vms == {}
    account.refresh_from_db()
    assert account.validation_status == ValidationStatus.VALID


def test_revoked_token_fails_and_marks_account(celery_worker_process, proxmox_api):
    account = make_proxmox_provider(proxmox_api, token_secret="99999999-revoked-0000-0000-000000000000")
    offering = make_proxmox_offering(account, script=None)
    tenant, tenant_key = make_tenant()

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, SETTLED, timeout=60)

    assert contract.status == ContractStatus.FAILED
    assert "credentials" in contract.status_reason
    assert "99999999-revoked" not in contract.status_reason
    account.refresh_from_db()
    assert account.validation_status == ValidationStatus.INVALID
    assert "invalid token value" in account.last_error
    assert contract.payments.get().status == PaymentStatus.REFUNDED
    assert proxmox_api.vms == {}


def test_slow_guest_agent_still_activates(celery_worker_process, proxmox_api, session_sshd):
    proxmox_api.agent_delay = 4.0
    account = make_proxmox_provider(proxmox_api)
    offering = make_proxmox_offering(account, script="echo agent-was-slow\n")
    tenant, tenant_key = make_tenant()

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, SETTLED, timeout=90)

    assert contract.status == ContractStatus.ACTIVE, contract.status_reason
    agent_path = rf"/nodes/pve/qemu/{contract.cloud_server_id}/agent/network-get-interfaces"
    assert len(proxmox_api.requests_matching("GET", agent_path, status=500)) >= 3
    assert proxmox_api.requests_matching("GET", agent_path, status=200)
    assert "agent-was-slow" in contract.recipe_runs.get().output


# A worker killed while provisioning, and another one taking over.


@pytest.fixture
def start_worker(worker_env, scale_queue, tmp_path):
    """Return `start(name, pool)`, which starts a worker on the test's own queue and waits until it is ready."""
    started: list[ScaleWorker] = []
    env = {
        **worker_env,
        "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
        "CLOUDMARKET_TEST_CELERY_QUEUE": scale_queue,
        "PROVISIONING_LEASE_SECONDS": str(LEASE_SECONDS),
    }

    def start(name: str, *, pool: str = "prefork") -> ScaleWorker:
        worker = ScaleWorker(env=env, log_path=tmp_path / f"{name}.log", name=name, pool=pool, concurrency=1)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def hold_clone_response(api):
    """Let the clone happen but hold its response, so the worker dies before it learns the VM id."""
    api.add_fault("POST", CLONE_PATH, process=True, response_delay=30)
    return lambda: bool(api.vms)


def hold_clone_task(api):
    """Keep the clone task running, so the worker dies while it waits for the task."""
    api.task_seconds["qmclone"] = 60
    return lambda: bool(api.vms) and bool(api.requests_matching("GET", r"/nodes/pve/tasks/.*qmclone.*/status"))


@pytest.mark.parametrize("hold", [hold_clone_response, hold_clone_task], ids=["clone-response-lost", "clone-task-running"])
def test_killed_worker_retry_reuses_cloned_vm(start_worker, proxmox_api, session_sshd, hold):
    account = make_proxmox_provider(proxmox_api)
    offering = make_proxmox_offering(account, script="echo provisioned-after-takeover\n")
    tenant, tenant_key = make_tenant()
    cloned = hold(proxmox_api)
    first = start_worker("pve-first", pool="solo")

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    wait_until(cloned, timeout=30, message="the first worker to clone the template")
    first.kill()
    proxmox_api.finish_tasks_now()
    [vmid] = proxmox_api.vms
    start_worker("pve-second")
    wait_until(
        lambda: Contract.objects.filter(pk=contract.pk, lease_expires_at__lt=timezone.now()).exists(),
        timeout=LEASE_SECONDS + 10,
        message="the killed worker's lease to expire",
    )

    resume_stalled_provisioning_task()

    contract = wait_for_status(contract, SETTLED, timeout=60)
    assert contract.status == ContractStatus.ACTIVE, contract.status_reason
    assert list(proxmox_api.vms) == [vmid]
    assert contract.cloud_server_id == str(vmid)
    expected_vmid = next(get_backend(account).vmid_candidates(contract_labels(contract)))
    assert vmid == expected_vmid
    assert len(proxmox_api.requests_matching("POST", CLONE_PATH)) == 1
    assert len(proxmox_api.requests_matching("POST", rf"/nodes/pve/qemu/{vmid}/status/start")) == 1
    assert contract.attempts == 2
    assert "provisioned-after-takeover" in contract.recipe_runs.get().output
