"""The Stripe webhook endpoint's checks, the card-payment API and pages, against the loopback Stripe API.

Webhooks are posted over HTTP to the live server; no worker process is needed for these.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from rest_framework.test import APIClient

from billing import stripe_billing
from billing.models import CheckoutSession, Payment, StripeCustomer, WebhookEvent
from marketplace.models import ContractStatus
from tests.factories import make_offering, make_provider, make_user, ssh_public_key
from tests.peers.stripe_api import sign_payload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def card_offering(stripe_api):
    provider = make_provider(display_name="Card Cloud", auto_accept=False)
    return make_offering(provider=provider, slug="card-small", name="Card small", price_cents=2500)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"{}")
        except ValueError:
            return exc.code, {"raw": raw.decode(errors="replace")[:200]}


def _signed(payload: str, *, secret: str = "whsec_platform_loopback", timestamp: int | None = None) -> dict[str, str]:
    return {"Stripe-Signature": sign_payload(payload=payload, secret=secret, timestamp=timestamp or int(time.time()))}


def _event(event_type: str = "invoice.paid", **obj) -> dict:
    return {"id": f"evt_test_{time.monotonic_ns()}", "object": "event", "type": event_type, "created": int(time.time()),
            "livemode": False, "data": {"object": {"id": "in_x", "object": "invoice", **obj}}}


@pytest.fixture
def hook(live_server, stripe_api):
    return f"{live_server.url}/billing/stripe/webhook/"


def _api_rent(client: APIClient, offering, key="api-card-rental-0001"):
    return client.post(
        "/api/v1/rentals/",
        {"offering": offering.slug, "ssh_public_key": ssh_public_key(), "idempotency_key": key},
        format="json",
    )


# --- signature and replay checks -----------------------------------------------------------------


def test_unsigned_and_badly_signed_events_are_refused(hook):
    payload = json.dumps(_event("customer.created"))

    no_header = _post(hook, payload.encode(), {})
    wrong_secret = _post(hook, payload.encode(), _signed(payload, secret="whsec_someone_else"))
    tampered = _post(hook, payload.replace("customer.created", "invoice.paid").encode(), _signed(payload))
    stale = _post(hook, payload.encode(), _signed(payload, timestamp=int(time.time()) - 3600))

    assert no_header == (400, {"error": "Missing Stripe-Signature header."})
    for status, body in (wrong_secret, tampered, stale):
        assert status == 400
        assert body["error"].startswith("Invalid signature")
    assert WebhookEvent.objects.count() == 0


def test_signed_non_event_rejected(hook):
    for payload in ("not json at all", json.dumps(["a", "list"]), json.dumps({"type": "invoice.paid"})):
        status, body = _post(hook, payload.encode(), _signed(payload))
        assert status == 400, payload
        assert body["error"]
    assert WebhookEvent.objects.count() == 0


def test_webhook_without_configured_secret_refuses_everything(hook, settings):
    settings.STRIPE_WEBHOOK_SECRET = ""
    payload = json.dumps(_event("customer.created"))

    status, body = _post(hook, payload.encode(), _signed(payload))

    assert status == 400
    assert "STRIPE_WEBHOOK_SECRET" in body["error"]


def test_huge_body_gets_413(hook, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    payload = json.dumps(_event("customer.created", padding="x" * 5000))

    status, body = _post(hook, payload.encode(), _signed(payload))

    assert status == 413
    assert "too large" in body["error"]


def test_get_is_not_allowed(hook):
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(hook, timeout=10)
    assert error.value.code == 405


def test_unknown_and_foreign_events_ignored(hook, settings):
    unknown = _event("product.created")
    foreign = _event("invoice.paid", subscription_details={"metadata": {"contract_id": "4b8c9c1e-3c61-4b7f-9a43-0e1d93b0a6f1", "deployment": "other-site"}})
    not_uuid = _event("invoice.paid", subscription_details={"metadata": {"contract_id": "' OR 1=1 --"}})

    results = []
    for event in (unknown, foreign, not_uuid):
        payload = json.dumps(event)
        results.append(_post(hook, payload.encode(), _signed(payload)))

    assert [status for status, _ in results] == [200, 200, 200]
    assert results[0][1]["outcome"].startswith("Not handled")
    assert results[1][1]["outcome"].startswith("Ignored")
    assert results[2][1]["outcome"].startswith("Ignored")
    assert WebhookEvent.objects.count() == 3
    assert Payment.objects.count() == 0


def test_concurrent_deliveries_of_one_event_apply_once(hook, stripe_api, card_offering):
    tenant = make_user(email="tenant@example.com")
    client = APIClient()
    client.force_authenticate(tenant)
    rental = _api_rent(client, card_offering).json()
    session_id = CheckoutSession.objects.get().session_id
    stripe_api.complete_checkout(session_id)
    paid = stripe_api.events_of_type("invoice.paid")[-1]
    payload, header = stripe_api.signed_payload(paid)

    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(_post(hook, payload.encode(), {"Stripe-Signature": header})[0])) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [200, 200, 200, 200]
    assert Payment.objects.filter(contract__public_id=rental["public_id"]).count() == 1
    assert WebhookEvent.objects.filter(event_id=paid["id"]).count() == 1


# --- API and pages -------------------------------------------------------------------------------


def test_api_card_rent_checkout_url(stripe_api, card_offering):
    tenant = make_user(email="tenant@example.com")
    other = make_user(email="other@example.com")
    client = APIClient()
    client.force_authenticate(tenant)

    created = _api_rent(client, card_offering)
    replay = _api_rent(client, card_offering)

    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["status"] == ContractStatus.REQUESTED
    assert body["payment"]["method"] == "stripe"
    assert body["payment"]["state"] == "unpaid"
    assert body["payment"]["checkout_url"].startswith(stripe_api.url + "/checkout/")
    assert replay.status_code == 200
    assert replay.json()["payment"]["checkout_url"] == body["payment"]["checkout_url"]
    assert CheckoutSession.objects.count() == 1

    intruder = APIClient()
    intruder.force_authenticate(other)
    assert intruder.get(f"/api/v1/rentals/{body['public_id']}/").status_code == 404
    assert intruder.post(f"/api/v1/rentals/{body['public_id']}/pay/").status_code == 404

    again = client.post(f"/api/v1/rentals/{body['public_id']}/pay/")
    assert again.status_code == 200
    assert again.json()["payment"]["checkout_url"] == body["payment"]["checkout_url"]


def test_api_pay_of_a_paid_rental_conflicts(hook, stripe_api, card_offering):
    tenant = make_user(email="tenant@example.com")
    client = APIClient()
    client.force_authenticate(tenant)
    rental = _api_rent(client, card_offering).json()
    stripe_api.complete_checkout(CheckoutSession.objects.get().session_id)
    stripe_api.deliver_to(hook)

    response = client.post(f"/api/v1/rentals/{rental['public_id']}/pay/")

    assert response.status_code == 409
    assert response.json()["status"] == ContractStatus.PAID


def test_stripe_down_keeps_the_request_and_says_so(stripe_api, card_offering, settings, client):
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # Nothing listens on the discard port.
    tenant = make_user(email="tenant@example.com")
    api = APIClient()
    api.force_authenticate(tenant)

    response = _api_rent(api, card_offering)

    assert response.status_code == 503
    assert "Nothing was charged" in response.json()["detail"]
    contract = tenant.contracts.get()
    assert contract.status == ContractStatus.REQUESTED
    client.force_login(tenant)
    page = client.get(contract.get_absolute_url()).content.decode()
    assert "Not paid yet" in page
    assert "Pay by card" in page
    retried = client.post(f"{contract.get_absolute_url()}pay/", follow=True)
    assert "could not be opened" in retried.content.decode()


def test_customer_portal_without_saved_cards_explains(stripe_api, client):
    tenant = make_user(email="tenant@example.com")
    client.force_login(tenant)
    sessions_before = len(stripe_api.objects("billing_portal.session"))

    response = client.post("/billing/payment-methods/", follow=True)

    assert "You have no saved cards yet" in response.content.decode()
    assert len(stripe_api.objects("billing_portal.session")) == sessions_before
    assert not StripeCustomer.objects.filter(user=tenant).exists()


def test_customer_portal_opens_for_the_signed_in_user(stripe_api, client):
    tenant = make_user(email="tenant@example.com")
    stripe_billing.customer_for(tenant)  # A tenant who paid by card once has a Stripe customer.
    client.force_login(tenant)

    page = client.get("/billing/payments/").content.decode()
    response = client.post("/billing/payment-methods/")

    assert "Manage saved cards" in page
    assert response.status_code == 302
    assert response["Location"].startswith(stripe_api.url + "/billing_portal/")
    session = stripe_api.objects("billing_portal.session")[-1]
    assert stripe_api.get(session["customer"])["email"] == "tenant@example.com"
    assert session["return_url"].endswith("/billing/payments/")


def test_customer_portal_without_stripe_explains(client, settings):
    settings.STRIPE_SECRET_KEY = ""
    client.force_login(make_user(email="tenant@example.com"))

    response = client.post("/billing/payment-methods/", follow=True)

    assert "Card payments are not set up" in response.content.decode()


def test_account_updated_event_enables_payouts(hook, stripe_api):
    from billing.models import PayoutAccount

    provider = make_user(email="provider@example.com")
    account = stripe_api.create_account({"type": "express", "email": provider.email})
    PayoutAccount.objects.create(user=provider, stripe_account_id=account["id"])
    stripe_api.skip_pending_events()

    stripe_api.complete_onboarding(account["id"])
    stripe_api.deliver_to(hook)

    payout_account = PayoutAccount.objects.get(user=provider)
    assert payout_account.details_submitted is True
    assert payout_account.payouts_enabled is True


def test_stale_final_failure_after_renewal_ignored(hook, stripe_api, card_offering):
    from marketplace.models import Contract

    tenant = make_user(email="tenant@example.com")
    client = APIClient()
    client.force_authenticate(tenant)
    rental = _api_rent(client, card_offering).json()
    stripe_api.complete_checkout(CheckoutSession.objects.get().session_id)
    stripe_api.deliver_to(hook)
    contract = Contract.objects.get(public_id=rental["public_id"])
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.ACTIVE)
    subscription_id = stripe_api.events_of_type("checkout.session.completed")[-1]["data"]["object"]["subscription"]
    stripe_api.skip_pending_events()
    stripe_api.renew(subscription_id, paid=False)
    failed = stripe_api.events_of_type("invoice.payment_failed")[-1]
    stripe_api.renew(subscription_id, paid=True)
    paid = stripe_api.events_of_type("invoice.paid")[-1]
    # The failure arrives last, marked final as if Stripe had given up on that invoice.
    failed["data"]["object"]["next_payment_attempt"] = None

    statuses = stripe_api.deliver_to(hook, events=[paid, failed])

    contract.refresh_from_db()
    assert statuses == [200, 200]
    assert contract.status == ContractStatus.ACTIVE
    assert contract.cancel_at_period_end is False
    assert contract.paid_until.timestamp() == paid["data"]["object"]["lines"]["data"][0]["period"]["end"]
    assert WebhookEvent.objects.get(event_id=failed["id"]).outcome.startswith("Ignored")
