"""Card billing end to end: the real `stripe` client against the loopback Stripe API, webhooks
delivered signed over HTTP to the running app (pytest-django's live server), and a real Celery
worker process for provisioning, refunds and subscription changes.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
from django.db.models import Sum

from billing.models import (
    CheckoutSession,
    Dispute,
    LedgerEntry,
    PaymentMethod,
    PaymentStatus,
    Refund,
    Subscription,
    WebhookEvent,
)
from billing.tasks import refunds_retry_due_task
from marketplace.models import ContractStatus
from marketplace.services import contracts as contract_services
from notifications.models import Notification
from provisioning.models import Backend
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.journeys import make_offering, make_provider, make_tenant, wait_for_status, wait_until

pytestmark = [pytest.mark.journey, pytest.mark.django_db(transaction=True)]

DAY = 24 * 3600


@pytest.fixture
def card_offering(stripe_api):
    provider, account = make_provider(backend=Backend.SANDBOX)
    offering = make_offering(account=account, script=None, slug="card-sandbox")
    offering.price_cents = 1299
    offering.save(update_fields=["price_cents"])
    return offering


def _webhook_url(live_server) -> str:
    return f"{live_server.url}/billing/stripe/webhook/"


def deliver(stripe_api, live_server, events=None) -> list[int]:
    statuses = stripe_api.deliver_to(_webhook_url(live_server), events=events)
    assert all(status == 200 for status in statuses), statuses
    return statuses


def rent_by_card(client, offering, tenant, key, *, idempotency_key="card-rental-form-0001"):
    """Submit the rent form as the tenant; return (contract, checkout session id)."""
    client.force_login(tenant)
    response = client.post(
        f"/offerings/{offering.slug}/rent/",
        {
            "public_key": key,
            "idempotency_key": idempotency_key,
            "expected_price_cents": offering.price_cents,
            "expected_recipe_version_id": offering.recipe_version_id or 0,
        },
    )
    assert response.status_code == 302, response.context["form"].errors if response.context else response.status_code
    contract = tenant.contracts.get(idempotency_key=idempotency_key)
    location = response["Location"]
    assert "/checkout/" in location, location
    return contract, urlsplit(location).path.rstrip("/").split("/")[-1]


def assert_ledger_balanced(contract) -> None:
    """Every payment's entries sum to its amount and every refund's to minus its amount."""
    for payment in contract.payments.all():
        booked = LedgerEntry.objects.filter(payment=payment, refund__isnull=True).aggregate(total=Sum("amount_cents"))["total"] or 0
        assert booked == payment.amount_cents, (payment.pk, booked, payment.amount_cents)
        for refund in payment.refunds.filter(status=Refund.Status.SUCCEEDED):
            reversed_total = LedgerEntry.objects.filter(refund=refund).aggregate(total=Sum("amount_cents"))["total"]
            assert reversed_total == -refund.amount_cents


def pay(stripe_api, live_server, session_id) -> None:
    stripe_api.complete_checkout(session_id)
    deliver(stripe_api, live_server)


def test_checkout_then_provisioning(client, stripe_api, live_server, card_offering, celery_worker_process):
    tenant, key = make_tenant()
    contract, session_id = rent_by_card(client, card_offering, tenant, key)
    assert contract.status == ContractStatus.REQUESTED
    assert contract.payment_method == PaymentMethod.STRIPE
    session = stripe_api.get(session_id)
    assert session["metadata"]["contract_id"] == str(contract.public_id)
    assert session["mode"] == "subscription"

    page = client.get(f"{contract.get_absolute_url()}?checkout=success").content.decode()
    assert "Waiting for payment confirmation" in page

    pay(stripe_api, live_server, session_id)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=60)

    assert contract.status == ContractStatus.ACTIVE, celery_worker_process.log_tail()
    payment = contract.payments.get()
    invoice = stripe_api.get(payment.stripe_invoice_id)
    assert payment.method == PaymentMethod.STRIPE
    assert payment.amount_cents == 1299
    assert payment.stripe_payment_intent_id == invoice["payment_intent"]
    assert payment.stripe_charge_id == invoice["charge"]
    assert contract.paid_until == payment.period_end
    subscription = Subscription.objects.get(contract=contract)
    assert stripe_api.get(subscription.subscription_id)["metadata"]["contract_id"] == str(contract.public_id)
    assert_ledger_balanced(contract)
    assert CheckoutSession.objects.get(session_id=session_id).status == CheckoutSession.Status.COMPLETE


def test_abandoned_checkout_then_retry(client, stripe_api, live_server, card_offering):
    tenant, key = make_tenant()
    contract, first_session = rent_by_card(client, card_offering, tenant, key)

    # The tenant leaves Stripe's page; the session expires and Stripe sends checkout.session.expired.
    stripe_api.expire_checkout_session(first_session)
    deliver(stripe_api, live_server)
    page = client.get(f"{contract.get_absolute_url()}?checkout=cancelled").content.decode()
    assert "Not paid yet" in page
    assert "Retry payment" in page

    response = client.post(f"{contract.get_absolute_url()}pay/")
    assert response.status_code == 302
    second_session = urlsplit(response["Location"]).path.rstrip("/").split("/")[-1]
    assert second_session != first_session
    # A second click reuses the open session instead of opening a third.
    again = client.post(f"{contract.get_absolute_url()}pay/")
    assert urlsplit(again["Location"]).path.rstrip("/").split("/")[-1] == second_session

    pay(stripe_api, live_server, second_session)
    contract.refresh_from_db()
    assert contract.status in (ContractStatus.PAID, ContractStatus.PROVISIONING, ContractStatus.ACTIVE)
    assert contract.payments.count() == 1
    assert_ledger_balanced(contract)


def test_same_event_three_times_applies_once(client, stripe_api, live_server, card_offering):
    card_offering.provider.auto_accept = False
    card_offering.provider.save(update_fields=["auto_accept"])
    tenant, key = make_tenant()
    contract, session_id = rent_by_card(client, card_offering, tenant, key)
    stripe_api.complete_checkout(session_id)
    paid_event = stripe_api.events_of_type("invoice.paid")[-1]

    for _ in range(3):
        deliver(stripe_api, live_server, events=[paid_event])

    contract.refresh_from_db()
    assert contract.status == ContractStatus.PAID
    assert contract.payments.count() == 1
    assert LedgerEntry.objects.filter(contract=contract).count() == 2  # platform and provider
    assert WebhookEvent.objects.filter(event_id=paid_event["id"]).count() == 1
    assert_ledger_balanced(contract)


def test_invoice_paid_before_checkout_completed(client, stripe_api, live_server, card_offering):
    card_offering.provider.auto_accept = False
    card_offering.provider.save(update_fields=["auto_accept"])
    tenant, key = make_tenant()
    contract, session_id = rent_by_card(client, card_offering, tenant, key)
    stripe_api.complete_checkout(session_id)
    paid = stripe_api.events_of_type("invoice.paid")[-1]
    completed = stripe_api.events_of_type("checkout.session.completed")[-1]

    deliver(stripe_api, live_server, events=[paid, completed])

    contract.refresh_from_db()
    assert contract.status == ContractStatus.PAID
    assert contract.payments.count() == 1
    assert Subscription.objects.get(contract=contract).subscription_id == completed["data"]["object"]["subscription"]
    assert CheckoutSession.objects.get(session_id=session_id).status == CheckoutSession.Status.COMPLETE


def _active_card_rental(client, stripe_api, live_server, offering, *, start_days_ago: int = 0, email="tenant@example.com"):
    """Rent by card with the fake Stripe's clock `start_days_ago` in the past; wait until active."""
    tenant, key = make_tenant(email=email)
    contract, session_id = rent_by_card(client, offering, tenant, key)
    if start_days_ago:
        stripe_api.now = int(time.time()) - start_days_ago * DAY
    pay(stripe_api, live_server, session_id)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=60)
    assert contract.status == ContractStatus.ACTIVE
    return contract


def test_renewal_extends_the_paid_period(client, stripe_api, live_server, card_offering, celery_worker_process):
    contract = _active_card_rental(client, stripe_api, live_server, card_offering)
    first_until = contract.paid_until
    subscription = Subscription.objects.get(contract=contract)

    stripe_api.renew(subscription.subscription_id)
    deliver(stripe_api, live_server)

    contract.refresh_from_db()
    payments = list(contract.payments.order_by("period_start"))
    assert len(payments) == 2
    assert payments[1].period_start == first_until
    assert contract.paid_until == payments[1].period_end > first_until
    assert contract.status == ContractStatus.ACTIVE
    assert_ledger_balanced(contract)
    assert LedgerEntry.objects.filter(contract=contract).aggregate(total=Sum("amount_cents"))["total"] == 2 * 1299


def test_renewal_failure_ends_in_termination(client, stripe_api, live_server, card_offering, celery_worker_process):
    # The first period started 40 days ago, so it is over when the renewal fails.
    contract = _active_card_rental(client, stripe_api, live_server, card_offering, start_days_ago=40)
    subscription = Subscription.objects.get(contract=contract)
    stripe_api.now = int(contract.paid_until.timestamp())

    stripe_api.renew(subscription.subscription_id, paid=False)
    deliver(stripe_api, live_server)
    contract.refresh_from_db()
    assert contract.status == ContractStatus.ACTIVE  # Stripe retries; the server keeps running.
    assert Notification.objects.filter(contract=contract, event="renewal_payment_failed", recipient=contract.tenant).count() == 1

    stripe_api.exhaust_retries(subscription.subscription_id)
    deliver(stripe_api, live_server)
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED}, timeout=60)
    assert contract.status == ContractStatus.TERMINATED
    assert "retries are exhausted" in contract.events.filter(to_status=ContractStatus.TERMINATING).get().reason
    assert contract.payments.count() == 1
    assert_ledger_balanced(contract)


def test_tenant_cancels_at_period_end(client, stripe_api, live_server, card_offering, celery_worker_process):
    contract = _active_card_rental(client, stripe_api, live_server, card_offering, start_days_ago=40)
    subscription = Subscription.objects.get(contract=contract)

    contract = contract_services.contract_cancel(contract=contract, actor=contract.tenant)
    assert contract.status == ContractStatus.ACTIVE
    assert contract.cancel_at_period_end
    wait_until(lambda: stripe_api.get(subscription.subscription_id)["cancel_at_period_end"], message="cancel_at_period_end at Stripe")

    # At period end Stripe cancels instead of renewing.
    stripe_api.now = int(contract.paid_until.timestamp())
    assert stripe_api.renew(subscription.subscription_id) is None
    deliver(stripe_api, live_server)
    contract = wait_for_status(contract, {ContractStatus.TERMINATED, ContractStatus.TERMINATION_FAILED}, timeout=60)
    assert contract.status == ContractStatus.TERMINATED
    assert contract.payments.count() == 1
    assert Subscription.objects.get(contract=contract).status == "canceled"
    assert_ledger_balanced(contract)


def test_provider_reject_refunds_in_full(client, stripe_api, live_server, card_offering, celery_worker_process):
    provider = card_offering.provider
    provider.auto_accept = False
    provider.save(update_fields=["auto_accept"])
    tenant, key = make_tenant()
    contract, session_id = rent_by_card(client, card_offering, tenant, key)
    pay(stripe_api, live_server, session_id)
    contract.refresh_from_db()
    assert contract.status == ContractStatus.PAID

    contract_services.contract_reject(contract=contract, actor=provider.user, reason="Host under maintenance.")
    payment = contract.payments.get()
    wait_until(lambda: Refund.objects.get(payment=payment).status == Refund.Status.SUCCEEDED, message="refund succeeded")

    payment.refresh_from_db()
    refund = payment.refunds.get()
    assert payment.status == PaymentStatus.REFUNDED
    stripe_refund = stripe_api.get(refund.reference)
    assert stripe_refund["amount"] == 1299
    assert stripe_refund["payment_intent"] == payment.stripe_payment_intent_id
    subscription = Subscription.objects.get(contract=contract)
    wait_until(lambda: stripe_api.get(subscription.subscription_id)["status"] == "canceled", message="subscription cancelled")
    # Stripe's charge.refunded for our own refund records nothing more.
    deliver(stripe_api, live_server)
    assert payment.refunds.count() == 1
    assert_ledger_balanced(contract)
    assert LedgerEntry.objects.filter(contract=contract).aggregate(total=Sum("amount_cents"))["total"] == 0


def test_provisioning_failure_refunds_in_full(client, stripe_api, live_server, celery_worker_process, hetzner_api, session_sshd):
    # A real cloud (the loopback Hetzner API and sshd) whose recipe exits 3.
    _, account = make_provider(email="hetzner-provider@example.com", token=TEST_HCLOUD_TOKEN)
    offering = make_offering(account=account, script="echo 'starting'\nexit 3\n", slug="card-hetzner")
    tenant, key = make_tenant()
    contract, session_id = rent_by_card(client, offering, tenant, key)
    assert contract.payment_method == PaymentMethod.STRIPE

    pay(stripe_api, live_server, session_id)
    contract = wait_for_status(contract, {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=90)

    assert contract.status == ContractStatus.FAILED
    assert "exit code 3" in contract.status_reason
    payment = contract.payments.get()
    wait_until(lambda: Refund.objects.get(payment=payment).status == Refund.Status.SUCCEEDED, message="refund succeeded")
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REFUNDED
    assert len([r for r in stripe_api.objects("refund") if r["payment_intent"] == payment.stripe_payment_intent_id]) == 1
    subscription = Subscription.objects.get(contract=contract)
    wait_until(lambda: stripe_api.get(subscription.subscription_id)["status"] == "canceled", message="subscription cancelled")
    wait_until(lambda: not hetzner_api.servers, message="the failed contract's server to be deleted")
    assert_ledger_balanced(contract)


def test_failed_refund_is_retried_until_it_succeeds(client, stripe_api, live_server, card_offering, celery_worker_process, django_user_model):
    django_user_model.objects.create_user(email="staff@example.com", password="staff-password-1", is_staff=True)
    provider = card_offering.provider
    provider.auto_accept = False
    provider.save(update_fields=["auto_accept"])
    tenant, key = make_tenant()
    contract, session_id = rent_by_card(client, card_offering, tenant, key)
    pay(stripe_api, live_server, session_id)

    stripe_api.fail_next_refund(code="api_error")
    contract_services.contract_reject(contract=contract, actor=provider.user, reason="Sold out.")
    payment = contract.payments.get()
    wait_until(lambda: Refund.objects.get(payment=payment).status == Refund.Status.FAILED, message="refund failed")

    payment.refresh_from_db()
    refund = payment.refunds.get()
    assert payment.status == PaymentStatus.REFUND_FAILED
    assert "api_error" in refund.error
    assert refund.next_attempt_at is not None
    assert Notification.objects.filter(event="refund_failed", contract=contract, recipient__email="staff@example.com").count() == 1
    client.force_login(tenant)
    page = client.get(contract.get_absolute_url()).content.decode()
    assert "Refund failed" in page
    assert ">Refunded<" not in page
    assert not LedgerEntry.objects.filter(refund=refund).exists()

    # The retry sweep runs once the backoff has passed.
    Refund.objects.filter(pk=refund.pk).update(next_attempt_at=refund.created_at)
    refunds_retry_due_task.apply()
    wait_until(lambda: Refund.objects.get(pk=refund.pk).status == Refund.Status.SUCCEEDED, message="refund retried")

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REFUNDED
    assert len([r for r in stripe_api.objects("refund") if r["payment_intent"] == payment.stripe_payment_intent_id]) == 1
    assert_ledger_balanced(contract)


def test_dispute_is_recorded_and_reported(client, stripe_api, live_server, card_offering, celery_worker_process, django_user_model):
    django_user_model.objects.create_user(email="staff@example.com", password="staff-password-1", is_staff=True)
    contract = _active_card_rental(client, stripe_api, live_server, card_offering)
    payment = contract.payments.get()

    stripe_api.dispute(payment.stripe_charge_id)
    deliver(stripe_api, live_server)
    deliver(stripe_api, live_server, events=stripe_api.events_of_type("charge.dispute.created"))  # a replay

    dispute = Dispute.objects.get()
    assert dispute.payment == payment
    assert dispute.amount_cents == 1299
    assert set(
        Notification.objects.filter(contract=contract, event="payment_disputed").values_list("recipient__email", flat=True)
    ) == {"staff@example.com", contract.provider.user.email}
    assert "disputed" in contract.events.order_by("-id").first().reason
    assert_ledger_balanced(contract)


def test_payment_after_cancellation_is_refunded(client, stripe_api, live_server, card_offering, celery_worker_process):
    tenant, key = make_tenant()
    contract, session_id = rent_by_card(client, card_offering, tenant, key)
    # The tenant pays in the checkout tab, then cancels before Stripe's events arrive.
    stripe_api.complete_checkout(session_id)
    contract_services.contract_cancel(contract=contract, actor=tenant)

    deliver(stripe_api, live_server)
    payment = contract.payments.get()
    wait_until(lambda: Refund.objects.get(payment=payment).status == Refund.Status.SUCCEEDED, message="late payment refunded")
    contract.refresh_from_db()
    assert contract.status == ContractStatus.CANCELLED
    subscription = Subscription.objects.get(contract=contract)
    wait_until(lambda: stripe_api.get(subscription.subscription_id)["status"] == "canceled", message="subscription cancelled")
    assert_ledger_balanced(contract)
