"""Contract lifecycle services: compare-and-set transitions, history rows, refunds, periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from billing.models import Payment, PaymentMethod, PaymentStatus
from marketplace.models import Contract, ContractStatus, Visibility
from marketplace.periods import add_months
from marketplace.services import contracts as contract_services
from provisioning import crypto
from provisioning.backends.base import ServerSpec
from provisioning.backends.sandbox import SandboxBackend
from provisioning.models import Backend
from provisioning.pipeline import LeaseLost, lease_claim, lease_release, lease_renew
from tests.journeys import make_offering, make_provider, make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def sandbox_offering():
    provider, account = make_provider(backend=Backend.SANDBOX)
    return make_offering(account=account, script=None, slug="sandbox-vm")


def create(tenant, key, offering, idempotency_key="k1"):
    contract, _ = contract_services.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=key, idempotency_key=idempotency_key
    )
    return contract


def test_create_snapshots_offering(sandbox_offering):
    tenant, key = make_tenant()

    contract = create(tenant, key, sandbox_offering)
    sandbox_offering.price_cents = 99_999
    sandbox_offering.save()
    contract.refresh_from_db()

    assert contract.status == ContractStatus.REQUESTED
    assert contract.price_cents == 574
    assert contract.server_type == "cx22"
    assert contract.backend == "sandbox"
    assert contract.commission_bps == 2000
    assert contract.events.get().to_status == ContractStatus.REQUESTED


def test_create_same_key_returns_same_contract(sandbox_offering):
    tenant, key = make_tenant()

    first, created_first = contract_services.contract_create(
        tenant=tenant, offering=sandbox_offering, ssh_public_key=key, idempotency_key="same"
    )
    second, created_second = contract_services.contract_create(
        tenant=tenant, offering=sandbox_offering, ssh_public_key=key, idempotency_key="same"
    )

    assert created_first is True
    assert created_second is False
    assert first.pk == second.pk
    assert Contract.objects.count() == 1


def test_create_rejects_bad_key(sandbox_offering):
    tenant, _ = make_tenant()

    with pytest.raises(ValidationError):
        create(tenant, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQ== short", sandbox_offering)

    assert Contract.objects.count() == 0


def test_create_rejects_private_offering(sandbox_offering):
    tenant, key = make_tenant()
    sandbox_offering.visibility = Visibility.PRIVATE
    sandbox_offering.save()

    with pytest.raises(ValidationError, match="private"):
        create(tenant, key, sandbox_offering)

    assert Contract.objects.count() == 0


def test_pay_auto_accepts_and_queues(sandbox_offering, django_capture_on_commit_callbacks):
    tenant, key = make_tenant()
    contract = create(tenant, key, sandbox_offering)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        contract = contract_services.contract_pay(contract=contract, actor=tenant)

    assert contract.status == ContractStatus.PROVISIONING
    assert contract.provisioning_step == "creating_server"
    payment = Payment.objects.get(contract=contract)
    assert payment.method == PaymentMethod.SANDBOX
    assert payment.amount_cents == 574
    assert payment.status == PaymentStatus.SUCCEEDED
    statuses = list(contract.events.values_list("to_status", flat=True))
    assert statuses == ["requested", "paid", "provisioning"]
    assert len(callbacks) >= 2  # the provisioning task and the notifications


def test_pay_twice_is_rejected(sandbox_offering):
    tenant, key = make_tenant()
    contract = create(tenant, key, sandbox_offering)
    contract_services.contract_pay(contract=contract, actor=tenant)

    with pytest.raises(contract_services.InvalidTransition):
        contract_services.contract_pay(contract=contract, actor=tenant)

    assert Payment.objects.filter(contract=contract).count() == 1


def test_self_rental_is_free(sandbox_offering):
    provider = sandbox_offering.provider.user
    key = make_tenant(email="other@example.com")[1]

    contract = create(provider, key, sandbox_offering)
    contract = contract_services.contract_pay(contract=contract, actor=provider)

    assert contract.is_self_rental is True
    assert contract.price_cents == 0
    assert contract.payments.get().method == PaymentMethod.FREE
    assert contract.payments.get().amount_cents == 0


def test_manual_accept_and_reject_refunds(sandbox_offering):
    profile = sandbox_offering.provider
    profile.auto_accept = False
    profile.save()
    tenant, key = make_tenant()
    contract = contract_services.contract_pay(contract=create(tenant, key, sandbox_offering), actor=tenant)
    assert contract.status == ContractStatus.PAID

    with pytest.raises(PermissionError):
        contract_services.contract_reject(contract=contract, actor=tenant, reason="no")
    contract = contract_services.contract_reject(contract=contract, actor=profile.user, reason="Host under maintenance")

    assert contract.status == ContractStatus.REJECTED
    assert contract.status_reason == "Host under maintenance"
    assert contract.payments.get().status == PaymentStatus.REFUNDED
    with pytest.raises(contract_services.InvalidTransition):
        contract_services.contract_accept(contract=contract, actor=profile.user)


def test_fail_refunds_and_records_reason(sandbox_offering):
    tenant, key = make_tenant()
    contract = contract_services.contract_pay(contract=create(tenant, key, sandbox_offering), actor=tenant)

    contract = contract_services.contract_fail(contract_id=contract.pk, reason="Recipe failed with exit code 3.")

    assert contract.status == ContractStatus.FAILED
    assert contract.status_reason == "Recipe failed with exit code 3."
    assert contract.payments.get().status == PaymentStatus.REFUNDED
    assert contract.payments.get().refunds.get().status == "succeeded"


def test_cancel_before_payment(sandbox_offering):
    tenant, key = make_tenant()
    contract = create(tenant, key, sandbox_offering)

    contract = contract_services.contract_cancel(contract=contract, actor=tenant)

    assert contract.status == ContractStatus.CANCELLED
    assert not contract.payments.exists()


def test_cancel_by_stranger_is_forbidden(sandbox_offering):
    tenant, key = make_tenant()
    stranger, _ = make_tenant(email="stranger@example.com")
    contract = create(tenant, key, sandbox_offering)

    with pytest.raises(PermissionError):
        contract_services.contract_cancel(contract=contract, actor=stranger)

    contract.refresh_from_db()
    assert contract.status == ContractStatus.REQUESTED


def test_activate_needs_server_address(sandbox_offering):
    tenant, key = make_tenant()
    contract = contract_services.contract_pay(contract=create(tenant, key, sandbox_offering), actor=tenant)

    with pytest.raises(contract_services.InvalidTransition):
        contract_services.contract_activate(contract_id=contract.pk, worker="w")

    contract.refresh_from_db()
    assert contract.status == ContractStatus.PROVISIONING


def test_renewal_extends_paid_period(sandbox_offering):
    tenant, key = make_tenant()
    contract = contract_services.contract_pay(contract=create(tenant, key, sandbox_offering), actor=tenant)
    start = datetime(2027, 1, 31, 10, 0, tzinfo=UTC)
    Contract.objects.filter(pk=contract.pk).update(
        status=ContractStatus.ACTIVE, paid_at=start, paid_until=add_months(start, 1)
    )

    ended = contract_services.contracts_end_expired(now=datetime(2027, 2, 28, 10, 0, 1, tzinfo=UTC))

    contract.refresh_from_db()
    assert ended == []
    assert contract.paid_until == datetime(2027, 3, 31, 10, 0, tzinfo=UTC)
    assert contract.payments.count() == 2


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (datetime(2027, 1, 31, tzinfo=UTC), 1, datetime(2027, 2, 28, tzinfo=UTC)),
        (datetime(2028, 1, 31, tzinfo=UTC), 1, datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2027, 1, 31, tzinfo=UTC), 2, datetime(2027, 3, 31, tzinfo=UTC)),
        (datetime(2027, 12, 15, tzinfo=UTC), 1, datetime(2028, 1, 15, tzinfo=UTC)),
    ],
)
def test_add_months_calendar(start, months, expected):
    assert add_months(start, months) == expected


def test_add_months_keeps_anchor_day():
    february = datetime(2027, 2, 28, tzinfo=UTC)

    assert add_months(february, 1, anchor_day=31) == datetime(2027, 3, 31, tzinfo=UTC)


def test_crypto_round_trip_and_binding():
    sealed = crypto.encrypt("hcloud-token-secret", associated_data="provisioning.CloudAccount.token")

    assert "hcloud-token-secret" not in sealed.ciphertext
    assert crypto.decrypt(sealed, associated_data="provisioning.CloudAccount.token") == "hcloud-token-secret"
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(sealed, associated_data="marketplace.Contract.platform_key")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(crypto.EncryptedValue(sealed.ciphertext, "missing"), associated_data="x")


def test_sandbox_create_is_idempotent(sandbox_offering):
    backend = SandboxBackend(account=sandbox_offering.cloud_account, boot_seconds=0)
    spec = ServerSpec(name="cm-1", server_type="cx22", image="ubuntu-24.04", location="fsn1", labels={"c": "1"})

    first = backend.create_server(spec)
    second = backend.create_server(spec)
    backend.delete_server(first.id, labels={"c": "1"})

    assert first.id == second.id
    assert first.ipv4.startswith("203.0.113.")
    assert backend.find_servers({"c": "1"}) == []


def test_lease_is_exclusive(sandbox_offering):
    tenant, key = make_tenant()
    contract = contract_services.contract_pay(contract=create(tenant, key, sandbox_offering), actor=tenant)

    first = lease_claim(contract_id=contract.pk, owner="worker-a")
    second = lease_claim(contract_id=contract.pk, owner="worker-b")
    Contract.objects.filter(pk=contract.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    taken_over = lease_claim(contract_id=contract.pk, owner="worker-b")

    assert first is not None
    assert second is None
    assert taken_over is not None
    with pytest.raises(LeaseLost):
        lease_renew(first)
    lease_release(first)  # a stale owner's release changes nothing
    contract.refresh_from_db()
    assert contract.lease_owner == "worker-b"


def test_real_cloud_needs_real_payment(settings):
    settings.SANDBOX_PAYMENTS_FOR_REAL_BACKENDS = False
    provider, account = make_provider(backend=Backend.HETZNER, token="secret-token")
    offering = make_offering(account=account, script=None, slug="real-vm")
    tenant, key = make_tenant()

    with pytest.raises(ValidationError, match="needs card payment"):
        create(tenant, key, offering)
    own, _ = contract_services.contract_create(
        tenant=provider, offering=offering, ssh_public_key=key, idempotency_key="own"
    )

    assert Contract.objects.filter(tenant=tenant).count() == 0
    assert own.is_self_rental is True


def test_price_change_after_viewing_is_rejected(sandbox_offering):
    tenant, key = make_tenant()
    shown_price = sandbox_offering.price_cents
    sandbox_offering.price_cents = 9_999_900
    sandbox_offering.save()

    with pytest.raises(ValidationError, match="price of this offering changed"):
        contract_services.contract_create(
            tenant=tenant, offering=sandbox_offering, ssh_public_key=key, idempotency_key="p1",
            expected_price_cents=shown_price,
        )

    assert Contract.objects.count() == 0


def test_renewal_failure_ends_rental(sandbox_offering, settings):
    tenant, key = make_tenant()
    contract = contract_services.contract_pay(contract=create(tenant, key, sandbox_offering), actor=tenant)
    Contract.objects.filter(pk=contract.pk).update(
        status=ContractStatus.ACTIVE, backend="hetzner", paid_until=timezone.now() - timedelta(seconds=1)
    )
    settings.SANDBOX_PAYMENTS_FOR_REAL_BACKENDS = False

    ended = contract_services.contracts_end_expired()

    contract.refresh_from_db()
    assert ended == [contract.pk]
    assert contract.status == ContractStatus.TERMINATING
    assert "Renewal payment failed" in contract.status_reason


@pytest.mark.django_db(transaction=True)
def test_contract_lock_leaves_users_unlocked(sandbox_offering):
    """Locking a contract must not lock its tenant's and provider's user rows.

    Regression: `select_for_update()` with `select_related` locked the joined user rows too, so
    a worker failing a contract and another inserting a notification for the provider (whose
    foreign-key check takes KEY SHARE on the user row) deadlocked.
    """
    import threading

    from django.db import connection, connections, transaction

    tenant, key = make_tenant()
    contract = create(tenant, key, sandbox_offering)
    results: list[str] = []

    def lock_user_elsewhere() -> None:
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT id FROM marketplace_user WHERE id = %s FOR KEY SHARE NOWAIT", [tenant.pk])
                results.append("free")
        except Exception as exc:  # noqa: BLE001 - the lock error is the result
            results.append(type(exc).__name__)
        finally:
            connections["default"].close()

    with transaction.atomic():
        contract_services._lock(contract.pk)
        thread = threading.Thread(target=lock_user_elsewhere)
        thread.start()
        thread.join(timeout=10)

    assert connection.vendor == "postgresql"
    assert results == ["free"]
