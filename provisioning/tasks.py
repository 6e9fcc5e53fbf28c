"""Celery tasks that drive provisioning, cleanup and termination. Each takes a contract id."""

from __future__ import annotations

import logging
import os
import random
import socket
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from marketplace.models import Contract, ContractStatus
from marketplace.services import contracts as contract_services
from provisioning import pipeline
from provisioning.backends.base import (
    CloudError,
    CredentialsInvalid,
    RequestRejected,
    TransientCloudError,
)
from provisioning.handover import HandoverError
from provisioning.models import Resource, ResourceStatus
from provisioning.resource_services import ResourceInvalidTransition

logger = logging.getLogger(__name__)

MAX_TRANSIENT_RETRIES = 6
MAX_TERMINATION_RETRIES = 6


def worker_id(task_request) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{(task_request.id or 'direct')[:8]}"


def backoff_seconds(retries: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, at least the server's Retry-After."""
    base = settings.PROVISIONING_BACKOFF_BASE_SECONDS
    delay = random.uniform(0, min(300.0, base * 2**retries))
    if retry_after is not None:
        delay = max(delay, float(retry_after))
    return delay


@shared_task(bind=True, acks_late=True, max_retries=MAX_TRANSIENT_RETRIES)
def provision_contract_task(self, contract_id: int) -> None:
    if _served_by_agents(contract_id):
        return
    owner = worker_id(self.request)
    lease = pipeline.lease_claim(contract_id=contract_id, owner=owner)
    if lease is None:
        logger.info("Contract %s: not provisioning or leased by another worker; skipping", contract_id)
        return
    # The try number is Celery's; after a takeover the database's `attempts` is higher.
    logger.info("Contract %s: provisioning started by %s (Celery try %s)", contract_id, owner, self.request.retries + 1)
    contract = Contract.objects.select_related("offering").get(pk=contract_id)
    if contract.offering.resource_id is not None:
        from provisioning.handover import hand_over

        run = hand_over
    else:
        run = pipeline.provision
    _provision(self, lease=lease, run=run, fail=lambda reason: _fail(contract_id, reason, owner))


def _provision(task, *, lease: pipeline.Lease, run, fail) -> None:
    """Run `run(lease=lease)` and classify its errors: retry with backoff, or `fail(reason)` for good."""
    kind, object_id = lease.kind, lease.object_id
    try:
        run(lease=lease)
    except (pipeline.LeaseLost, contract_services.InvalidTransition, ResourceInvalidTransition) as exc:
        # Another worker took over, or the row left provisioning (cancelled by staff).
        logger.warning("%s %s: stopped provisioning: %s", kind.noun, object_id, exc)
    except TransientCloudError as exc:
        kind.model.objects.filter(pk=object_id).update(last_error=str(exc)[:2000])
        retries = _retries_so_far(object_id, task.request.retries, model=kind.model)
        if retries >= task.max_retries:
            logger.error("%s %s: giving up after %s tries: %s", kind.noun, object_id, retries + 1, exc)
            fail(f"The cloud kept failing after {retries + 1} tries: {exc}")
            return
        countdown = backoff_seconds(retries, exc.retry_after)
        pipeline.lease_release(lease, retry_at=timezone.now() + timedelta(seconds=countdown))
        logger.warning("%s %s: transient cloud error, retrying in %.1f s: %s", kind.noun, object_id, countdown, exc)
        raise task.retry(exc=exc, countdown=countdown) from exc
    except CredentialsInvalid as exc:
        from provisioning.services import cloud_account_mark_invalid

        row = kind.model.objects.get(pk=object_id)
        cloud_account_mark_invalid(account_id=row.cloud_account_id, error=str(exc))
        whose = "provider's cloud" if kind is pipeline.CONTRACTS else "cloud account's"
        fail(f"The {whose} credentials were rejected: {exc}")
    except (RequestRejected, pipeline.ProvisioningError) as exc:
        fail(str(exc))
    except CloudError as exc:
        logger.exception("%s %s: unclassified cloud error", kind.noun, object_id)
        fail(f"The cloud returned an unexpected error: {exc}")
    except Exception as exc:
        logger.exception("%s %s: unexpected error during provisioning", kind.noun, object_id)
        fail(f"Provisioning stopped on an internal error ({type(exc).__name__}); staff have been alerted.")


def _served_by_agents(contract_id: int) -> bool:
    """Return whether the contract belongs to an agent pool, so that its agents and not platform workers handle its VM."""
    from provisioning.models import Backend

    backend = Contract.objects.filter(pk=contract_id).values_list("backend", flat=True).first()
    if backend == Backend.AGENT:
        logger.info("Contract %s: served by a provider agent pool; no platform worker touches it", contract_id)
        return True
    return False


def _retries_so_far(contract_id: int, task_retries: int, *, model=Contract) -> int:
    """Count retries from the database too: a task re-queued by the sweeper starts at zero.

    NOTE: every lease claim counts, takeovers after a worker crash included, so a contract that
    survived several crashes has fewer retries left for cloud errors.
    """
    attempts = model.objects.filter(pk=contract_id).values_list("attempts", flat=True).first() or 1
    return max(task_retries, attempts - 1)


def _fail(contract_id: int, reason: str, owner: str) -> None:
    """Fail the contract, unless this worker lost its lease (then the new holder decides)."""
    try:
        contract_services.contract_fail(contract_id=contract_id, reason=reason, actor_label="worker", lease_owner=owner)
    except contract_services.InvalidTransition as exc:
        logger.info("Contract %s: not failed: %s", contract_id, exc)


@shared_task(bind=True, acks_late=True, max_retries=MAX_TERMINATION_RETRIES)
def cleanup_contract_servers_task(self, contract_id: int) -> None:
    """Delete whatever a failed contract created at the cloud."""
    if _served_by_agents(contract_id):
        return
    contract = Contract.objects.select_related("cloud_account", "offering").filter(pk=contract_id).first()
    if contract is None:
        return
    if contract.offering.resource_id is not None:
        _hand_back_after_failure(self, contract)
        return
    try:
        pipeline.delete_contract_servers(contract=contract)
    except CredentialsInvalid as exc:
        # Retrying cannot help; reconciliation deletes the server once the token is replaced.
        from provisioning.services import cloud_account_mark_invalid

        cloud_account_mark_invalid(account_id=contract.cloud_account_id, error=str(exc))
        Contract.objects.filter(pk=contract_id).update(last_error=f"Cleanup failed: {exc}"[:2000])
        logger.error("Contract %s: cleanup impossible, credentials rejected: %s", contract_id, exc)
        return
    except CloudError as exc:
        if self.request.retries >= self.max_retries:
            logger.error("Contract %s: cleanup failed for good: %s", contract_id, exc)
            Contract.objects.filter(pk=contract_id).update(last_error=f"Cleanup failed: {exc}"[:2000])
            return
        countdown = backoff_seconds(self.request.retries, getattr(exc, "retry_after", None))
        logger.warning("Contract %s: cleanup failed, retrying in %.1f s: %s", contract_id, countdown, exc)
        raise self.retry(exc=exc, countdown=countdown) from exc
    logger.info("Contract %s: cloud objects deleted after failure", contract_id)


def _hand_back_after_failure(task, contract: Contract) -> None:
    """Undo a failed rental's hand-over of a listed resource, then return the listing's stock."""
    from provisioning.handover import hand_back
    from provisioning.resource_services import listing_stock_return

    try:
        hand_back(contract=contract)
    except HandoverError as exc:
        Contract.objects.filter(pk=contract.pk).update(last_error=f"Hand-back failed: {exc}"[:2000])
        if task.request.retries >= task.max_retries:
            # The stock stays taken, so no other tenant gets a VM that may still accept this tenant's key.
            logger.error("Contract %s: hand-back after failure failed for good; stock stays taken: %s", contract.pk, exc)
            from notifications.models import Event
            from notifications.services import notify_contract_event

            contract.refresh_from_db()
            notify_contract_event(
                event=Event.TERMINATION_FAILED, contract=contract, to_tenant=False, to_provider=True, to_staff=True
            )
            return
        countdown = backoff_seconds(task.request.retries)
        logger.warning("Contract %s: hand-back after failure failed, retrying in %.1f s: %s", contract.pk, countdown, exc)
        raise task.retry(exc=exc, countdown=countdown) from exc
    listing_stock_return(offering_id=contract.offering_id)
    logger.info("Contract %s: resource %s handed back after failure", contract.pk, contract.offering.resource_id)


@shared_task(bind=True, acks_late=True, max_retries=MAX_TERMINATION_RETRIES)
def terminate_contract_task(self, contract_id: int) -> None:
    if _served_by_agents(contract_id):
        return
    owner = worker_id(self.request)
    lease = pipeline.lease_claim(contract_id=contract_id, owner=owner, status=ContractStatus.TERMINATING)
    if lease is None:
        logger.info("Contract %s: not terminating or leased by another worker; skipping", contract_id)
        return
    contract = Contract.objects.select_related("cloud_account", "offering").get(pk=contract_id)
    handing_back = contract.offering.resource_id is not None
    logger.info(
        "Contract %s: terminating server %s%s", contract_id, contract.cloud_server_id or "(none)",
        " (hand-back to the owner)" if handing_back else "",
    )
    try:
        if handing_back:
            from provisioning.handover import hand_back

            hand_back(contract=contract)
        else:
            pipeline.delete_contract_servers(contract=contract)
    except (CloudError, HandoverError) as exc:
        Contract.objects.filter(pk=contract_id).update(last_error=str(exc)[:2000])
        if isinstance(exc, CredentialsInvalid):
            from provisioning.services import cloud_account_mark_invalid

            cloud_account_mark_invalid(account_id=contract.cloud_account_id, error=str(exc))
        retries = _retries_so_far(contract_id, self.request.retries)
        if isinstance(exc, CredentialsInvalid) or retries >= settings.PROVISIONING_TERMINATION_RETRIES:
            logger.error("Contract %s: termination failed for good: %s", contract_id, exc)
            pipeline.lease_release(lease)
            contract_services.contract_mark_termination_failed(
                contract_id=contract_id, worker=owner,
                reason=f"{'Handing the server back' if handing_back else 'Deleting the server'} failed: {exc}",
            )
            return
        countdown = backoff_seconds(retries, getattr(exc, "retry_after", None))
        pipeline.lease_release(lease, retry_at=timezone.now() + timedelta(seconds=countdown))
        logger.warning("Contract %s: termination failed, retrying in %.1f s: %s", contract_id, countdown, exc)
        raise self.retry(exc=exc, countdown=countdown) from exc
    if handing_back:
        contract_services.contract_mark_terminated(
            contract_id=contract_id, worker=owner, reason="Access handed back to the owner; the server keeps running."
        )
    else:
        contract_services.contract_mark_terminated(contract_id=contract_id, worker=owner)


@shared_task(expires=55)
def resume_stalled_provisioning_task() -> None:
    """Re-queue contracts whose worker died or whose task was lost (lease expired)."""
    provisioning, terminating = pipeline.stalled_contract_ids()
    for contract_id in provisioning:
        logger.info("Contract %s: re-queueing stalled provisioning", contract_id)
        provision_contract_task.delay(contract_id)
    for contract_id in terminating:
        logger.info("Contract %s: re-queueing stalled termination", contract_id)
        terminate_contract_task.delay(contract_id)
    for resource_id, status in pipeline.stalled_resources():
        logger.info("Resource %s: re-queueing stalled work (%s)", resource_id, status)
        RESOURCE_TASKS[status].delay(resource_id)


@shared_task(expires=290)
def agent_contracts_fail_overdue_task() -> list[int]:
    """Fail and refund agent rentals that no agent finished in time (see `agent_contracts_fail_overdue`)."""
    from provisioning.agent_work import agent_contracts_fail_overdue

    return agent_contracts_fail_overdue()


@shared_task(expires=540)
def reconcile_cloud_accounts_task() -> None:
    """Compare the servers at every cloud account with the contracts (see `provisioning.reconcile`)."""
    from provisioning.reconcile import reconcile_all

    reports = reconcile_all()
    logger.info(
        "Reconciled %s cloud accounts: %s orphans reported, %s deleted, %s contracts with a missing server",
        len(reports),
        sum(len(report.orphans_reported) for report in reports),
        sum(len(report.orphans_deleted) for report in reports),
        sum(len(report.missing_flagged) for report in reports),
    )


@shared_task(expires=14)
def health_probe_due_task() -> int:
    """Claim the contracts due for a platform probe and queue probe tasks of up to `HEALTH_PROBE_TASK_SIZE` each."""
    from provisioning.health import health_probes_claim_due

    contract_ids = health_probes_claim_due()
    size = settings.HEALTH_PROBE_TASK_SIZE
    for offset in range(0, len(contract_ids), size):
        health_probe_contracts_task.delay(contract_ids[offset : offset + size])
    if contract_ids:
        logger.info("Queued health probes for %s contracts", len(contract_ids))
    return len(contract_ids)


@shared_task(acks_late=True, expires=120)
def health_probe_contracts_task(contract_ids: list[int]) -> None:
    from provisioning.health import health_probe_contracts

    health_probe_contracts(contract_ids=contract_ids)


@shared_task(expires=290)
def health_rollups_update_task() -> int:
    from provisioning.health import health_rollups_update

    return health_rollups_update()


@shared_task(expires=3600)
def health_checks_prune_task() -> int:
    from provisioning.health import health_checks_prune

    return health_checks_prune()


# --- self-provisioned resources ---------------------------------------------------------------


@shared_task(bind=True, acks_late=True, max_retries=MAX_TRANSIENT_RETRIES)
def provision_resource_task(self, resource_id: int) -> None:
    from provisioning.resource_services import resource_fail

    owner = worker_id(self.request)
    lease = pipeline.kind_lease_claim(
        kind=pipeline.RESOURCES, object_id=resource_id, owner=owner, status=ResourceStatus.PROVISIONING
    )
    if lease is None:
        logger.info("Resource %s: not provisioning or leased by another worker; skipping", resource_id)
        return
    logger.info("Resource %s: provisioning started by %s (Celery try %s)", resource_id, owner, self.request.retries + 1)

    def fail(reason: str) -> None:
        try:
            resource_fail(resource_id=resource_id, reason=reason, worker=owner, lease_owner=owner)
        except ResourceInvalidTransition as exc:
            logger.info("Resource %s: not failed: %s", resource_id, exc)

    _provision(self, lease=lease, run=pipeline.provision, fail=fail)


@shared_task(bind=True, acks_late=True, max_retries=MAX_TERMINATION_RETRIES)
def cleanup_resource_servers_task(self, resource_id: int) -> None:
    """Delete whatever a resource whose provisioning failed created at the cloud."""
    resource = Resource.objects.select_related("cloud_account").filter(pk=resource_id).first()
    if resource is None:
        return
    try:
        pipeline.delete_servers(row=resource)
    except CloudError as exc:
        Resource.objects.filter(pk=resource_id).update(last_error=f"Cleanup failed: {exc}"[:2000])
        if isinstance(exc, CredentialsInvalid) or self.request.retries >= self.max_retries:
            logger.error("Resource %s: cleanup failed for good: %s", resource_id, exc)
            return
        countdown = backoff_seconds(self.request.retries, getattr(exc, "retry_after", None))
        logger.warning("Resource %s: cleanup failed, retrying in %.1f s: %s", resource_id, countdown, exc)
        raise self.retry(exc=exc, countdown=countdown) from exc
    logger.info("Resource %s: cloud objects deleted after failure", resource_id)


@shared_task(bind=True, acks_late=True, max_retries=MAX_TRANSIENT_RETRIES)
def resource_power_task(self, resource_id: int) -> None:
    """Carry out a requested stop or start of a resource's server."""
    from provisioning.resource_services import resource_mark_power_done, resource_mark_power_failed

    owner = worker_id(self.request)
    status = Resource.objects.filter(pk=resource_id).values_list("status", flat=True).first()
    if status not in (ResourceStatus.STOPPING, ResourceStatus.STARTING):
        logger.info("Resource %s: no stop or start pending (%s); skipping", resource_id, status)
        return
    lease = pipeline.kind_lease_claim(kind=pipeline.RESOURCES, object_id=resource_id, owner=owner, status=status)
    if lease is None:
        logger.info("Resource %s: leased by another worker; skipping", resource_id)
        return
    logger.info("Resource %s: %s the server (worker %s, Celery try %s)", resource_id, status, owner, self.request.retries + 1)
    try:
        address = pipeline.resource_power(lease=lease, start=status == ResourceStatus.STARTING)
    except pipeline.LeaseLost as exc:
        logger.warning("Resource %s: stopped: %s", resource_id, exc)
        return
    except (TransientCloudError, pipeline.ProvisioningError) as exc:
        retries = _retries_so_far(resource_id, self.request.retries, model=Resource)
        if retries < self.max_retries:
            countdown = backoff_seconds(retries, getattr(exc, "retry_after", None))
            pipeline.lease_release(lease, retry_at=timezone.now() + timedelta(seconds=countdown))
            logger.warning("Resource %s: %s failed, retrying in %.1f s: %s", resource_id, status, countdown, exc)
            raise self.retry(exc=exc, countdown=countdown) from exc
        logger.error("Resource %s: %s failed for good: %s", resource_id, status, exc)
        resource_mark_power_failed(resource_id=resource_id, worker=owner, error=str(exc))
        return
    except CloudError as exc:
        logger.error("Resource %s: %s failed: %s", resource_id, status, exc)
        resource_mark_power_failed(resource_id=resource_id, worker=owner, error=str(exc))
        return
    resource_mark_power_done(resource_id=resource_id, worker=owner, ip_address=address)


@shared_task(bind=True, acks_late=True, max_retries=MAX_TERMINATION_RETRIES)
def delete_resource_task(self, resource_id: int) -> None:
    from provisioning.resource_services import resource_mark_delete_failed, resource_mark_deleted

    owner = worker_id(self.request)
    lease = pipeline.kind_lease_claim(kind=pipeline.RESOURCES, object_id=resource_id, owner=owner, status=ResourceStatus.DELETING)
    if lease is None:
        logger.info("Resource %s: not deleting or leased by another worker; skipping", resource_id)
        return
    resource = Resource.objects.select_related("cloud_account").get(pk=resource_id)
    logger.info("Resource %s: deleting server %s", resource_id, resource.cloud_server_id or "(none)")
    try:
        pipeline.delete_servers(row=resource)
    except CloudError as exc:
        Resource.objects.filter(pk=resource_id).update(last_error=str(exc)[:2000])
        retries = _retries_so_far(resource_id, self.request.retries, model=Resource)
        if isinstance(exc, CredentialsInvalid) or retries >= settings.PROVISIONING_TERMINATION_RETRIES:
            logger.error("Resource %s: deletion failed for good: %s", resource_id, exc)
            resource_mark_delete_failed(resource_id=resource_id, worker=owner, error=str(exc))
            return
        countdown = backoff_seconds(retries, getattr(exc, "retry_after", None))
        pipeline.lease_release(lease, retry_at=timezone.now() + timedelta(seconds=countdown))
        logger.warning("Resource %s: deletion failed, retrying in %.1f s: %s", resource_id, countdown, exc)
        raise self.retry(exc=exc, countdown=countdown) from exc
    resource_mark_deleted(resource_id=resource_id, worker=owner)


#: The task that continues a resource left in each busy status.
RESOURCE_TASKS = {
    ResourceStatus.PROVISIONING: provision_resource_task,
    ResourceStatus.STOPPING: resource_power_task,
    ResourceStatus.STARTING: resource_power_task,
    ResourceStatus.DELETING: delete_resource_task,
}
