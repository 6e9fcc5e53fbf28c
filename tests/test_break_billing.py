"""Adversarial tests of card billing: webhook order and replays, odd payloads, races, refunds,
the 15-minute sync and the ledger, against the loopback Stripe API and the live webhook endpoint.

Celery tasks that this process sends (refunds, subscription cancels) go to a queue that no
worker consumes, and each test runs them itself with `_run_billing_tasks`, so every step
happens in the order the test states. Tests that move money check the ledger when they end.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from django.db import close_old_connections, connection
from django.db.models import Sum
from django.utils import timezone
from rest_framework.test import APIClient

from billing import stripe_billing
from billing.models import (
    CheckoutSession,
    LedgerEntry,
    Payment,
    PaymentStatus,
    Payout,
    Refund,
    Subscription,
    WebhookEvent,
)
from billing.payouts import payouts_create_for_period, previous_month_bounds
from billing.services import payment_refund
from billing.tasks import stripe_sync_task
from cloudmarket.celery import app as celery_app
from marketplace.models import Contract, ContractStatus
from marketplace.services import contracts as contract_services
from tests.factories import make_offering, make_provider, make_user, ssh_public_key
from tests.peers.stripe_api import sign_payload

pytestmark = pytest.mark.django_db(transaction=True)

PRICE_CENTS = 2500
DAY = 24 * 3600
HELD_QUEUE = "break-billing-held"


# --- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def held_tasks():
    """Route every task this process sends to a queue no worker consumes; drop it afterwards."""
    original_routes = celery_app.conf.task_routes
    celery_app.conf.update(task_routes={"*": {"queue": HELD_QUEUE}})
    yield
    celery_app.conf.update(task_routes=original_routes)
    broker = redis.Redis.from_url(celery_app.conf.broker_url)
    broker.delete(HELD_QUEUE, f"_kombu.binding.{HELD_QUEUE}", f"_kombu.binding_permanent.{HELD_QUEUE}")


def _run_billing_tasks(limit: int = 200) -> list[str]:
    """Execute the held billing tasks in the order they were sent, as a worker would.

    Other tasks (notifications, provisioning) are dropped: these tests check money only.
    """
    broker = redis.Redis.from_url(celery_app.conf.broker_url)
    executed = []
    for _ in range(limit):
        raw = broker.rpop(HELD_QUEUE)
        if raw is None:
            return executed
        message = json.loads(raw)
        name = message["headers"]["task"]
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        if name.startswith("billing.tasks."):
            celery_app.tasks[name].apply(args=args, kwargs=kwargs)
            executed.append(name)
    raise AssertionError(f"More than {limit} held tasks; a task keeps queueing itself: {executed[-5:]}")


@pytest.fixture
def card_offering(stripe_api):
    provider = make_provider(display_name="Card Cloud", auto_accept=False)
    return make_offering(provider=provider, slug="card-break", name="Card break", price_cents=PRICE_CENTS)


@pytest.fixture
def hook(live_server, stripe_api, held_tasks):
    return f"{live_server.url}/billing/stripe/webhook/"


def _rent(offering, *, email: str) -> Contract:
    tenant = make_user(email=email)
    client = APIClient()
    client.force_authenticate(tenant)
    response = client.post(
        "/api/v1/rentals/",
        {"offering": offering.slug, "ssh_public_key": ssh_public_key(), "idempotency_key": f"break-rental-{uuid.uuid4().hex}"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return Contract.objects.get(public_id=response.json()["public_id"])


def _deliver(stripe_api, hook, events=None) -> None:
    statuses = stripe_api.deliver_to(hook, events=events)
    assert all(status == 200 for status in statuses), statuses


def _paid_rental(stripe_api, hook, offering, *, email: str = "tenant@example.com") -> Contract:
    contract = _rent(offering, email=email)
    stripe_api.complete_checkout(contract.checkout_sessions.get().session_id)
    _deliver(stripe_api, hook)
    contract.refresh_from_db()
    assert contract.status == ContractStatus.PAID
    return contract


def _active_rental(stripe_api, hook, offering, *, email: str = "tenant@example.com", started_days_ago: int = 0) -> Contract:
    """A paid card rental moved to active (provisioning is not under test here)."""
    if started_days_ago:
        stripe_api.now = int(time.time()) - started_days_ago * DAY
    contract = _paid_rental(stripe_api, hook, offering, email=email)
    stripe_api.now = None
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.ACTIVE, activated_at=timezone.now())
    contract.refresh_from_db()
    return contract


def _crafted(event_type: str, obj: dict) -> dict:
    """A Stripe event around `obj` with a fresh id, for shapes the fake does not emit itself."""
    return {
        "id": f"evt_break_{uuid.uuid4().hex}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": copy.deepcopy(obj)},
    }


def _events_of(stripe_api, action) -> list[dict]:
    """Run `action` against the fake and return the events it recorded, marked as delivered."""
    seen = {event["id"] for event in stripe_api.events}
    action()
    stripe_api.skip_pending_events()
    return [event for event in stripe_api.events if event["id"] not in seen]


def _post_signed(stripe_api, hook: str, event_or_payload) -> int:
    """POST one signed body to the webhook endpoint and return the HTTP status."""
    if isinstance(event_or_payload, str):
        payload = event_or_payload
        header = sign_payload(payload=payload, secret=stripe_api.webhook_secret, timestamp=int(time.time()))
    else:
        payload, header = stripe_api.signed_payload(event_or_payload)
    request = urllib.request.Request(
        hook, data=payload.encode(), method="POST",
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _in_threads(*targets) -> list[BaseException]:
    """Run callables at the same moment, each in its own thread with its own DB connection."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def run(target):
        try:
            barrier.wait(timeout=10)
            target()
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    close_old_connections()
    return errors


def _refund_open_rows(contract) -> None:
    """Call the Refund API for every refund row of `contract` not yet succeeded, as the sweep does."""
    for refund_id in Refund.objects.filter(payment__contract=contract).exclude(status=Refund.Status.SUCCEEDED).values_list("pk", flat=True):
        stripe_billing.refund_execute(refund_id=refund_id)


def _net_kept_cents(contract) -> int:
    """Money the platform keeps from `contract`: succeeded payments minus succeeded refunds."""
    paid = contract.payments.exclude(status=PaymentStatus.PENDING).aggregate(total=Sum("amount_cents"))["total"] or 0
    refunded = Refund.objects.filter(payment__contract=contract, status=Refund.Status.SUCCEEDED).aggregate(
        total=Sum("amount_cents")
    )["total"] or 0
    return paid - refunded


def _ledger_total(contract) -> int:
    return LedgerEntry.objects.filter(contract=contract).aggregate(total=Sum("amount_cents"))["total"] or 0


def _stripe_refunded_cents(stripe_api, payment: Payment) -> int:
    return stripe_api.get(payment.stripe_charge_id)["amount_refunded"]


def assert_ledger_balanced(contract) -> None:
    """Each payment's entries sum to its amount, each refund's to minus its amount, and no
    payment is refunded beyond its amount."""
    for payment in contract.payments.all():
        booked = LedgerEntry.objects.filter(payment=payment, refund__isnull=True).aggregate(total=Sum("amount_cents"))["total"] or 0
        assert booked == payment.amount_cents, (payment.pk, booked, payment.amount_cents)
        refunded = 0
        for refund in payment.refunds.filter(status=Refund.Status.SUCCEEDED):
            reversed_total = LedgerEntry.objects.filter(refund=refund).aggregate(total=Sum("amount_cents"))["total"] or 0
            assert reversed_total == -refund.amount_cents, (refund.pk, reversed_total, refund.amount_cents)
            refunded += refund.amount_cents
        assert refunded <= payment.amount_cents, (payment.pk, refunded, payment.amount_cents)
    unreversed = LedgerEntry.objects.filter(contract=contract, refund__isnull=False).exclude(refund__status=Refund.Status.SUCCEEDED)
    assert not unreversed.exists(), "ledger reversal for a refund that did not succeed"


# --- event order and replays ------------------------------------------------------------------------

FIRST_PAYMENT_EVENTS = ("customer.subscription.created", "invoice.paid", "checkout.session.completed")


@pytest.mark.parametrize("order", list(itertools.permutations(FIRST_PAYMENT_EVENTS)), ids="-".join)
def test_first_payment_events_any_order(stripe_api, hook, card_offering, order):
    contract = _rent(card_offering, email="tenant@example.com")
    session_id = contract.checkout_sessions.get().session_id
    stripe_api.complete_checkout(session_id)
    by_type = {event_type: stripe_api.events_of_type(event_type)[-1] for event_type in FIRST_PAYMENT_EVENTS}
    events = [by_type[event_type] for event_type in order]

    _deliver(stripe_api, hook, events=events)
    _deliver(stripe_api, hook, events=list(reversed(events)))  # replays, newest first

    contract.refresh_from_db()
    assert contract.status == ContractStatus.PAID
    assert contract.payments.count() == 1
    assert contract.paid_until == contract.payments.get().period_end
    subscription = Subscription.objects.get(contract=contract)
    assert subscription.subscription_id == by_type["checkout.session.completed"]["data"]["object"]["subscription"]
    assert subscription.status != "canceled"
    assert CheckoutSession.objects.get(session_id=session_id).status == CheckoutSession.Status.COMPLETE
    assert_ledger_balanced(contract)


def test_renewals_delivered_newest_first(stripe_api, hook, card_offering):
    contract = _active_rental(stripe_api, hook, card_offering, started_days_ago=70)
    subscription_id = Subscription.objects.get(contract=contract).subscription_id
    stripe_api.now = int(contract.paid_until.timestamp())
    second_events = _events_of(stripe_api, lambda: stripe_api.renew(subscription_id))
    second = next(e["data"]["object"] for e in second_events if e["type"] == "invoice.paid")
    stripe_api.now = second["period_end"]
    third = stripe_api.renew(subscription_id)
    stripe_api.now = None

    _deliver(stripe_api, hook)  # the third period's events first
    _deliver(stripe_api, hook, events=second_events)

    contract.refresh_from_db()
    assert contract.payments.count() == 3
    assert contract.paid_until == dt.datetime.fromtimestamp(third["period_end"], tz=dt.UTC)
    assert contract.status == ContractStatus.ACTIVE
    assert not contract.cancel_at_period_end
    assert_ledger_balanced(contract)


def test_stale_final_failure_after_paid_retry(stripe_api, hook, card_offering):
    """Stripe's retry paid the renewal invoice; a failure event of that invoice arrives late."""
    contract = _active_rental(stripe_api, hook, card_offering, started_days_ago=31)
    subscription_id = Subscription.objects.get(contract=contract).subscription_id
    failed_invoice = stripe_api.renew(subscription_id, paid=False)
    failure_event = stripe_api.events_of_type("invoice.payment_failed")[-1]
    _deliver(stripe_api, hook)
    paid_invoice = {**failed_invoice, "status": "paid", "paid": True, "amount_paid": failed_invoice["amount_due"],
                    "amount_remaining": 0, "next_payment_attempt": None}
    final_failure = copy.deepcopy(failure_event)
    final_failure["id"] = f"evt_break_{uuid.uuid4().hex}"
    final_failure["data"]["object"]["next_payment_attempt"] = None

    _deliver(stripe_api, hook, events=[_crafted("invoice.paid", paid_invoice)])
    _deliver(stripe_api, hook, events=[final_failure, failure_event])

    contract.refresh_from_db()
    assert contract.status == ContractStatus.ACTIVE
    assert not contract.cancel_at_period_end
    assert contract.paid_until == dt.datetime.fromtimestamp(failed_invoice["period_end"], tz=dt.UTC)
    assert _run_billing_tasks() == []  # nothing cancels the subscription
    assert stripe_api.get(subscription_id)["status"] != "canceled"
    assert_ledger_balanced(contract)


def test_stale_final_failure_after_later_renewal(stripe_api, hook, card_offering):
    """A final failure of an older renewal invoice arrives after a newer renewal was paid."""
    contract = _active_rental(stripe_api, hook, card_offering, started_days_ago=62)
    subscription_id = Subscription.objects.get(contract=contract).subscription_id
    stripe_api.now = int(contract.paid_until.timestamp())
    stripe_api.renew(subscription_id, paid=False)
    late_failure = copy.deepcopy(stripe_api.events_of_type("invoice.payment_failed")[-1])
    late_failure["data"]["object"]["next_payment_attempt"] = None
    stripe_api.skip_pending_events()  # delayed
    stripe_api.now = None
    paid = stripe_api.renew(subscription_id)
    _deliver(stripe_api, hook)
    contract.refresh_from_db()
    paid_until = contract.paid_until
    assert paid_until == dt.datetime.fromtimestamp(paid["period_end"], tz=dt.UTC)

    _deliver(stripe_api, hook, events=[late_failure])

    contract.refresh_from_db()
    assert contract.status == ContractStatus.ACTIVE  # not terminated while paid
    assert contract.paid_until == paid_until
    assert_ledger_balanced(contract)


def _two_checkouts(stripe_api, offering) -> tuple[Contract, str, str]:
    """Rent by card, then open a second checkout through "Retry payment" while the first is
    still open at Stripe (it expires within the 5 minutes in which it is no longer reused)."""
    stripe_api.now = int(time.time()) - DAY + 120  # the first session expires in two minutes
    contract = _rent(offering, email="tenant@example.com")
    stripe_api.now = None
    first_session = contract.checkout_sessions.get().session_id
    client = APIClient()
    client.force_authenticate(contract.tenant)
    response = client.post(f"/api/v1/rentals/{contract.public_id}/pay/")
    assert response.status_code == 200, response.json()
    second_session = contract.checkout_sessions.exclude(session_id=first_session).get().session_id
    return contract, first_session, second_session


def test_duplicate_checkout_charges_once(stripe_api, hook, card_offering):
    """The tenant pays in the old checkout tab and in the new one."""
    contract, first_session, second_session = _two_checkouts(stripe_api, card_offering)

    paid_sessions = []
    for session_id in (first_session, second_session):
        if stripe_api.get(session_id)["status"] == "open":  # a platform may expire the old one
            stripe_api.complete_checkout(session_id)
            paid_sessions.append(session_id)
    _deliver(stripe_api, hook)
    _run_billing_tasks()

    contract.refresh_from_db()
    assert contract.status == ContractStatus.PAID
    assert _net_kept_cents(contract) == PRICE_CENTS, "the tenant paid twice for one period"
    subscriptions = [stripe_api.get(stripe_api.get(session_id)["subscription"]) for session_id in paid_sessions]
    live = [subscription["id"] for subscription in subscriptions if subscription["status"] != "canceled"]
    assert len(live) == 1, f"{len(live)} subscriptions keep charging for one rental: {live}"
    assert_ledger_balanced(contract)


def test_other_subscription_deleted_keeps_rental(stripe_api, hook, card_offering):
    """Another subscription that names the rental ends (one from a second checkout, as in the
    test above); the rental and the subscription that bills it must not."""
    contract = _active_rental(stripe_api, hook, card_offering)
    tracked = Subscription.objects.get(contract=contract).subscription_id
    other = {**stripe_api.get(tracked), "id": f"sub_break_{uuid.uuid4().hex[:12]}", "status": "canceled"}

    _deliver(stripe_api, hook, events=[_crafted("customer.subscription.deleted", other)])

    contract.refresh_from_db()
    assert not contract.cancel_at_period_end, "the other subscription's end ended the rental"
    assert Subscription.objects.get(contract=contract).status != "canceled", "the billing subscription is marked canceled"
    # Ending the rental later must stop the subscription that still charges.
    stripe_billing.subscription_cancel(contract_id=contract.pk)
    assert stripe_api.get(tracked)["status"] == "canceled", "the billing subscription keeps charging after the rental ends"


# --- refunds ------------------------------------------------------------------------------------------


def test_dashboard_refund_after_platform_gave_up(stripe_api, hook, card_offering, settings):
    settings.BILLING_REFUND_MAX_ATTEMPTS = 1
    contract = _paid_rental(stripe_api, hook, card_offering)
    payment = contract.payments.get()
    stripe_api.fail_next_refund(code="api_error")
    contract_services.contract_reject(contract=contract, actor=card_offering.provider.user, reason="Sold out.")
    _run_billing_tasks()
    refund = payment.refunds.get()
    assert refund.status == Refund.Status.FAILED
    assert refund.next_attempt_at is None  # no more automatic tries

    # Staff refund the charge in the Stripe Dashboard; Stripe reports it.
    stripe_api.create_refund({"payment_intent": payment.stripe_payment_intent_id})
    _deliver(stripe_api, hook)

    payment.refresh_from_db()
    assert _stripe_refunded_cents(stripe_api, payment) == PRICE_CENTS
    assert payment.status == PaymentStatus.REFUNDED, f"payment is {payment.status} although Stripe refunded it"
    assert _ledger_total(contract) == 0, "the provider keeps a share of refunded money"
    assert_ledger_balanced(contract)


def test_dashboard_refund_while_platform_refund_pending(stripe_api, hook, card_offering):
    contract = _paid_rental(stripe_api, hook, card_offering)
    payment = contract.payments.get()
    contract_services.contract_reject(contract=contract, actor=card_offering.provider.user, reason="Sold out.")
    # Before the refund task runs, staff refund the charge in the Dashboard.
    stripe_api.create_refund({"payment_intent": payment.stripe_payment_intent_id})
    _deliver(stripe_api, hook)

    _run_billing_tasks()
    _refund_open_rows(contract)  # the retry sweep

    payment.refresh_from_db()
    assert _stripe_refunded_cents(stripe_api, payment) == PRICE_CENTS
    assert payment.status == PaymentStatus.REFUNDED, f"payment is {payment.status}: {list(payment.refunds.values_list('status', 'error'))}"
    assert _ledger_total(contract) == 0
    assert_ledger_balanced(contract)


def test_partial_dashboard_refund_then_reject(stripe_api, hook, card_offering):
    contract = _paid_rental(stripe_api, hook, card_offering)
    payment = contract.payments.get()
    stripe_api.create_refund({"payment_intent": payment.stripe_payment_intent_id, "amount": 1000})
    _deliver(stripe_api, hook)
    assert payment.refunds.get().amount_cents == 1000

    contract_services.contract_reject(contract=contract, actor=card_offering.provider.user, reason="Sold out.")
    _run_billing_tasks()

    payment.refresh_from_db()
    errors = list(payment.refunds.exclude(status=Refund.Status.SUCCEEDED).values_list("amount_cents", "error"))
    assert _stripe_refunded_cents(stripe_api, payment) == PRICE_CENTS, f"the tenant did not get the rest back: {errors}"
    assert payment.status == PaymentStatus.REFUNDED
    assert _ledger_total(contract) == 0
    assert_ledger_balanced(contract)


def test_pending_refund_settles_later(stripe_api, hook, card_offering):
    """Stripe returns a refund as `pending` and confirms it later."""
    contract = _paid_rental(stripe_api, hook, card_offering)
    payment = contract.payments.get()
    stripe_api.pend_next_refund()
    contract_services.contract_reject(contract=contract, actor=card_offering.provider.user, reason="Sold out.")
    _run_billing_tasks()
    refund = payment.refunds.get()
    assert refund.status == Refund.Status.PENDING
    assert refund.reference

    stripe_api.settle_refund(refund.reference)
    stripe_api.skip_pending_events()  # The refund.updated event is lost; the retry sweep finds out.
    Refund.objects.filter(pk=refund.pk).update(next_attempt_at=timezone.now() - dt.timedelta(seconds=1))
    assert stripe_billing.refunds_due() == [refund.pk]
    stripe_billing.refund_execute(refund_id=refund.pk)  # what the retry sweep runs

    refund.refresh_from_db()
    payment.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED, f"refund {refund.reference} settled at Stripe but is {refund.status} here"
    assert payment.status == PaymentStatus.REFUNDED
    assert_ledger_balanced(contract)


def test_pending_refund_settled_by_event(stripe_api, hook, card_offering):
    """Stripe returns a refund as `pending`, then sends refund.updated when it succeeds."""
    contract = _paid_rental(stripe_api, hook, card_offering)
    payment = contract.payments.get()
    stripe_api.pend_next_refund()
    contract_services.contract_reject(contract=contract, actor=card_offering.provider.user, reason="Sold out.")
    _run_billing_tasks()
    refund = payment.refunds.get()
    assert refund.status == Refund.Status.PENDING

    stripe_api.settle_refund(refund.reference)
    _deliver(stripe_api, hook)

    refund.refresh_from_db()
    payment.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert payment.status == PaymentStatus.REFUNDED
    assert_ledger_balanced(contract)


def test_two_refunds_of_one_payment(stripe_api, hook, card_offering):
    contract = _paid_rental(stripe_api, hook, card_offering)
    payment = contract.payments.get()

    errors = _in_threads(
        lambda: payment_refund(payment=payment, reason="First caller."),
        lambda: payment_refund(payment=payment, reason="Second caller."),
    )
    _run_billing_tasks()

    payment.refresh_from_db()
    rows = list(payment.refunds.values_list("amount_cents", "status", "error"))
    assert sum(amount for amount, _, _ in rows) <= PRICE_CENTS, f"refund rows exceed the payment ({errors}): {rows}"
    assert _stripe_refunded_cents(stripe_api, payment) == PRICE_CENTS
    assert_ledger_balanced(contract)


class _LoseFirstRefundAnswer:
    """A loopback proxy to the fake Stripe API that forwards the first refund request and then
    closes the connection with no response. To the client this looks like a timeout after
    Stripe made the refund."""

    def __init__(self, target: str):
        self.target = target
        self.dropped = 0
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - signature from the base class
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                request = urllib.request.Request(proxy.target + self.path, data=body, method=self.command, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                with lock:
                    drop = self.command == "POST" and self.path.startswith("/v1/refunds") and proxy.dropped == 0
                    if drop:
                        proxy.dropped += 1
                if drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()


def test_refund_answer_lost_then_retried(stripe_api, hook, card_offering, settings):
    contract = _paid_rental(stripe_api, hook, card_offering)
    payment = contract.payments.get()
    contract_services.contract_reject(contract=contract, actor=card_offering.provider.user, reason="Sold out.")

    with _LoseFirstRefundAnswer(stripe_api.url) as proxy_url:
        settings.STRIPE_API_BASE = proxy_url
        _run_billing_tasks()
        refund = payment.refunds.get()
        assert refund.status == Refund.Status.FAILED, "the lost answer is not a success"
        _deliver(stripe_api, hook)  # Stripe's charge.refunded for the refund it made
        Refund.objects.filter(pk=refund.pk).update(next_attempt_at=timezone.now() - dt.timedelta(seconds=1))
        errors = _in_threads(*[lambda: stripe_billing.refund_execute(refund_id=refund.pk)] * 3)  # two sweeps and a staff retry
    settings.STRIPE_API_BASE = stripe_api.url

    assert errors == []
    refund.refresh_from_db()
    payment.refresh_from_db()
    assert refund.status == Refund.Status.SUCCEEDED
    assert payment.refunds.count() == 1
    assert len([r for r in stripe_api.objects("refund") if r["payment_intent"] == payment.stripe_payment_intent_id]) == 1
    assert _ledger_total(contract) == 0
    assert_ledger_balanced(contract)


# --- races between the tenant, the provider and Stripe ---------------------------------------------


def test_concurrent_first_payment_events(stripe_api, hook, card_offering):
    contract = _rent(card_offering, email="tenant@example.com")
    events = _events_of(stripe_api, lambda: stripe_api.complete_checkout(contract.checkout_sessions.get().session_id))
    events = [e for e in events if e["type"] in (*FIRST_PAYMENT_EVENTS, "invoice.payment_succeeded")]
    statuses: list[int] = []

    errors = _in_threads(*[lambda e=e: statuses.append(_post_signed(stripe_api, hook, e)) for e in events * 2])

    assert errors == []
    assert sorted(statuses) == [200] * len(events) * 2
    contract.refresh_from_db()
    assert contract.status == ContractStatus.PAID
    assert contract.payments.count() == 1
    assert Subscription.objects.filter(contract=contract).count() == 1
    assert WebhookEvent.objects.filter(event_id__in=[e["id"] for e in events]).count() == len(events)
    assert_ledger_balanced(contract)


@pytest.mark.parametrize("attempt", range(3))
def test_cancel_races_payment_confirmation(stripe_api, hook, card_offering, attempt):
    contract = _rent(card_offering, email=f"tenant{attempt}@example.com")
    events = _events_of(stripe_api, lambda: stripe_api.complete_checkout(contract.checkout_sessions.get().session_id))
    events = [e for e in events if e["type"] in FIRST_PAYMENT_EVENTS]

    errors = _in_threads(
        lambda: contract_services.contract_cancel(contract=contract, actor=contract.tenant),
        lambda: _deliver(stripe_api, hook, events=events),
    )
    _run_billing_tasks()

    assert errors == []
    contract.refresh_from_db()
    assert contract.status == ContractStatus.CANCELLED
    payment = contract.payments.get()
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REFUNDED
    assert _net_kept_cents(contract) == 0
    assert stripe_api.get(Subscription.objects.get(contract=contract).subscription_id)["status"] == "canceled"
    assert_ledger_balanced(contract)


def test_reject_races_renewal_payment(stripe_api, hook, card_offering):
    """The provider rejects a paid rental while Stripe's next renewal arrives."""
    contract = _paid_rental(stripe_api, hook, card_offering)
    subscription_id = Subscription.objects.get(contract=contract).subscription_id
    stripe_api.now = int(contract.paid_until.timestamp())
    renewal_events = [e for e in _events_of(stripe_api, lambda: stripe_api.renew(subscription_id)) if e["type"] == "invoice.paid"]
    stripe_api.now = None

    errors = _in_threads(
        lambda: contract_services.contract_reject(contract=contract, actor=card_offering.provider.user, reason="Sold out."),
        lambda: _deliver(stripe_api, hook, events=renewal_events),
    )
    _run_billing_tasks()
    _deliver(stripe_api, hook)  # charge.refunded of both refunds

    assert errors == []
    contract.refresh_from_db()
    assert contract.status == ContractStatus.REJECTED
    assert contract.payments.count() == 2
    assert _net_kept_cents(contract) == 0
    assert set(contract.payments.values_list("status", flat=True)) == {PaymentStatus.REFUNDED}
    assert stripe_api.get(subscription_id)["status"] == "canceled"
    assert_ledger_balanced(contract)


def test_sync_twice_records_renewal_once(stripe_api, hook, card_offering, settings):
    settings.STRIPE_RENEWAL_SYNC_AFTER_SECONDS = 0
    contract = _active_rental(stripe_api, hook, card_offering, started_days_ago=31)
    stripe_api.renew(Subscription.objects.get(contract=contract).subscription_id)
    stripe_api.skip_pending_events()  # the renewal's webhooks were lost

    errors = _in_threads(stripe_sync_task.apply, stripe_sync_task.apply)

    assert errors == []
    contract.refresh_from_db()
    assert contract.payments.count() == 2
    assert contract.paid_until > timezone.now()
    assert_ledger_balanced(contract)


# --- never charged for a period they cannot use, never unpaid past the period ---------------------


def test_cancelled_tenant_renewal_refunded(stripe_api, hook, card_offering, settings):
    """Telling Stripe about the cancel failed, so Stripe renews: the renewal is refunded."""
    contract = _active_rental(stripe_api, hook, card_offering, started_days_ago=31)
    subscription_id = Subscription.objects.get(contract=contract).subscription_id
    contract_services.contract_cancel(contract=contract, actor=contract.tenant)
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # Stripe unreachable while the task runs
    _run_billing_tasks()
    settings.STRIPE_API_BASE = stripe_api.url
    assert stripe_api.get(subscription_id)["cancel_at_period_end"] is False

    stripe_api.renew(subscription_id)
    _deliver(stripe_api, hook)
    _run_billing_tasks()

    contract.refresh_from_db()
    assert contract.payments.count() == 2
    assert _net_kept_cents(contract) == PRICE_CENTS
    assert contract.paid_until < timezone.now() + dt.timedelta(days=1)
    assert stripe_api.get(subscription_id)["status"] == "canceled"
    assert_ledger_balanced(contract)


def test_past_due_rental_runs_unpaid(stripe_api, hook, card_offering):
    """Stripe's last retry was six weeks ago and the rental is still running."""
    contract = _active_rental(stripe_api, hook, card_offering, started_days_ago=75)
    subscription_id = Subscription.objects.get(contract=contract).subscription_id
    stripe_api.now = int(contract.paid_until.timestamp())
    invoice = stripe_api.renew(subscription_id, paid=False)
    stripe_api.now = None
    _deliver(stripe_api, hook)
    assert stripe_api.get(subscription_id)["status"] == "past_due"
    assert invoice["next_payment_attempt"] < time.time() - 40 * DAY

    stripe_sync_task.apply()

    contract.refresh_from_db()
    unpaid_days = (timezone.now() - contract.paid_until).days
    assert contract.status != ContractStatus.ACTIVE, f"still active {unpaid_days} days after its paid period ended"
    assert_ledger_balanced(contract)


# --- odd payloads -----------------------------------------------------------------------------------


def _nested(depth: int) -> str:
    return '{"id": "evt_break_deep", "object": "event", "type": "invoice.paid", "data": ' + "[" * depth + "]" * depth + "}"


ODD_PAYLOADS = {
    "invoice without id": _crafted("invoice.paid", {"object": "invoice", "amount_paid": 100}),
    "created not a number": {**_crafted("customer.created", {"id": "cus_x", "object": "customer"}), "created": "yesterday"},
    "period out of range": _crafted("invoice.paid", {"id": "in_odd", "object": "invoice", "period_start": 10**13,
                                                     "subscription_details": {"metadata": {"contract_id": str(uuid.uuid4())}}}),
    "nested 100000 deep": _nested(100_000),
}


@pytest.mark.parametrize("name", list(ODD_PAYLOADS))
def test_odd_signed_payload_gets_no_500(stripe_api, hook, name):
    status = _post_signed(stripe_api, hook, ODD_PAYLOADS[name])

    assert status in (200, 400), f"{name}: HTTP {status}; Stripe retries a 5xx for days"


# --- disputes, payouts and the current API's invoice shape -----------------------------------------


def test_lost_dispute_not_paid_out(stripe_api, hook, card_offering):
    contract = _active_rental(stripe_api, hook, card_offering, started_days_ago=40)
    payment = contract.payments.get()
    dispute = stripe_api.dispute(payment.stripe_charge_id)
    _deliver(stripe_api, hook)

    _deliver(stripe_api, hook, events=[_crafted("charge.dispute.closed", {**dispute, "status": "lost"})])
    period_start, period_end = previous_month_bounds(timezone.now())
    payouts_create_for_period(period_start=period_start, period_end=period_end)

    provider_paid = Payout.objects.filter(beneficiary=card_offering.provider.user).aggregate(total=Sum("amount_cents"))["total"] or 0
    assert _ledger_total(contract) == 0, "the ledger still books the charged-back payment"
    assert provider_paid == 0, f"the provider is paid {provider_paid} cents of a payment the card holder took back"


def test_payouts_run_twice_pay_each_entry_once(stripe_api, hook, card_offering):
    contract = _active_rental(stripe_api, hook, card_offering, started_days_ago=40)
    period_start, period_end = previous_month_bounds(timezone.now())

    errors = _in_threads(*[lambda: payouts_create_for_period(period_start=period_start, period_end=period_end)] * 3)

    assert errors == []
    payouts = list(Payout.objects.filter(beneficiary=card_offering.provider.user))
    assert len(payouts) == 1
    entries = LedgerEntry.objects.filter(contract=contract, beneficiary=card_offering.provider.user)
    assert payouts[0].amount_cents == entries.aggregate(total=Sum("amount_cents"))["total"]
    assert not entries.filter(payout__isnull=True).exists()
    assert_ledger_balanced(contract)


def test_invoice_of_current_api_can_be_refunded(stripe_api, hook, card_offering):
    """Invoices of API version 2025-03-31 and later have no `payment_intent` or `charge` field.
    Their replacement, the `payments` list, is includable only on request, so events lack it."""
    contract = _rent(card_offering, email="tenant@example.com")
    recorded = _events_of(stripe_api, lambda: stripe_api.complete_checkout(contract.checkout_sessions.get().session_id))
    events = []
    for event in recorded:
        if event["type"] in FIRST_PAYMENT_EVENTS:
            event = copy.deepcopy(event)
            if event["data"]["object"]["object"] == "invoice":
                event["data"]["object"].pop("payment_intent", None)
                event["data"]["object"].pop("charge", None)
                invoice_id = event["data"]["object"]["id"]
            events.append(event)
    _deliver(stripe_api, hook, events=events)
    contract.refresh_from_db()
    assert contract.status == ContractStatus.PAID

    contract_services.contract_reject(contract=contract, actor=card_offering.provider.user, reason="Sold out.")
    _run_billing_tasks()

    payment = contract.payments.get()
    refund = payment.refunds.get()
    charge = stripe_api.get(stripe_api.get(invoice_id)["charge"])
    assert refund.status == Refund.Status.SUCCEEDED, f"refund {refund.status}: {refund.error}"
    assert charge["amount_refunded"] == PRICE_CENTS
