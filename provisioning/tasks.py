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
    try:
        pipeline.provision(lease=lease)
    except (pipeline.LeaseLost, contract_services.InvalidTransition) as exc:
        # Another worker took over, or the contract left provisioning (cancelled by staff).
        logger.warning("Contract %s: stopped provisioning: %s", contract_id, exc)
    except TransientCloudError as exc:
        Contract.objects.filter(pk=contract_id).update(last_error=str(exc)[:2000])
        retries = _retries_so_far(contract_id, self.request.retries)
        if retries >= self.max_retries:
            logger.error("Contract %s: giving up after %s tries: %s", contract_id, retries + 1, exc)
            _fail(contract_id, f"The cloud kept failing after {retries + 1} tries: {exc}", owner)
            return
        countdown = backoff_seconds(retries, exc.retry_after)
        pipeline.lease_release(lease, retry_at=timezone.now() + timedelta(seconds=countdown))
        logger.warning("Contract %s: transient cloud error, retrying in %.1f s: %s", contract_id, countdown, exc)
        raise self.retry(exc=exc, countdown=countdown) from exc
    except CredentialsInvalid as exc:
        from provisioning.services import cloud_account_mark_invalid

        contract = Contract.objects.get(pk=contract_id)
        cloud_account_mark_invalid(account_id=contract.cloud_account_id, error=str(exc))
        _fail(contract_id, f"The provider's cloud credentials were rejected: {exc}", owner)
    except (RequestRejected, pipeline.ProvisioningError) as exc:
        _fail(contract_id, str(exc), owner)
    except CloudError as exc:
        logger.exception("Contract %s: unclassified cloud error", contract_id)
        _fail(contract_id, f"The cloud returned an unexpected error: {exc}", owner)
    except Exception as exc:
        logger.exception("Contract %s: unexpected error during provisioning", contract_id)
        _fail(contract_id, f"Provisioning stopped on an internal error ({type(exc).__name__}); staff have been alerted.", owner)


def _served_by_agents(contract_id: int) -> bool:
    """Whether the contract belongs to an agent pool, whose agents provision and delete its VM."""
    from provisioning.models import Backend

    backend = Contract.objects.filter(pk=contract_id).values_list("backend", flat=True).first()
    if backend == Backend.AGENT:
        logger.info("Contract %s: served by a provider agent pool; no platform worker touches it", contract_id)
        return True
    return False


def _retries_so_far(contract_id: int, task_retries: int) -> int:
    """Count retries from the database too: a task re-queued by the sweeper starts at zero.

    NOTE: every lease claim counts, takeovers after a worker crash included, so a contract that
    survived several crashes has fewer retries left for cloud errors.
    """
    attempts = Contract.objects.filter(pk=contract_id).values_list("attempts", flat=True).first() or 1
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
    contract = Contract.objects.select_related("cloud_account").filter(pk=contract_id).first()
    if contract is None:
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


@shared_task(bind=True, acks_late=True, max_retries=MAX_TERMINATION_RETRIES)
def terminate_contract_task(self, contract_id: int) -> None:
    if _served_by_agents(contract_id):
        return
    owner = worker_id(self.request)
    lease = pipeline.lease_claim(contract_id=contract_id, owner=owner, status=ContractStatus.TERMINATING)
    if lease is None:
        logger.info("Contract %s: not terminating or leased by another worker; skipping", contract_id)
        return
    contract = Contract.objects.select_related("cloud_account").get(pk=contract_id)
    logger.info("Contract %s: terminating server %s", contract_id, contract.cloud_server_id or "(none)")
    try:
        pipeline.delete_contract_servers(contract=contract)
    except CloudError as exc:
        Contract.objects.filter(pk=contract_id).update(last_error=str(exc)[:2000])
        if isinstance(exc, CredentialsInvalid):
            from provisioning.services import cloud_account_mark_invalid

            cloud_account_mark_invalid(account_id=contract.cloud_account_id, error=str(exc))
        retries = _retries_so_far(contract_id, self.request.retries)
        if isinstance(exc, CredentialsInvalid) or retries >= settings.PROVISIONING_TERMINATION_RETRIES:
            logger.error("Contract %s: termination failed for good: %s", contract_id, exc)
            pipeline.lease_release(lease)
            contract_services.contract_mark_termination_failed(
                contract_id=contract_id, worker=owner, reason=f"Deleting the server failed: {exc}"
            )
            return
        countdown = backoff_seconds(retries, getattr(exc, "retry_after", None))
        pipeline.lease_release(lease, retry_at=timezone.now() + timedelta(seconds=countdown))
        logger.warning("Contract %s: termination failed, retrying in %.1f s: %s", contract_id, countdown, exc)
        raise self.retry(exc=exc, countdown=countdown) from exc
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
