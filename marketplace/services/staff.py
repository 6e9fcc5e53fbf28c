"""Contract interventions that only staff make, from the admin."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from marketplace.models import Contract, ContractEvent, User
from marketplace.services.contracts import InvalidTransition

logger = logging.getLogger(__name__)


class LeaseHeld(InvalidTransition):
    """A worker holds a live lease on the contract, so staff may not start another one."""

    def __init__(self, contract: Contract):
        Exception.__init__(
            self,
            f"Rental {contract.public_id} is being provisioned by worker {contract.lease_owner}, whose lease "
            f"runs until {contract.lease_expires_at:%H:%M:%S} UTC. Wait until it expires, or use Force terminate.",
        )
        self.contract = contract
        self.action = "retry provisioning"


@transaction.atomic
def contract_retry_provisioning(*, contract_id: int, actor: User) -> Contract:
    """Clear a provisioning contract's worker lease and queue its provisioning task again.

    Use it when a worker died or hung while holding the lease. The pipeline resumes from the
    stored provisioning step. Raises InvalidTransition unless the contract is provisioning.
    """
    from provisioning.tasks import provision_contract_task

    contract = Contract.objects.select_for_update().get(pk=contract_id)
    if not contract.can_retry_provisioning():
        raise InvalidTransition(contract, "retry provisioning")
    if contract.lease_owner and contract.lease_expires_at and contract.lease_expires_at > timezone.now():
        # A live worker renews its lease; clearing it would start a second worker on the rental.
        raise LeaseHeld(contract)

    previous_owner = contract.lease_owner
    Contract.objects.filter(pk=contract.pk).update(
        lease_owner="", lease_claimed_at=None, lease_expires_at=None, updated_at=timezone.now()
    )
    ContractEvent.objects.create(
        contract=contract,
        from_status=contract.status,
        to_status=contract.status,
        step=contract.provisioning_step,
        actor=actor,
        actor_label="staff",
        reason="Provisioning retried by staff.",
    )
    transaction.on_commit(lambda: provision_contract_task.delay(contract_id))
    logger.info(
        "Contract %s: provisioning retried by user %s (lease of %r cleared, step %s)",
        contract_id,
        actor.pk,
        previous_owner or None,
        contract.provisioning_step,
    )
    contract.refresh_from_db()
    return contract


def contract_force_terminate(*, contract_id: int, actor: User) -> Contract:
    """End a contract now, whatever it is doing: the staff "Force terminate" action.

    A provisioning contract is stopped and refunded, an active or termination-failed one starts
    termination, and a terminating one whose worker died gets its lease cleared and its
    termination queued again. Raises InvalidTransition for contracts that already ended.
    """
    from marketplace.models import ContractStatus
    from marketplace.services import contracts as contract_services

    contract = Contract.objects.get(pk=contract_id)
    if contract.status == ContractStatus.PROVISIONING:
        return contract_services.contract_cancel_provisioning(
            contract=contract, actor=actor, actor_label="staff", reason="Provisioning stopped by staff."
        )
    if contract.status in {ContractStatus.ACTIVE, ContractStatus.TERMINATION_FAILED}:
        return contract_services.contract_terminate(
            contract=contract, actor=actor, actor_label="staff", reason="Terminated by staff."
        )
    if contract.status == ContractStatus.TERMINATING:
        return _requeue_termination(contract_id=contract_id, actor=actor)
    raise InvalidTransition(contract, "be terminated")


@transaction.atomic
def _requeue_termination(*, contract_id: int, actor: User) -> Contract:
    from marketplace.models import ContractStatus
    from provisioning.tasks import terminate_contract_task

    contract = Contract.objects.select_for_update().get(pk=contract_id)
    if contract.status != ContractStatus.TERMINATING:
        raise InvalidTransition(contract, "be terminated")
    Contract.objects.filter(pk=contract.pk).update(
        lease_owner="", lease_claimed_at=None, lease_expires_at=None, attempts=0, updated_at=timezone.now()
    )
    ContractEvent.objects.create(
        contract=contract,
        from_status=contract.status,
        to_status=contract.status,
        actor=actor,
        actor_label="staff",
        reason="Termination queued again by staff.",
    )
    transaction.on_commit(lambda: terminate_contract_task.delay(contract_id))
    logger.info("Contract %s: termination re-queued by user %s", contract_id, actor.pk)
    contract.refresh_from_db()
    return contract
