"""Health checks: record probe results, claim contracts for the platform probe, probe, prune.

Reads (uptime, latency series) are in `provisioning.uptime`.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from marketplace.models import Contract, ContractStatus
from notifications.models import Event
from notifications.services import notify_contract_event
from provisioning.agent.probe import ProbeResult, tcp_probe
from provisioning.models import (
    HealthCheck,
    HealthProbeState,
    HealthRollup,
    HealthRollupProgress,
    HealthSource,
    HealthStatus,
)
from provisioning.uptime import covered_segments, floor_hour, rolled_until

logger = logging.getLogger(__name__)

# Agents' clocks may run a little ahead of the platform's, so only reports further ahead are rejected.
MAX_CLOCK_SKEW = timedelta(minutes=5)
DETAIL_MAX_LENGTH = HealthCheck._meta.get_field("detail").max_length
HYPERVISOR_STATE_MAX_LENGTH = HealthCheck._meta.get_field("hypervisor_state").max_length


def health_check_record(
    *,
    contract: Contract,
    source: str,
    up: bool,
    latency_ms: float | None,
    checked_at: datetime,
    hypervisor_state: str = "",
    detail: str = "",
) -> HealthCheck:
    """Store one health check of `contract` and notify on a new outage or a recovery.

    Arguments:
        contract: the contract whose server was probed.
        source: `HealthSource.PLATFORM` for the platform probe, `HealthSource.AGENT` for a
            provider agent's report.
        up: whether a TCP connection to the server's SSH port was established.
        latency_ms: milliseconds until the connection was established, or None when down.
        checked_at: when the probe ran, timezone-aware; at most `MAX_CLOCK_SKEW` after now
            and at most `MAX_CLOCK_SKEW` before the contract's `activated_at`.
        hypervisor_state: the hypervisor's state of the VM as an agent reported it, for
            example "running"; cut to 64 characters.
        detail: the probe's error or a short note; cut to 500 characters.

    The failure streak counts checks of every source in `checked_at` order. After
    `HEALTH_FAILURES_BEFORE_ALERT` down checks in a row the tenant and the provider get one
    "health check failing" notification, and the next up check sends one "health check
    recovered". Only active contracts notify, so reports about an ended rental send nothing.
    A check older than the newest one already counted is stored for uptime but leaves the
    streak alone.

    A check with the same source and `checked_at` as a stored one is returned as it is, so a
    report sent twice is stored and counted once.

    Raises `ValidationError`, keyed by argument name, for an unknown source, a naive or
    future `checked_at`, one from before the contract was activated, or a negative or
    non-finite latency.
    """
    _validate_check(contract=contract, source=source, latency_ms=latency_ms, checked_at=checked_at)
    with transaction.atomic():
        HealthProbeState.objects.get_or_create(contract_id=contract.pk)
        state = HealthProbeState.objects.select_for_update().get(contract_id=contract.pk)
        # A report sent again (for example after a lost response) must not count as a second failure.
        duplicate = HealthCheck.objects.filter(contract_id=contract.pk, source=source, checked_at=checked_at).first()
        if duplicate is not None:
            logger.info("Contract %s: health check %s sent again; stored once", contract.pk, duplicate.pk)
            return duplicate
        check = HealthCheck.objects.create(
            contract_id=contract.pk,
            checked_at=checked_at,
            source=source,
            status=HealthStatus.UP if up else HealthStatus.DOWN,
            latency_ms=latency_ms if up else None,
            hypervisor_state=hypervisor_state[:HYPERVISOR_STATE_MAX_LENGTH],
            detail=detail[:DETAIL_MAX_LENGTH],
        )
        if state.last_checked_at is None or checked_at >= state.last_checked_at:
            _advance_streak(state=state, contract=contract, up=up, checked_at=checked_at)
        complete_until = rolled_until()
        if complete_until is not None and checked_at < complete_until:
            _rollup_late_check(contract_id=contract.pk, checked_at=checked_at, complete_until=complete_until)
    logger.info(
        "Contract %s: health check %s recorded (%s, %s, %s ms)",
        contract.pk, check.pk, source, check.status, "-" if latency_ms is None else f"{latency_ms:.1f}",
    )
    return check


def _validate_check(*, contract: Contract, source: str, latency_ms: float | None, checked_at: datetime) -> None:
    errors = {}
    if source not in HealthSource.values:
        errors["source"] = f"Unknown health check source {source!r}; use one of {', '.join(HealthSource.values)}."
    if timezone.is_naive(checked_at):
        errors["checked_at"] = f"checked_at {checked_at.isoformat()} has no timezone; send an aware time, for example in UTC."
    elif checked_at > timezone.now() + MAX_CLOCK_SKEW:
        errors["checked_at"] = (
            f"checked_at {checked_at.isoformat()} is in the future; check the reporting host's clock."
        )
    elif contract.activated_at is not None and checked_at < contract.activated_at - MAX_CLOCK_SKEW:
        errors["checked_at"] = (
            f"checked_at {checked_at.isoformat()} is before the rental became active at "
            f"{contract.activated_at.isoformat()}; check the reporting host's clock."
        )
    if latency_ms is not None and (not math.isfinite(latency_ms) or latency_ms < 0):
        errors["latency_ms"] = f"latency_ms must be a finite number of 0 or more, not {latency_ms!r}."
    if errors:
        raise ValidationError(errors)


def _advance_streak(*, state: HealthProbeState, contract: Contract, up: bool, checked_at: datetime) -> None:
    """Count one check into the streak of the locked `state`, and notify when an outage opens or closes."""
    state.last_checked_at = checked_at
    if up:
        state.consecutive_failures = 0
        if state.failing_since is not None:
            logger.info("Contract %s: health checks recovered (failing since %s)", contract.pk, state.failing_since)
            state.failing_since = None
            if contract.status == ContractStatus.ACTIVE:
                notify_contract_event(event=Event.HEALTH_CHECK_RECOVERED, contract=contract)
    else:
        state.consecutive_failures += 1
        if state.failing_since is None and state.consecutive_failures >= settings.HEALTH_FAILURES_BEFORE_ALERT:
            state.failing_since = checked_at
            logger.warning(
                "Contract %s: %s health checks failed in a row; notifying tenant and provider",
                contract.pk, state.consecutive_failures,
            )
            if contract.status == ContractStatus.ACTIVE:
                notify_contract_event(event=Event.HEALTH_CHECK_FAILING, contract=contract)
    state.save(update_fields=["last_checked_at", "consecutive_failures", "failing_since"])


# --- platform probe ----------------------------------------------------------------------------


def probe_eligible_contracts() -> QuerySet[Contract]:
    """Return the contracts the platform probes: active, with an address, not on a skipped backend."""
    return Contract.objects.filter(status=ContractStatus.ACTIVE, ip_address__isnull=False).exclude(
        backend__in=settings.HEALTH_PROBE_SKIP_BACKENDS
    )


def health_probes_claim_due(*, now: datetime | None = None, limit: int | None = None) -> list[int]:
    """Claim the eligible contracts whose probe is due, and return their ids.

    Each claimed contract's `next_probe_at` moves one `HEALTH_PROBE_INTERVAL_SECONDS` ahead in
    the same transaction that locked it, and rows another worker holds are skipped, so any
    number of schedulers can run this at once without probing a contract twice per interval.
    """
    now = now or timezone.now()
    limit = limit or settings.HEALTH_PROBE_BATCH_SIZE
    eligible = probe_eligible_contracts()
    missing = eligible.filter(health_state__isnull=True).values_list("pk", flat=True)
    HealthProbeState.objects.bulk_create(
        [HealthProbeState(contract_id=contract_id, next_probe_at=now) for contract_id in missing],
        ignore_conflicts=True,
    )
    with transaction.atomic():
        due = list(
            HealthProbeState.objects.select_for_update(skip_locked=True)
            .filter(next_probe_at__lte=now, contract__in=eligible)
            .order_by("next_probe_at", "pk")
            .values_list("pk", "contract_id")[:limit]
        )
        HealthProbeState.objects.filter(pk__in=[pk for pk, _ in due]).update(
            next_probe_at=now + timedelta(seconds=settings.HEALTH_PROBE_INTERVAL_SECONDS)
        )
    return [contract_id for _, contract_id in due]


def health_probe_contracts(*, contract_ids: list[int]) -> list[HealthCheck]:
    """Probe the SSH ports of the given contracts' servers from the platform and record the results.

    The TCP connects run in up to `HEALTH_PROBE_CONCURRENCY` threads, so one batch takes about
    one `HEALTH_PROBE_TIMEOUT_SECONDS` per `HEALTH_PROBE_CONCURRENCY` unreachable servers.
    The database writes stay in the calling thread. Contracts that are gone or no longer
    eligible are skipped with a log line.
    """
    contracts = list(
        probe_eligible_contracts().select_related("provider__user", "tenant").filter(pk__in=contract_ids).order_by("pk")
    )
    skipped = sorted(set(contract_ids) - {contract.pk for contract in contracts})
    if skipped:
        logger.info("Contracts %s: not probed, no longer active with an address", skipped)
    if not contracts:
        return []

    def probe(contract: Contract) -> tuple[datetime, ProbeResult]:
        checked_at = timezone.now()
        return checked_at, tcp_probe(
            host=contract.ip_address, port=contract.ssh_port, timeout=settings.HEALTH_PROBE_TIMEOUT_SECONDS
        )

    with ThreadPoolExecutor(max_workers=min(len(contracts), settings.HEALTH_PROBE_CONCURRENCY)) as pool:
        results = list(pool.map(probe, contracts))
    return [
        health_check_record(
            contract=contract,
            source=HealthSource.PLATFORM,
            up=result.up,
            latency_ms=result.latency_ms,
            checked_at=checked_at,
            detail=result.detail,
        )
        for contract, (checked_at, result) in zip(contracts, results, strict=True)
    ]


# --- hourly rollups ----------------------------------------------------------------------------


def health_rollups_update(*, now: datetime | None = None, max_hours: int = 48) -> int:
    """Sum the health checks of each complete hour into `HealthRollup` rows; return how many hours were rolled up.

    An hour is complete once `HEALTH_CHECK_MAX_COVER_SECONDS` plus `HEALTH_ROLLUP_DELAY_SECONDS`
    have passed since it ended: by then its last check's cover is known and most agents'
    reports have arrived. `health_check_record` redoes a contract's hours for a later one. The first run starts at the oldest check. One run rolls up at most
    `max_hours` hours, so a long backlog is spread over several runs. The progress row is
    locked for the run, so concurrent runs wait instead of rolling up an hour twice.
    """
    now = now or timezone.now()
    lag = timedelta(seconds=settings.HEALTH_CHECK_MAX_COVER_SECONDS + settings.HEALTH_ROLLUP_DELAY_SECONDS)
    complete_until = floor_hour(now - lag)
    with transaction.atomic():
        HealthRollupProgress.objects.get_or_create(pk=1)
        progress = HealthRollupProgress.objects.select_for_update().get(pk=1)
        hour = progress.rolled_until
        if hour is None:
            oldest = HealthCheck.objects.order_by("checked_at").values_list("checked_at", flat=True).first()
            hour = complete_until if oldest is None else min(floor_hour(oldest), complete_until)
        rolled = 0
        while hour < complete_until and rolled < max_hours:
            _rollup_hour(hour=hour, now=now)
            hour += timedelta(hours=1)
            rolled += 1
        progress.rolled_until = hour
        progress.save(update_fields=["rolled_until"])
    if rolled:
        logger.info("Rolled up health checks of %s hours, complete until %s", rolled, hour.isoformat())
    return rolled


def _rollup_late_check(*, contract_id: int, checked_at: datetime, complete_until: datetime) -> None:
    """Redo the contract's rollups of the complete hours that a check arriving after them covers."""
    logger.info("Contract %s: late health check from %s; redoing its rollups", contract_id, checked_at.isoformat())
    # The check shortens the previous check's cover, which began at most one max cover earlier.
    max_cover = timedelta(seconds=settings.HEALTH_CHECK_MAX_COVER_SECONDS)
    hour = floor_hour(checked_at - max_cover)
    last_hour = floor_hour(checked_at + max_cover)
    while hour <= last_hour and hour < complete_until:
        _rollup_hour(hour=hour, now=timezone.now(), checks=HealthCheck.objects.filter(contract_id=contract_id))
        hour += timedelta(hours=1)


def _rollup_hour(*, hour: datetime, now: datetime, checks: QuerySet[HealthCheck] | None = None) -> None:
    """Write one `HealthRollup` row per contract with checks covering part of the hour from `hour`."""
    end = hour + timedelta(hours=1)
    checks = HealthCheck.objects.all() if checks is None else checks
    rows = covered_segments(checks, start=hour, end=end, now=now).values_list(
        "contract_id", "status", "covered", "checked_at", "latency_ms"
    )
    rollups: dict[int, HealthRollup] = {}
    for contract_id, status, covered, checked_at, latency_ms in rows.iterator(chunk_size=5000):
        rollup = rollups.setdefault(contract_id, HealthRollup(contract_id=contract_id, hour=hour))
        if status == HealthStatus.UP:
            rollup.up_seconds += covered.total_seconds()
        else:
            rollup.down_seconds += covered.total_seconds()
        # A check from the previous hour covers time here but is counted in its own hour.
        if checked_at < hour:
            continue
        if status == HealthStatus.UP:
            rollup.up_count += 1
            if latency_ms is not None:
                rollup.latency_sum_ms += latency_ms
                rollup.latency_max_ms = max(rollup.latency_max_ms or 0.0, latency_ms)
        else:
            rollup.down_count += 1
    HealthRollup.objects.bulk_create(
        rollups.values(),
        update_conflicts=True,
        unique_fields=["contract", "hour"],
        update_fields=["up_seconds", "down_seconds", "up_count", "down_count", "latency_sum_ms", "latency_max_ms"],
    )


def health_checks_prune(*, now: datetime | None = None) -> int:
    """Delete health checks and rollups older than `HEALTH_CHECK_RETENTION_DAYS`; return how many checks were deleted."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.HEALTH_CHECK_RETENTION_DAYS)
    deleted, _ = HealthCheck.objects.filter(checked_at__lt=cutoff).delete()
    HealthRollup.objects.filter(hour__lt=cutoff).delete()
    logger.info("Pruned %s health checks older than %s", deleted, cutoff.isoformat())
    return deleted
