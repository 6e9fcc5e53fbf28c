"""Time-weighted uptime per contract and per provider, and the hourly latency series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from marketplace.models import Contract, ContractStatus
from provisioning.health import health_check_record, health_rollups_update
from provisioning.models import HealthSource
from provisioning.uptime import (
    contract_latency_series,
    contract_uptime,
    provider_latency_series,
    provider_uptime,
)
from tests.factories import make_contract, make_offering, make_provider, make_user

# Midnight UTC, so the 24-hour window is exactly the calendar day 2026-03-01.
NOW = datetime(2026, 3, 2, tzinfo=UTC)
DAY_START = NOW - timedelta(days=1)
STEP = timedelta(minutes=10)


@pytest.fixture(autouse=True)
def _health_settings(settings):
    settings.HEALTH_PROBE_INTERVAL_SECONDS = 600
    settings.HEALTH_CHECK_MAX_COVER_SECONDS = 1200
    settings.HEALTH_UPTIME_MIN_COVERAGE = 0.5
    settings.HEALTH_FAILURES_BEFORE_ALERT = 3


@pytest.fixture
def provider(db):
    return make_provider(display_name="Uptime Hosting")


def _active_contract(provider) -> Contract:
    contract = make_contract(tenant=make_user(), offering=make_offering(provider=provider))
    # Test setup only: the server is running.
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.ACTIVE, ip_address="127.0.0.1")
    contract.refresh_from_db()
    return contract


def _record(contract, at: datetime, up: bool, latency_ms: float = 12.0) -> None:
    health_check_record(
        contract=contract,
        source=HealthSource.PLATFORM,
        up=up,
        latency_ms=latency_ms if up else None,
        checked_at=at,
    )


def _times(start: datetime, end: datetime):
    at = start
    while at < end:
        yield at
        at += STEP


def _roll_up_if(rollups: bool, now: datetime = NOW) -> None:
    """Sum the complete hours into rollups, so the reads below take the rollup path."""
    if rollups:
        assert health_rollups_update(now=now, max_hours=1000) > 0


def _window(windows, days: int):
    return next(window for window in windows if window.days == days)


@pytest.mark.django_db
@pytest.mark.parametrize("rollups", [False, True], ids=["checks", "rollups"])
def test_uptime_day_with_gap(provider, rollups):
    contract = _active_contract(provider)
    # The day before: one check at 23:50, which covers the 10 minutes up to midnight.
    _record(contract, DAY_START - STEP, up=True)
    # 00:00-05:50 up; nothing from 06:00 to 12:00; 12:00-23:50 up except 15:00-15:20 down.
    for at in _times(DAY_START, DAY_START + timedelta(hours=6)):
        _record(contract, at, up=True)
    down = {DAY_START + timedelta(hours=15, minutes=minutes) for minutes in (0, 10, 20)}
    for at in _times(DAY_START + timedelta(hours=12), NOW):
        _record(contract, at, up=at not in down)

    _roll_up_if(rollups)
    windows = contract_uptime(contract=contract, now=NOW)
    day = _window(windows, 1)
    week = _window(windows, 7)

    # The 05:50 check covers 20 minutes (the maximum), so 06:10-12:00 is unknown.
    assert day.up_seconds == 6 * 3600 + 10 * 60 + 12 * 3600 - 30 * 60
    assert day.down_seconds == 30 * 60
    assert day.known_seconds == 18 * 3600 + 10 * 60
    assert day.coverage == pytest.approx(65400 / 86400)
    assert day.has_enough_data is True
    assert day.uptime == pytest.approx(63600 / 65400)
    assert week.up_seconds == day.up_seconds + 600
    assert week.has_enough_data is False
    assert week.uptime is None


@pytest.mark.django_db
def test_uptime_gap_is_not_healthy(provider):
    contract = _active_contract(provider)
    # Up for the first 13 hours, then silent: the server may be gone, so no 100 % for the day.
    for at in _times(DAY_START, DAY_START + timedelta(hours=13)):
        _record(contract, at, up=True)

    day = _window(contract_uptime(contract=contract, now=NOW), 1)

    assert day.known_seconds == 13 * 3600 + 10 * 60
    assert day.coverage < 0.6
    assert day.uptime == 1.0
    assert day.has_enough_data is True

    only_hours = _window(contract_uptime(contract=contract, now=NOW + timedelta(days=1)), 1)

    assert only_hours.known_seconds == 0
    assert only_hours.uptime is None


@pytest.mark.django_db
@pytest.mark.parametrize("rollups", [False, True], ids=["checks", "rollups"])
def test_uptime_flapping_vm(provider, rollups):
    contract = _active_contract(provider)
    for index, at in enumerate(_times(DAY_START, NOW)):
        _record(contract, at, up=index % 2 == 0)
    _roll_up_if(rollups)

    day = _window(contract_uptime(contract=contract, now=NOW), 1)

    assert day.up_seconds == 12 * 3600
    assert day.down_seconds == 12 * 3600
    assert day.coverage == 1.0
    assert day.uptime == 0.5
    # Never two failures in a row, so no "failing" notification was sent.
    assert contract.notifications.filter(event__startswith="health_check").count() == 0
    assert contract.health_state.consecutive_failures == 1
    assert contract.health_state.failing_since is None


@pytest.mark.django_db
def test_uptime_no_data(provider):
    contract = _active_contract(provider)

    windows = contract_uptime(contract=contract, now=NOW)

    assert [window.days for window in windows] == [1, 7, 30]
    for window in windows:
        assert window.known_seconds == 0
        assert window.coverage == 0.0
        assert window.has_enough_data is False
        assert window.uptime is None


@pytest.mark.django_db
def test_uptime_one_hour_is_not_enough(provider):
    contract = _active_contract(provider)
    for at in _times(NOW - timedelta(hours=1), NOW):
        _record(contract, at, up=True)

    day = _window(contract_uptime(contract=contract, now=NOW), 1)

    assert day.known_seconds == 3600
    assert day.uptime is None


@pytest.mark.django_db
@pytest.mark.parametrize("rollups", [False, True], ids=["checks", "rollups"])
def test_provider_uptime_adds_contract_time(provider, rollups):
    healthy = _active_contract(provider)
    broken = _active_contract(provider)
    other_provider_contract = _active_contract(make_provider())
    for at in _times(DAY_START, NOW):
        _record(healthy, at, up=True)
        _record(broken, at, up=False)
        _record(other_provider_contract, at, up=True)
    _roll_up_if(rollups)

    day = _window(provider_uptime(provider=provider, now=NOW), 1)

    assert day.up_seconds == 86400
    assert day.down_seconds == 86400
    assert day.expected_seconds == 2 * 86400
    assert day.coverage == 1.0
    assert day.uptime == 0.5


@pytest.mark.django_db
@pytest.mark.parametrize("rollups", [False, True], ids=["checks", "rollups"])
def test_latency_series_hourly(provider, rollups):
    contract = _active_contract(provider)
    _record(contract, NOW - timedelta(minutes=50), up=True, latency_ms=10.0)
    _record(contract, NOW - timedelta(minutes=40), up=True, latency_ms=30.0)
    _record(contract, NOW - timedelta(minutes=30), up=False)
    _record(contract, NOW - timedelta(hours=5, minutes=30), up=True, latency_ms=5.0)
    # Older than the 24 hours shown.
    _record(contract, NOW - timedelta(hours=30), up=True, latency_ms=500.0)
    _roll_up_if(rollups)

    # One second before midnight, so the last bucket is the hour 23:00-24:00.
    series = contract_latency_series(contract=contract, now=NOW - timedelta(seconds=1))

    assert len(series.buckets) == 24
    assert series.buckets[-1].start == NOW - timedelta(hours=1)
    assert series.buckets[-1].mean_latency_ms == 20.0
    assert series.buckets[-1].max_latency_ms == 30.0
    assert series.buckets[-1].down_count == 1
    assert series.buckets[-6].mean_latency_ms == 5.0
    assert series.check_count == 4
    assert series.down_count == 1
    assert series.mean_latency_ms == pytest.approx(15.0)
    assert series.max_latency_ms == 30.0
    assert provider_latency_series(provider=provider, now=NOW - timedelta(seconds=1)).check_count == 4
    assert provider_latency_series(provider=make_provider(), now=NOW).has_checks is False


@pytest.mark.django_db
def test_late_check_updates_rollups(provider):
    contract = _active_contract(provider)
    for at in _times(DAY_START, NOW):
        if at != DAY_START + timedelta(hours=5):
            _record(contract, at, up=True)
    _roll_up_if(True)
    before = _window(contract_uptime(contract=contract, now=NOW), 1)

    # An agent's down report for the one missing slot arrives after its hour was rolled up.
    _record(contract, DAY_START + timedelta(hours=5), up=False)
    after = _window(contract_uptime(contract=contract, now=NOW), 1)

    assert before.down_seconds == 0
    assert before.up_seconds == 86400
    assert after.down_seconds == 600
    assert after.up_seconds == 86400 - 600


@pytest.mark.django_db
def test_rollups_resume_after_backlog(provider):
    contract = _active_contract(provider)
    for at in _times(DAY_START, NOW):
        _record(contract, at, up=True)

    first = health_rollups_update(now=NOW, max_hours=10)
    second = health_rollups_update(now=NOW, max_hours=100)
    third = health_rollups_update(now=NOW, max_hours=100)

    assert first == 10
    assert second == 13
    assert third == 0
    assert contract.health_rollups.count() == 23
    assert _window(contract_uptime(contract=contract, now=NOW), 1).up_seconds == 86400
