"""Tests of the fake Stripe API peer, driven by the real `stripe` Python client."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from tests.peers.stripe_api import StripeApiServer, parse_form

SECRET_KEY = "sk_test_local"
WEBHOOK_SECRET = "whsec_local"


@pytest.fixture
def stripe_api() -> Iterator[StripeApiServer]:
    with StripeApiServer(secret_key=SECRET_KEY, webhook_secret=WEBHOOK_SECRET) as server:
        yield server


@pytest.fixture
def client(stripe_api: StripeApiServer) -> stripe.StripeClient:
    # No retries, so a scripted 500 fails at once instead of after the client's backoff.
    return stripe.StripeClient(
        SECRET_KEY, base_addresses={"api": stripe_api.url}, max_network_retries=0
    )


def _checkout_session(client: stripe.StripeClient, *, email: str = "buyer@example.test") -> Any:
    product = client.v1.products.create(
        params={"name": "cx22 rental", "metadata": {"offering": "7"}}
    )
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "eur",
            "unit_amount": 1299,
            "recurring": {"interval": "month"},
        }
    )
    return client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer_email": email,
            "line_items": [{"price": price.id, "quantity": 1}],
            "success_url": "http://127.0.0.1:9/done?session={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://127.0.0.1:9/cancelled",
            "metadata": {"rental_id": "42"},
            "subscription_data": {"metadata": {"rental_id": "42"}},
        }
    )


class _WebhookReceiver:
    """A loopback HTTP endpoint that verifies each posted event with stripe.Webhook."""

    def __init__(self) -> None:
        self.event_ids: list[str] = []
        self.rejected = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                payload = self.rfile.read(int(self.headers["Content-Length"])).decode()
                try:
                    event = stripe.Webhook.construct_event(
                        payload, self.headers["Stripe-Signature"], WEBHOOK_SECRET
                    )
                except stripe.SignatureVerificationError:
                    receiver.rejected += 1
                    self.send_response(400)
                else:
                    receiver.event_ids.append(event.id)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/webhooks/stripe"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[_WebhookReceiver]:
    endpoint = _WebhookReceiver()
    yield endpoint
    endpoint.close()


def test_parse_form_nested_brackets() -> None:
    parsed = parse_form(
        [
            ("metadata[plan]", "a"),
            ("line_items[0][price]", "price_1"),
            ("line_items[0][quantity]", "2"),
            ("line_items[1][price]", "price_2"),
            ("expand[]", "subscription"),
            ("cancel_at_period_end", "true"),
        ]
    )

    assert parsed["metadata"] == {"plan": "a"}
    assert parsed["line_items"] == [{"price": "price_1", "quantity": 2}, {"price": "price_2"}]
    assert parsed["expand"] == ["subscription"]
    assert parsed["cancel_at_period_end"] is True


def test_client_creates_catalog_and_session(
    client: stripe.StripeClient, stripe_api: StripeApiServer
) -> None:
    customer = client.v1.customers.create(
        params={"email": "a@example.test", "metadata": {"user_id": "5"}}
    )
    session = _checkout_session(client)

    assert customer.id.startswith("cus_")
    assert customer.object == "customer"
    assert customer.metadata["user_id"] == "5"
    assert customer.livemode is False
    assert client.v1.customers.retrieve(customer.id).email == "a@example.test"
    assert session.id.startswith("cs_")
    assert session.status == "open"
    assert session.url == f"{stripe_api.url}/checkout/{session.id}"
    assert session.amount_total == 1299
    assert session.metadata["rental_id"] == "42"
    assert client.v1.checkout.sessions.retrieve(session.id).customer_email == "buyer@example.test"
    price_request = next(r for r in stripe_api.requests if r.path == "/v1/prices")
    assert price_request.params["recurring"] == {"interval": "month"}
    assert price_request.params["unit_amount"] == 1299


def test_global_api_base_style(
    stripe_api: StripeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stripe, "api_key", SECRET_KEY)
    monkeypatch.setattr(stripe, "api_base", stripe_api.url)

    customer = stripe.Customer.create(email="global@example.test")

    assert stripe.Customer.retrieve(customer.id).email == "global@example.test"


def test_complete_checkout_creates_subscription(
    client: stripe.StripeClient, stripe_api: StripeApiServer
) -> None:
    session = _checkout_session(client)

    stripe_api.complete_checkout(session.id)

    completed = client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["subscription"]}
    )
    assert completed.status == "complete"
    assert completed.payment_status == "paid"
    assert completed.customer.startswith("cus_")
    subscription = completed.subscription
    assert subscription.id.startswith("sub_")
    assert subscription.status == "active"
    assert subscription.metadata["rental_id"] == "42"
    assert subscription["items"].data[0].price.unit_amount == 1299
    invoices = client.v1.invoices.list(params={"subscription": subscription.id})
    assert len(invoices.data) == 1
    invoice = invoices.data[0]
    assert invoice.id.startswith("in_")
    assert invoice.status == "paid"
    assert invoice.amount_paid == 1299
    assert invoice.lines.data[0].period.start == subscription.current_period_start
    assert invoice.lines.data[0].period.end == subscription.current_period_end
    assert invoice.lines.data[0].period.end > invoice.lines.data[0].period.start
    payment_intent = client.v1.payment_intents.retrieve(invoice.payment_intent)
    assert payment_intent.id.startswith("pi_")
    assert payment_intent.status == "succeeded"
    assert payment_intent.latest_charge.startswith("ch_")


def test_complete_checkout_records_events(
    client: stripe.StripeClient, stripe_api: StripeApiServer
) -> None:
    session = _checkout_session(client)

    stripe_api.complete_checkout(session.id)

    types = [event["type"] for event in stripe_api.events]
    assert "customer.subscription.created" in types
    assert "invoice.paid" in types
    assert types[-1] == "checkout.session.completed"
    paid = stripe_api.events_of_type("invoice.paid")[0]
    assert paid["id"].startswith("evt_")
    assert paid["object"] == "event"
    invoice = paid["data"]["object"]
    assert invoice["subscription"].startswith("sub_")
    assert invoice["payment_intent"].startswith("pi_")
    assert invoice["subscription_details"]["metadata"] == {"rental_id": "42"}
    assert invoice["lines"]["data"][0]["metadata"] == {"rental_id": "42"}
    assert invoice["lines"]["data"][0]["period"]["start"] > 0


def test_checkout_expire_and_hosted_page(
    client: stripe.StripeClient, stripe_api: StripeApiServer
) -> None:
    session = _checkout_session(client)

    with urllib.request.urlopen(session.url, timeout=5) as response:
        page = response.read().decode()
    expired = client.v1.checkout.sessions.expire(session.id)

    assert session.id in page
    assert expired.status == "expired"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(session.id)


def test_renewal_paid_and_failed(client: stripe.StripeClient, stripe_api: StripeApiServer) -> None:
    session = _checkout_session(client)
    subscription_id = stripe_api.complete_checkout(session.id)["subscription"]
    first_end = stripe_api.get(subscription_id)["current_period_end"]

    paid_invoice = stripe_api.renew(subscription_id, paid=True)
    failed_invoice = stripe_api.renew(subscription_id, paid=False)

    assert paid_invoice is not None
    assert paid_invoice["lines"]["data"][0]["period"]["start"] == first_end
    assert paid_invoice["billing_reason"] == "subscription_cycle"
    assert failed_invoice is not None
    assert failed_invoice["status"] == "open"
    assert (
        stripe_api.events_of_type("invoice.payment_failed")[0]["data"]["object"]["id"]
        == failed_invoice["id"]
    )
    assert client.v1.subscriptions.retrieve(subscription_id).status == "past_due"
    assert len(client.v1.invoices.list(params={"subscription": subscription_id}).data) == 3


def test_subscription_cancel_paths(
    client: stripe.StripeClient, stripe_api: StripeApiServer
) -> None:
    session = _checkout_session(client)
    subscription_id = stripe_api.complete_checkout(session.id)["subscription"]

    updated = client.v1.subscriptions.update(subscription_id, params={"cancel_at_period_end": True})
    ended = stripe_api.renew(subscription_id)

    assert updated.cancel_at_period_end is True
    assert ended is None
    assert client.v1.subscriptions.retrieve(subscription_id).status == "canceled"
    assert (
        stripe_api.events_of_type("customer.subscription.deleted")[0]["data"]["object"]["id"]
        == subscription_id
    )


def test_subscription_cancel_via_delete(
    client: stripe.StripeClient, stripe_api: StripeApiServer
) -> None:
    session = _checkout_session(client)
    subscription_id = stripe_api.complete_checkout(session.id)["subscription"]

    cancelled = client.v1.subscriptions.cancel(subscription_id)

    assert cancelled.status == "canceled"
    assert cancelled.canceled_at is not None


def test_webhook_signature_verification(
    client: stripe.StripeClient, stripe_api: StripeApiServer
) -> None:
    session = _checkout_session(client)
    stripe_api.complete_checkout(session.id)
    event = stripe_api.events_of_type("checkout.session.completed")[0]
    payload, header = stripe_api.signed_payload(event)
    stale_payload, stale_header = stripe_api.signed_payload(event, timestamp=int(time.time()) - 301)

    constructed = stripe.Webhook.construct_event(payload, header, WEBHOOK_SECRET)

    assert constructed.id == event["id"]
    assert constructed.type == "checkout.session.completed"
    assert constructed.data.object.id == session.id
    tampered = payload.replace('"complete"', '"open"')
    assert tampered != payload
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered, header, WEBHOOK_SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(stale_payload, stale_header, WEBHOOK_SECRET)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_other")


def test_deliver_to_replay_and_reorder(
    client: stripe.StripeClient, stripe_api: StripeApiServer, receiver: _WebhookReceiver
) -> None:
    session = _checkout_session(client)
    stripe_api.complete_checkout(session.id)
    all_ids = [event["id"] for event in stripe_api.events]

    first = stripe_api.deliver_to(receiver.url)
    again = stripe_api.deliver_to(receiver.url)
    reversed_events = list(reversed(stripe_api.events[:2]))
    replayed = stripe_api.deliver_to(receiver.url, events=reversed_events)

    assert first == [200] * len(all_ids)
    assert again == []
    assert replayed == [200, 200]
    assert receiver.event_ids == all_ids + [all_ids[1], all_ids[0]]
    assert receiver.rejected == 0
    with pytest.raises(ValueError):
        stripe_api.deliver_to("http://192.0.2.1/webhooks")


def test_refund_idempotency_key(client: stripe.StripeClient, stripe_api: StripeApiServer) -> None:
    session = _checkout_session(client)
    stripe_api.complete_checkout(session.id)
    invoice = stripe_api.objects("invoice")[0]
    params = {
        "payment_intent": invoice["payment_intent"],
        "amount": 500,
        "metadata": {"reason": "sla"},
    }

    first = client.v1.refunds.create(params=params, options={"idempotency_key": "refund-1"})
    second = client.v1.refunds.create(params=params, options={"idempotency_key": "refund-1"})

    assert first.id.startswith("re_")
    assert second.id == first.id
    assert len(stripe_api.objects("refund")) == 1
    assert stripe_api.get(invoice["charge"])["amount_refunded"] == 500
    assert client.v1.refunds.retrieve(first.id).metadata["reason"] == "sla"
    assert len(stripe_api.events_of_type("charge.refunded")) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.refunds.create(
            params={**params, "amount": 100}, options={"idempotency_key": "refund-1"}
        )


def test_refund_rejects_over_refund(
    client: stripe.StripeClient, stripe_api: StripeApiServer
) -> None:
    session = _checkout_session(client)
    stripe_api.complete_checkout(session.id)
    charge_id = stripe_api.objects("charge")[0]["id"]

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.refunds.create(params={"charge": charge_id, "amount": 5000})

    assert raised.value.param == "amount"


def test_scripted_refund_failures(client: stripe.StripeClient, stripe_api: StripeApiServer) -> None:
    session = _checkout_session(client)
    stripe_api.complete_checkout(session.id)
    charge_id = stripe_api.objects("charge")[0]["id"]

    stripe_api.fail_next_refund(code="card_declined")
    with pytest.raises(stripe.CardError) as declined:
        client.v1.refunds.create(params={"charge": charge_id})
    stripe_api.fail_next_refund(code="api_error")
    with pytest.raises(stripe.APIError) as server_error:
        client.v1.refunds.create(params={"charge": charge_id})
    refund = client.v1.refunds.create(params={"charge": charge_id})

    assert declined.value.code == "card_declined"
    assert declined.value.http_status == 402
    assert server_error.value.http_status == 500
    assert refund.amount == 1299


def test_dispute_records_event(client: stripe.StripeClient, stripe_api: StripeApiServer) -> None:
    session = _checkout_session(client)
    stripe_api.complete_checkout(session.id)
    charge_id = stripe_api.objects("charge")[0]["id"]

    dispute = stripe_api.dispute(charge_id)

    event = stripe_api.events_of_type("charge.dispute.created")[0]
    assert event["data"]["object"]["id"] == dispute["id"]
    assert event["data"]["object"]["charge"] == charge_id
    assert stripe_api.get(charge_id)["disputed"] is True


def test_wrong_api_key_rejected(stripe_api: StripeApiServer) -> None:
    wrong = stripe.StripeClient("sk_test_wrongkey123456", base_addresses={"api": stripe_api.url})

    with pytest.raises(stripe.AuthenticationError) as raised:
        wrong.v1.customers.create(params={"email": "x@example.test"})

    assert raised.value.http_status == 401
    body = json.loads(raised.value.http_body)
    assert body["error"]["type"] == "invalid_request_error"
    assert "sk_test_wrongkey123456" not in raised.value.http_body
    assert body["error"]["message"].endswith("3456")


def test_missing_object_is_404(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.subscriptions.retrieve("sub_missing")

    assert raised.value.http_status == 404
    assert raised.value.code == "resource_missing"


def test_http_test_controls(client: stripe.StripeClient, stripe_api: StripeApiServer) -> None:
    session = _checkout_session(client)

    request = urllib.request.Request(
        f"{stripe_api.url}/_test/checkout/sessions/{session.id}/complete", data=b"", method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        completed = json.loads(response.read())

    assert completed["status"] == "complete"
    assert stripe_api.requests[-1].path.startswith("/_test/")


# -- Connect: accounts, account links, transfers --


def _express_account(client: stripe.StripeClient, *, email: str = "seller@example.test") -> Any:
    return client.v1.accounts.create(
        params={
            "type": "express",
            "email": email,
            "capabilities": {"transfers": {"requested": True}},
            "metadata": {"user_id": "7"},
        }
    )


def test_express_account_starts_not_onboarded(client: stripe.StripeClient) -> None:
    account = _express_account(client)

    fetched = client.v1.accounts.retrieve(account.id)

    assert account.id.startswith("acct_")
    assert account.object == "account"
    assert account.type == "express"
    assert account.email == "seller@example.test"
    assert account.metadata["user_id"] == "7"
    assert account.capabilities["transfers"] == "inactive"
    assert fetched.details_submitted is False
    assert fetched.payouts_enabled is False
    assert fetched.charges_enabled is False
    assert "external_account" in fetched.requirements.currently_due


def test_account_create_rejects_other_types(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.accounts.create(params={"type": "custom", "email": "x@example.test"})

    assert raised.value.param == "type"


def test_account_create_idempotency_key(client: stripe.StripeClient, stripe_api: StripeApiServer) -> None:
    params = {"type": "express", "email": "same@example.test", "metadata": {"user_id": "9"}}

    first = client.v1.accounts.create(params=params, options={"idempotency_key": "account-9"})
    second = client.v1.accounts.create(params=params, options={"idempotency_key": "account-9"})

    assert second.id == first.id
    assert len(stripe_api.objects("account")) == 1


def test_complete_onboarding_enables_payouts(
    client: stripe.StripeClient, stripe_api: StripeApiServer
) -> None:
    account = _express_account(client)

    stripe_api.complete_onboarding(account.id)
    fetched = client.v1.accounts.retrieve(account.id)

    assert fetched.details_submitted is True
    assert fetched.charges_enabled is True
    assert fetched.payouts_enabled is True
    assert fetched.capabilities["transfers"] == "active"
    assert fetched.requirements.currently_due == []
    event = stripe_api.events_of_type("account.updated")[-1]
    assert event["data"]["object"]["id"] == account.id
    assert event["data"]["previous_attributes"]["payouts_enabled"] is False


def test_account_link_for_onboarding(client: stripe.StripeClient, stripe_api: StripeApiServer) -> None:
    account = _express_account(client)

    link = client.v1.account_links.create(
        params={
            "account": account.id,
            "type": "account_onboarding",
            "return_url": "http://127.0.0.1:9/payouts/return",
            "refresh_url": "http://127.0.0.1:9/payouts/refresh",
        }
    )

    assert link.object == "account_link"
    assert link.url.startswith(f"{stripe_api.url}/connect/onboarding/{account.id}/")
    assert link.expires_at > link.created


def test_account_link_rejects_bad_requests(client: stripe.StripeClient) -> None:
    account = _express_account(client)
    urls = {"return_url": "http://127.0.0.1:9/r", "refresh_url": "http://127.0.0.1:9/f"}

    with pytest.raises(stripe.InvalidRequestError) as missing_account:
        client.v1.account_links.create(params={"account": "acct_missing", "type": "account_onboarding", **urls})
    with pytest.raises(stripe.InvalidRequestError) as update_express:
        client.v1.account_links.create(params={"account": account.id, "type": "account_update", **urls})
    with pytest.raises(stripe.InvalidRequestError) as missing_url:
        client.v1.account_links.create(
            params={"account": account.id, "type": "account_onboarding", "return_url": urls["return_url"]}
        )

    assert missing_account.value.http_status == 404
    assert missing_account.value.param == "account"
    assert update_express.value.param == "type"
    assert missing_url.value.param == "refresh_url"


def test_transfer_to_onboarded_account(client: stripe.StripeClient, stripe_api: StripeApiServer) -> None:
    account = _express_account(client)
    stripe_api.complete_onboarding(account.id)

    transfer = client.v1.transfers.create(
        params={
            "amount": 4321,
            "currency": "EUR",
            "destination": account.id,
            "transfer_group": "payout-5",
            "metadata": {"payout_id": "5"},
        }
    )
    fetched = client.v1.transfers.retrieve(transfer.id)
    grouped = client.v1.transfers.list(params={"transfer_group": "payout-5"})
    other_group = client.v1.transfers.list(params={"transfer_group": "payout-6"})

    assert transfer.id.startswith("tr_")
    assert fetched.amount == 4321
    assert fetched.currency == "eur"
    assert fetched.destination == account.id
    assert fetched.metadata["payout_id"] == "5"
    assert fetched.reversed is False
    assert [item.id for item in grouped.data] == [transfer.id]
    assert other_group.data == []
    assert stripe_api.events_of_type("transfer.created")[0]["data"]["object"]["id"] == transfer.id


def test_http_onboard_control(client: stripe.StripeClient, stripe_api: StripeApiServer) -> None:
    account = _express_account(client)

    request = urllib.request.Request(
        f"{stripe_api.url}/_test/accounts/{account.id}/onboard", data=b"", method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        onboarded = json.loads(response.read())

    assert onboarded["id"] == account.id
    assert onboarded["payouts_enabled"] is True
    assert client.v1.accounts.retrieve(account.id).details_submitted is True


def test_transfer_rejects_invalid_requests(
    client: stripe.StripeClient, stripe_api: StripeApiServer
) -> None:
    ready = _express_account(client, email="ready@example.test")
    stripe_api.complete_onboarding(ready.id)
    not_onboarded = _express_account(client, email="new@example.test")

    cases = [
        ({"amount": 0, "currency": "eur", "destination": ready.id}, "amount"),
        ({"amount": 100, "destination": ready.id}, "currency"),
        ({"amount": 100, "currency": "euro", "destination": ready.id}, "currency"),
        ({"amount": 100, "currency": "eur", "destination": "acct_missing"}, "destination"),
        ({"amount": 100, "currency": "eur", "destination": not_onboarded.id}, "destination"),
    ]
    for params, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as raised:
            client.v1.transfers.create(params=params)
        assert raised.value.param == param, params


def test_scripted_transfer_failures(client: stripe.StripeClient, stripe_api: StripeApiServer) -> None:
    account = _express_account(client)
    stripe_api.complete_onboarding(account.id)
    params = {"amount": 100, "currency": "eur", "destination": account.id}

    stripe_api.fail_next_transfer()
    with pytest.raises(stripe.InvalidRequestError) as insufficient:
        client.v1.transfers.create(params=params, options={"idempotency_key": "transfer-1"})
    with pytest.raises(stripe.InvalidRequestError) as replayed:
        client.v1.transfers.create(params=params, options={"idempotency_key": "transfer-1"})
    request = urllib.request.Request(
        f"{stripe_api.url}/_test/transfers/fail_next", data=b"code=api_error", method="POST"
    )
    urllib.request.urlopen(request, timeout=5).close()
    with pytest.raises(stripe.APIError) as server_error:
        client.v1.transfers.create(params=params)
    transfer = client.v1.transfers.create(params=params, options={"idempotency_key": "transfer-2"})

    assert insufficient.value.code == "balance_insufficient"
    assert insufficient.value.http_status == 400
    assert replayed.value.code == "balance_insufficient"
    assert server_error.value.http_status == 500
    assert transfer.amount == 100
    assert len(stripe_api.objects("transfer")) == 1
