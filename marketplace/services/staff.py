"""Contract interventions that only staff make, from the admin."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from marketplace.models import Contract, ContractEvent, User
from marketplace.services.contracts import InvalidTransition

logger = logging.getLogger(__name__)


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

    previous_owner = contract.lease_owner
    Contract.objects.filter(pk=contract.pk).update(lease_owner="", lease_expires_at=None, updated_at=timezone.now())
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
