"""Rent a Sandbox service end to end with a real worker process: simulated, and labelled so."""

from __future__ import annotations

import pytest

from billing.models import PaymentMethod
from marketplace.models import ContractStatus
from marketplace.services import contracts as contract_services
from provisioning.models import Backend, SandboxServer
from recipes.models import RecipeRunStatus
from tests.journeys import make_offering, make_provider, make_tenant, wait_for_status

pytestmark = [pytest.mark.journey, pytest.mark.django_db(transaction=True)]


def test_sandbox_rental_runs_and_cancels(celery_worker_process):
    _, account = make_provider(backend=Backend.SANDBOX)
    offering = make_offering(account=account, script="apt-get install -y nginx\n", slug="sandbox-nginx")
    tenant, tenant_key = make_tenant()

    contract, created = contract_services.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=tenant_key, idempotency_key="sandbox-1"
    )
    contract = contract_services.contract_pay(contract=contract, actor=tenant)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=60)

    assert created is True
    assert contract.status == ContractStatus.ACTIVE, celery_worker_process.log_tail()
    assert contract.ip_address.startswith("203.0.113.")
    assert contract.payments.get().method == PaymentMethod.SANDBOX
    run = contract.recipe_runs.get()
    assert run.status == RecipeRunStatus.SIMULATED
    assert run.executed is False
    assert "nothing was executed" in run.output

    contract = contract_services.contract_cancel(contract=contract, actor=tenant)
    assert contract.status == ContractStatus.TERMINATING
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED}, timeout=60)

    assert contract.status == ContractStatus.TERMINATED
    assert SandboxServer.objects.filter(deleted_at__isnull=True).count() == 0
