"""Regression tests for billing defects found by a review of card payments, refunds and billing pages.

Each test checks one defect and fails until that defect is fixed. Card
payments run against the loopback Stripe API with the real `stripe` client; nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.core.exceptions import ValidationError
from django.db.models import Sum
from django.urls import reverse
from rest_framework.test import APIClient

from billing import stripe_billing
from billing.ledger import ledger_record_payment
from billing.models import BillingProfile, CreditNote, LedgerEntry, Payment, PaymentStatus, Refund
from billing.services import payment_collect
from billing.vat import validate_vat_id
from marketplace.models import Contract, ContractStatus
from marketplace.services import contracts as contract_services
from tests.billing_documents import make_card_payment, make_rental
from tests.factories import make_offering, make_provider, make_user, ssh_public_key
from tests.peers.stripe_api import StripeError

CHECKOUT_LIFETIME_SECONDS = 24 * 60 * 60


@pytest.fixture
def card_offering(stripe_api):
    provider = make_provider(display_name="Review Cloud", auto_accept=False)
    return make_offering(provider=provider, slug="review-card", name="Review card box", price_cents=2500)


@pytest.fixture
def hook(live_server, stripe_api):
    return f"{live_server.url}/billing/stripe/webhook/"


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _rent_by_card(offering, tenant) -> Contract:
    body = _api(tenant).post(
        "/api/v1/rentals/",
        {"offering": offering.slug, "ssh_public_key": ssh_public_key(), "idempotency_key": f"review-{time.monotonic_ns()}"},
        format="json",
    ).json()
    return Contract.objects.get(public_id=body["public_id"])


def _paid_rental(stripe_api, hook, offering) -> Contract:
    contract = _rent_by_card(offering, make_user())
    stripe_api.complete_checkout(contract.checkout_sessions.get().session_id)
    stripe_api.deliver_to(hook)
    contract.refresh_from_db()
    assert contract.status == ContractStatus.PAID
    return contract


# --- refunds -----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_dashboard_refund_settles_failed_refund(stripe_api, hook, card_offering):
    contract = _paid_rental(stripe_api, hook, card_offering)
    payment = contract.payments.get()
    refund = Refund.objects.create(payment=payment, amount_cents=payment.amount_cents, reason="Rejected by the provider.")
    stripe_api.fail_next_refund(code="card_declined")
    assert stripe_billing.refund_execute(refund_id=refund.pk).status == Refund.Status.FAILED

    # Staff refund the charge by hand in the Stripe Dashboard, so no metadata names our refund row.
    stripe_api.create_refund({"charge": payment.stripe_charge_id})
    stripe_api.deliver_to(hook)
    stripe_billing.refund_execute(refund_id=refund.pk)

    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REFUNDED
    assert not Refund.objects.filter(payment=payment, status=Refund.Status.FAILED).exists()
    assert CreditNote.objects.filter(refund__payment=payment).count() == 1
    assert LedgerEntry.objects.filter(payment=payment).aggregate(total=Sum("amount_cents"))["total"] == 0


@pytest.mark.django_db(transaction=True)
def test_failed_refund_page_never_says_refunded(stripe_api, hook, card_offering, client):
    contract = _paid_rental(stripe_api, hook, card_offering)
    # Without a payment intent or charge every refund try fails, whichever process runs it.
    Payment.objects.filter(contract=contract).update(stripe_payment_intent_id="", stripe_charge_id="")
    contract_services.contract_cancel(contract=contract, actor=contract.tenant)
    refund = Refund.objects.get(payment__contract=contract)
    stripe_billing.refund_execute(refund_id=refund.pk)
    client.force_login(contract.tenant)

    page = client.get(contract.get_absolute_url()).text

    assert "Refund failed" in page
    assert "refunded in full" not in page


@pytest.mark.django_db(transaction=True)
def test_reject_message_does_not_claim_refund_done(stripe_api, hook, card_offering, client):
    contract = _paid_rental(stripe_api, hook, card_offering)
    client.force_login(contract.provider.user)

    response = client.post(
        reverse("marketplace:rental_reject", kwargs={"public_id": contract.public_id}),
        {"reason": "No capacity left in this location."},
        follow=True,
    )

    messages = [str(message) for message in response.context["messages"]]
    assert messages
    assert not any("refunded in full" in message for message in messages), messages


# --- checkout ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_second_checkout_never_charges_twice(stripe_api, hook, card_offering):
    tenant = make_user()
    # The first checkout was opened 23 h 57 min ago, so it expires in 3 minutes but is still open.
    stripe_api.now = int(time.time()) - CHECKOUT_LIFETIME_SECONDS + 180
    contract = _rent_by_card(card_offering, tenant)
    stripe_api.now = None
    first = contract.checkout_sessions.get().session_id

    response = _api(tenant).post(f"/api/v1/rentals/{contract.public_id}/pay/")
    second = response.json()["payment"]["checkout_url"].rsplit("/", 1)[1]
    for session_id in (second, first):
        try:
            stripe_api.complete_checkout(session_id)
        except StripeError:
            pass  # A session the platform expired cannot be paid any more.
    stripe_api.deliver_to(hook)

    assert response.status_code == 200
    assert Payment.objects.filter(contract=contract, status=PaymentStatus.SUCCEEDED).count() == 1
    live = [
        subscription for subscription in stripe_api.objects("subscription")
        if subscription["metadata"].get("contract_id") == str(contract.public_id) and subscription["status"] != "canceled"
    ]
    assert len(live) == 1, live


# --- billing details ---------------------------------------------------------------------------


@pytest.mark.parametrize("vat_id", ["DE１２３４５６７８９", "DE١٢٣٤٥٦٧٨٩", "DE۱۲۳۴۵۶۷۸۹"])
def test_vat_id_rejects_non_ascii_digits(vat_id):
    with pytest.raises(ValidationError):
        validate_vat_id(vat_id)


@pytest.mark.django_db
def test_api_profile_rejects_non_ascii_vat_digits():
    user = make_user()
    body = {
        "legal_name": "Example GmbH", "address_line1": "Hauptstraße 1", "city": "Berlin", "country": "DE",
        "is_business": True, "vat_id": "DE１２３４５６７８９",
    }

    response = _api(user).put("/api/v1/billing/profile/", body, format="json")

    assert response.status_code == 400, response.json()
    assert "vat_id" in response.json()
    assert not BillingProfile.objects.filter(user=user).exists()


@pytest.mark.django_db
def test_profile_form_vat_error_uses_submitted_country(client):
    user = make_user()
    BillingProfile.objects.create(
        user=user, legal_name="Exemple SARL", address_line1="1 rue de Rivoli", city="Paris", country="FR",
        is_business=True, vat_id="FR12345678901",
    )
    client.force_login(user)

    response = client.post(
        reverse("billing:overview"),
        {
            "legal_name": "Example GmbH", "address_line1": "Hauptstraße 1", "address_line2": "", "postal_code": "",
            "city": "Berlin", "country": "DEU", "is_business": "on", "vat_id": "DE123456789",
        },
    )

    errors = response.context["form"].errors
    assert "country" in errors
    assert "FR" not in " ".join(errors.get("vat_id", [])), errors["vat_id"]
    assert BillingProfile.objects.get(user=user).country == "FR"


# --- earnings page -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_earnings_card_only_has_no_sandbox_note(client):
    contract = make_rental(tenant_email="card-buyer@example.com", provider_email="card-seller@example.com")
    payment = make_card_payment(contract, amount_cents=1190)
    ledger_record_payment(payment=payment)
    client.force_login(contract.provider.user)

    page = client.get(reverse("billing:earnings")).text

    assert LedgerEntry.objects.filter(beneficiary=contract.provider.user).exists()
    assert "Sandbox payments move no real money" not in page


@pytest.mark.django_db
def test_earnings_far_future_month_is_not_500(client):
    contract = make_rental(tenant_email="buyer9@example.com", provider_email="seller9@example.com")
    contract = contract_services.contract_pay(contract=contract, actor=contract.tenant)
    payment_collect(
        contract=contract,
        period_start=dt.datetime(2026, 5, 1, tzinfo=dt.UTC),
        period_end=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
    )
    client.force_login(contract.provider.user)

    response = client.get(reverse("billing:earnings"), {"month": "9999-12"})

    assert response.status_code in (200, 400, 404)


def test_live_key_with_sandbox_card_payments_refused(tmp_path):
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "STRIPE_SECRET_KEY": "sk_live_example",
        "STRIPE_FOR_SANDBOX_OFFERINGS": "true",
        "VAR_DIR": str(tmp_path),
        "DATABASE_URL": "sqlite:///" + str(tmp_path / "db.sqlite3"),
    }

    result = subprocess.run(
        [sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode != 0
    assert "STRIPE_FOR_SANDBOX_OFFERINGS is true with a live Stripe key" in result.stderr
