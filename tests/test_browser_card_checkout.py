"""Browser journey in headless Chromium: renting with a card through (fake) Stripe Checkout.

The tenant leaves the checkout page once, retries the payment from the rental page, pays, and
watches the page wait for Stripe's confirmation, then follow provisioning to Active after the
signed webhooks arrive over HTTP.
"""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from playwright.sync_api import Page, expect

from billing.models import PaymentMethod
from marketplace.models import Contract, ContractStatus, Offering
from tests.test_browser_journeys import (  # noqa: F401  (fixtures used by name)
    TENANT_EMAIL,
    TENANT_PASSWORD,
    _allow_orm_beside_playwright,
    browser,
    demo_data,
    fresh_public_key,
    page,
    poll_until_status,
    sign_in,
    status_badge,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_card_checkout_abandon_retry_and_pay(page: Page, live_server, stripe_api, celery_worker_process, demo_data):  # noqa: F811
    page.clock.install()
    offering = Offering.objects.filter(recipe_version__isnull=True, price_cents__gt=0).order_by("price_cents").first()
    page.goto(reverse("marketplace:rent", kwargs={"slug": offering.slug}))
    sign_in(page, email=TENANT_EMAIL, password=TENANT_PASSWORD)
    page.wait_for_url(re.compile(rf"/offerings/{offering.slug}/rent/$"))
    expect(page.get_by_text("Card, on Stripe's payment page, renewed monthly")).to_be_visible()

    page.get_by_label("Or paste a public key").fill(fresh_public_key())
    page.get_by_role("button", name="Continue to card payment").click()

    # Stripe's (fake) hosted page; the tenant leaves without paying.
    page.wait_for_url(re.compile(r"/checkout/cs_test_"))
    expect(page.locator("#amount")).to_have_text(f"{offering.price_cents / 100:.2f} {offering.currency}")
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_url(re.compile(r"/rentals/[0-9a-f-]{36}/\?checkout=cancelled$"))
    expect(page.get_by_text("Not paid yet.")).to_be_visible()
    contract = Contract.objects.get(tenant__email=TENANT_EMAIL)
    assert contract.status == ContractStatus.REQUESTED
    assert contract.payment_method == PaymentMethod.STRIPE

    # Retry payment goes back to the open checkout, and this time the tenant pays.
    page.get_by_role("button", name="Retry payment").click()
    page.wait_for_url(re.compile(r"/checkout/cs_test_"))
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_url(re.compile(r"/rentals/[0-9a-f-]{36}/\?checkout=success$"))
    expect(page.get_by_text("Waiting for payment confirmation.")).to_be_visible()
    expect(status_badge(page)).to_have_text("Awaiting payment")

    # Stripe's events reach the webhook; the page follows the rental to Active.
    statuses = stripe_api.deliver_to(f"{live_server.url}/billing/stripe/webhook/")
    assert statuses and all(status == 200 for status in statuses), statuses
    poll_until_status(page, "Active")

    contract.refresh_from_db()
    assert contract.status == ContractStatus.ACTIVE
    payment = contract.payments.get()
    assert payment.method == PaymentMethod.STRIPE
    assert payment.amount_cents == offering.price_cents

    page.goto(reverse("billing:payments"))
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=contract.offering_name))
    expect(row).to_contain_text("Card (Stripe)")
    expect(row.locator(".badge", has_text="Paid")).to_be_visible()
