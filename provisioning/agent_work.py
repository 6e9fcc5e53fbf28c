"""Contract work done by provider agents: pending work, claims, progress, results, reconciliation.

An agent takes a contract with a lease (`Contract.lease_owner` is `agent:<id>`), taken by one
conditional UPDATE, so two agents never hold the same contract. Every later report checks that
the agent still holds the lease. Status changes go through `marketplace.services.contracts`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from marketplace.models import (
    ENDED_STATUSES,
    Contract,
    ContractEvent,
    ContractStatus,
    ProvisioningStep,
)
from marketplace.services import contracts as contract_services
from provisioning.health import health_check_record
from provisioning.models import Agent, Backend, HealthSource

logger = logging.getLogger(__name__)


class AgentFailureReason(models.TextChoices):
    """Reason codes of an agent's failed provisioning or deletion; the first four are retried."""

    HYPERVISOR_UNAVAILABLE = "hypervisor_unavailable", "The hypervisor could not be reached"
    TIMEOUT = "timeout", "A step timed out"
    RATE_LIMITED = "rate_limited", "The hypervisor asked to slow down"
    INSUFFICIENT_RESOURCES = "insufficient_resources", "Not enough free CPU, memory or disk on the host"
    IMAGE_NOT_FOUND = "image_not_found", "The image or template does not exist on the host"
    INVALID_SPEC = "invalid_spec", "The host cannot create a VM of this size or type"
    BOOT_FAILED = "boot_failed", "The VM did not boot or got no address"
    PROVISIONER_ERROR = "provisioner_error", "The provisioner failed"


RETRYABLE_REASONS = frozenset(
    {
        AgentFailureReason.HYPERVISOR_UNAVAILABLE,
        AgentFailureReason.TIMEOUT,
        AgentFailureReason.RATE_LIMITED,
        AgentFailureReason.INSUFFICIENT_RESOURCES,
    }
)


class LeaseNotHeld(Exception):
    """The agent does not hold the contract's lease (expired, taken over, or the contract moved on)."""


class ClaimRejected(Exception):
    """The contract is not pending for this agent, or another agent has its lease."""


class ReconcileDecision(models.TextChoices):
    KEEP = "keep", "Keep"
    TERMINATE = "terminate", "Terminate"
    UNKNOWN = "unknown", "Unknown"


@dataclass(frozen=True)
class ReconcileAnswer:
    """The platform's decision on one VM; `address` and `port` are set for a `keep` of an active contract."""

    server_id: str
    contract_id: int | None
    decision: str
    reason: str
    address: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class HealthReport:
    """One agent's probe of one contract's VM, as the agent sent it."""

    contract_id: int
    checked_at: datetime
    up: bool
    latency_ms: float | None
    hypervisor_state: str
    detail: str


@dataclass(frozen=True)
class HealthReportResult:
    """Whether one report was stored: `health_check_id` when accepted, else the reason it was rejected."""

    contract_id: int
    accepted: bool
    health_check_id: int | None
    reason: str
    # True when later reports for this contract would be rejected too (unknown or not active).
    stop_reporting: bool = False


def _provisioner_matches(agent: Agent) -> bool:
    """Return whether the agent runs the pool's provisioner type, as its latest heartbeat reported."""
    return (agent.capabilities or {}).get("provisioner") == agent.pool.provisioner_type


def _free_lease_q(now) -> Q:
    return (Q(lease_owner="") | Q(lease_expires_at__lt=now)) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )


def agent_pending_contracts(*, agent: Agent, limit: int = 50) -> QuerySet[Contract]:
    """Contracts of the agent's pool that wait for an agent: accepted ones to provision, and terminations.

    A paid contract is only pending once it is accepted (status `provisioning`). An agent whose
    latest heartbeat named another provisioner type than the pool's gets nothing.
    """
    if not _provisioner_matches(agent):
        return Contract.objects.none()
    now = timezone.now()
    return (
        Contract.objects.filter(
            cloud_account_id=agent.pool.cloud_account_id,
            status__in=[ContractStatus.PROVISIONING, ContractStatus.TERMINATING],
        )
        .filter(_free_lease_q(now))
        .order_by("updated_at", "pk")[:limit]
    )


def agent_contract_claim(*, agent: Agent, contract_id: int) -> Contract:
    """Take the lease on a pending contract of the agent's pool with one conditional UPDATE.

    Raises `Contract.DoesNotExist` when the contract is not in the agent's pool and
    `ClaimRejected` when it is not pending or another agent has its lease. A contract with a recipe
    gets its platform key pair here, so the agent can put the public key on the VM.
    """
    Contract.objects.only("pk").get(pk=contract_id, cloud_account_id=agent.pool.cloud_account_id)
    if not _provisioner_matches(agent):
        raise ClaimRejected(
            f"This agent reported provisioner {agent.capabilities.get('provisioner')!r}, but the pool uses "
            f"{agent.pool.provisioner_type!r}; fix the agent's configuration."
        )
    now = timezone.now()
    claimed = (
        Contract.objects.filter(
            pk=contract_id,
            cloud_account_id=agent.pool.cloud_account_id,
            status__in=[ContractStatus.PROVISIONING, ContractStatus.TERMINATING],
        )
        .filter(_free_lease_q(now) | Q(lease_owner=agent.lease_owner))
        .update(
            lease_owner=agent.lease_owner,
            lease_claimed_at=now,
            lease_expires_at=now + timedelta(seconds=settings.AGENT_LEASE_SECONDS),
            next_attempt_at=None,
            attempts=F("attempts") + 1,
        )
    )
    if not claimed:
        raise ClaimRejected(f"Contract {contract_id} is not waiting for an agent, or another agent has its lease.")
    contract = Contract.objects.get(pk=contract_id)
    logger.info("Contract %s: claimed by agent %s for %s (try %s)", contract_id, agent.pk, contract.status, contract.attempts)
    if contract.status == ContractStatus.PROVISIONING and contract.recipe_script.strip():
        from provisioning.agent_recipes import ensure_platform_key

        contract = ensure_platform_key(contract)
    return contract


def _held(agent: Agent, contract_id: int, *, status: str) -> Contract:
    """Lock and return the contract if the agent holds its lease and it has `status`."""
    contract = Contract.objects.select_for_update(of=("self",)).filter(
        pk=contract_id, cloud_account_id=agent.pool.cloud_account_id
    ).first()
    if contract is None:
        raise Contract.DoesNotExist(f"Contract {contract_id} is not in agent pool {agent.pool_id}.")
    if contract.lease_owner != agent.lease_owner or contract.status != status:
        raise LeaseNotHeld(
            f"Agent {agent.pk} does not hold the lease on contract {contract_id} (it is {contract.status}); stop working on it."
        )
    return contract


def _renew(agent: Agent, contract: Contract) -> None:
    Contract.objects.filter(pk=contract.pk, lease_owner=agent.lease_owner).update(
        lease_expires_at=timezone.now() + timedelta(seconds=settings.AGENT_LEASE_SECONDS)
    )


def agent_contract_progress(*, agent: Agent, contract_id: int, step: str = "") -> Contract:
    """Renew the agent's lease on a provisioning or terminating contract and record its step."""
    with transaction.atomic():
        contract = Contract.objects.filter(pk=contract_id, cloud_account_id=agent.pool.cloud_account_id).first()
        if contract is None:
            raise Contract.DoesNotExist(f"Contract {contract_id} is not in agent pool {agent.pool_id}.")
        contract = _held(agent, contract_id, status=contract.status)
        _renew(agent, contract)
    if step and contract.status == ContractStatus.PROVISIONING:
        contract_services.contract_set_step(contract_id=contract_id, step=step, worker=agent.lease_owner)
    return contract


def _server_id_owner(contract: Contract, server_id: str) -> Contract | None:
    """Return another rental of the contract's pool, not ended, whose VM has `server_id`, or None."""
    return (
        Contract.objects.filter(cloud_account_id=contract.cloud_account_id, cloud_server_id=server_id)
        .exclude(pk=contract.pk)
        .exclude(status__in=ENDED_STATUSES)
        .only("pk", "public_id")
        .first()
    )


@transaction.atomic
def agent_contract_succeed(
    *, agent: Agent, contract_id: int, server_id: str, address: str, port: int, host_public_key: str
) -> Contract:
    """Store the VM's connection details and activate the contract (the tenant is notified).

    A contract with a recipe is activated only after the agent reported a successful recipe run.
    """
    from provisioning.agent_recipes import check_recipe_succeeded

    contract = _held(agent, contract_id, status=ContractStatus.PROVISIONING)
    check_recipe_succeeded(contract)
    owner = _server_id_owner(contract, server_id)
    if owner is not None:
        raise ValidationError(
            {"server_id": f"Server id {server_id!r} already belongs to rental {owner.public_id} in this pool; "
             "report the id of the VM made for this rental."}
        )
    Contract.objects.filter(pk=contract.pk).update(
        cloud_server_id=server_id,
        ip_address=address,
        ssh_port=port,
        host_public_key=host_public_key,
        ssh_username=settings.PROVISIONING_SSH_USERNAME,
        provisioning_step=ProvisioningStep.FINALIZING,
    )
    return contract_services.contract_activate(contract_id=contract.pk, worker=agent.lease_owner)


def _backoff(attempts: int) -> timedelta:
    """Jittered exponential backoff before the next try of a retryable failure, at most 10 minutes."""
    base = settings.PROVISIONING_BACKOFF_BASE_SECONDS
    return timedelta(seconds=random.uniform(base, max(base, min(600.0, base * 2**attempts))))


def agent_contract_fail(*, agent: Agent, contract_id: int, reason_code: str, message: str, server_id: str = "") -> Contract:
    """Record a failure the agent reported while provisioning or deleting a VM.

    A retryable reason puts the contract back into the pool's queue after a backoff, until
    AGENT_MAX_RETRIES tries were used. Otherwise a provisioning contract is failed and refunded,
    and a terminating one is marked termination failed (staff are alerted).
    """
    reason = AgentFailureReason(reason_code)
    text = f"{reason.label}: {message}".strip()[:2000]
    with transaction.atomic():
        current = Contract.objects.filter(pk=contract_id, cloud_account_id=agent.pool.cloud_account_id).first()
        if current is None:
            raise Contract.DoesNotExist(f"Contract {contract_id} is not in agent pool {agent.pool_id}.")
        contract = _held(agent, contract_id, status=current.status)
        fields = {"last_error": text}
        # A server id that another live rental uses is not stored, so deleting this rental's VM
        # can never delete that one.
        if server_id and not contract.cloud_server_id and _server_id_owner(contract, server_id[:64]) is None:
            fields["cloud_server_id"] = server_id[:64]
        Contract.objects.filter(pk=contract.pk).update(**fields)
        if reason in RETRYABLE_REASONS and contract.attempts < settings.AGENT_MAX_RETRIES:
            retry_at = timezone.now() + _backoff(contract.attempts)
            Contract.objects.filter(pk=contract.pk).update(lease_owner="", lease_expires_at=None, next_attempt_at=retry_at)
            contract_services.contract_note(
                contract_id=contract.pk,
                reason=f"Try {contract.attempts} failed ({text}); another agent try at {retry_at:%H:%M:%S} UTC.",
                actor_label=agent.lease_owner,
            )
            logger.warning("Contract %s: agent %s reported %s, retrying at %s", contract.pk, agent.pk, reason.value, retry_at)
            contract.refresh_from_db()
            return contract
    logger.error("Contract %s: agent %s reported %s after %s tries: %s", contract_id, agent.pk, reason.value, contract.attempts, message[:500])
    if contract.status == ContractStatus.TERMINATING:
        return contract_services.contract_mark_termination_failed(
            contract_id=contract_id, worker=agent.lease_owner, reason=f"Deleting the VM failed: {text}"
        )
    return contract_services.contract_fail(
        contract_id=contract_id, reason=text, actor_label=agent.lease_owner, lease_owner=agent.lease_owner
    )


def agent_contract_terminated(*, agent: Agent, contract_id: int) -> Contract:
    """Mark a terminating contract terminated after the agent deleted its VM."""
    with transaction.atomic():
        _held(agent, contract_id, status=ContractStatus.TERMINATING)
        return contract_services.contract_mark_terminated(contract_id=contract_id, worker=agent.lease_owner)


def agent_reconcile(*, agent: Agent, servers: list[dict]) -> list[ReconcileAnswer]:
    """Decide, for each VM the agent found on its host, whether it should keep running.

    `keep`: the contract is live in this pool. `terminate`: the contract ended (its VM is an
    orphan), or it is active with another server id. `unknown`: no contract of this pool has the
    id, so the platform cannot tell; the agent reports it and leaves the VM alone.
    """
    ids = {item["contract_id"] for item in servers if item.get("contract_id") is not None}
    contracts = {
        contract.pk: contract
        for contract in Contract.objects.filter(pk__in=ids, cloud_account_id=agent.pool.cloud_account_id).only(
            "pk", "status", "cloud_server_id", "ip_address", "ssh_port"
        )
    }
    answers = []
    for item in servers:
        server_id = str(item["server_id"])
        contract_id = item.get("contract_id")
        contract = contracts.get(contract_id)
        if contract is None:
            answers.append(ReconcileAnswer(server_id, contract_id, ReconcileDecision.UNKNOWN, "No contract of this pool has this id."))
        elif contract.status in ENDED_STATUSES:
            answers.append(
                ReconcileAnswer(server_id, contract_id, ReconcileDecision.TERMINATE, f"The contract is {contract.status}.")
            )
        elif contract.status == ContractStatus.ACTIVE and contract.cloud_server_id and contract.cloud_server_id != server_id:
            answers.append(
                ReconcileAnswer(
                    server_id, contract_id, ReconcileDecision.TERMINATE,
                    f"The contract runs on server {contract.cloud_server_id}, not this one.",
                )
            )
        elif contract.status == ContractStatus.ACTIVE and contract.ip_address:
            answers.append(
                ReconcileAnswer(
                    server_id, contract_id, ReconcileDecision.KEEP, f"The contract is {contract.status}.",
                    address=contract.ip_address, port=contract.ssh_port,
                )
            )
        else:
            answers.append(ReconcileAnswer(server_id, contract_id, ReconcileDecision.KEEP, f"The contract is {contract.status}."))
    logger.info(
        "Agent %s: reconciled %s VMs (%s to terminate, %s unknown)",
        agent.pk, len(answers),
        sum(answer.decision == ReconcileDecision.TERMINATE for answer in answers),
        sum(answer.decision == ReconcileDecision.UNKNOWN for answer in answers),
    )
    return answers


def agent_health_report(*, agent: Agent, reports: list[HealthReport]) -> list[HealthReportResult]:
    """Store the agent's health reports through `health_check_record`, with source "agent".

    Each report is accepted or rejected on its own, so one bad report does not lose the rest.
    A report is rejected when no contract of the agent's pool has its id, when the contract is
    not active, or when `health_check_record` finds a value invalid (for example a future time).
    """
    ids = {report.contract_id for report in reports}
    contracts = {
        contract.pk: contract
        for contract in Contract.objects.filter(pk__in=ids, cloud_account_id=agent.pool.cloud_account_id).select_related(
            "provider__user", "tenant"
        )
    }
    results = []
    for report in reports:
        contract = contracts.get(report.contract_id)
        if contract is None:
            results.append(
                _rejected(report, f"No contract of agent pool {agent.pool_id} has id {report.contract_id}.", stop=True)
            )
            continue
        if contract.status != ContractStatus.ACTIVE:
            results.append(
                _rejected(
                    report,
                    f"Contract {contract.pk} is {contract.status}; health reports are stored for active contracts only.",
                    stop=True,
                )
            )
            continue
        try:
            check = health_check_record(
                contract=contract,
                source=HealthSource.AGENT,
                up=report.up,
                latency_ms=report.latency_ms,
                checked_at=report.checked_at,
                hypervisor_state=report.hypervisor_state,
                detail=report.detail,
            )
        except ValidationError as exc:
            messages = [message for field_messages in exc.message_dict.values() for message in field_messages]
            results.append(_rejected(report, " ".join(messages)))
            continue
        results.append(HealthReportResult(report.contract_id, True, check.pk, ""))
    rejected = [result for result in results if not result.accepted]
    if rejected:
        logger.warning(
            "Agent %s: %s of %s health reports rejected; first: contract %s: %s",
            agent.pk, len(rejected), len(results), rejected[0].contract_id, rejected[0].reason,
        )
    return results


def _rejected(report: HealthReport, reason: str, *, stop: bool = False) -> HealthReportResult:
    return HealthReportResult(report.contract_id, False, None, reason, stop_reporting=stop)


def agent_contracts_fail_overdue(*, now: datetime | None = None) -> list[int]:
    """Fail and refund agent rentals not finished AGENT_PROVISIONING_DEADLINE_SECONDS after acceptance; return their ids.

    Only contracts without a live agent lease count, so an agent that keeps renewing its lease is
    never cut off. A pool whose agents are offline or keep crashing is. The agent that
    later reconciles a VM it made for such a rental is told to delete it.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.AGENT_PROVISIONING_DEADLINE_SECONDS)
    accepted_at = (
        ContractEvent.objects.filter(contract=OuterRef("pk"), to_status=ContractStatus.PROVISIONING)
        .order_by("-created_at")
        .values("created_at")[:1]
    )
    overdue = list(
        Contract.objects.filter(backend=Backend.AGENT, status=ContractStatus.PROVISIONING)
        .filter(Q(lease_owner="") | Q(lease_expires_at__lt=now))
        .annotate(accepted_at=Subquery(accepted_at))
        .filter(accepted_at__lt=cutoff)
        .order_by("pk")
        .values_list("pk", "lease_owner")[:200]
    )
    minutes = settings.AGENT_PROVISIONING_DEADLINE_SECONDS // 60
    failed = []
    for contract_id, lease_owner in overdue:
        try:
            # Passing the lease owner read above makes a claim made since then win over this.
            contract_services.contract_fail(
                contract_id=contract_id,
                reason=f"No agent of the provider's pool set up the server within {minutes} minutes of acceptance, "
                "so the rental was cancelled and refunded in full.",
                lease_owner=lease_owner,
            )
        except contract_services.InvalidTransition as exc:
            logger.info("Contract %s: overdue agent rental not failed: %s", contract_id, exc)
            continue
        logger.warning("Contract %s: failed after %s minutes without an agent finishing it", contract_id, minutes)
        failed.append(contract_id)
    return failed
