"""Reconciliation between the servers at each cloud account and the contracts that own them.

A run lists the servers that carry this deployment's label (`cloudmarket-deployment=<DEPLOYMENT_NAME>`)
at one cloud account and compares them with the contracts:

- A server that no live contract owns is an orphan. It is reported as an `OrphanServer` row and
  deleted once it has been reported for `RECONCILE_ORPHAN_GRACE_SECONDS`.
- A live contract whose stored server no longer exists gets a `ServerMissingReport`, and its
  tenant and provider are notified once per report.

Servers without this deployment's label are never touched, so several deployments (or other
tools) can share one cloud project. Cloud calls never run inside a database transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from marketplace.models import ENDED_STATUSES, Contract, ContractStatus, ProvisioningStep
from provisioning.backends import get_backend
from provisioning.backends.base import (
    CloudBackend,
    CloudError,
    CredentialsInvalid,
    ServerInfo,
    ServerNotFound,
)
from provisioning.models import (
    Backend,
    CloudAccount,
    OrphanReason,
    OrphanServer,
    OrphanStatus,
    ServerMissingReport,
)

logger = logging.getLogger(__name__)

# Label keys the provisioning pipeline puts on every server it creates.
CONTRACT_LABEL = "cloudmarket-contract"
DEPLOYMENT_LABEL = "cloudmarket-deployment"

DEFAULT_ORPHAN_GRACE_SECONDS = 3600

# Provisioning steps after `creating_server`. From these steps on the pipeline has stored the
# server id and no longer creates a server, so a missing server means it was deleted.
STEPS_AFTER_CREATE = (
    ProvisioningStep.WAITING_FOR_BOOT,
    ProvisioningStep.WAITING_FOR_SSH,
    ProvisioningStep.RUNNING_RECIPE,
    ProvisioningStep.FINALIZING,
)


class OrphanNotDeletable(Exception):
    """The orphan server row is not in a state that allows deleting the server."""


@dataclass
class ReconcileReport:
    """The outcome of one reconciliation run at one cloud account.

    Server ids are the cloud's ids. `skipped_reason` is set when the account was not reconciled
    at all, and `error` when the run stopped early on a cloud error.
    """

    account_id: int
    skipped_reason: str = ""
    error: str = ""
    servers_seen: int = 0
    orphans_reported: list[str] = field(default_factory=list)
    orphans_deleted: list[str] = field(default_factory=list)
    orphans_gone: list[str] = field(default_factory=list)
    orphans_cleared: list[str] = field(default_factory=list)
    delete_errors: dict[str, str] = field(default_factory=dict)
    missing_flagged: list[int] = field(default_factory=list)
    missing_resolved: list[int] = field(default_factory=list)


def deployment_labels() -> dict[str, str]:
    """Return the label selector that matches every server of this deployment."""
    return {DEPLOYMENT_LABEL: settings.DEPLOYMENT_NAME}


def orphan_grace_seconds() -> int:
    """Return how long an orphan stays reported before the reconciler deletes it, in seconds."""
    return int(getattr(settings, "RECONCILE_ORPHAN_GRACE_SECONDS", DEFAULT_ORPHAN_GRACE_SECONDS))


def live_contracts_q(*, prefix: str = "") -> Q:
    """Return the filter for contracts that must have a server: active, or provisioning past the create step.

    `prefix` is the lookup path to the contract, for example `contract__` from a related model.
    """
    return Q(**{f"{prefix}status": ContractStatus.ACTIVE}) | Q(
        **{
            f"{prefix}status": ContractStatus.PROVISIONING,
            f"{prefix}provisioning_step__in": STEPS_AFTER_CREATE,
        }
    )


def is_live_contract(contract: Contract) -> bool:
    """Return whether the contract must have a server (the same rule as `live_contracts_q`)."""
    if contract.status == ContractStatus.ACTIVE:
        return True
    return (
        contract.status == ContractStatus.PROVISIONING
        and contract.provisioning_step in STEPS_AFTER_CREATE
    )


def _without_resource_servers(servers: list) -> list:
    """Leave out the servers of self-provisioned resources that are not deleted.

    Such a server carries a resource label instead of a contract label. The server of a
    deleted or unknown resource stays in the list and is reported as an orphan without a
    contract label.

    NOTE: a resource whose server disappeared from the cloud is not flagged; only live
    contracts are checked for missing servers.
    """
    from provisioning.models import Resource, ResourceStatus
    from provisioning.pipeline import RESOURCE_LABEL

    def resource_id(server) -> int | None:
        raw = (server.labels.get(RESOURCE_LABEL) or "").strip()
        return int(raw) if raw.isdigit() else None

    labelled = {resource_id(server) for server in servers} - {None}
    owned = set(
        Resource.objects.filter(pk__in=labelled).exclude(status=ResourceStatus.DELETED).values_list("pk", flat=True)
    )
    return [server for server in servers if resource_id(server) not in owned]


def _contract_id_from_labels(labels: dict[str, str]) -> int | None:
    raw = (labels.get(CONTRACT_LABEL) or "").strip()
    return int(raw) if raw.isdigit() else None


def orphan_reason(
    *, server_id: str, labels: dict[str, str], contract: Contract | None
) -> str | None:
    """Return why a server with this deployment's label is an orphan, or None if a contract may own it.

    `contract` is the contract named by the server's contract label (None if there is no such
    contract). A contract in `requested`, `paid`, `provisioning`, `terminating` or
    `termination_failed` keeps its servers: provisioning may still be recording the server id,
    and termination deletes its servers itself.
    """
    if not (labels.get(CONTRACT_LABEL) or "").strip():
        return OrphanReason.NO_CONTRACT_LABEL
    if contract is None:
        return OrphanReason.UNKNOWN_CONTRACT
    if contract.status in ENDED_STATUSES:
        return OrphanReason.CONTRACT_ENDED
    if (
        contract.status == ContractStatus.ACTIVE
        and contract.cloud_server_id
        and contract.cloud_server_id != server_id
    ):
        return OrphanReason.NOT_CONTRACT_SERVER
    return None


def _cleanup_labels(labels: dict[str, str], reason: str) -> dict[str, str] | None:
    """Return the labels to pass to `delete_server`, or None to delete only the server itself.

    The Sandbox backend deletes every server carrying the given labels, and the Hetzner backend
    the SSH keys carrying them. That is safe only when no live contract can carry the labels, so
    they are passed only for an unknown or ended contract with a numeric contract label.

    NOTE: on the Sandbox this also deletes other orphans of the same contract before their own
    grace period ends. Nothing live can own them, so only their reports change early.
    """
    contract_id = _contract_id_from_labels(labels)
    if contract_id is None or reason not in (
        OrphanReason.UNKNOWN_CONTRACT,
        OrphanReason.CONTRACT_ENDED,
    ):
        return None
    return {CONTRACT_LABEL: str(contract_id), DEPLOYMENT_LABEL: settings.DEPLOYMENT_NAME}


# --- entry points ----------------------------------------------------------------------------


def reconcile_all(*, now: datetime | None = None) -> list[ReconcileReport]:
    """Reconcile every cloud account in primary-key order; one failing account does not stop the rest."""
    now = now or timezone.now()
    reports = []
    # Agents reconcile their own hosts through the agent API.
    for account in CloudAccount.objects.exclude(backend=Backend.AGENT).order_by("pk"):
        try:
            reports.append(reconcile_account(account=account, now=now))
        except Exception as exc:  # A sweeper must go on to the next account; the error is logged.
            logger.exception("Cloud account %s: reconciliation failed", account.pk)
            reports.append(
                ReconcileReport(account_id=account.pk, error=f"{type(exc).__name__}: {exc}")
            )
    return reports


def reconcile_account(*, account: CloudAccount, now: datetime | None = None) -> ReconcileReport:
    """Compare the servers at one cloud account with the contracts; report, delete and flag.

    Skips an account marked invalid. Marks the account invalid when the cloud rejects its
    credentials. Other cloud errors end the run early with `report.error` set.
    """
    now = now or timezone.now()
    report = ReconcileReport(account_id=account.pk)
    if not account.is_usable:
        logger.info(
            "Cloud account %s: credentials marked invalid; skipping reconciliation", account.pk
        )
        report.skipped_reason = "The account's credentials are marked invalid."
        return report

    backend = get_backend(account)
    try:
        listed = backend.find_servers(deployment_labels())
    except CloudError as exc:
        _record_cloud_error(account, report, exc, action="listing servers")
        return report
    # find_servers already filters by label. Checking again means a backend that ignores the
    # selector can never make the reconciler delete another deployment's servers.
    servers = [
        server
        for server in listed
        if server.labels.get(DEPLOYMENT_LABEL) == settings.DEPLOYMENT_NAME
    ]
    # Several cloud accounts may share one cloud project and so list the same servers. A server
    # of another account's contract is that account's to reconcile.
    labelled_ids = {_contract_id_from_labels(server.labels) for server in servers} - {None}
    foreign = set(
        Contract.objects.filter(pk__in=labelled_ids).exclude(cloud_account=account).values_list("pk", flat=True)
    )
    servers = [server for server in servers if _contract_id_from_labels(server.labels) not in foreign]
    servers = _without_resource_servers(servers)
    seen_ids = {server.id for server in servers}
    report.servers_seen = len(servers)
    logger.info(
        "Cloud account %s: reconciling %s servers of deployment %s",
        account.pk,
        len(servers),
        settings.DEPLOYMENT_NAME,
    )

    _record_orphans(account=account, servers=servers, now=now, report=report)
    _mark_gone_orphans(account=account, seen_ids=seen_ids, report=report)
    if not _delete_due_orphans(
        account=account, backend=backend, seen_ids=seen_ids, now=now, report=report
    ):
        return report
    _check_missing_servers(
        account=account, backend=backend, seen_ids=seen_ids, now=now, report=report
    )
    return report


def _record_cloud_error(
    account: CloudAccount, report: ReconcileReport, exc: CloudError, *, action: str
) -> None:
    from provisioning.services import cloud_account_mark_invalid

    report.error = str(exc)[:2000]
    if isinstance(exc, CredentialsInvalid):
        logger.warning(
            "Cloud account %s: credentials rejected while %s: %s", account.pk, action, exc
        )
        cloud_account_mark_invalid(account_id=account.pk, error=str(exc))
    else:
        logger.warning(
            "Cloud account %s: reconciliation stopped, cloud error while %s: %s",
            account.pk,
            action,
            exc,
        )


# --- orphans ---------------------------------------------------------------------------------


def _record_orphans(
    *, account: CloudAccount, servers: list[ServerInfo], now: datetime, report: ReconcileReport
) -> None:
    contract_ids = {_contract_id_from_labels(server.labels) for server in servers} - {None}
    contracts = Contract.objects.in_bulk(contract_ids)
    existing = {
        orphan.server_id: orphan
        for orphan in OrphanServer.objects.filter(
            account=account, server_id__in=[s.id for s in servers]
        )
    }

    for server in servers:
        contract = contracts.get(_contract_id_from_labels(server.labels))
        reason = orphan_reason(server_id=server.id, labels=server.labels, contract=contract)
        orphan = existing.get(server.id)
        if reason is None:
            if orphan is not None and orphan.status == OrphanStatus.REPORTED:
                OrphanServer.objects.filter(pk=orphan.pk, status=OrphanStatus.REPORTED).update(
                    status=OrphanStatus.CLEARED, last_seen_at=now
                )
                report.orphans_cleared.append(server.id)
                logger.info(
                    "Cloud account %s: server %s is no longer an orphan (contract %s)",
                    account.pk,
                    server.id,
                    contract.pk if contract else None,
                )
            continue
        if orphan is None:
            try:
                with transaction.atomic():
                    OrphanServer.objects.create(
                        account=account,
                        server_id=server.id,
                        name=server.name[:255],
                        labels=dict(server.labels),
                        reason=reason,
                        contract=contract,
                        first_seen_at=now,
                        last_seen_at=now,
                    )
            except IntegrityError:
                logger.info(
                    "Cloud account %s: orphan server %s was recorded by a concurrent run",
                    account.pk,
                    server.id,
                )
                continue
            report.orphans_reported.append(server.id)
            logger.warning(
                "Cloud account %s: orphan server %s (%s, contract label %r): %s",
                account.pk,
                server.id,
                server.name,
                server.labels.get(CONTRACT_LABEL, ""),
                reason,
            )
            continue
        _update_seen_orphan(
            orphan, server=server, reason=reason, contract=contract, now=now, report=report
        )


def _update_seen_orphan(
    orphan: OrphanServer,
    *,
    server: ServerInfo,
    reason: str,
    contract: Contract | None,
    now: datetime,
    report: ReconcileReport,
) -> None:
    fields = {
        "name": server.name[:255],
        "labels": dict(server.labels),
        "reason": reason,
        "contract": contract,
        "last_seen_at": now,
    }
    if orphan.status == OrphanStatus.DELETED:
        if server.status == "deleting":
            OrphanServer.objects.filter(pk=orphan.pk).update(last_seen_at=now)
            return
        # Deleted earlier but still listed: report it again with the original first sighting,
        # so the next deletion attempt is due at once.
        fields.update(
            status=OrphanStatus.REPORTED,
            delete_error=f"Still listed after the deletion at {orphan.deleted_at:%Y-%m-%d %H:%M:%S} UTC.",
            deleted_at=None,
            deleted_by=None,
        )
        report.orphans_reported.append(server.id)
        logger.warning(
            "Cloud account %s: orphan server %s is still listed after its deletion",
            orphan.account_id,
            server.id,
        )
    elif orphan.status in (OrphanStatus.GONE, OrphanStatus.CLEARED):
        # The grace period starts again for a server that reappears or becomes an orphan again.
        fields.update(status=OrphanStatus.REPORTED, first_seen_at=now)
        report.orphans_reported.append(server.id)
        logger.warning(
            "Cloud account %s: server %s is an orphan again: %s",
            orphan.account_id,
            server.id,
            reason,
        )
    OrphanServer.objects.filter(pk=orphan.pk).update(**fields)


def _mark_gone_orphans(
    *, account: CloudAccount, seen_ids: set[str], report: ReconcileReport
) -> None:
    gone = OrphanServer.objects.filter(account=account, status=OrphanStatus.REPORTED).exclude(
        server_id__in=seen_ids
    )
    gone_ids = list(gone.values_list("server_id", flat=True))
    if not gone_ids:
        return
    gone.update(status=OrphanStatus.GONE)
    report.orphans_gone.extend(gone_ids)
    logger.info(
        "Cloud account %s: reported orphan servers disappeared: %s", account.pk, ", ".join(gone_ids)
    )


def _delete_due_orphans(
    *,
    account: CloudAccount,
    backend: CloudBackend,
    seen_ids: set[str],
    now: datetime,
    report: ReconcileReport,
) -> bool:
    """Delete the orphans reported for longer than the grace period; False if the account's credentials failed."""
    cutoff = now - timedelta(seconds=orphan_grace_seconds())
    due = OrphanServer.objects.filter(
        account=account,
        status=OrphanStatus.REPORTED,
        first_seen_at__lte=cutoff,
        server_id__in=seen_ids,
    ).order_by("pk")
    for orphan in due:
        try:
            orphan_server_delete(orphan=orphan, actor=None, now=now, backend=backend)
        except OrphanNotDeletable as exc:
            logger.info(
                "Cloud account %s: not deleting orphan server %s: %s",
                account.pk,
                orphan.server_id,
                exc,
            )
        except CredentialsInvalid as exc:
            report.delete_errors[orphan.server_id] = str(exc)
            _record_cloud_error(
                account, report, exc, action=f"deleting orphan server {orphan.server_id}"
            )
            return False
        except CloudError as exc:
            report.delete_errors[orphan.server_id] = str(exc)
        else:
            report.orphans_deleted.append(orphan.server_id)
    return True


def orphan_server_delete(
    *,
    orphan: OrphanServer,
    actor=None,
    now: datetime | None = None,
    backend: CloudBackend | None = None,
) -> OrphanServer:
    """Delete an orphan server at its cloud, after checking again that no live contract owns it.

    `actor` is the staff user who requested the deletion (None for the reconciler). Ignores the grace period.
    Raises `OrphanNotDeletable` when the row is not `reported`, the account is marked invalid,
    or a live contract now owns the server. Raises `CloudError` after recording it in
    `delete_error`.
    """
    now = now or timezone.now()
    orphan = OrphanServer.objects.select_related("account").get(pk=orphan.pk)
    if not orphan.can_delete():
        raise OrphanNotDeletable(
            f"Orphan server {orphan.server_id} is {orphan.get_status_display().lower()}, not reported."
        )
    if not orphan.account.is_usable:
        raise OrphanNotDeletable(
            f"Cloud account {orphan.account.pk} has invalid credentials; save a valid token and validate it first."
        )

    contract_id = _contract_id_from_labels(orphan.labels)
    contract = Contract.objects.filter(pk=contract_id).first() if contract_id is not None else None
    reason = orphan_reason(server_id=orphan.server_id, labels=orphan.labels, contract=contract)
    if reason is None:
        OrphanServer.objects.filter(pk=orphan.pk, status=OrphanStatus.REPORTED).update(
            status=OrphanStatus.CLEARED
        )
        raise OrphanNotDeletable(
            f"Contract {contract_id} is {contract.status} and may own server {orphan.server_id}."
        )

    backend = backend or get_backend(orphan.account)
    try:
        backend.delete_server(orphan.server_id, labels=_cleanup_labels(orphan.labels, reason))
    except CloudError as exc:
        OrphanServer.objects.filter(pk=orphan.pk).update(delete_error=str(exc)[:2000])
        logger.warning(
            "Cloud account %s: deleting orphan server %s failed: %s",
            orphan.account_id,
            orphan.server_id,
            exc,
        )
        raise
    OrphanServer.objects.filter(pk=orphan.pk).update(
        status=OrphanStatus.DELETED, deleted_at=now, deleted_by=actor, delete_error=""
    )
    logger.warning(
        "Cloud account %s: orphan server %s (%s) deleted by %s",
        orphan.account_id,
        orphan.server_id,
        reason,
        f"user {actor.pk}" if actor is not None else "the reconciler",
    )
    orphan.refresh_from_db()
    return orphan


# --- live contracts whose server is missing --------------------------------------------------


def _check_missing_servers(
    *,
    account: CloudAccount,
    backend: CloudBackend,
    seen_ids: set[str],
    now: datetime,
    report: ReconcileReport,
) -> None:
    live = (
        Contract.objects.filter(live_contracts_q(), cloud_account=account)
        .exclude(cloud_server_id="")
        .order_by("pk")
        .only("pk", "status", "cloud_server_id")
    )
    for contract in live:
        if contract.cloud_server_id in seen_ids:
            found = True
        else:
            # Not listed: the contract may have stored its id after the listing, or the server
            # may lack this deployment's label. Only a direct lookup proves that it is gone.
            try:
                backend.get_server(contract.cloud_server_id)
                found = True
            except ServerNotFound:
                found = False
            except CloudError as exc:
                if isinstance(exc, CredentialsInvalid):
                    _record_cloud_error(
                        account, report, exc, action=f"looking up server {contract.cloud_server_id}"
                    )
                    return
                logger.warning(
                    "Cloud account %s: could not look up server %s of contract %s: %s",
                    account.pk,
                    contract.cloud_server_id,
                    contract.pk,
                    exc,
                )
                continue
        if found:
            if server_missing_reports_resolve(
                contract_id=contract.pk, now=now, note="The server was found again."
            ):
                report.missing_resolved.append(contract.pk)
        elif (
            server_missing_report_open(
                contract_id=contract.pk, server_id=contract.cloud_server_id, now=now
            )
            is not None
        ):
            report.missing_flagged.append(contract.pk)

    stale = (
        ServerMissingReport.objects.filter(
            contract__cloud_account=account, resolved_at__isnull=True
        )
        .exclude(
            live_contracts_q(prefix="contract__"), contract__cloud_server_id=F("cloud_server_id")
        )
        .values_list("contract_id", flat=True)
    )
    for contract_id in list(stale):
        if server_missing_reports_resolve(
            contract_id=contract_id,
            now=now,
            note="The contract is no longer live or has another server.",
        ):
            report.missing_resolved.append(contract_id)


@transaction.atomic
def server_missing_report_open(
    *, contract_id: int, server_id: str, now: datetime
) -> ServerMissingReport | None:
    """Open a report that the contract's server is missing and notify tenant and provider.

    Returns None, and sends no notification, when a report for this server is already open or the
    contract no longer stores this server id. Notifications are sent after commit.
    """
    from notifications.services import notify_contract_event

    contract = (
        Contract.objects.select_for_update(of=("self",))
        .select_related("tenant", "provider__user", "cloud_account")
        .get(pk=contract_id)
    )
    if contract.cloud_server_id != server_id or not is_live_contract(contract):
        return None
    open_report = ServerMissingReport.objects.filter(
        contract=contract, resolved_at__isnull=True
    ).first()
    if open_report is not None:
        if open_report.cloud_server_id == server_id:
            return None
        open_report.resolved_at = now
        open_report.note = (
            f"{open_report.note}\nThe contract now stores server {server_id}.".strip()
        )
        open_report.save(update_fields=["resolved_at", "note"])

    report = ServerMissingReport.objects.create(
        contract=contract,
        cloud_server_id=server_id,
        detected_at=now,
        note=f"Server {server_id} was not found at cloud account {contract.cloud_account_id} while the contract was {contract.status}.",
    )
    logger.warning(
        "Contract %s: server %s is missing at cloud account %s",
        contract.pk,
        server_id,
        contract.cloud_account_id,
    )
    notify_contract_event(event="server_missing", contract=contract)
    return report


def server_missing_reports_resolve(*, contract_id: int, now: datetime, note: str) -> bool:
    """Resolve the contract's open server-missing report; return whether one was open."""
    report = ServerMissingReport.objects.filter(
        contract_id=contract_id, resolved_at__isnull=True
    ).first()
    if report is None:
        return False
    resolved = ServerMissingReport.objects.filter(pk=report.pk, resolved_at__isnull=True).update(
        resolved_at=now, note=f"{report.note}\n{note}".strip()
    )
    if resolved:
        logger.info(
            "Contract %s: server-missing report %s resolved: %s", contract_id, report.pk, note
        )
    return bool(resolved)
