"""Recording health checks, failure notifications, the platform probe and retention."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from marketplace.models import Contract, ContractStatus
from notifications.models import Event, Notification
from provisioning.health import (
    health_check_record,
    health_checks_prune,
    health_probe_contracts,
    health_probes_claim_due,
    tcp_probe,
)
from provisioning.models import (
    Backend,
    HealthCheck,
    HealthProbeState,
    HealthRollupProgress,
    HealthSource,
    HealthStatus,
)
from provisioning.tasks import health_probe_due_task, health_rollups_update_task
from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_user,
)


@pytest.fixture(autouse=True)
def _health_settings(settings):
    settings.HEALTH_FAILURES_BEFORE_ALERT = 3
    settings.HEALTH_PROBE_INTERVAL_SECONDS = 60
    settings.HEALTH_PROBE_TIMEOUT_SECONDS = 2.0


@pytest.fixture
def listener():
    """A loopback TCP socket that accepts connections, like an SSH server's port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on: bound once to pick a free number, then released."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def _active_contract(*, port: int = 22, backend: str = Backend.HETZNER, provider=None) -> Contract:
    provider = provider or make_provider()
    account = make_cloud_account(owner=provider.user, backend=backend)
    contract = make_contract(tenant=make_user(), offering=make_offering(provider=provider, cloud_account=account))
    # Test setup only: the server is running at a loopback address.
    Contract.objects.filter(pk=contract.pk).update(
        status=ContractStatus.ACTIVE, ip_address="127.0.0.1", ssh_port=port, backend=backend
    )
    contract.refresh_from_db()
    return contract


def _record(contract, *, up: bool, at=None) -> HealthCheck:
    return health_check_record(
        contract=contract,
        source=HealthSource.PLATFORM,
        up=up,
        latency_ms=3.0 if up else None,
        checked_at=at or timezone.now(),
    )


def _health_notifications(contract, event: str) -> list[Notification]:
    return list(Notification.objects.filter(contract=contract, event=event).order_by("recipient_id"))


# --- recording and notifications ---------------------------------------------------------------


@pytest.mark.django_db
def test_record_stores_agent_report():
    contract = _active_contract()
    checked_at = timezone.now() - timedelta(seconds=5)

    check = health_check_record(
        contract=contract,
        source=HealthSource.AGENT,
        up=True,
        latency_ms=0.8,
        checked_at=checked_at,
        hypervisor_state="running",
        detail="x" * 900,
    )

    check.refresh_from_db()
    assert check.source == HealthSource.AGENT
    assert check.status == HealthStatus.UP
    assert check.latency_ms == 0.8
    assert check.checked_at == checked_at
    assert check.hypervisor_state == "running"
    assert len(check.detail) == 500


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"source": "satellite"}, "source"),
        ({"checked_at": timezone.now().replace(tzinfo=None)}, "checked_at"),
        ({"checked_at": timezone.now() + timedelta(hours=1)}, "checked_at"),
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"latency_ms": float("nan")}, "latency_ms"),
    ],
)
def test_record_rejects_invalid_values(arguments, field):
    contract = _active_contract()
    values = {"source": HealthSource.AGENT, "up": True, "latency_ms": 1.0, "checked_at": timezone.now(), **arguments}

    with pytest.raises(ValidationError) as raised:
        health_check_record(contract=contract, **values)

    assert field in raised.value.message_dict
    assert HealthCheck.objects.count() == 0


@pytest.mark.django_db
def test_record_rejects_check_before_activation():
    contract = _active_contract()
    Contract.objects.filter(pk=contract.pk).update(activated_at=timezone.now() - timedelta(hours=1))
    contract.refresh_from_db()

    with pytest.raises(ValidationError) as raised:
        _record(contract, up=True, at=timezone.now() - timedelta(days=20))

    assert "before the rental became active" in raised.value.message_dict["checked_at"][0]
    assert HealthCheck.objects.count() == 0


@pytest.mark.django_db
def test_duplicate_down_report_counted_once():
    contract = _active_contract()
    checked_at = timezone.now()

    checks = [
        health_check_record(contract=contract, source=HealthSource.AGENT, up=False, latency_ms=None, checked_at=checked_at)
        for _ in range(3)
    ]

    state = HealthProbeState.objects.get(contract=contract)
    assert len({check.pk for check in checks}) == 1
    assert HealthCheck.objects.filter(contract=contract).count() == 1
    assert state.consecutive_failures == 1
    assert _health_notifications(contract, Event.HEALTH_CHECK_FAILING) == []


@pytest.mark.django_db
def test_failing_notified_once_then_recovered_once():
    contract = _active_contract()
    start = timezone.now() - timedelta(minutes=30)

    for minute in range(2):
        _record(contract, up=False, at=start + timedelta(minutes=minute))
    after_two = _health_notifications(contract, Event.HEALTH_CHECK_FAILING)
    for minute in range(2, 6):
        _record(contract, up=False, at=start + timedelta(minutes=minute))
    failing = _health_notifications(contract, Event.HEALTH_CHECK_FAILING)
    for minute in range(6, 9):
        _record(contract, up=True, at=start + timedelta(minutes=minute))
    recovered = _health_notifications(contract, Event.HEALTH_CHECK_RECOVERED)

    assert after_two == []
    assert [notification.recipient for notification in failing] == sorted(
        [contract.tenant, contract.provider.user], key=lambda user: user.pk
    )
    assert "failing health checks" in failing[0].subject
    assert [notification.recipient for notification in recovered] == [notification.recipient for notification in failing]
    assert "reachable again" in recovered[0].subject
    assert _health_notifications(contract, Event.HEALTH_CHECK_FAILING) == failing


@pytest.mark.django_db
def test_second_outage_notified_again():
    contract = _active_contract()
    start = timezone.now() - timedelta(minutes=30)
    ups_and_downs = [False] * 3 + [True] + [False] * 3

    for minute, up in enumerate(ups_and_downs):
        _record(contract, up=up, at=start + timedelta(minutes=minute))

    assert len(_health_notifications(contract, Event.HEALTH_CHECK_FAILING)) == 4
    assert len(_health_notifications(contract, Event.HEALTH_CHECK_RECOVERED)) == 2
    assert contract.health_state.failing_since == start + timedelta(minutes=6)


@pytest.mark.django_db
def test_ended_rental_not_notified():
    contract = _active_contract()
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.TERMINATED)
    contract.refresh_from_db()
    start = timezone.now() - timedelta(minutes=30)

    for minute in range(4):
        _record(contract, up=False, at=start + timedelta(minutes=minute))
    _record(contract, up=True, at=start + timedelta(minutes=4))

    assert _health_notifications(contract, Event.HEALTH_CHECK_FAILING) == []
    assert _health_notifications(contract, Event.HEALTH_CHECK_RECOVERED) == []
    assert HealthCheck.objects.filter(contract=contract).count() == 5


@pytest.mark.django_db
def test_late_report_leaves_streak_alone():
    contract = _active_contract()
    now = timezone.now()
    _record(contract, up=True, at=now)

    for minutes in (3, 2, 1):
        _record(contract, up=False, at=now - timedelta(minutes=minutes))

    state = HealthProbeState.objects.get(contract=contract)
    assert state.consecutive_failures == 0
    assert state.failing_since is None
    assert HealthCheck.objects.filter(contract=contract).count() == 4
    assert _health_notifications(contract, Event.HEALTH_CHECK_FAILING) == []


# --- probe ------------------------------------------------------------------------------------


def test_tcp_probe_up_and_down(listener, closed_port):
    up = tcp_probe(host="127.0.0.1", port=listener, timeout=2.0)
    down = tcp_probe(host="127.0.0.1", port=closed_port, timeout=2.0)

    assert up.up is True
    assert 0 <= up.latency_ms < 2000
    assert up.detail == ""
    assert down.up is False
    assert down.latency_ms is None
    assert f"port {closed_port} failed" in down.detail


@pytest.mark.django_db
def test_probe_records_up_and_down(listener, closed_port):
    healthy = _active_contract(port=listener)
    broken = _active_contract(port=closed_port)

    up, down = health_probe_contracts(contract_ids=[healthy.pk, broken.pk])

    assert up.status == HealthStatus.UP
    assert up.source == HealthSource.PLATFORM
    assert up.latency_ms is not None
    assert down.status == HealthStatus.DOWN
    assert down.latency_ms is None
    assert "failed" in down.detail


@pytest.mark.django_db
def test_probe_failures_notify_and_recovery(listener, closed_port):
    contract = _active_contract(port=closed_port)

    for _ in range(4):
        health_probe_contracts(contract_ids=[contract.pk])
    Contract.objects.filter(pk=contract.pk).update(ssh_port=listener)
    health_probe_contracts(contract_ids=[contract.pk])
    health_probe_contracts(contract_ids=[contract.pk])

    assert len(_health_notifications(contract, Event.HEALTH_CHECK_FAILING)) == 2
    assert len(_health_notifications(contract, Event.HEALTH_CHECK_RECOVERED)) == 2
    statuses = list(HealthCheck.objects.filter(contract=contract).order_by("checked_at").values_list("status", flat=True))
    assert statuses == ["down"] * 4 + ["up"] * 2


@pytest.mark.django_db
def test_probe_skips_ineligible_contracts(listener):
    sandbox = _active_contract(port=listener, backend=Backend.SANDBOX)
    ended = _active_contract(port=listener)
    Contract.objects.filter(pk=ended.pk).update(status=ContractStatus.TERMINATED)
    no_address = _active_contract(port=listener)
    Contract.objects.filter(pk=no_address.pk).update(ip_address=None)

    claimed = health_probes_claim_due()

    assert claimed == []
    assert health_probe_contracts(contract_ids=[sandbox.pk, ended.pk, no_address.pk]) == []
    assert HealthCheck.objects.count() == 0


@pytest.mark.django_db
def test_claim_once_per_interval():
    first = _active_contract()
    second = _active_contract()
    now = timezone.now()

    claimed = health_probes_claim_due(now=now)
    again = health_probes_claim_due(now=now + timedelta(seconds=59))
    next_interval = health_probes_claim_due(now=now + timedelta(seconds=60))

    assert sorted(claimed) == sorted([first.pk, second.pk])
    assert again == []
    assert sorted(next_interval) == sorted([first.pk, second.pk])


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_never_overlap():
    contracts = [_active_contract() for _ in range(30)]
    now = timezone.now()
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def claim() -> None:
        try:
            results.append(health_probes_claim_due(now=now, limit=7))
        except BaseException as exc:  # Reported by the assert below, not lost in the thread.
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    claimed = [contract_id for result in results for contract_id in result]
    assert errors == []
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= {contract.pk for contract in contracts}


@pytest.mark.django_db
def test_prune_deletes_old_checks(settings):
    settings.HEALTH_CHECK_RETENTION_DAYS = 90
    contract = _active_contract()
    now = timezone.now()
    _record(contract, up=True, at=now - timedelta(days=91))
    recent = _record(contract, up=True, at=now - timedelta(days=89))

    deleted = health_checks_prune(now=now)

    assert deleted == 1
    assert list(HealthCheck.objects.all()) == [recent]


# --- with a real worker -------------------------------------------------------------------------


@pytest.mark.journey
@pytest.mark.django_db(transaction=True)
def test_probe_task_in_worker(celery_worker_process, session_sshd, closed_port):
    healthy = _active_contract(port=session_sshd.port)
    broken = _active_contract(port=closed_port)

    health_probe_due_task.delay()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and HealthCheck.objects.count() < 2:
        time.sleep(0.2)

    up = HealthCheck.objects.filter(contract=healthy).first()
    down = HealthCheck.objects.filter(contract=broken).first()
    assert up is not None, celery_worker_process.log_tail()
    assert down is not None, celery_worker_process.log_tail()
    assert up.status == HealthStatus.UP
    assert up.latency_ms is not None
    assert down.status == HealthStatus.DOWN
    assert HealthProbeState.objects.get(contract=healthy).next_probe_at > timezone.now()


@pytest.mark.journey
@pytest.mark.django_db(transaction=True)
def test_rollup_task_in_worker(celery_worker_process):
    contract = _active_contract()
    two_hours_ago = timezone.now() - timedelta(hours=2)
    _record(contract, up=True, at=two_hours_ago)

    health_rollups_update_task.delay()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not HealthRollupProgress.objects.exclude(rolled_until=None).exists():
        time.sleep(0.2)

    progress = HealthRollupProgress.objects.first()
    assert progress is not None, celery_worker_process.log_tail()
    assert progress.rolled_until > two_hours_ago
    assert contract.health_rollups.count() >= 1
