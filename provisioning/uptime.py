"""Health reads: time-weighted uptime per contract and per provider, and latency series for charts.

Each check vouches for its status from `checked_at` until the contract's next check, but for
at most `HEALTH_CHECK_MAX_COVER_SECONDS`. Time no check covers is unknown: it counts neither as
up nor as down, and it lowers the coverage, so a silent server never looks healthy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
from provisioning.models import HealthCheck, HealthProbeState, HealthStatus

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


def _uptime_windows(checks: QuerySet[HealthCheck], *, now: datetime) -> list[UptimeWindow]:
    """Sum the up and down time of `checks` in each window of `WINDOW_DAYS`, in one query.

    A check made before a window starts still counts for the part of its cover inside the
    window, so the query reads `HEALTH_CHECK_MAX_COVER_SECONDS` further back than 30 days.
    """
    max_cover = _max_cover()
    segments = (
        checks.filter(checked_at__gte=now - timedelta(days=max(WINDOW_DAYS)) - max_cover, checked_at__lte=now)
        .annotate(
            next_checked_at=Window(
                Lead("checked_at"), partition_by=[F("contract_id")], order_by=[F("checked_at").asc(), F("id").asc()]
            )
        )
        .annotate(
            segment_end=Least(
                Coalesce("next_checked_at", Value(now)),
                ExpressionWrapper(F("checked_at") + Value(max_cover), output_field=DateTimeField()),
                Value(now),
            )
        )
    )
    aggregates = {}
    for days in WINDOW_DAYS:
        start = now - timedelta(days=days)
        covered = ExpressionWrapper(F("segment_end") - Greatest("checked_at", Value(start)), output_field=DurationField())
        in_window = Q(segment_end__gt=start)
        aggregates[f"up_{days}"] = Sum(covered, filter=in_window & Q(status=HealthStatus.UP))
        aggregates[f"down_{days}"] = Sum(covered, filter=in_window & Q(status=HealthStatus.DOWN))
        aggregates[f"contracts_{days}"] = Count("contract_id", distinct=True, filter=in_window)
    totals = segments.aggregate(**aggregates)

    windows = []
    for days in WINDOW_DAYS:
        window_seconds = days * 86400
        up = totals[f"up_{days}"] or timedelta(0)
        down = totals[f"down_{days}"] or timedelta(0)
        windows.append(
            UptimeWindow(
                days=days,
                up_seconds=up.total_seconds(),
                down_seconds=down.total_seconds(),
                expected_seconds=window_seconds * totals[f"contracts_{days}"],
                min_known_seconds=window_seconds * settings.HEALTH_UPTIME_MIN_COVERAGE,
            )
        )
    return windows


def contract_uptime(*, contract: Contract, now: datetime | None = None) -> list[UptimeWindow]:
    """Return the contract's uptime over the last 1, 7 and 30 days."""
    return _uptime_windows(HealthCheck.objects.filter(contract=contract), now=now or timezone.now())


def provider_uptime(*, provider: ProviderProfile, now: datetime | None = None) -> list[UptimeWindow]:
    """Return the uptime of all the provider's contracts together over the last 1, 7 and 30 days.

    Every contract adds its own up and down time, so a provider with ten servers has ten
    times the known time of one.
    """
    return _uptime_windows(HealthCheck.objects.filter(contract__provider=provider), now=now or timezone.now())


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


def _latency_series(checks: QuerySet[HealthCheck], *, now: datetime, hours: int) -> LatencySeries:
    """Group `checks` of the last `hours` hours by UTC hour in the database; the current hour is the last bucket."""
    first_hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    rows = (
        checks.filter(checked_at__gte=first_hour, checked_at__lte=now)
        .annotate(hour=TruncHour("checked_at", tzinfo=UTC))
        .values("hour")
        .annotate(
            mean_latency_ms=Avg("latency_ms", filter=Q(status=HealthStatus.UP)),
            max_latency_ms=Max("latency_ms", filter=Q(status=HealthStatus.UP)),
            up_count=Count("id", filter=Q(status=HealthStatus.UP)),
            down_count=Count("id", filter=Q(status=HealthStatus.DOWN)),
        )
        .order_by("hour")
    )
    by_hour = {row["hour"]: row for row in rows}
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
    return _latency_series(HealthCheck.objects.filter(contract=contract), now=now or timezone.now(), hours=hours)


def provider_latency_series(*, provider: ProviderProfile, now: datetime | None = None, hours: int = 24) -> LatencySeries:
    """Return the probe latency per hour of all the provider's contracts over the last `hours` hours."""
    return _latency_series(
        HealthCheck.objects.filter(contract__provider=provider), now=now or timezone.now(), hours=hours
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
