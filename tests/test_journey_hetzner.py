"""Rent Hetzner offerings end to end: real worker process, fake Hetzner API, loopback sshd."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from billing.models import PaymentStatus
from marketplace.models import Contract, ContractStatus
from marketplace.services import contracts as contract_services
from notifications.models import Notification
from recipes.models import RecipeRunStatus
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.journeys import (
    make_offering,
    make_provider,
    make_tenant,
    rent,
    wait_for_status,
    wait_until,
)

pytestmark = [pytest.mark.journey, pytest.mark.django_db(transaction=True)]


def test_successful_recipe_ends_active(celery_worker_process, hetzner_api, session_sshd):
    marker = session_sshd.workdir / "recipe-ran.txt"
    script = f"echo 'installing service'\necho \"user=$(id -un)\" > '{marker}'\necho 'service ready'\n"
    _, account = make_provider(token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script=script)
    tenant, tenant_key = make_tenant()

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=90)

    assert contract.status == ContractStatus.ACTIVE, celery_worker_process.log_tail()
    assert contract.ip_address == "127.0.0.1"
    assert contract.cloud_server_id
    servers = list(hetzner_api.servers.values())
    assert len(servers) == 1
    assert servers[0]["labels"]["cloudmarket-contract"] == str(contract.pk)
    assert str(servers[0]["id"]) == contract.cloud_server_id
    authorized = "\n".join(session_sshd.authorized_keys())
    assert tenant_key.split()[1] in authorized
    assert contract.platform_public_key.split()[1] in authorized
    assert session_sshd.host_public_key.split()[1] == contract.host_public_key.split()[1]
    run = contract.recipe_runs.get()
    assert run.status == RecipeRunStatus.SUCCEEDED
    assert run.exit_code == 0
    assert run.executed is True
    assert "installing service" in run.output
    assert "service ready" in run.output
    assert marker.read_text().strip() == f"user={session_sshd.username}"
    steps = list(contract.events.exclude(step="").values_list("step", flat=True))
    assert steps[:4] == ["creating_server", "waiting_for_boot", "waiting_for_ssh", "running_recipe"]
    wait_until(
        lambda: Notification.objects.filter(contract=contract, event="rental_active", status="sent").count() == 2,
        message="rental_active notifications to tenant and provider",
    )


def test_recipe_exit_3_fails_and_refunds(celery_worker_process, hetzner_api, session_sshd):
    script = "echo 'starting'\nexit 3\necho 'never printed'\n"
    _, account = make_provider(token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script=script)
    tenant, tenant_key = make_tenant()

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=90)

    assert contract.status == ContractStatus.FAILED
    assert "exit code 3" in contract.status_reason
    run = contract.recipe_runs.get()
    assert run.exit_code == 3
    assert run.status == RecipeRunStatus.FAILED
    assert "starting" in run.output
    assert "never printed" not in run.output
    wait_until(lambda: not hetzner_api.servers, message="the failed contract's server to be deleted")
    wait_until(lambda: not hetzner_api.ssh_keys, message="the failed contract's SSH keys to be deleted")
    payment = contract.payments.get()
    assert payment.status == PaymentStatus.REFUNDED
    assert payment.refunds.get().status == "succeeded"
    wait_until(
        lambda: Notification.objects.filter(contract=contract, event="rental_failed").count() == 2,
        message="rental_failed notifications",
    )


def test_cancel_ends_at_period_end(celery_worker_process, hetzner_api, session_sshd):
    _, account = make_provider(token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script=None)
    tenant, tenant_key = make_tenant()
    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED})
    assert contract.status == ContractStatus.ACTIVE

    contract = contract_services.contract_cancel(contract=contract, actor=tenant)

    assert contract.status == ContractStatus.ACTIVE
    assert contract.cancel_at_period_end is True
    assert len(hetzner_api.servers) == 1

    Contract.objects.filter(pk=contract.pk).update(paid_until=timezone.now() - timedelta(seconds=1))
    ended = contract_services.contracts_end_expired()

    assert ended == [contract.pk]
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED})
    assert contract.status == ContractStatus.TERMINATED
    assert not hetzner_api.servers
    assert not hetzner_api.ssh_keys


def test_revoked_token_fails_and_marks_account(celery_worker_process, hetzner_api):
    _, account = make_provider(token="revoked-token")
    offering = make_offering(account=account, script=None)
    tenant, tenant_key = make_tenant()

    contract = rent(tenant=tenant, public_key=tenant_key, offering=offering)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED})

    assert contract.status == ContractStatus.FAILED
    assert "credentials" in contract.status_reason
    assert "revoked-token" not in contract.status_reason
    account.refresh_from_db()
    assert account.validation_status == "invalid"
    assert contract.payments.get().status == PaymentStatus.REFUNDED
    assert not hetzner_api.servers
