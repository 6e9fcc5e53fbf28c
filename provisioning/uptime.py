"""Health reads: time-weighted uptime per contract and per provider, and latency series for charts.

Each check vouches for its status from `checked_at` until the contract's next check, but for
at most `HEALTH_CHECK_MAX_COVER_SECONDS`. Time no check covers is unknown: it counts neither as
up nor as down, and it lowers the coverage, so a silent server never looks healthy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import (
    Avg,
    Count,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    Max,
    Q,
    QuerySet,
    Sum,
    Value,
    Window,
)
from django.db.models.functions import Coalesce, Greatest, Lead, Least, TruncHour
from django.utils import timezone

from marketplace.models import Contract, ProviderProfile
from provisioning.models import (
    HealthCheck,
    HealthProbeState,
    HealthRollup,
    HealthRollupProgress,
    HealthStatus,
)

WINDOW_DAYS = (1, 7, 30)


@dataclass(frozen=True)
class UptimeWindow:
    """Up, down and unknown time of one or more contracts over the last `days` days.

    `expected_seconds` is the window's length times the number of contracts with a check in
    the window. A percentage is shown only once the known time reaches
    `HEALTH_UPTIME_MIN_COVERAGE` of one window's length, so a provider with a single hour
    of checks shows "not enough data", not 100 %.
    """

    days: int
    up_seconds: float
    down_seconds: float
    expected_seconds: float
    min_known_seconds: float

    @property
    def known_seconds(self) -> float:
        return self.up_seconds + self.down_seconds

    @property
    def coverage(self) -> float:
        """Fraction of the expected time that checks cover, from 0 to 1."""
        if self.expected_seconds <= 0:
            return 0.0
        return min(1.0, self.known_seconds / self.expected_seconds)

    @property
    def has_enough_data(self) -> bool:
        return self.known_seconds > 0 and self.known_seconds >= self.min_known_seconds

    @property
    def uptime(self) -> float | None:
        """Up time divided by known time, from 0 to 1; None without enough data."""
        if not self.has_enough_data:
            return None
        return self.up_seconds / self.known_seconds

    @property
    def uptime_percent(self) -> float | None:
        uptime = self.uptime
        return None if uptime is None else uptime * 100

    @property
    def uptime_text(self) -> str:
        """Uptime rounded down to 0.01 %, so a server with any downtime never shows 100.00 %."""
        percent = self.uptime_percent
        if percent is None:
            return "Not enough data"
        return f"{math.floor(percent * 100) / 100:.2f} %"

    @property
    def coverage_percent(self) -> float:
        return self.coverage * 100

    @property
    def label(self) -> str:
        return "24 hours" if self.days == 1 else f"{self.days} days"


def _max_cover() -> timedelta:
    return timedelta(seconds=settings.HEALTH_CHECK_MAX_COVER_SECONDS)


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: datetime) -> datetime:
    hour = floor_hour(moment)
    return hour if hour == moment else hour + timedelta(hours=1)


def rolled_until() -> datetime | None:
    """Return the end of the hours whose `HealthRollup` rows are complete, or None before the first rollup."""
    return HealthRollupProgress.objects.filter(pk=1).values_list("rolled_until", flat=True).first()


def covered_segments(checks: QuerySet[HealthCheck], *, start: datetime, end: datetime, now: datetime) -> QuerySet[HealthCheck]:
    """Return the checks that cover part of [`start`, `end`), each annotated with `covered`, that part's duration.

    A check covers the time from `checked_at` until the same contract's next check, for at
    most `HEALTH_CHECK_MAX_COVER_SECONDS` and never past `now`. A check made before `start`
    still counts for the part of its cover after `start`, so the query reads
    `HEALTH_CHECK_MAX_COVER_SECONDS` further back.
    """
    max_cover = _max_cover()
    return (
        checks.filter(checked_at__gte=start - max_cover, checked_at__lt=end)
        .annotate(
            next_checked_at=Window(
                Lead("checked_at"), partition_by=[F("contract_id")], order_by=[F("checked_at").asc(), F("id").asc()]
            )
        )
        .annotate(
            segment_end=Least(
                Coalesce("next_checked_at", Value(now)),
                ExpressionWrapper(F("checked_at") + Value(max_cover), output_field=DateTimeField()),
                Value(min(end, now)),
            )
        )
        .filter(segment_end__gt=start)
        .annotate(
            covered=ExpressionWrapper(F("segment_end") - Greatest("checked_at", Value(start)), output_field=DurationField())
        )
    )


@dataclass
class _Totals:
    up_seconds: float = 0.0
    down_seconds: float = 0.0
    contract_ids: set[int] = field(default_factory=set)

    def add(self, other: _Totals) -> None:
        self.up_seconds += other.up_seconds
        self.down_seconds += other.down_seconds
        self.contract_ids |= other.contract_ids


def _raw_totals(checks: QuerySet[HealthCheck], *, start: datetime, end: datetime, now: datetime) -> _Totals:
    """Sum the covered time in [`start`, `end`) from the checks themselves."""
    if start >= end:
        return _Totals()
    sums = covered_segments(checks, start=start, end=end, now=now).aggregate(
        up=Sum("covered", filter=Q(status=HealthStatus.UP)),
        down=Sum("covered", filter=Q(status=HealthStatus.DOWN)),
    )
    # Contracts with a check whose cover may reach into the range; one whose cover ends just
    # before `start` is counted too, which lowers the coverage slightly.
    contract_ids = (
        checks.filter(checked_at__gte=start - _max_cover(), checked_at__lt=end)
        .order_by()
        .values_list("contract_id", flat=True)
        .distinct()
    )
    return _Totals(
        up_seconds=(sums["up"] or timedelta(0)).total_seconds(),
        down_seconds=(sums["down"] or timedelta(0)).total_seconds(),
        contract_ids=set(contract_ids),
    )


def _rolled_totals(rollups: QuerySet[HealthRollup], *, starts: dict[int, datetime], end: datetime) -> dict[int, _Totals]:
    """Sum the rollups from each window's start in `starts` (keyed by days) to `end`, in one query."""
    if not starts:
        return {}
    sums = {}
    for days, start in starts.items():
        in_window = Q(hour__gte=start)
        sums[f"up_{days}"] = Sum("up_seconds", filter=in_window)
        sums[f"down_{days}"] = Sum("down_seconds", filter=in_window)
    rows = (
        rollups.filter(hour__gte=min(starts.values()), hour__lt=end)
        .order_by()
        .values("contract_id")
        .annotate(**sums)
    )
    totals = {days: _Totals() for days in starts}
    for row in rows:
        for days, window_totals in totals.items():
            up = row[f"up_{days}"] or 0.0
            down = row[f"down_{days}"] or 0.0
            window_totals.up_seconds += up
            window_totals.down_seconds += down
            if up or down:
                window_totals.contract_ids.add(row["contract_id"])
    return totals


def _uptime_windows(checks: QuerySet[HealthCheck], rollups: QuerySet[HealthRollup], *, now: datetime) -> list[UptimeWindow]:
    """Sum up and down time per window: rollups for complete hours, checks for the hours around them."""
    complete_until = rolled_until()
    rolled_end = None if complete_until is None else min(complete_until, floor_hour(now))
    rolled_starts: dict[int, datetime] = {}
    totals: dict[int, _Totals] = {}
    for days in WINDOW_DAYS:
        start = now - timedelta(days=days)
        rolled_start = _ceil_hour(start)
        if rolled_end is None or rolled_end <= rolled_start:
            # No complete hour is rolled up inside this window, so every check is read.
            totals[days] = _raw_totals(checks, start=start, end=now, now=now)
        else:
            rolled_starts[days] = rolled_start
            totals[days] = _raw_totals(checks, start=start, end=rolled_start, now=now)
    if rolled_starts:
        tail = _raw_totals(checks, start=rolled_end, end=now, now=now)
        for days, rolled in _rolled_totals(rollups, starts=rolled_starts, end=rolled_end).items():
            totals[days].add(rolled)
            totals[days].add(tail)

    windows = []
    for days in WINDOW_DAYS:
        window_seconds = days * 86400
        windows.append(
            UptimeWindow(
                days=days,
                up_seconds=totals[days].up_seconds,
                down_seconds=totals[days].down_seconds,
                expected_seconds=window_seconds * len(totals[days].contract_ids),
                min_known_seconds=window_seconds * settings.HEALTH_UPTIME_MIN_COVERAGE,
            )
        )
    return windows


def contract_uptime(*, contract: Contract, now: datetime | None = None) -> list[UptimeWindow]:
    """Return the contract's uptime over the last 1, 7 and 30 days."""
    return _uptime_windows(
        HealthCheck.objects.filter(contract=contract),
        HealthRollup.objects.filter(contract=contract),
        now=now or timezone.now(),
    )


def provider_uptime(*, provider: ProviderProfile, now: datetime | None = None) -> list[UptimeWindow]:
    """Return the uptime of all the provider's contracts together over the last 1, 7 and 30 days.

    Every contract adds its own up and down time, so a provider with ten servers has ten
    times the known time of one.

    NOTE: this reads one rollup row per contract and hour, which took about 0.7 s for 1,000
    contracts over 30 days (bench/health_uptime.py), so pages should cache the result.
    """
    return _uptime_windows(
        HealthCheck.objects.filter(contract__provider=provider),
        HealthRollup.objects.filter(contract__provider=provider),
        now=now or timezone.now(),
    )


@dataclass(frozen=True)
class LatencyBucket:
    """Checks of one hour: mean and max latency of the up checks, and how many checks were down."""

    start: datetime
    mean_latency_ms: float | None
    max_latency_ms: float | None
    up_count: int
    down_count: int


@dataclass(frozen=True)
class LatencySeries:
    """Latency per hour over the last `hours` hours, oldest first, for a chart and its text summary."""

    start: datetime
    end: datetime
    buckets: list[LatencyBucket]

    @property
    def has_checks(self) -> bool:
        return self.check_count > 0

    @property
    def check_count(self) -> int:
        return sum(bucket.up_count + bucket.down_count for bucket in self.buckets)

    @property
    def down_count(self) -> int:
        return sum(bucket.down_count for bucket in self.buckets)

    @property
    def mean_latency_ms(self) -> float | None:
        up_count = sum(bucket.up_count for bucket in self.buckets)
        if not up_count:
            return None
        return sum(bucket.mean_latency_ms * bucket.up_count for bucket in self.buckets if bucket.up_count) / up_count

    @property
    def max_latency_ms(self) -> float | None:
        values = [bucket.max_latency_ms for bucket in self.buckets if bucket.max_latency_ms is not None]
        return max(values) if values else None


def _latency_series(checks: QuerySet[HealthCheck], rollups: QuerySet[HealthRollup], *, now: datetime, hours: int) -> LatencySeries:
    """Group the last `hours` hours by UTC hour in the database; the current hour is the last bucket.

    Complete hours come from the rollups, and the hours after them from the checks.
    """
    first_hour = floor_hour(now) - timedelta(hours=hours - 1)
    complete_until = rolled_until()
    split = first_hour if complete_until is None else min(max(complete_until, first_hour), floor_hour(now))
    rolled_rows = (
        rollups.filter(hour__gte=first_hour, hour__lt=split)
        .values("hour")
        .annotate(
            latency_sum_ms=Sum("latency_sum_ms"),
            max_latency_ms=Max("latency_max_ms"),
            up_count=Sum("up_count"),
            down_count=Sum("down_count"),
        )
    )
    by_hour = {
        row["hour"]: {
            **row,
            "mean_latency_ms": row["latency_sum_ms"] / row["up_count"] if row["up_count"] else None,
        }
        for row in rolled_rows
    }
    raw_rows = (
        checks.filter(checked_at__gte=split, checked_at__lte=now)
        .annotate(hour=TruncHour("checked_at", tzinfo=UTC))
        .values("hour")
        .annotate(
            mean_latency_ms=Avg("latency_ms", filter=Q(status=HealthStatus.UP)),
            max_latency_ms=Max("latency_ms", filter=Q(status=HealthStatus.UP)),
            up_count=Count("id", filter=Q(status=HealthStatus.UP)),
            down_count=Count("id", filter=Q(status=HealthStatus.DOWN)),
        )
    )
    by_hour.update({row["hour"]: row for row in raw_rows})
    buckets = []
    for index in range(hours):
        hour = first_hour + timedelta(hours=index)
        row = by_hour.get(hour, {})
        buckets.append(
            LatencyBucket(
                start=hour,
                mean_latency_ms=row.get("mean_latency_ms"),
                max_latency_ms=row.get("max_latency_ms"),
                up_count=row.get("up_count", 0),
                down_count=row.get("down_count", 0),
            )
        )
    return LatencySeries(start=first_hour, end=now, buckets=buckets)


def contract_latency_series(*, contract: Contract, now: datetime | None = None, hours: int = 24) -> LatencySeries:
    """Return the contract's probe latency per hour over the last `hours` hours."""
    return _latency_series(
        HealthCheck.objects.filter(contract=contract),
        HealthRollup.objects.filter(contract=contract),
        now=now or timezone.now(),
        hours=hours,
    )


def provider_latency_series(*, provider: ProviderProfile, now: datetime | None = None, hours: int = 24) -> LatencySeries:
    """Return the probe latency per hour of all the provider's contracts over the last `hours` hours."""
    return _latency_series(
        HealthCheck.objects.filter(contract__provider=provider),
        HealthRollup.objects.filter(contract__provider=provider),
        now=now or timezone.now(),
        hours=hours,
    )


@dataclass(frozen=True)
class ContractHealth:
    """Everything the rental health API returns about one contract."""

    failing: bool
    consecutive_failures: int
    uptime: list[UptimeWindow]
    latency_hours: list[LatencyBucket]
    recent_checks: list[HealthCheck]


RECENT_CHECK_COUNT = 20


def contract_health(*, contract: Contract, now: datetime | None = None) -> ContractHealth:
    """Return the contract's failure streak, uptime, hourly latency and newest checks."""
    now = now or timezone.now()
    state = HealthProbeState.objects.filter(contract=contract).first()
    return ContractHealth(
        failing=state is not None and state.is_failing,
        consecutive_failures=state.consecutive_failures if state is not None else 0,
        uptime=contract_uptime(contract=contract, now=now),
        latency_hours=contract_latency_series(contract=contract, now=now).buckets,
        recent_checks=list(HealthCheck.objects.filter(contract=contract).order_by("-checked_at", "-id")[:RECENT_CHECK_COUNT]),
    )
