"""Recovery paths of card billing: lost webhooks, unclear refund outcomes, abandoned checkouts.

The real `stripe` client talks to the loopback Stripe API; nothing is mocked.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing import stripe_billing
from billing.models import CheckoutSession, Payment, PaymentMethod, Refund, Subscription
from billing.tasks import stripe_sync_task
from marketplace.models import Contract, ContractStatus
from marketplace.services import contracts as contract_services
from tests.factories import make_offering, make_provider, make_user, ssh_public_key
from tests.journeys import wait_for_status, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def card_offering(stripe_api):
    provider = make_provider(display_name="Card Cloud", auto_accept=False)
    return make_offering(provider=provider, slug="card-small", name="Card small", price_cents=2500)


@pytest.fixture
def hook(live_server, stripe_api):
    return f"{live_server.url}/billing/stripe/webhook/"


def _paid_rental(stripe_api, hook, offering, *, email="tenant@example.com") -> Contract:
    tenant = make_user(email=email)
    client = APIClient()
    client.force_authenticate(tenant)
    body = client.post(
        "/api/v1/rentals/",
        {"offering": offering.slug, "ssh_public_key": ssh_public_key(), "idempotency_key": "recovery-rental-0001"},
        format="json",
    ).json()
    contract = Contract.objects.get(public_id=body["public_id"])
    stripe_api.complete_checkout(contract.checkout_sessions.get().session_id)
    stripe_api.deliver_to(hook)
    contract.refresh_from_db()
    assert contract.status == ContractStatus.PAID
    return contract


def test_refund_after_unclear_outcome_is_not_sent_twice(stripe_api, hook, card_offering):
    contract = _paid_rental(stripe_api, hook, card_offering)
    payment = contract.payments.get()
    # Stripe refunded on the first try, but the response never arrived (a timeout), so the row
    # is recorded as failed and retried later.
    refund = Refund.objects.create(payment=payment, amount_cents=payment.amount_cents, reason="Rejected.")
    stripe_api.create_refund({"payment_intent": payment.stripe_payment_intent_id, "metadata": {"refund_id": str(refund.pk)}})
    Refund.objects.filter(pk=refund.pk).update(status=Refund.Status.FAILED, attempts=1, error="Timed out")

    result = stripe_billing.refund_execute(refund_id=refund.pk)

    assert result.status == Refund.Status.SUCCEEDED
    assert len([r for r in stripe_api.objects("refund") if r["payment_intent"] == payment.stripe_payment_intent_id]) == 1
    payment.refresh_from_db()
    assert payment.status == "refunded"


def test_declined_refund_keeps_trying_then_stops(stripe_api, hook, card_offering, settings):
    settings.BILLING_REFUND_MAX_ATTEMPTS = 2
    contract = _paid_rental(stripe_api, hook, card_offering)
    payment = contract.payments.get()
    # The row as payment_refund() writes it, without queueing the task that a worker would run.
    refund = Refund.objects.create(payment=payment, amount_cents=payment.amount_cents, reason="Rejected by the provider.")

    for _ in range(2):
        stripe_api.fail_next_refund(code="card_declined")
        refund = stripe_billing.refund_execute(refund_id=refund.pk)

    assert refund.status == Refund.Status.FAILED
    assert refund.attempts == 2
    assert refund.next_attempt_at is None  # No more automatic tries: staff retry from the admin.
    assert "card_declined" in refund.error
    assert stripe_billing.refunds_due() == []


def test_lost_renewal_webhook_is_recovered_by_sync(stripe_api, hook, card_offering, settings):
    settings.STRIPE_RENEWAL_SYNC_AFTER_SECONDS = 0
    contract = _paid_rental(stripe_api, hook, card_offering)
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.ACTIVE)
    subscription = Subscription.objects.get(contract=contract)
    # Stripe renewed, but its invoice.paid event never reached the platform.
    stripe_api.renew(subscription.subscription_id)
    stripe_api.skip_pending_events()
    first_until = contract.paid_until
    Contract.objects.filter(pk=contract.pk).update(paid_until=timezone.now() - timedelta(minutes=5))

    stripe_sync_task.apply()

    contract.refresh_from_db()
    assert contract.payments.count() == 2
    assert contract.paid_until > first_until
    assert contract.status == ContractStatus.ACTIVE


def test_sync_ends_rental_whose_subscription_ended(stripe_api, hook, card_offering, settings, celery_worker_process):
    settings.STRIPE_RENEWAL_SYNC_AFTER_SECONDS = 0
    contract = _paid_rental(stripe_api, hook, card_offering)
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.ACTIVE, paid_until=timezone.now() - timedelta(hours=2))
    subscription = Subscription.objects.get(contract=contract)
    stripe_api.renew(subscription.subscription_id, paid=False)
    stripe_api.exhaust_retries(subscription.subscription_id)
    stripe_api.skip_pending_events()  # Both events were lost.

    stripe_sync_task.apply()

    contract.refresh_from_db()
    assert contract.status in (ContractStatus.TERMINATING, ContractStatus.TERMINATED)
    assert "canceled at Stripe" in contract.events.filter(to_status=ContractStatus.TERMINATING).get().reason
    # Let the worker finish deleting the server: the database is emptied after this test, and
    # emptying it while the worker holds row locks deadlocked once.
    wait_for_status(contract, ContractStatus.TERMINATED)


def test_abandoned_request_is_cancelled_and_checkout_expired(stripe_api, card_offering, settings, celery_worker_process):
    settings.CHECKOUT_ABANDONED_AFTER_SECONDS = 60
    tenant = make_user(email="tenant@example.com")
    client = APIClient()
    client.force_authenticate(tenant)
    body = client.post(
        "/api/v1/rentals/",
        {"offering": card_offering.slug, "ssh_public_key": ssh_public_key(), "idempotency_key": "abandoned-rental-0001"},
        format="json",
    ).json()
    Contract.objects.filter(public_id=body["public_id"]).update(created_at=timezone.now() - timedelta(hours=1))

    cancelled = contract_services.contracts_cancel_abandoned()

    contract = Contract.objects.get(public_id=body["public_id"])
    assert cancelled == [contract.pk]
    assert contract.status == ContractStatus.CANCELLED
    session = CheckoutSession.objects.get(contract=contract)
    wait_until(lambda: stripe_api.get(session.session_id)["status"] == "expired", message="checkout expired at Stripe")
    wait_until(
        lambda: CheckoutSession.objects.get(pk=session.pk).status == CheckoutSession.Status.EXPIRED,
        message="checkout marked expired",
    )
    assert not Payment.objects.filter(contract=contract, method=PaymentMethod.STRIPE).exists()
