"""A fake Stripe API server on 127.0.0.1 for tests and local demos.

It implements the subset of the Stripe v1 API that the marketplace's subscription billing uses,
as called by the `stripe` 16.1 Python client: customers, products, prices, Checkout Sessions in
subscription mode, subscriptions, invoices, payment intents, charges, refunds and events. Request
bodies are form-encoded with Stripe's bracket syntax, authentication is a bearer secret key, the
`Idempotency-Key` header is honoured, and error bodies have Stripe's shape
`{"error": {"type": ..., "message": ..., "code": ...}}`.

Nothing is charged. Payments happen only when a test calls a control method
(`complete_checkout`, `renew`, `dispute`) or the fake's hosted checkout page is submitted. Every
state change records an event, and `deliver_to` posts events to a webhook endpoint with a
`Stripe-Signature` header that `stripe.Webhook.construct_event` accepts.

The control methods are also reachable over HTTP, without authentication, under `/_test/`:

- `POST /_test/checkout/sessions/<id>/complete`
- `POST /_test/subscriptions/<id>/renew` with form field `paid=true|false`
- `POST /_test/charges/<id>/dispute`
- `POST /_test/refunds/fail_next` with form fields `code` and optional `http_status`

Run standalone with `python -m tests.peers.stripe_api --port 0`.
"""

from __future__ import annotations

import argparse
import calendar
import copy
import hashlib
import hmac
import html
import ipaddress
import itertools
import json
import logging
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

logger = logging.getLogger(__name__)

# The API version that events carry. It is the version stripe-python 16.1 pins
# (`stripe._api_version._ApiVersion.CURRENT`), so events match the client's pinned version.
API_VERSION = "2026-10-28.endive"
CHECKOUT_SESSION_LIFETIME_SECONDS = 24 * 60 * 60
DEFAULT_LIST_LIMIT = 10
MAX_LIST_LIMIT = 100
WEBHOOK_TIMEOUT_SECONDS = 10.0

# Form fields that Stripe documents as integers or booleans. Everything else stays a string,
# as it arrives on the wire.
INTEGER_FIELDS = {
    "amount",
    "unit_amount",
    "quantity",
    "limit",
    "trial_period_days",
    "interval_count",
}
BOOLEAN_FIELDS = {"cancel_at_period_end", "paid", "active", "livemode"}

# Stripe's error type and HTTP status for each scripted refund failure code.
REFUND_FAILURES = {
    "card_declined": ("card_error", 402),
    "expired_card": ("card_error", 402),
    "insufficient_funds": ("card_error", 402),
    "api_error": ("api_error", 500),
    "rate_limit": ("invalid_request_error", 429),
}


class StripeError(Exception):
    """A request error that the fake returns as a Stripe error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        """Return the JSON error body in Stripe's shape."""
        error: dict[str, Any] = {"type": self.error_type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


@dataclass
class RecordedRequest:
    """One HTTP request that reached the fake, as parsed from the wire."""

    method: str
    path: str
    query: dict[str, Any]
    params: dict[str, Any]
    headers: dict[str, str]
    status: int = 0


@dataclass
class _IdempotentResult:
    fingerprint: str
    status: int
    body: dict[str, Any]


@dataclass
class _RefundFailure:
    code: str
    error_type: str
    http_status: int


@dataclass
class _State:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Private attributes of objects that Stripe does not return, keyed by object id.
    private: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    delivered_event_ids: set[str] = field(default_factory=set)
    idempotency: dict[tuple[str, str], _IdempotentResult] = field(default_factory=dict)
    refund_failures: list[_RefundFailure] = field(default_factory=list)
    # How many of the next created refunds stay `pending` until `settle_refund` is called.
    pending_refunds: int = 0


# ----------------------------------------------------------------------------------------------
# Form encoding


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Parse Stripe's bracket-encoded form pairs into nested dicts and lists.

    `metadata[plan]=a` becomes `{"metadata": {"plan": "a"}}`, and `line_items[0][price]=p`
    becomes `{"line_items": [{"price": "p"}]}`. An empty index (`expand[]=x`) appends.
    """
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        match = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", raw_key)
        if match is None:
            raise StripeError(400, f"Invalid form field name: {raw_key!r}.", param=raw_key)
        parts = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node: dict[str, Any] = root
        for index, part in enumerate(parts):
            if part == "":
                part = str(len(node))
            if index == len(parts) - 1:
                node[part] = _coerce_field(parts, value)
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise StripeError(400, f"Invalid form field name: {raw_key!r}.", param=raw_key)
                node = child
    return _lists_from_digit_keys(root)


def _coerce_field(parts: list[str], value: str) -> Any:
    name = parts[-1]
    if "metadata" in parts[:-1]:
        return value
    if name in INTEGER_FIELDS:
        try:
            return int(value)
        except ValueError:
            raise StripeError(400, f"Invalid integer: {value}", param=name) from None
    if name in BOOLEAN_FIELDS:
        if value not in ("true", "false"):
            raise StripeError(400, f"Invalid boolean: {value}", param=name)
        return value == "true"
    return value


def _lists_from_digit_keys(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _lists_from_digit_keys(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


# ----------------------------------------------------------------------------------------------
# Webhook signatures


def sign_payload(*, payload: str, secret: str, timestamp: int) -> str:
    """Return a `Stripe-Signature` header value for `payload` signed at `timestamp`."""
    signed = f"{timestamp}.{payload}".encode()
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _mask_key(api_key: str) -> str:
    if len(api_key) <= 8:
        return "*" * len(api_key)
    prefix = api_key[:8] if api_key.startswith(("sk_", "rk_")) else ""
    return f"{prefix}{'*' * 12}{api_key[-4:]}"


def _add_interval(*, start: int, interval: str, count: int) -> int:
    if interval == "day":
        return start + 86400 * count
    if interval == "week":
        return start + 7 * 86400 * count
    moment = datetime.fromtimestamp(start, tz=UTC)
    months = count * (12 if interval == "year" else 1)
    month_index = moment.month - 1 + months
    year = moment.year + month_index // 12
    month = month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


# ----------------------------------------------------------------------------------------------
# The server


class StripeApiServer:
    """A threaded fake Stripe API on a free loopback port, used as a context manager.

    `url` is the base address to give the client, for example
    `stripe.StripeClient(key, base_addresses={"api": server.url})` or `stripe.api_base = url`.
    """

    def __init__(
        self,
        *,
        secret_key: str = "sk_test_local",
        webhook_secret: str = "whsec_local",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._state = _State()
        self._ids = itertools.count(1)
        self.requests: list[RecordedRequest] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.now: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> StripeApiServer:
        """Bind the port and serve requests on a daemon thread."""
        handler = type("BoundStripeHandler", (_StripeHandler,), {"api": self})
        self._httpd = ThreadingHTTPServer((self._host, self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-api",
            daemon=True,
        )
        self._thread.start()
        logger.info("Fake Stripe API started on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            logger.info("Fake Stripe API on %s stopped", self.url)
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> StripeApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base address of the API, `http://127.0.0.1:PORT`, without a trailing slash."""
        if self._httpd is None:
            raise RuntimeError("The fake Stripe API is not running; call start() first.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- inspection ----------------------------------------------------------------------------

    def get(self, object_id: str) -> dict[str, Any]:
        """Return a deep copy of a stored object, raising KeyError if the id is unknown."""
        with self._lock:
            return copy.deepcopy(self._state.objects[object_id])

    def objects(self, object_type: str) -> list[dict[str, Any]]:
        """Return copies of all stored objects whose `object` field is `object_type`, oldest first."""
        with self._lock:
            return [
                copy.deepcopy(obj)
                for obj in self._state.objects.values()
                if obj["object"] == object_type
            ]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Copies of all events in the order they happened."""
        with self._lock:
            return copy.deepcopy(self._state.events)

    def skip_pending_events(self) -> None:
        """Mark every event recorded so far as delivered, so `deliver_to()` sends only newer ones."""
        with self._lock:
            self._state.delivered_event_ids.update(event["id"] for event in self._state.events)

    def events_of_type(self, event_type: str) -> list[dict[str, Any]]:
        """Return copies of the events of one type, oldest first."""
        return [event for event in self.events if event["type"] == event_type]

    def _timestamp(self) -> int:
        return self.now if self.now is not None else int(time.time())

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{'test_' if prefix == 'cs' else ''}{next(self._ids):06d}{secrets.token_hex(6)}"

    def _store(self, obj: dict[str, Any], **private: Any) -> dict[str, Any]:
        self._state.objects[obj["id"]] = obj
        self._state.private[obj["id"]] = private
        return obj

    def _lookup(self, object_id: str, object_type: str, *, param: str = "id") -> dict[str, Any]:
        obj = self._state.objects.get(object_id)
        if obj is None or obj["object"] != object_type:
            label = object_type.split(".")[-1].replace("_", " ")
            raise StripeError(
                404, f"No such {label}: '{object_id}'", code="resource_missing", param=param
            )
        return obj

    def _emit(
        self, event_type: str, obj: dict[str, Any], *, previous: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = copy.deepcopy(previous)
        event = {
            "id": self._new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": self._timestamp(),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
        self._state.events.append(event)
        self._state.objects[event["id"]] = event
        logger.info("Fake Stripe event %s %s for %s", event["id"], event_type, obj.get("id"))
        return event

    def _base(
        self, prefix: str, object_type: str, metadata: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "id": self._new_id(prefix),
            "object": object_type,
            "created": self._timestamp(),
            "livemode": False,
            "metadata": dict(metadata or {}),
        }

    # -- customers, products, prices ----------------------------------------------------------

    def create_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        """Create a customer from API parameters."""
        customer = self._base("cus", "customer", params.get("metadata"))
        customer.update(
            {
                "email": params.get("email"),
                "name": params.get("name"),
                "description": params.get("description"),
                "phone": params.get("phone"),
                "balance": 0,
                "currency": None,
                "delinquent": False,
                "invoice_prefix": customer["id"][-8:].upper(),
            }
        )
        self._store(customer)
        self._emit("customer.created", customer)
        return customer

    def create_product(self, params: dict[str, Any]) -> dict[str, Any]:
        """Create a product from API parameters."""
        if not params.get("name"):
            raise StripeError(
                400, "Missing required param: name.", code="parameter_missing", param="name"
            )
        product = self._base("prod", "product", params.get("metadata"))
        product.update(
            {
                "name": params["name"],
                "description": params.get("description"),
                "active": params.get("active", True),
                "default_price": None,
                "type": "service",
                "updated": product["created"],
            }
        )
        return self._store(product)

    def create_price(self, params: dict[str, Any]) -> dict[str, Any]:
        """Create a price from API parameters, validating currency, amount and recurrence."""
        for name in ("currency", "unit_amount", "product"):
            if name not in params:
                raise StripeError(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
        if params["unit_amount"] < 0:
            raise StripeError(400, "unit_amount must be zero or more.", param="unit_amount")
        self._lookup(params["product"], "product", param="product")
        recurring = params.get("recurring")
        if recurring is not None:
            interval = recurring.get("interval")
            if interval not in ("day", "week", "month", "year"):
                raise StripeError(
                    400,
                    f"Invalid recurring[interval]: must be one of day, week, month, or year, not {interval!r}.",
                    param="recurring[interval]",
                )
            recurring = {
                "interval": interval,
                "interval_count": recurring.get("interval_count", 1),
                "usage_type": "licensed",
                "aggregate_usage": None,
                "meter": None,
                "trial_period_days": None,
            }
        price = self._base("price", "price", params.get("metadata"))
        price.update(
            {
                "active": params.get("active", True),
                "billing_scheme": "per_unit",
                "currency": params["currency"].lower(),
                "lookup_key": params.get("lookup_key"),
                "nickname": params.get("nickname"),
                "product": params["product"],
                "recurring": recurring,
                "tax_behavior": "unspecified",
                "type": "recurring" if recurring else "one_time",
                "unit_amount": params["unit_amount"],
                "unit_amount_decimal": str(params["unit_amount"]),
            }
        )
        return self._store(price)

    # -- checkout sessions --------------------------------------------------------------------

    def create_checkout_session(self, params: dict[str, Any]) -> dict[str, Any]:
        """Create a subscription-mode Checkout Session from API parameters."""
        mode = params.get("mode")
        if mode != "subscription":
            # NOTE: only subscription mode is implemented, so payment and setup modes are rejected.
            raise StripeError(400, f"Unsupported mode for this fake: {mode!r}.", param="mode")
        for name in ("success_url", "line_items"):
            if not params.get(name):
                raise StripeError(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
        if params.get("customer") and params.get("customer_email"):
            raise StripeError(
                400,
                "You may only specify one of these parameters: customer, customer_email.",
                param="customer_email",
            )
        if params.get("customer"):
            self._lookup(params["customer"], "customer", param="customer")
        line_items = []
        currency = None
        amount_total = 0
        for index, item in enumerate(params["line_items"]):
            price = self._lookup(
                item.get("price", ""), "price", param=f"line_items[{index}][price]"
            )
            if price["type"] != "recurring":
                raise StripeError(
                    400,
                    "In subscription mode, you must provide at least one recurring price.",
                    param=f"line_items[{index}][price]",
                )
            if currency is not None and price["currency"] != currency:
                raise StripeError(400, "All prices must use the same currency.", param="line_items")
            currency = price["currency"]
            quantity = item.get("quantity", 1)
            amount_total += price["unit_amount"] * quantity
            line_items.append({"price": price["id"], "quantity": quantity})
        session = self._base("cs", "checkout.session", params.get("metadata"))
        created = session["created"]
        session.update(
            {
                "mode": "subscription",
                "status": "open",
                "payment_status": "unpaid",
                "amount_subtotal": amount_total,
                "amount_total": amount_total,
                "currency": currency,
                "customer": params.get("customer"),
                "customer_email": params.get("customer_email"),
                "customer_details": None,
                "client_reference_id": params.get("client_reference_id"),
                "success_url": params["success_url"],
                "cancel_url": params.get("cancel_url"),
                "expires_at": created + CHECKOUT_SESSION_LIFETIME_SECONDS,
                "invoice": None,
                "payment_intent": None,
                "subscription": None,
                "url": f"{self.url}/checkout/{session['id']}",
            }
        )
        subscription_data = params.get("subscription_data") or {}
        return self._store(
            session,
            line_items=line_items,
            subscription_metadata=dict(subscription_data.get("metadata") or {}),
        )

    def expire_checkout_session(self, session_id: str) -> dict[str, Any]:
        """Expire an open Checkout Session."""
        session = self._lookup(session_id, "checkout.session")
        if session["status"] != "open":
            raise StripeError(
                400,
                f'Only Checkout Sessions with a status in ["open"] can be expired. '
                f'This Checkout Session has a status of "{session["status"]}".',
            )
        session.update({"status": "expired", "url": None})
        self._emit("checkout.session.expired", session)
        return session

    def complete_checkout(self, session_id: str) -> dict[str, Any]:
        """Pay an open Checkout Session as the customer would on Stripe's hosted page.

        Creates the customer (if the session has only an email), the subscription, its first
        invoice (paid), a payment intent and a charge, and records the events
        `customer.subscription.created`, `invoice.paid`, `invoice.payment_succeeded` and
        `checkout.session.completed`. Returns the completed session.
        """
        with self._lock:
            session = self._lookup(session_id, "checkout.session")
            if session["status"] != "open":
                raise StripeError(
                    400, f"Checkout Session {session_id} is {session['status']}, not open."
                )
            private = self._state.private[session_id]
            if session["customer"] is None:
                customer = self.create_customer({"email": session["customer_email"]})
                session["customer"] = customer["id"]
            customer = self._state.objects[session["customer"]]
            subscription = self._create_subscription(
                customer_id=customer["id"],
                items=private["line_items"],
                metadata=private["subscription_metadata"],
            )
            self._emit("customer.subscription.created", subscription)
            invoice = self._create_invoice(
                subscription=subscription, paid=True, billing_reason="subscription_create"
            )
            session.update(
                {
                    "status": "complete",
                    "payment_status": "paid",
                    "subscription": subscription["id"],
                    "invoice": invoice["id"],
                    "url": None,
                    "customer_details": {"email": customer["email"], "name": customer["name"]},
                }
            )
            self._emit("checkout.session.completed", session)
            return copy.deepcopy(session)

    # -- subscriptions and invoices -----------------------------------------------------------

    def _create_subscription(
        self, *, customer_id: str, items: list[dict[str, Any]], metadata: dict[str, Any]
    ) -> dict[str, Any]:
        subscription = self._base("sub", "subscription", metadata)
        start = subscription["created"]
        first_price = self._state.objects[items[0]["price"]]
        end = _add_interval(
            start=start,
            interval=first_price["recurring"]["interval"],
            count=first_price["recurring"]["interval_count"],
        )
        subscription_items = []
        for item in items:
            subscription_items.append(
                {
                    "id": self._new_id("si"),
                    "object": "subscription_item",
                    "created": start,
                    "metadata": {},
                    "price": copy.deepcopy(self._state.objects[item["price"]]),
                    "quantity": item["quantity"],
                    "subscription": subscription["id"],
                    "current_period_start": start,
                    "current_period_end": end,
                }
            )
        subscription.update(
            {
                "customer": customer_id,
                "status": "active",
                "currency": first_price["currency"],
                "collection_method": "charge_automatically",
                "cancel_at": None,
                "cancel_at_period_end": False,
                "canceled_at": None,
                "ended_at": None,
                # API versions from 2025-03-31 keep the period only on the items. The fake also
                # keeps the older top-level copy, so callers written for either shape work.
                "current_period_start": start,
                "current_period_end": end,
                "start_date": start,
                "latest_invoice": None,
                "items": {
                    "object": "list",
                    "data": subscription_items,
                    "has_more": False,
                    "url": f"/v1/subscription_items?subscription={subscription['id']}",
                },
            }
        )
        return self._store(subscription)

    def _set_subscription_period(
        self, subscription: dict[str, Any], *, start: int, end: int
    ) -> None:
        subscription["current_period_start"] = start
        subscription["current_period_end"] = end
        for item in subscription["items"]["data"]:
            item["current_period_start"] = start
            item["current_period_end"] = end

    def _create_invoice(
        self, *, subscription: dict[str, Any], paid: bool, billing_reason: str
    ) -> dict[str, Any]:
        now = self._timestamp()
        start = subscription["current_period_start"]
        end = subscription["current_period_end"]
        lines = []
        total = 0
        for item in subscription["items"]["data"]:
            amount = item["price"]["unit_amount"] * item["quantity"]
            total += amount
            lines.append(
                {
                    "id": self._new_id("il"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": subscription["currency"],
                    "description": f"{item['quantity']} × subscription",
                    "metadata": dict(subscription["metadata"]),
                    "period": {"start": start, "end": end},
                    "price": copy.deepcopy(item["price"]),
                    "quantity": item["quantity"],
                    "subscription": subscription["id"],
                    "subscription_item": item["id"],
                    "type": "subscription",
                }
            )
        # Stripe leaves invoice.metadata empty for subscription invoices and copies the
        # subscription's metadata into subscription_details and into each subscription line.
        invoice = self._base("in", "invoice", None)
        subscription_details = {"metadata": dict(subscription["metadata"])}
        invoice.update(
            {
                "customer": subscription["customer"],
                "subscription": subscription["id"],
                "subscription_details": subscription_details,
                "parent": {
                    "type": "subscription_details",
                    "subscription_details": {
                        **subscription_details,
                        "subscription": subscription["id"],
                    },
                },
                "billing_reason": billing_reason,
                "collection_method": "charge_automatically",
                "currency": subscription["currency"],
                "subtotal": total,
                "total": total,
                "amount_due": total,
                "amount_paid": total if paid else 0,
                "amount_remaining": 0 if paid else total,
                "attempt_count": 1,
                "attempted": True,
                "paid": paid,
                "status": "paid" if paid else "open",
                "period_start": start,
                "period_end": end,
                "next_payment_attempt": None if paid else now + 3 * 86400,
                "status_transitions": {
                    "finalized_at": now,
                    "paid_at": now if paid else None,
                },
                "lines": {
                    "object": "list",
                    "data": lines,
                    "has_more": False,
                    "total_count": len(lines),
                    "url": f"/v1/invoices/{invoice['id']}/lines",
                },
            }
        )
        payment_intent, charge = self._create_payment(invoice=invoice, paid=paid)
        invoice["payment_intent"] = payment_intent["id"]
        invoice["charge"] = charge["id"] if charge else None
        self._store(invoice)
        subscription["latest_invoice"] = invoice["id"]
        if paid:
            self._emit("invoice.paid", invoice)
            self._emit("invoice.payment_succeeded", invoice)
        else:
            self._emit("invoice.payment_failed", invoice)
        return invoice

    def _create_payment(
        self, *, invoice: dict[str, Any], paid: bool
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        payment_intent = self._base("pi", "payment_intent", None)
        payment_intent.update(
            {
                "amount": invoice["amount_due"],
                "amount_received": invoice["amount_due"] if paid else 0,
                "currency": invoice["currency"],
                "customer": invoice["customer"],
                "invoice": invoice["id"],
                "status": "succeeded" if paid else "requires_payment_method",
                "latest_charge": None,
                "last_payment_error": None
                if paid
                else {
                    "type": "card_error",
                    "code": "card_declined",
                    "message": "Your card was declined.",
                },
                "client_secret": None,
            }
        )
        payment_intent["client_secret"] = f"{payment_intent['id']}_secret_{secrets.token_hex(8)}"
        charge = None
        if paid:
            charge = self._base("ch", "charge", None)
            charge.update(
                {
                    "amount": invoice["amount_due"],
                    "amount_captured": invoice["amount_due"],
                    "amount_refunded": 0,
                    "captured": True,
                    "currency": invoice["currency"],
                    "customer": invoice["customer"],
                    "disputed": False,
                    "invoice": invoice["id"],
                    "paid": True,
                    "payment_intent": payment_intent["id"],
                    "refunded": False,
                    "status": "succeeded",
                }
            )
            self._store(charge)
            payment_intent["latest_charge"] = charge["id"]
        self._store(payment_intent)
        return payment_intent, charge

    def list_invoice_payments(self, query: dict[str, Any]) -> dict[str, Any]:
        """List the payments of invoices, optionally of one `invoice`, as `GET /v1/invoice_payments`.

        Invoices of API versions from 2025-03-31 on carry no `payment_intent`; this list is
        where a client finds it. Each invoice here has one payment, its payment intent.
        """
        payments = []
        for invoice in self._state.objects.values():
            if invoice["object"] != "invoice" or not invoice.get("payment_intent"):
                continue
            if "invoice" in query and invoice["id"] != query["invoice"]:
                continue
            paid = invoice["status"] == "paid"
            payments.append(
                {
                    "id": f"inpay_{invoice['id'].removeprefix('in_')}",
                    "object": "invoice_payment",
                    "amount_paid": invoice["amount_paid"] if paid else None,
                    "amount_requested": invoice["amount_due"],
                    "created": invoice["created"],
                    "currency": invoice["currency"],
                    "invoice": invoice["id"],
                    "is_default": True,
                    "livemode": False,
                    "payment": {"type": "payment_intent", "payment_intent": invoice["payment_intent"]},
                    "status": "paid" if paid else "open",
                    "status_transitions": {"canceled_at": None, "paid_at": invoice["status_transitions"]["paid_at"]},
                }
            )
        return _list_response(payments, url="/v1/invoice_payments", query=query)

    def renew(self, subscription_id: str, *, paid: bool = True) -> dict[str, Any] | None:
        """Start the next billing period of a subscription and bill it.

        A paid renewal records `invoice.paid`, an unpaid one `invoice.payment_failed` and turns
        the subscription `past_due`. A subscription set to cancel at period end is cancelled
        instead (`customer.subscription.deleted`) and None is returned. Otherwise returns the
        new invoice.
        """
        with self._lock:
            subscription = self._lookup(subscription_id, "subscription")
            if subscription["status"] == "canceled":
                raise StripeError(400, f"Subscription {subscription_id} is canceled.")
            if subscription["cancel_at_period_end"]:
                self._cancel_subscription(subscription)
                return None
            previous = {
                "current_period_start": subscription["current_period_start"],
                "current_period_end": subscription["current_period_end"],
                "status": subscription["status"],
            }
            recurring = subscription["items"]["data"][0]["price"]["recurring"]
            start = subscription["current_period_end"]
            end = _add_interval(
                start=start, interval=recurring["interval"], count=recurring["interval_count"]
            )
            self._set_subscription_period(subscription, start=start, end=end)
            subscription["status"] = "active" if paid else "past_due"
            invoice = self._create_invoice(
                subscription=subscription, paid=paid, billing_reason="subscription_cycle"
            )
            self._emit("customer.subscription.updated", subscription, previous=previous)
            return copy.deepcopy(invoice)

    def update_subscription(self, subscription_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """Update `cancel_at_period_end` and `metadata` of a subscription."""
        subscription = self._lookup(subscription_id, "subscription")
        unsupported = set(params) - {"cancel_at_period_end", "metadata", "expand"}
        if unsupported:
            name = sorted(unsupported)[0]
            raise StripeError(400, f"Received unknown parameter: {name}", param=name)
        if subscription["status"] == "canceled":
            raise StripeError(
                400,
                "A canceled subscription can only update its cancellation_details and metadata.",
            )
        previous: dict[str, Any] = {}
        if "cancel_at_period_end" in params:
            previous["cancel_at_period_end"] = subscription["cancel_at_period_end"]
            subscription["cancel_at_period_end"] = params["cancel_at_period_end"]
            subscription["cancel_at"] = (
                subscription["current_period_end"] if params["cancel_at_period_end"] else None
            )
        if "metadata" in params:
            previous["metadata"] = dict(subscription["metadata"])
            _merge_metadata(subscription["metadata"], params["metadata"])
        self._emit("customer.subscription.updated", subscription, previous=previous)
        return subscription

    def _cancel_subscription(self, subscription: dict[str, Any]) -> dict[str, Any]:
        if subscription["status"] == "canceled":
            raise StripeError(
                404,
                f"No such subscription: '{subscription['id']}'",
                code="resource_missing",
                param="id",
            )
        now = self._timestamp()
        subscription.update({"status": "canceled", "canceled_at": now, "ended_at": now})
        self._emit("customer.subscription.deleted", subscription)
        return subscription

    # -- refunds and disputes ----------------------------------------------------------------

    def fail_next_refund(
        self, *, code: str = "card_declined", http_status: int | None = None
    ) -> None:
        """Make the next refund create request fail with Stripe error `code`.

        `card_declined` and similar card codes return 402 (`stripe.CardError` in the client),
        `api_error` returns 500 (`stripe.APIError`). `http_status` overrides the status.
        """
        error_type, default_status = REFUND_FAILURES.get(code, ("invalid_request_error", 400))
        with self._lock:
            self._state.refund_failures.append(
                _RefundFailure(
                    code=code, error_type=error_type, http_status=http_status or default_status
                )
            )

    def pend_next_refund(self) -> None:
        """Make the next created refund `pending`, as Stripe returns refunds that the card
        network confirms later. `settle_refund` finishes it."""
        with self._lock:
            self._state.pending_refunds += 1

    def settle_refund(self, refund_id: str, *, status: str = "succeeded") -> dict[str, Any]:
        """Move a pending refund to `status` and record `refund.updated` and
        `charge.refund.updated`, as Stripe does when the card network confirms or rejects it."""
        with self._lock:
            refund = self._lookup(refund_id, "refund")
            if refund["status"] != "pending":
                raise StripeError(400, f"Refund {refund_id} is {refund['status']}, not pending.")
            previous = {"status": refund["status"]}
            refund["status"] = status
            if status in ("failed", "canceled"):
                charge = self._state.objects[refund["charge"]]
                charge["amount_refunded"] -= refund["amount"]
                charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
            self._emit("refund.updated", refund, previous=previous)
            self._emit("charge.refund.updated", refund, previous=previous)
            return copy.deepcopy(refund)

    def create_refund(self, params: dict[str, Any]) -> dict[str, Any]:
        """Refund all or part of a charge, given `charge` or `payment_intent`."""
        if self._state.refund_failures:
            failure = self._state.refund_failures.pop(0)
            raise StripeError(
                failure.http_status,
                f"Scripted refund failure: {failure.code}.",
                error_type=failure.error_type,
                code=failure.code,
            )
        if params.get("charge") and params.get("payment_intent"):
            raise StripeError(
                400,
                "You may only specify one of these parameters: charge, payment_intent.",
                param="payment_intent",
            )
        if params.get("charge"):
            charge = self._lookup(params["charge"], "charge", param="charge")
        elif params.get("payment_intent"):
            payment_intent = self._lookup(
                params["payment_intent"], "payment_intent", param="payment_intent"
            )
            if payment_intent["latest_charge"] is None:
                raise StripeError(
                    400,
                    f"This PaymentIntent ({payment_intent['id']}) does not have a successful charge to refund.",
                    param="payment_intent",
                )
            charge = self._state.objects[payment_intent["latest_charge"]]
        else:
            raise StripeError(
                400,
                "One of the following params should be provided for this request: payment_intent or charge.",
                code="parameter_missing",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        if remaining <= 0:
            raise StripeError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = params.get("amount", remaining)
        if amount <= 0:
            raise StripeError(400, "Refund amount must be greater than zero.", param="amount")
        if amount > remaining:
            raise StripeError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining}).",
                param="amount",
            )
        refund = self._base("re", "refund", params.get("metadata"))
        refund.update(
            {
                "amount": amount,
                "charge": charge["id"],
                "currency": charge["currency"],
                "payment_intent": charge["payment_intent"],
                "reason": params.get("reason"),
                "status": "succeeded",
            }
        )
        if self._state.pending_refunds:
            self._state.pending_refunds -= 1
            refund["status"] = "pending"
        self._store(refund)
        previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        self._emit("refund.created", refund)
        self._emit("charge.refunded", charge, previous=previous)
        return refund

    def dispute(self, charge_id: str, *, reason: str = "fraudulent") -> dict[str, Any]:
        """Open a dispute on a charge, record `charge.dispute.created` and return the dispute."""
        with self._lock:
            charge = self._lookup(charge_id, "charge", param="charge")
            dispute = self._base("du", "dispute", None)
            dispute.update(
                {
                    "amount": charge["amount"] - charge["amount_refunded"],
                    "charge": charge["id"],
                    "currency": charge["currency"],
                    "payment_intent": charge["payment_intent"],
                    "reason": reason,
                    "status": "needs_response",
                    "is_charge_refundable": False,
                }
            )
            self._store(dispute)
            charge["disputed"] = True
            self._emit("charge.dispute.created", dispute)
            return copy.deepcopy(dispute)

    # -- customer portal and exhausted payment retries ----------------------------------------

    def create_billing_portal_session(self, params: dict[str, Any]) -> dict[str, Any]:
        """Create a customer portal session for an existing customer."""
        if not params.get("customer"):
            raise StripeError(
                400, "Missing required param: customer.", code="parameter_missing", param="customer"
            )
        self._lookup(params["customer"], "customer", param="customer")
        session = self._base("bps", "billing_portal.session", None)
        session.update(
            {
                "customer": params["customer"],
                "return_url": params.get("return_url"),
                "url": f"{self.url}/billing_portal/{session['id']}",
                "configuration": "bpc_default",
                "locale": None,
                "on_behalf_of": None,
            }
        )
        return self._store(session)

    def exhaust_retries(self, subscription_id: str) -> dict[str, Any]:
        """Fail the last try of a past-due subscription's open invoice, as Stripe's retry
        schedule does at its end: `invoice.payment_failed` with no `next_payment_attempt`, then
        the subscription is cancelled (`customer.subscription.deleted`). Returns the invoice."""
        with self._lock:
            subscription = self._lookup(subscription_id, "subscription")
            invoice = self._state.objects.get(subscription.get("latest_invoice") or "")
            if invoice is None or invoice["status"] != "open":
                raise StripeError(400, f"Subscription {subscription_id} has no open invoice to retry.")
            invoice["attempt_count"] += 1
            invoice["next_payment_attempt"] = None
            self._emit("invoice.payment_failed", invoice)
            self._cancel_subscription(subscription)
            return copy.deepcopy(invoice)
    # -- Connect: accounts, account links, transfers --------------------------------------------
    #
    # Express connected accounts start with details_submitted, charges_enabled and
    # payouts_enabled false. `complete_onboarding` (or `POST /_test/accounts/<id>/onboard`)
    # simulates the user finishing Stripe's hosted form. It turns all three true and records
    # `account.updated`. Account links return a URL on this server that nothing serves.
    # Transfers move no money and do not check the platform balance; `fail_next_transfer` (or
    # `POST /_test/transfers/fail_next` with form fields `code` and optional `http_status`)
    # scripts the next create request to fail.

    # Stripe's error type and HTTP status for each scripted transfer failure code.
    TRANSFER_FAILURES = {
        "balance_insufficient": ("invalid_request_error", 400),
        "account_invalid": ("invalid_request_error", 400),
        "api_error": ("api_error", 500),
        "rate_limit": ("invalid_request_error", 429),
    }
    # The example Account Link in Stripe's API reference (docs.stripe.com/api/account_links)
    # expires 300 seconds after it was created.
    ACCOUNT_LINK_LIFETIME_SECONDS = 300

    def _scripted_transfer_failures(self) -> list[_RefundFailure]:
        # Kept out of _State so this section stays self-contained.
        return self.__dict__.setdefault("_transfer_failure_queue", [])

    def create_account(self, params: dict[str, Any]) -> dict[str, Any]:
        """Create an Express connected account from API parameters."""
        account_type = params.get("type")
        if account_type != "express":
            # NOTE: only Express accounts are implemented, so standard and custom are rejected.
            raise StripeError(400, f"Unsupported account type for this fake: {account_type!r}.", param="type")
        requested = {
            name: str(options.get("requested")).lower() == "true"
            for name, options in (params.get("capabilities") or {}).items()
            if isinstance(options, dict)
        }
        account = self._base("acct", "account", params.get("metadata"))
        account.update(
            {
                "type": "express",
                "email": params.get("email"),
                "country": params.get("country", "DE"),
                "default_currency": "eur",
                "business_type": params.get("business_type"),
                "business_profile": {"name": None, "url": None, "mcc": None, "support_email": None},
                "capabilities": {name: "inactive" for name, wanted in requested.items() if wanted},
                "charges_enabled": False,
                "payouts_enabled": False,
                "details_submitted": False,
                "controller": {
                    "type": "application",
                    "is_controller": True,
                    "requirement_collection": "stripe",
                    "stripe_dashboard": {"type": "express"},
                },
                "requirements": {
                    "currently_due": ["business_type", "external_account", "tos_acceptance.date"],
                    "eventually_due": ["business_type", "external_account", "tos_acceptance.date"],
                    "past_due": ["business_type", "external_account", "tos_acceptance.date"],
                    "pending_verification": [],
                    "current_deadline": None,
                    "disabled_reason": "requirements.past_due",
                    "errors": [],
                },
                "external_accounts": {
                    "object": "list",
                    "data": [],
                    "has_more": False,
                    "total_count": 0,
                    "url": f"/v1/accounts/{account['id']}/external_accounts",
                },
                "tos_acceptance": {"date": None},
            }
        )
        self._store(account)
        return account

    def complete_onboarding(self, account_id: str) -> dict[str, Any]:
        """Finish onboarding of an account as its owner would on Stripe's form.

        Sets details_submitted, charges_enabled and payouts_enabled, activates the requested
        capabilities, clears the requirements, records `account.updated` and returns the account.
        """
        with self._lock:
            account = self._lookup(account_id, "account")
            previous = {
                "charges_enabled": account["charges_enabled"],
                "payouts_enabled": account["payouts_enabled"],
                "details_submitted": account["details_submitted"],
                "capabilities": dict(account["capabilities"]),
                "requirements": copy.deepcopy(account["requirements"]),
            }
            account.update(
                {
                    "charges_enabled": True,
                    "payouts_enabled": True,
                    "details_submitted": True,
                    "capabilities": {name: "active" for name in account["capabilities"]},
                    "tos_acceptance": {"date": self._timestamp()},
                }
            )
            account["requirements"].update(
                {"currently_due": [], "eventually_due": [], "past_due": [], "disabled_reason": None}
            )
            self._emit("account.updated", account, previous=previous)
            return copy.deepcopy(account)

    def create_account_link(self, params: dict[str, Any]) -> dict[str, Any]:
        """Create an onboarding link for an account."""
        for name in ("account", "type", "return_url", "refresh_url"):
            if not params.get(name):
                raise StripeError(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
        account = self._lookup(params["account"], "account", param="account")
        if params["type"] not in ("account_onboarding", "account_update"):
            raise StripeError(
                400,
                f"Invalid type: must be one of account_onboarding or account_update, not {params['type']!r}.",
                param="type",
            )
        if params["type"] == "account_update" and account["type"] == "express":
            raise StripeError(
                400,
                "You cannot create `account_update` type Account Links for Express accounts.",
                param="type",
            )
        created = self._timestamp()
        return {
            "object": "account_link",
            "created": created,
            "expires_at": created + self.ACCOUNT_LINK_LIFETIME_SECONDS,
            "url": f"{self.url}/connect/onboarding/{account['id']}/{secrets.token_urlsafe(12)}",
        }

    def fail_next_transfer(
        self, *, code: str = "balance_insufficient", http_status: int | None = None
    ) -> None:
        """Make the next transfer create request fail with Stripe error `code`.

        `balance_insufficient` returns 400 (`stripe.InvalidRequestError` in the client),
        `api_error` returns 500 (`stripe.APIError`). `http_status` overrides the status.
        """
        error_type, default_status = self.TRANSFER_FAILURES.get(code, ("invalid_request_error", 400))
        with self._lock:
            self._scripted_transfer_failures().append(
                _RefundFailure(
                    code=code, error_type=error_type, http_status=http_status or default_status
                )
            )

    def create_transfer(self, params: dict[str, Any]) -> dict[str, Any]:
        """Transfer an amount to a connected account whose payouts are enabled."""
        failures = self._scripted_transfer_failures()
        if failures:
            failure = failures.pop(0)
            raise StripeError(
                failure.http_status,
                f"Scripted transfer failure: {failure.code}.",
                error_type=failure.error_type,
                code=failure.code,
            )

        for name in ("amount", "currency", "destination"):
            if name not in params or params[name] in ("", None):
                raise StripeError(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
        if params["amount"] <= 0:
            raise StripeError(400, "Amount must be at least 1 cent.", param="amount")
        currency = str(params["currency"]).lower()
        if not re.fullmatch(r"[a-z]{3}", currency):
            raise StripeError(400, f"Invalid currency: {params['currency']}.", param="currency")

        destination = self._state.objects.get(params["destination"])
        if destination is None or destination["object"] != "account":
            raise StripeError(
                400,
                f"No such destination: '{params['destination']}'",
                code="resource_missing",
                param="destination",
            )
        if not destination["payouts_enabled"]:
            raise StripeError(
                400,
                "Your destination account needs to have at least one of the following capabilities "
                "enabled: transfers, crypto_transfers, legacy_payments",
                code="insufficient_capabilities_for_transfer",
                param="destination",
            )

        transfer = self._base("tr", "transfer", params.get("metadata"))
        transfer.update(
            {
                "amount": params["amount"],
                "amount_reversed": 0,
                "balance_transaction": self._new_id("txn"),
                "currency": currency,
                "description": params.get("description"),
                "destination": destination["id"],
                "destination_payment": self._new_id("py"),
                "reversals": {
                    "object": "list",
                    "data": [],
                    "has_more": False,
                    "total_count": 0,
                    "url": f"/v1/transfers/{transfer['id']}/reversals",
                },
                "reversed": False,
                "source_transaction": params.get("source_transaction"),
                "source_type": "card",
                "transfer_group": params.get("transfer_group"),
            }
        )
        self._store(transfer)
        self._emit("transfer.created", transfer)
        return transfer

    def list_transfers(self, query: dict[str, Any]) -> dict[str, Any]:
        """List transfers, optionally filtered by `destination` and `transfer_group`."""
        transfers = [
            obj
            for obj in self._state.objects.values()
            if obj["object"] == "transfer"
            and all(obj.get(name) == query[name] for name in ("destination", "transfer_group") if name in query)
        ]
        return _list_response(transfers, url="/v1/transfers", query=query)

    # -- webhooks ----------------------------------------------------------------------------

    def signed_payload(
        self, event: dict[str, Any], *, timestamp: int | None = None, secret: str | None = None
    ) -> tuple[str, str]:
        """Return the JSON payload of an event and a `Stripe-Signature` header for it."""
        payload = json.dumps(event, indent=2)
        header = sign_payload(
            payload=payload,
            secret=secret if secret is not None else self.webhook_secret,
            timestamp=timestamp if timestamp is not None else int(time.time()),
        )
        return payload, header

    def deliver_to(self, url: str, *, events: list[dict[str, Any]] | None = None) -> list[int]:
        """POST events to a webhook endpoint and return the HTTP status of each delivery.

        Without `events`, sends every event not yet delivered, oldest first, and marks them
        delivered. With `events`, sends exactly those in the given order, including ones sent
        before, which allows replays and out-of-order delivery. A connection failure counts as
        status 0. Only loopback addresses are accepted.
        """
        _require_loopback(url)
        with self._lock:
            if events is None:
                batch = [
                    e for e in self._state.events if e["id"] not in self._state.delivered_event_ids
                ]
            else:
                batch = list(events)
            batch = copy.deepcopy(batch)
        statuses = []
        for event in batch:
            statuses.append(self._post_event(url, event))
            with self._lock:
                self._state.delivered_event_ids.add(event["id"])
        return statuses

    def _post_event(self, url: str, event: dict[str, Any]) -> int:
        payload, header = self.signed_payload(event)
        request = urllib.request.Request(
            url,
            data=payload.encode(),
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": header,
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            logger.warning("Webhook delivery of %s to %s failed: %s", event["id"], url, exc)
            status = 0
        logger.info(
            "Webhook %s %s delivered to %s with status %s", event["id"], event["type"], url, status
        )
        return status


def _merge_metadata(target: dict[str, Any], update: dict[str, Any]) -> None:
    # Stripe removes a metadata key when it is set to an empty string.
    for key, value in update.items():
        if value == "":
            target.pop(key, None)
        else:
            target[key] = value


def _require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"Webhook URL must point at a loopback address, got {url!r}.")


# ----------------------------------------------------------------------------------------------
# HTTP routing


def _expand(api: StripeApiServer, obj: Any, paths: list[str]) -> Any:
    """Replace id fields named by Stripe `expand` paths (`subscription`, `data.invoice`) with objects."""
    result = copy.deepcopy(obj)
    for path in paths:
        _expand_path(api, result, path.split("."))
    return result


def _expand_path(api: StripeApiServer, node: Any, parts: list[str]) -> None:
    if not isinstance(node, dict) or not parts:
        return
    head, rest = parts[0], parts[1:]
    if head == "data" and isinstance(node.get("data"), list):
        for item in node["data"]:
            _expand_path(api, item, rest)
        return
    value = node.get(head)
    if isinstance(value, str) and value in api._state.objects:
        node[head] = copy.deepcopy(api._state.objects[value])
    if rest:
        _expand_path(api, node.get(head), rest)


def _list_response(
    objects: list[dict[str, Any]], *, url: str, query: dict[str, Any]
) -> dict[str, Any]:
    # Stripe lists newest first and pages with starting_after.
    ordered = sorted(objects, key=lambda obj: obj["created"], reverse=True)
    starting_after = query.get("starting_after")
    if starting_after:
        ids = [obj["id"] for obj in ordered]
        if starting_after in ids:
            ordered = ordered[ids.index(starting_after) + 1 :]
    limit = min(int(query.get("limit", DEFAULT_LIST_LIMIT)), MAX_LIST_LIMIT)
    return {"object": "list", "data": ordered[:limit], "has_more": len(ordered) > limit, "url": url}


class _StripeHandler(BaseHTTPRequestHandler):
    api: StripeApiServer
    protocol_version = "HTTP/1.1"
    # True while replaying a stored idempotent result, so the response carries Idempotent-Replayed.
    _replayed = False
    server_version = "FakeStripe/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from base class
        logger.debug("Fake Stripe API: %s", format % args)

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length).decode() if length else ""
        record = RecordedRequest(
            method=method, path=split.path, query={}, params={}, headers=dict(self.headers.items())
        )
        with self.api._lock:
            self.api.requests.append(record)
        try:
            record.query = parse_form(parse_qsl(split.query, keep_blank_values=True))
            record.params = parse_form(parse_qsl(raw_body, keep_blank_values=True))
            if split.path.startswith("/checkout/"):
                self._hosted_checkout(method, split.path, record)
                return
            if split.path.startswith("/billing_portal/"):
                self._hosted_portal(split.path, record)
                return
            if split.path.startswith("/_test/"):
                status, body = self._test_control(method, split.path, record.params)
            elif split.path.startswith("/v1/"):
                self._authenticate()
                status, body = self._api_call(method, split.path, record)
            else:
                raise StripeError(404, f"Unrecognized request URL ({method}: {split.path}).")
        except StripeError as exc:
            logger.info(
                "Fake Stripe API rejected %s %s with %s %s: %s",
                method,
                split.path,
                exc.status,
                exc.code or exc.error_type,
                exc.message,
            )
            status, body = exc.status, exc.body()
        record.status = status
        self._send_json(status, body)

    def _authenticate(self) -> None:
        authorization = self.headers.get("Authorization", "")
        scheme, _, credential = authorization.partition(" ")
        if not credential or scheme.lower() != "bearer":
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        if not hmac.compare_digest(credential.encode(), self.api.secret_key.encode()):
            raise StripeError(
                401, f"Invalid API Key provided: {_mask_key(credential)}", code="api_key_invalid"
            )

    def _api_call(
        self, method: str, path: str, record: RecordedRequest
    ) -> tuple[int, dict[str, Any]]:
        key = self.headers.get("Idempotency-Key")
        if method != "POST" or not key:
            with self.api._lock:
                return self._dispatch(method, path, record)
        fingerprint = json.dumps([method, path, record.params], sort_keys=True)
        scope = (self.api.secret_key, key)
        with self.api._lock:
            previous = self.api._state.idempotency.get(scope)
            if previous is not None:
                if previous.fingerprint != fingerprint:
                    raise StripeError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters they "
                        f"were first used with. Try using a key other than '{key}' if you meant to "
                        "execute a different request.",
                        error_type="idempotency_error",
                    )
                self._replayed = True
                return previous.status, copy.deepcopy(previous.body)
            try:
                status, body = self._dispatch(method, path, record)
            except StripeError as exc:
                status, body = exc.status, exc.body()
            # Stripe stores the first result for a key whatever its status, 500s included.
            self.api._state.idempotency[scope] = _IdempotentResult(
                fingerprint, status, copy.deepcopy(body)
            )
            return status, body

    def _dispatch(
        self, method: str, path: str, record: RecordedRequest
    ) -> tuple[int, dict[str, Any]]:
        api = self.api
        params = record.params
        query = record.query
        expand = list(params.pop("expand", None) or query.get("expand") or [])
        parts = path.strip("/").split("/")[1:]
        result: dict[str, Any] | None = None

        match method, parts:
            case "POST", ["customers"]:
                result = api.create_customer(params)
            case "GET", ["customers", object_id]:
                result = api._lookup(object_id, "customer")
            case "POST", ["products"]:
                result = api.create_product(params)
            case "GET", ["products", object_id]:
                result = api._lookup(object_id, "product")
            case "POST", ["prices"]:
                result = api.create_price(params)
            case "GET", ["prices", object_id]:
                result = api._lookup(object_id, "price")
            case "POST", ["checkout", "sessions"]:
                result = api.create_checkout_session(params)
            case "GET", ["checkout", "sessions", object_id]:
                result = api._lookup(object_id, "checkout.session")
            case "POST", ["checkout", "sessions", object_id, "expire"]:
                result = api.expire_checkout_session(object_id)
            case "GET", ["subscriptions", object_id]:
                result = api._lookup(object_id, "subscription")
            case "POST", ["subscriptions", object_id]:
                result = api.update_subscription(object_id, params)
            case "DELETE", ["subscriptions", object_id]:
                result = api._cancel_subscription(api._lookup(object_id, "subscription"))
            case "GET", ["invoices"]:
                invoices = [
                    obj
                    for obj in api._state.objects.values()
                    if obj["object"] == "invoice"
                    and all(
                        obj.get(name) == query[name]
                        for name in ("subscription", "customer", "status")
                        if name in query
                    )
                ]
                result = _list_response(invoices, url="/v1/invoices", query=query)
            case "GET", ["invoices", object_id]:
                result = api._lookup(object_id, "invoice")
            case "GET", ["invoice_payments"]:
                result = api.list_invoice_payments(query)
            case "GET", ["payment_intents", object_id]:
                result = api._lookup(object_id, "payment_intent")
            case "GET", ["charges", object_id]:
                result = api._lookup(object_id, "charge")
            case "POST", ["billing_portal", "sessions"]:
                result = api.create_billing_portal_session(params)
            case "POST", ["refunds"]:
                result = api.create_refund(params)
            case "GET", ["refunds"]:
                refunds = [
                    obj
                    for obj in api._state.objects.values()
                    if obj["object"] == "refund"
                    and all(obj.get(name) == query[name] for name in ("payment_intent", "charge") if name in query)
                ]
                result = _list_response(refunds, url="/v1/refunds", query=query)
            case "GET", ["refunds", object_id]:
                result = api._lookup(object_id, "refund")
            case "GET", ["disputes", object_id]:
                result = api._lookup(object_id, "dispute")
            case "POST", ["accounts"]:
                result = api.create_account(params)
            case "GET", ["accounts", object_id]:
                result = api._lookup(object_id, "account")
            case "POST", ["account_links"]:
                result = api.create_account_link(params)
            case "POST", ["transfers"]:
                result = api.create_transfer(params)
            case "GET", ["transfers"]:
                result = api.list_transfers(query)
            case "GET", ["transfers", object_id]:
                result = api._lookup(object_id, "transfer")
            case "GET", ["events"]:
                events = [
                    e
                    for e in api._state.events
                    if "type" not in query or e["type"] == query["type"]
                ]
                result = _list_response(events, url="/v1/events", query=query)
            case "GET", ["events", object_id]:
                result = api._lookup(object_id, "event")
            case _:
                raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")
        return 200, _expand(api, result, expand)

    def _test_control(
        self, method: str, path: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if method != "POST":
            raise StripeError(405, f"Test control endpoints accept POST only, not {method}.")
        api = self.api
        parts = path.strip("/").split("/")[1:]
        with api._lock:
            match parts:
                case ["checkout", "sessions", session_id, "complete"]:
                    return 200, api.complete_checkout(session_id)
                case ["subscriptions", subscription_id, "renew"]:
                    invoice = api.renew(subscription_id, paid=params.get("paid", True))
                    return 200, {"invoice": invoice}
                case ["subscriptions", subscription_id, "exhaust_retries"]:
                    return 200, api.exhaust_retries(subscription_id)
                case ["charges", charge_id, "dispute"]:
                    return 200, api.dispute(charge_id)
                case ["refunds", "fail_next"]:
                    status = params.get("http_status")
                    api.fail_next_refund(
                        code=params.get("code", "card_declined"),
                        http_status=int(status) if status else None,
                    )
                    return 200, {"ok": True}
                case ["accounts", account_id, "onboard"]:
                    return 200, api.complete_onboarding(account_id)
                case ["transfers", "fail_next"]:
                    status = params.get("http_status")
                    api.fail_next_transfer(
                        code=params.get("code", "balance_insufficient"),
                        http_status=int(status) if status else None,
                    )
                    return 200, {"ok": True}
        raise StripeError(404, f"Unrecognized test control URL: {path}.")

    def _hosted_checkout(self, method: str, path: str, record: RecordedRequest) -> None:
        """Serve a minimal stand-in for Stripe's hosted checkout page with Pay and Cancel buttons."""
        parts = path.strip("/").split("/")
        session_id = parts[1] if len(parts) > 1 else ""
        action = parts[2] if len(parts) > 2 else ""
        with self.api._lock:
            session = self.api._lookup(session_id, "checkout.session")
            session = copy.deepcopy(session)
        if method == "GET" and not action:
            record.status = 200
            self._send_checkout_page(session)
            return
        if method == "POST" and action == "pay":
            completed = self.api.complete_checkout(session_id)
            target = completed["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id)
        elif method == "POST" and action == "cancel":
            target = session["cancel_url"] or session["success_url"]
            target = target.replace("{CHECKOUT_SESSION_ID}", session_id)
        else:
            raise StripeError(404, f"Unrecognized checkout URL ({method}: {path}).")
        record.status = 303
        self.send_response(303)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _hosted_portal(self, path: str, record: RecordedRequest) -> None:
        """Serve a stand-in for the customer portal: the customer id and a link back."""
        session_id = path.strip("/").split("/")[1] if path.count("/") >= 2 else ""
        with self.api._lock:
            session = copy.deepcopy(self.api._lookup(session_id, "billing_portal.session"))
        back = html.escape(session["return_url"] or "")
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test customer portal</title></head>
<body><h1>Test customer portal</h1>
<p>Customer <code id="customer">{html.escape(session["customer"])}</code></p>
<p><a id="return" href="{back}">Return</a></p></body></html>
"""
        body = page.encode()
        record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_checkout_page(self, session: dict[str, Any]) -> None:
        amount = f"{session['amount_total'] / 100:.2f} {str(session['currency']).upper()}"
        email = session["customer_email"] or session["customer"] or ""
        disabled = "" if session["status"] == "open" else " disabled"
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test checkout {html.escape(session["id"])}</title></head>
<body>
<h1>Test checkout</h1>
<p>Session <code id="session-id">{html.escape(session["id"])}</code>, status
<span id="session-status">{html.escape(session["status"])}</span></p>
<p>Customer: <span id="customer">{html.escape(email)}</span></p>
<p>Amount per period: <span id="amount">{html.escape(amount)}</span></p>
<form method="post" action="/checkout/{html.escape(session["id"])}/pay">
<button type="submit" id="pay"{disabled}>Subscribe</button></form>
<form method="post" action="/checkout/{html.escape(session["id"])}/cancel">
<button type="submit" id="cancel">Cancel</button></form>
</body></html>
"""
        body = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
        self.send_header("Stripe-Version", self.headers.get("Stripe-Version") or API_VERSION)
        if getattr(self, "_replayed", False):
            self.send_header("Idempotent-Replayed", "true")
            self._replayed = False
        self.end_headers()
        self.wfile.write(data)


def _forward_events(server: StripeApiServer, url: str) -> None:
    """Post each new event to `url` about once a second; a failed delivery is not retried."""
    while True:
        time.sleep(1.0)
        try:
            statuses = server.deliver_to(url)
        except Exception:  # noqa: BLE001 - keep forwarding whatever one delivery raised
            logger.exception("Forwarding events to %s failed", url)
            continue
        if statuses:
            logger.info("Delivered %s events to %s: %s", len(statuses), url, statuses)


def main() -> None:
    """Run the fake Stripe API in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description="Run a fake Stripe API on 127.0.0.1.")
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port to listen on (0 picks a free port)"
    )
    parser.add_argument(
        "--secret-key", default="sk_test_local", help="API secret key clients must send"
    )
    parser.add_argument(
        "--webhook-secret", default="whsec_local", help="secret for Stripe-Signature headers"
    )
    parser.add_argument(
        "--webhook-url",
        default="",
        help="loopback URL to post every new event to, once a second (for example "
        "http://127.0.0.1:8000/billing/stripe/webhook/)",
    )
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = StripeApiServer(
        secret_key=arguments.secret_key,
        webhook_secret=arguments.webhook_secret,
        port=arguments.port,
    )
    with server:
        logger.info("Fake Stripe API listening on %s, press Ctrl+C to stop", server.url)
        if arguments.webhook_url:
            _require_loopback(arguments.webhook_url)
            threading.Thread(
                target=_forward_events, args=(server, arguments.webhook_url), name="stripe-webhooks", daemon=True
            ).start()
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            logger.info("Interrupted")


if __name__ == "__main__":
    main()
