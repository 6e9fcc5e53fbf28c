"""Card payments through Stripe: Checkout, subscriptions, refunds and the customer portal.

Every call to Stripe happens outside database transactions and row locks, with an idempotency
key derived from our own rows, so a retried call (by a user, a worker or a periodic task)
never creates a second object at Stripe. What Stripe reports back is applied by one function
per change, under a row lock, after checking the current state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from billing.gateway import stripe_client
from billing.models import (
    CheckoutSession,
    Payment,
    PaymentMethod,
    PaymentStatus,
    Refund,
    StripeCustomer,
    Subscription,
)

logger = logging.getLogger(__name__)

# Stripe subscription statuses after which it will never charge again.
ENDED_SUBSCRIPTION_STATUSES = frozenset({"canceled", "unpaid", "incomplete_expired"})
# Refund retry backoff: 1, 2, 4 ... minutes, at most six hours.
REFUND_RETRY_BASE_SECONDS = 60
REFUND_RETRY_MAX_SECONDS = 6 * 3600


PROCESSOR_UNAVAILABLE = (
    "The card payment page could not be opened because the payment processor did not respond. "
    "Nothing was charged; try again in a minute."
)


class CheckoutUnavailable(Exception):
    """Stripe could not open a checkout; the message is safe to show the tenant."""


def from_timestamp(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def _key(*parts: object) -> str:
    """Build an idempotency key scoped to this deployment, so deployments sharing a Stripe account never collide."""
    return "-".join([settings.DEPLOYMENT_NAME, *(str(part) for part in parts)])[:255]


def _metadata(contract) -> dict[str, str]:
    return {"contract_id": str(contract.public_id), "deployment": settings.DEPLOYMENT_NAME}


def _error_text(exc: stripe.StripeError) -> str:
    code = getattr(exc, "code", None) or type(exc).__name__
    message = getattr(exc, "user_message", None) or str(exc) or "no message"
    return f"{code}: {message}"[:2000]


# --- customers and checkout -------------------------------------------------------------------


def customer_for(user) -> str:
    """Return the user's Stripe customer id, creating the customer on first use."""
    existing = StripeCustomer.objects.filter(user=user).values_list("customer_id", flat=True).first()
    if existing:
        return existing
    customer = stripe_client().v1.customers.create(
        params={"email": user.email, "metadata": {"user_id": str(user.pk), "deployment": settings.DEPLOYMENT_NAME}},
        options={"idempotency_key": _key("customer", user.pk)},
    )
    try:
        with transaction.atomic():
            StripeCustomer.objects.create(user=user, customer_id=customer.id)
    except IntegrityError:
        # A concurrent request stored it first; the idempotency key gave both the same customer.
        pass
    logger.info("Stripe customer %s for user %s", customer.id, user.pk)
    return StripeCustomer.objects.get(user=user).customer_id


def checkout_open(*, contract, actor, success_url: str, cancel_url: str) -> CheckoutSession:
    """Return a usable Checkout Session for the first period of a requested card-paid rental.

    An open session is reused, so a double click or a "retry payment" after the tenant left the
    checkout page goes back to it. Otherwise a new one is created, with the contract id in the
    metadata of the session and of the subscription, and so of its invoices.
    """
    from marketplace.models import ContractStatus
    from marketplace.services.contracts import InvalidTransition, contract_note

    if contract.tenant_id != actor.pk:
        raise PermissionError(f"User {actor.pk} is not the tenant of contract {contract.pk}.")
    if contract.status != ContractStatus.REQUESTED:
        raise InvalidTransition(contract, "be paid")
    if contract.payment_method != PaymentMethod.STRIPE:
        raise CheckoutUnavailable("This rental is not paid by card.")
    margin = timezone.now() + timedelta(minutes=5)
    session = contract.checkout_sessions.filter(status=CheckoutSession.Status.OPEN, expires_at__gt=margin).first()
    if session is not None and session.url:
        return session
    # An older session that is about to expire can still be paid. Expire it at Stripe before a
    # new one opens, so the tenant cannot pay twice. If it was paid meanwhile, open nothing.
    for stale in contract.checkout_sessions.filter(status=CheckoutSession.Status.OPEN):
        try:
            if checkout_expire(session=stale) == "complete":
                raise CheckoutUnavailable(
                    "This rental was paid a moment ago; the page updates as soon as the payment is confirmed."
                )
        except stripe.StripeError as exc:
            logger.warning("Contract %s: expiring checkout %s failed: %s", contract.pk, stale.session_id, _error_text(exc))
            raise CheckoutUnavailable(PROCESSOR_UNAVAILABLE) from exc

    attempt = contract.checkout_sessions.count() + 1
    metadata = _metadata(contract)
    try:
        customer_id = customer_for(contract.tenant)
        client = stripe_client()
        product = client.v1.products.create(
            params={"name": contract.offering_name[:250], "metadata": metadata},
            options={"idempotency_key": _key("contract", contract.public_id, "product")},
        )
        price = client.v1.prices.create(
            params={
                "product": product.id,
                "currency": contract.currency.lower(),
                "unit_amount": contract.price_cents,
                "recurring": {"interval": "month"},
                "metadata": metadata,
            },
            options={"idempotency_key": _key("contract", contract.public_id, "price")},
        )
        created = client.v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "customer": customer_id,
                "client_reference_id": str(contract.public_id),
                "line_items": [{"price": price.id, "quantity": 1}],
                "success_url": success_url,
                "cancel_url": cancel_url,
                "metadata": metadata,
                "subscription_data": {"metadata": metadata},
            },
            options={"idempotency_key": _key("contract", contract.public_id, "checkout", attempt)},
        )
    except stripe.StripeError as exc:
        logger.warning("Contract %s: opening a Stripe checkout failed: %s", contract.pk, _error_text(exc))
        raise CheckoutUnavailable(PROCESSOR_UNAVAILABLE) from exc
    session, was_created = CheckoutSession.objects.get_or_create(
        session_id=created.id,
        defaults={
            "contract": contract,
            "url": created.url or "",
            "expires_at": from_timestamp(created.expires_at) or timezone.now() + timedelta(hours=23),
        },
    )
    if was_created:
        contract_note(contract_id=contract.pk, actor=actor, actor_label="tenant", reason="Card checkout opened.")
        logger.info("Contract %s: Stripe checkout %s opened (attempt %s)", contract.pk, created.id, attempt)
    return session


def checkout_expire(*, session: CheckoutSession) -> str:
    """Expire an open Checkout Session so that it can no longer be paid; return its status at Stripe."""
    client = stripe_client()
    try:
        client.v1.checkout.sessions.expire(session.session_id)
        status = CheckoutSession.Status.EXPIRED
    except stripe.InvalidRequestError as exc:
        # Already complete or expired, and the retrieved session shows which. A late payment is refunded.
        status = client.v1.checkout.sessions.retrieve(session.session_id).status
        logger.info("Checkout %s could not be expired (%s): it is %s", session.session_id, _error_text(exc), status)
    if status in (CheckoutSession.Status.EXPIRED, CheckoutSession.Status.COMPLETE):
        CheckoutSession.objects.filter(pk=session.pk, status=CheckoutSession.Status.OPEN).update(status=status, updated_at=timezone.now())
    logger.info("Checkout %s of contract %s is %s", session.session_id, session.contract_id, status)
    return status


def portal_url(*, user, return_url: str) -> str:
    """Return a link to Stripe's customer portal, where the user manages saved cards and receipts."""
    customer_id = customer_for(user)
    session = stripe_client().v1.billing_portal.sessions.create(params={"customer": customer_id, "return_url": return_url})
    logger.info("Stripe customer portal opened for user %s", user.pk)
    return session.url


# --- payments from invoices --------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceFacts:
    """Fields of a Stripe invoice that billing uses, read tolerantly across API versions."""

    invoice_id: str
    subscription_id: str
    customer_id: str
    billing_reason: str
    amount_paid: int
    currency: str
    period_start: datetime
    period_end: datetime
    payment_intent_id: str
    charge_id: str
    tax_cents: int | None
    next_payment_attempt: datetime | None
    livemode: bool


def invoice_facts(invoice: dict[str, Any]) -> InvoiceFacts:
    lines = ((invoice.get("lines") or {}).get("data")) or []
    period = (lines[0].get("period") if lines else None) or {}
    start = from_timestamp(period.get("start") or invoice.get("period_start"))
    end = from_timestamp(period.get("end") or invoice.get("period_end"))
    parent = ((invoice.get("parent") or {}).get("subscription_details")) or {}
    subscription_id = invoice.get("subscription") or parent.get("subscription") or ""
    payment_intent = invoice.get("payment_intent") or ""
    if not payment_intent:
        # Newer API versions list payments instead of a top-level payment_intent.
        for item in ((invoice.get("payments") or {}).get("data")) or []:
            payment_intent = ((item.get("payment") or {}).get("payment_intent")) or ""
            if payment_intent:
                break
    tax: int | None = None
    if invoice.get("total_taxes"):
        tax = sum(int(item.get("amount") or 0) for item in invoice["total_taxes"])
    elif invoice.get("tax") is not None:
        tax = int(invoice["tax"])
    return InvoiceFacts(
        invoice_id=invoice["id"],
        subscription_id=subscription_id if isinstance(subscription_id, str) else subscription_id.get("id", ""),
        customer_id=invoice.get("customer") or "",
        billing_reason=invoice.get("billing_reason") or "",
        amount_paid=int(invoice.get("amount_paid") or 0),
        currency=(invoice.get("currency") or "").upper(),
        period_start=start or timezone.now(),
        period_end=end or timezone.now(),
        payment_intent_id=payment_intent if isinstance(payment_intent, str) else payment_intent.get("id", ""),
        charge_id=invoice.get("charge") or "",
        tax_cents=tax,
        next_payment_attempt=from_timestamp(invoice.get("next_payment_attempt")),
        livemode=bool(invoice.get("livemode")),
    )


def invoice_facts_with_payment_ids(facts: InvoiceFacts) -> InvoiceFacts:
    """Fill in the payment intent and charge of a paid invoice when the event did not carry them.

    Invoices of Stripe API versions from 2025-03-31 on have no `payment_intent` or `charge`
    field; their payments are listed by `GET /v1/invoice_payments?invoice=...`. Refunds and
    dispute events need both ids, so they are looked up before the payment is recorded.
    """
    if facts.payment_intent_id and facts.charge_id:
        return facts
    client = stripe_client()
    payment_intent_id = facts.payment_intent_id
    if not payment_intent_id:
        for item in client.v1.invoice_payments.list(params={"invoice": facts.invoice_id}).data:
            details = item.to_dict().get("payment") or {}
            if details.get("payment_intent") and item.status == "paid":
                payment_intent_id = details["payment_intent"]
                break
    charge_id = facts.charge_id
    if payment_intent_id and not charge_id:
        latest = client.v1.payment_intents.retrieve(payment_intent_id).to_dict().get("latest_charge")
        charge_id = latest.get("id", "") if isinstance(latest, dict) else (latest or "")
    logger.info("Invoice %s: payment intent %s, charge %s looked up", facts.invoice_id, payment_intent_id or "-", charge_id or "-")
    return replace(facts, payment_intent_id=payment_intent_id, charge_id=charge_id)


def payment_record_invoice(*, contract, facts: InvoiceFacts) -> tuple[Payment, bool]:
    """Record the payment of a paid Stripe invoice once; return (payment, created).

    Runs inside the caller's transaction with the contract row locked; the unique invoice id
    makes a replayed or concurrent event find the first payment.
    """
    from billing.services import _payment_succeeded

    existing = Payment.objects.filter(stripe_invoice_id=facts.invoice_id).first()
    if existing is not None:
        return existing, False
    payment = Payment.objects.create(
        contract=contract,
        method=PaymentMethod.STRIPE,
        status=PaymentStatus.SUCCEEDED,
        amount_cents=facts.amount_paid,
        currency=facts.currency or contract.currency,
        period_start=facts.period_start,
        period_end=facts.period_end,
        reference=facts.invoice_id,
        stripe_invoice_id=facts.invoice_id,
        stripe_payment_intent_id=facts.payment_intent_id,
        stripe_charge_id=facts.charge_id,
        processor_tax_cents=facts.tax_cents,
        livemode=facts.livemode,
    )
    _payment_succeeded(payment)
    logger.info(
        "Payment %s recorded for contract %s from Stripe invoice %s: %s %s (%s)",
        payment.pk, contract.pk, facts.invoice_id, facts.amount_paid, payment.currency, facts.billing_reason,
    )
    return payment, True


def subscription_remember(*, contract, subscription_id: str, customer_id: str = "", status: str = "") -> Subscription | None:
    """Store (or update) the subscription that bills `contract`."""
    if not subscription_id:
        return None
    subscription, created = Subscription.objects.get_or_create(
        contract=contract, defaults={"subscription_id": subscription_id, "customer_id": customer_id, "status": status}
    )
    if not created:
        fields = {}
        if customer_id and not subscription.customer_id:
            fields["customer_id"] = customer_id
        if status and subscription.status != status:
            fields["status"] = status
        if fields:
            Subscription.objects.filter(pk=subscription.pk).update(updated_at=timezone.now(), **fields)
            subscription.refresh_from_db()
    return subscription


# --- refunds -------------------------------------------------------------------------------------


def refund_execute(*, refund_id: int, _after_settling: bool = False) -> Refund:
    """Ask Stripe to refund a pending or failed refund row, and record the result.

    The row's idempotency key goes with every call, so a retry after a timeout (when Stripe may
    have refunded already) gets the same refund back instead of a second one.
    """
    refund = Refund.objects.select_related("payment").get(pk=refund_id)
    if refund.status == Refund.Status.SUCCEEDED:
        return refund
    payment = refund.payment
    params: dict[str, Any] = {
        "amount": refund.amount_cents,
        "metadata": {"refund_id": str(refund.pk), "contract_id": str(payment.contract.public_id)},
    }
    if payment.stripe_payment_intent_id:
        params["payment_intent"] = payment.stripe_payment_intent_id
    elif payment.stripe_charge_id:
        params["charge"] = payment.stripe_charge_id
    else:
        return refund_mark_failed(refund_id=refund.pk, error="The payment has no Stripe payment intent or charge to refund.")
    if refund.status == Refund.Status.PENDING and refund.reference.startswith("re_"):
        # Stripe accepted this refund as pending earlier: ask for its outcome, never create again.
        try:
            result = stripe_client().v1.refunds.retrieve(refund.reference)
        except stripe.StripeError as exc:
            logger.warning("Refund %s: reading Stripe refund %s failed: %s", refund.pk, refund.reference, _error_text(exc))
            Refund.objects.filter(pk=refund.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=10))
            return refund
        return refund_apply_stripe_status(refund_id=refund.pk, stripe_refund_id=result.id, status=result.status,
                                          failure_reason=getattr(result, "failure_reason", None) or "")
    attempt = refund.attempts + 1
    logger.info("Refund %s: calling Stripe (attempt %s) for payment %s", refund.pk, attempt, payment.pk)
    try:
        # Stripe stores the first response to an idempotency key, errors included, so each try
        # has its own key. A try after an unclear outcome (a timeout) first looks for a refund
        # that an earlier try created, so the money is not returned twice.
        result = _earlier_refund(refund, params) if refund.attempts else None
        if result is None:
            result = stripe_client().v1.refunds.create(
                params=params, options={"idempotency_key": _key("refund", refund.idempotency_key, attempt)}
            )
    except stripe.StripeError as exc:
        if _refunded_elsewhere(exc):
            # Some or all of the charge was refunded at Stripe already (the Dashboard): settle
            # from the charge, and shrink this row to what is still left before its next try.
            settled = _settle_from_stripe_charge(refund, payment)
            if settled is not None:
                return settled
            if not _after_settling and Refund.objects.get(pk=refund.pk).amount_cents < refund.amount_cents:
                # Shrunk to what is left: try that amount once now, under a new idempotency key.
                Refund.objects.filter(pk=refund.pk).update(attempts=F("attempts") + 1)
                return refund_execute(refund_id=refund.pk, _after_settling=True)
        logger.warning("Refund %s of payment %s failed at Stripe: %s", refund.pk, payment.pk, _error_text(exc))
        return refund_mark_failed(refund_id=refund.pk, error=_error_text(exc))
    return refund_apply_stripe_status(
        refund_id=refund.pk, stripe_refund_id=result.id, status=result.status,
        failure_reason=getattr(result, "failure_reason", None) or "",
    )


def refund_apply_stripe_status(*, refund_id: int, stripe_refund_id: str, status: str, failure_reason: str = "") -> Refund:
    """Record the status Stripe reports for the refund made for a refund row."""
    if status == "succeeded":
        return refund_mark_succeeded(refund_id=refund_id, reference=stripe_refund_id)
    if status in ("failed", "canceled"):
        return refund_mark_failed(
            refund_id=refund_id, error=f"Stripe refund {stripe_refund_id} {status}: {failure_reason or status}",
            reference=stripe_refund_id,
        )
    # "pending" or "requires_action": Stripe finishes it later; check again in a while.
    with transaction.atomic():
        Refund.objects.filter(pk=refund_id, status__in=[Refund.Status.PENDING, Refund.Status.FAILED]).update(
            status=Refund.Status.PENDING,
            reference=stripe_refund_id,
            next_attempt_at=timezone.now() + timedelta(minutes=10),
            updated_at=timezone.now(),
        )
    logger.info("Refund %s is %s at Stripe (%s)", refund_id, status, stripe_refund_id)
    return Refund.objects.get(pk=refund_id)


def _refunded_elsewhere(exc: stripe.StripeError) -> bool:
    if getattr(exc, "code", None) == "charge_already_refunded":
        return True
    return getattr(exc, "param", None) == "amount" or "greater than unrefunded amount" in str(exc)


def _settle_from_stripe_charge(refund: Refund, payment: Payment) -> Refund | None:
    """Settle a refund row from the charge's refunded total at Stripe; None if that does not cover it."""
    charge_id = payment.stripe_charge_id
    if not charge_id and payment.stripe_payment_intent_id:
        intent = stripe_client().v1.payment_intents.retrieve(payment.stripe_payment_intent_id)
        charge_id = intent.latest_charge if isinstance(intent.latest_charge, str) else getattr(intent.latest_charge, "id", "")
    if not charge_id:
        return None
    charge = stripe_client().v1.charges.retrieve(charge_id)
    refund_settle_from_charge(payment=payment, amount_refunded_total=int(charge.amount_refunded or 0))
    refund = Refund.objects.get(pk=refund.pk)
    if refund.status == Refund.Status.SUCCEEDED:
        return refund
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        others = sum(
            Refund.objects.filter(payment=payment, status=Refund.Status.SUCCEEDED).values_list("amount_cents", flat=True)
        )
        left = payment.amount_cents - others
        if 0 < left < refund.amount_cents:
            Refund.objects.filter(pk=refund.pk).exclude(status=Refund.Status.SUCCEEDED).update(amount_cents=left)
            logger.info("Refund %s shrunk to the %s cents still unrefunded at Stripe", refund.pk, left)
    return None


def _earlier_refund(refund: Refund, params: dict[str, Any]):
    """Return a Stripe refund that an earlier try of this row created, or None."""
    query = {key: params[key] for key in ("payment_intent", "charge") if key in params}
    query["limit"] = 100
    for candidate in stripe_client().v1.refunds.list(params=query).data:
        metadata = candidate.to_dict().get("metadata") or {}
        if metadata.get("refund_id") == str(refund.pk) and candidate.status not in ("failed", "canceled"):
            logger.info("Refund %s: found the Stripe refund %s an earlier try created", refund.pk, candidate.id)
            return candidate
    return None


def _sync_payment_refund_status(payment: Payment) -> None:
    refunds = list(Refund.objects.filter(payment=payment))
    refunded = sum(r.amount_cents for r in refunds if r.status == Refund.Status.SUCCEEDED)
    if refunded >= payment.amount_cents and refunded > 0:
        status = PaymentStatus.REFUNDED
    elif any(r.status == Refund.Status.FAILED for r in refunds):
        status = PaymentStatus.REFUND_FAILED
    elif any(r.status == Refund.Status.PENDING for r in refunds):
        status = PaymentStatus.REFUND_PENDING
    else:
        status = PaymentStatus.SUCCEEDED
    if payment.status != status:
        Payment.objects.filter(pk=payment.pk).update(status=status, updated_at=timezone.now())


def _lock_refund(refund_id: int) -> tuple[Payment, Refund]:
    """Lock a refund's payment, then the refund: the order every billing writer uses."""
    payment_id = Refund.objects.filter(pk=refund_id).values_list("payment_id", flat=True).get()
    payment = Payment.objects.select_for_update(of=("self",)).select_related("contract").get(pk=payment_id)
    refund = Refund.objects.select_for_update().get(pk=refund_id)
    return payment, refund


@transaction.atomic
def refund_mark_succeeded(*, refund_id: int, reference: str) -> Refund:
    from billing.services import _refund_succeeded

    payment, refund = _lock_refund(refund_id)
    if refund.status == Refund.Status.SUCCEEDED:
        return refund
    refund.status = Refund.Status.SUCCEEDED
    refund.reference = reference
    refund.error = ""
    refund.next_attempt_at = None
    refund.attempts += 1
    refund.save(update_fields=["status", "reference", "error", "next_attempt_at", "attempts", "updated_at"])
    _refund_succeeded(refund)
    _sync_payment_refund_status(payment)
    _notify_refund(refund, "refund_completed")
    logger.info("Refund %s of payment %s succeeded at Stripe (%s)", refund.pk, payment.pk, reference)
    return refund


@transaction.atomic
def refund_mark_failed(*, refund_id: int, error: str, reference: str = "") -> Refund:
    """Record a failed refund call: it is retried with backoff, and staff are notified."""
    from notifications.services import notify_contract_event

    payment, refund = _lock_refund(refund_id)
    if refund.status == Refund.Status.SUCCEEDED:
        return refund
    refund.attempts += 1
    first_failure = refund.status != Refund.Status.FAILED
    refund.status = Refund.Status.FAILED
    refund.error = error[:2000]
    if reference:
        refund.reference = reference
    if refund.attempts < settings.BILLING_REFUND_MAX_ATTEMPTS:
        delay = min(REFUND_RETRY_BASE_SECONDS * 2 ** (refund.attempts - 1), REFUND_RETRY_MAX_SECONDS)
        refund.next_attempt_at = timezone.now() + timedelta(seconds=delay)
    else:
        refund.next_attempt_at = None
    refund.save(update_fields=["status", "error", "reference", "attempts", "next_attempt_at", "updated_at"])
    _sync_payment_refund_status(payment)
    gave_up = refund.next_attempt_at is None
    logger.warning(
        "Refund %s of payment %s failed (attempt %s, %s): %s",
        refund.pk, payment.pk, refund.attempts, "no more retries" if gave_up else f"retry at {refund.next_attempt_at:%H:%M:%S}", error,
    )
    if first_failure or gave_up:
        notify_contract_event(event="refund_failed", contract=payment.contract, to_tenant=False, to_provider=False, to_staff=True)
    if gave_up:
        _notify_refund(refund, "refund_delayed")
    return refund


def refunds_due() -> list[int]:
    """Refund rows a retry sweep should execute now."""
    now = timezone.now()
    return list(
        Refund.objects.filter(
            status__in=[Refund.Status.PENDING, Refund.Status.FAILED],
            next_attempt_at__lte=now,
            attempts__lt=settings.BILLING_REFUND_MAX_ATTEMPTS,
            payment__method=PaymentMethod.STRIPE,
        ).values_list("pk", flat=True)[:500]
    )


def refund_settle_from_charge(*, payment: Payment, amount_refunded_total: int, reference: str = "") -> list[Refund]:
    """Apply Stripe's refunded total of a payment's charge (from `charge.refunded` or the API).

    Only succeeded refund rows count as done. When Stripe's total covers pending or failed rows
    (a refund made in the Stripe Dashboard after the platform's call failed, or an event that
    arrives before the worker recorded the API's response), those rows are settled as succeeded.
    What no row accounts for is recorded as a refund made outside the platform. Returns the
    rows that changed.
    """
    from billing.services import _refund_succeeded

    changed: list[Refund] = []
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        rows = list(Refund.objects.select_for_update().filter(payment=payment).order_by("pk"))
        done = sum(row.amount_cents for row in rows if row.status == Refund.Status.SUCCEEDED)
        # A pending row with a Stripe refund id is in Stripe's total already, and its own status
        # (read by the retry sweep or sent as refund.updated) decides it, since it may still fail.
        tracked = [row for row in rows if row.status == Refund.Status.PENDING and row.reference.startswith("re_")]
        extra = min(amount_refunded_total, payment.amount_cents) - done - sum(row.amount_cents for row in tracked)
        for row in rows:
            if row.status == Refund.Status.SUCCEEDED or row in tracked or row.amount_cents > extra:
                continue
            row.status = Refund.Status.SUCCEEDED
            row.reference = row.reference or reference or f"charge {payment.stripe_charge_id}"
            row.error = ""
            row.next_attempt_at = None
            row.save(update_fields=["status", "reference", "error", "next_attempt_at", "updated_at"])
            _refund_succeeded(row)
            extra -= row.amount_cents
            changed.append(row)
        if extra > 0:
            row = Refund.objects.create(
                payment=payment,
                amount_cents=extra,
                status=Refund.Status.SUCCEEDED,
                reason="Refunded outside the platform (Stripe Dashboard).",
                reference=reference,
                attempts=1,
            )
            _refund_succeeded(row)
            changed.append(row)
        _sync_payment_refund_status(payment)
    for row in changed:
        logger.info("Refund %s of payment %s settled from Stripe's refunded total (%s cents)", row.pk, payment.pk, row.amount_cents)
        if row.status == Refund.Status.SUCCEEDED:
            _notify_refund(row, "refund_completed")
    return changed


def dispute_record_loss(*, payment: Payment, dispute_id: str, amount_cents: int) -> Refund | None:
    """Book a lost dispute (chargeback) like a refund: the ledger reversal and a credit note.

    The bank took the money back, so the provider's and author's shares are reversed and no
    payout includes them. Idempotent: a second call for the same dispute books nothing.
    """
    from billing.services import _refund_succeeded

    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        if Refund.objects.filter(payment=payment, reference=dispute_id).exists():
            return None
        done = sum(
            Refund.objects.filter(payment=payment, status=Refund.Status.SUCCEEDED).values_list("amount_cents", flat=True)
        )
        amount = min(amount_cents, payment.amount_cents - done)
        if amount <= 0:
            return None
        refund = Refund.objects.create(
            payment=payment,
            amount_cents=amount,
            status=Refund.Status.SUCCEEDED,
            reason="Chargeback: the card holder's bank decided the dispute against the platform.",
            reference=dispute_id,
            attempts=1,
        )
        _refund_succeeded(refund)
        _sync_payment_refund_status(payment)
    logger.info("Dispute %s lost: %s cents of payment %s reversed", dispute_id, amount, payment.pk)
    return refund


def _notify_refund(refund: Refund, event: str) -> None:
    from notifications.services import notify_contract_event

    contract = refund.payment.contract
    if transaction.get_connection().in_atomic_block:
        notify_contract_event(event=event, contract=contract, to_tenant=True, to_provider=False)
    else:
        with transaction.atomic():
            notify_contract_event(event=event, contract=contract, to_tenant=True, to_provider=False)


# --- subscriptions ---------------------------------------------------------------------------------


def subscription_cancel(*, contract_id: int) -> str:
    """Cancel a rental's subscription at Stripe now, so it never charges again; return its status."""
    subscription = Subscription.objects.filter(contract_id=contract_id).first()
    if subscription is None or subscription.status == "canceled":
        return subscription.status if subscription else ""
    Subscription.objects.filter(pk=subscription.pk, cancel_requested_at__isnull=True).update(cancel_requested_at=timezone.now())
    try:
        status = _cancel_at_stripe(subscription.subscription_id)
    except stripe.StripeError as exc:
        Subscription.objects.filter(pk=subscription.pk).update(cancel_error=_error_text(exc))
        raise
    Subscription.objects.filter(pk=subscription.pk).update(status=status, cancel_error="", updated_at=timezone.now())
    logger.info("Subscription %s of contract %s cancelled at Stripe", subscription.subscription_id, contract_id)
    return status


def subscription_cancel_by_id_later(subscription_id: str) -> None:
    """Queue the cancellation of a subscription that no rental keeps (a duplicate)."""
    from billing.tasks import subscription_cancel_by_id_task

    subscription_cancel_by_id_task.delay(subscription_id)


def subscription_cancel_by_id(*, subscription_id: str) -> None:
    """Cancel a subscription at Stripe by its id; an already cancelled one is fine."""
    _cancel_at_stripe(subscription_id)
    logger.info("Subscription %s cancelled at Stripe", subscription_id)


def _cancel_at_stripe(subscription_id: str) -> str:
    """Cancel a subscription at Stripe and return its status ("canceled" if it already was)."""
    try:
        return stripe_client().v1.subscriptions.cancel(subscription_id).status
    except stripe.InvalidRequestError as exc:
        if getattr(exc, "code", None) != "resource_missing":
            raise
        return "canceled"  # Stripe returns 404 for a subscription that is already cancelled.


def subscription_cancel_at_period_end(*, contract_id: int) -> None:
    """Tell Stripe not to renew a rental's subscription."""
    subscription = Subscription.objects.filter(contract_id=contract_id).first()
    if subscription is None or subscription.status == "canceled" or subscription.cancel_at_period_end:
        return
    try:
        stripe_client().v1.subscriptions.update(subscription.subscription_id, params={"cancel_at_period_end": True})
    except stripe.StripeError as exc:
        Subscription.objects.filter(pk=subscription.pk).update(cancel_error=_error_text(exc), cancel_requested_at=timezone.now())
        raise
    Subscription.objects.filter(pk=subscription.pk).update(cancel_at_period_end=True, cancel_error="", updated_at=timezone.now())
    logger.info("Subscription %s of contract %s set to cancel at period end", subscription.subscription_id, contract_id)


def subscription_fetch(*, contract_id: int) -> dict[str, Any] | None:
    """Return the rental's subscription as Stripe has it now, with its latest invoice expanded."""
    subscription = Subscription.objects.filter(contract_id=contract_id).first()
    if subscription is None:
        return None
    result = stripe_client().v1.subscriptions.retrieve(subscription.subscription_id, params={"expand": ["latest_invoice"]})
    Subscription.objects.filter(pk=subscription.pk).update(status=result.status, synced_at=timezone.now())
    return result.to_dict()
