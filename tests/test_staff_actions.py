"""Staff interventions: stop provisioning, force termination, the provisioning queue page."""

from __future__ import annotations

import pytest
from django.urls import reverse

from billing.models import PaymentStatus
from marketplace.models import Contract, ContractStatus
from marketplace.services import contracts as contract_services
from marketplace.services.staff import contract_force_terminate
from provisioning.models import Backend
from provisioning.pipeline import LeaseLost, lease_claim, lease_renew
from tests.journeys import make_offering, make_provider, make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def provisioning_contract():
    _, account = make_provider(backend=Backend.SANDBOX)
    offering = make_offering(account=account, script=None, slug="staff-vm")
    tenant, key = make_tenant()
    contract, _ = contract_services.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=key, idempotency_key="staff-1"
    )
    return contract_services.contract_pay(contract=contract, actor=tenant)


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_superuser(email="staff@example.com", password="staff-password-1")


def test_force_terminate_stops_provisioning(provisioning_contract, staff_user, django_capture_on_commit_callbacks):
    worker_lease = lease_claim(contract_id=provisioning_contract.pk, owner="worker-a")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        contract = contract_force_terminate(contract_id=provisioning_contract.pk, actor=staff_user)

    assert contract.status == ContractStatus.TERMINATING
    assert contract.lease_owner == ""
    assert contract.payments.get().status == PaymentStatus.REFUNDED
    assert callbacks, "termination task and notifications are scheduled after commit"
    with pytest.raises(LeaseLost):
        lease_renew(worker_lease)
    with pytest.raises(contract_services.InvalidTransition):
        contract_services.contract_set_step(contract_id=contract.pk, step="waiting_for_boot", worker="worker-a")


def test_force_terminate_requeues_stuck_termination(provisioning_contract, staff_user):
    Contract.objects.filter(pk=provisioning_contract.pk).update(
        status=ContractStatus.TERMINATING, lease_owner="dead-worker"
    )

    contract = contract_force_terminate(contract_id=provisioning_contract.pk, actor=staff_user)

    assert contract.status == ContractStatus.TERMINATING
    assert contract.lease_owner == ""
    assert contract.events.last().reason == "Termination queued again by staff."


def test_force_terminate_rejects_ended(provisioning_contract, staff_user):
    contract_services.contract_fail(contract_id=provisioning_contract.pk, reason="boom")

    with pytest.raises(contract_services.InvalidTransition):
        contract_force_terminate(contract_id=provisioning_contract.pk, actor=staff_user)


def test_queue_page_lists_work_in_flight(client, provisioning_contract, staff_user):
    lease_claim(contract_id=provisioning_contract.pk, owner="host-1:4242:abcd")
    client.force_login(staff_user)

    response = client.get(reverse("admin:marketplace_provisioningqueueentry_changelist"))

    assert response.status_code == 200
    page = response.content.decode()
    assert "host-1:4242:abcd" in page
    assert "Creating server" in page or "creating_server" in page


def test_queue_action_force_terminate(client, provisioning_contract, staff_user):
    client.force_login(staff_user)

    response = client.post(
        reverse("admin:marketplace_provisioningqueueentry_changelist"),
        {"action": "terminate_now", "_selected_action": [provisioning_contract.pk]},
        follow=True,
    )

    assert response.status_code == 200
    provisioning_contract.refresh_from_db()
    assert provisioning_contract.status == ContractStatus.TERMINATING


def test_tenant_cancels_during_provisioning(provisioning_contract):
    tenant = provisioning_contract.tenant

    contract = contract_services.contract_cancel(contract=provisioning_contract, actor=tenant)

    assert contract.status == ContractStatus.TERMINATING
    assert contract.payments.get().status == PaymentStatus.REFUNDED
    assert contract.events.last().actor_label == "tenant"


def test_stale_worker_cannot_fail_contract(provisioning_contract):
    lease_claim(contract_id=provisioning_contract.pk, owner="worker-a")
    Contract.objects.filter(pk=provisioning_contract.pk).update(lease_owner="worker-b")

    with pytest.raises(contract_services.InvalidTransition):
        contract_services.contract_fail(contract_id=provisioning_contract.pk, reason="late", lease_owner="worker-a")

    provisioning_contract.refresh_from_db()
    assert provisioning_contract.status == ContractStatus.PROVISIONING


def test_reused_form_key_other_offering(provisioning_contract):
    from django.core.exceptions import ValidationError

    other = make_offering(account=provisioning_contract.cloud_account, script=None, slug="staff-vm-2")
    tenant = provisioning_contract.tenant

    with pytest.raises(ValidationError, match="already used to rent"):
        contract_services.contract_create(
            tenant=tenant, offering=other, ssh_public_key=provisioning_contract.ssh_public_key, idempotency_key="staff-1"
        )

    assert Contract.objects.count() == 1


def test_retry_waiting_contract_not_stalled(provisioning_contract):
    from datetime import timedelta

    from django.utils import timezone

    from provisioning.pipeline import lease_release, stalled_contract_ids

    lease = lease_claim(contract_id=provisioning_contract.pk, owner="worker-a")
    lease_release(lease, retry_at=timezone.now() + timedelta(seconds=40))
    Contract.objects.filter(pk=provisioning_contract.pk).update(updated_at=timezone.now() - timedelta(hours=1))

    provisioning_ids, _ = stalled_contract_ids()
    early = lease_claim(contract_id=provisioning_contract.pk, owner="sweeper-task")
    later_ids, _ = stalled_contract_ids(now=timezone.now() + timedelta(seconds=40 + 121))

    assert provisioning_contract.pk not in provisioning_ids
    assert early is None
    assert provisioning_contract.pk in later_ids


def test_retry_refused_while_lease_live(provisioning_contract, staff_user):
    from marketplace.services.staff import contract_retry_provisioning

    lease_claim(contract_id=provisioning_contract.pk, owner="busy-worker")

    with pytest.raises(contract_services.InvalidTransition, match="is being provisioned by worker busy-worker"):
        contract_retry_provisioning(contract_id=provisioning_contract.pk, actor=staff_user)

    provisioning_contract.refresh_from_db()
    assert provisioning_contract.lease_owner == "busy-worker"


def test_missing_server_blocks_renewal(provisioning_contract):
    from datetime import timedelta

    from django.utils import timezone

    from provisioning.models import ServerMissingReport

    Contract.objects.filter(pk=provisioning_contract.pk).update(
        status=ContractStatus.ACTIVE, paid_until=timezone.now() - timedelta(seconds=1)
    )
    ServerMissingReport.objects.create(
        contract=provisioning_contract, cloud_server_id="1", detected_at=timezone.now()
    )

    ended = contract_services.contracts_end_expired()

    provisioning_contract.refresh_from_db()
    assert ended == [provisioning_contract.pk]
    assert provisioning_contract.status == ContractStatus.TERMINATING
    assert "server disappeared" in provisioning_contract.status_reason
    assert provisioning_contract.payments.count() == 1
