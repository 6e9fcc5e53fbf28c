"""Stripe webhook events: verified, stored once, and applied after checking the current state.

Stripe delivers events at least once and in any order. Each event id is stored in the same
transaction as its effects, so a replay finds it and does nothing, and a handler that fails
rolls back both (Stripe then delivers it again). Handlers look at the contract's status before
they act, so `invoice.paid` before `checkout.session.completed`, or a renewal that arrives after
the rental ended, are handled too.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import stripe_billing
from billing.models import CheckoutSession, Dispute, Payment, Refund, Subscription, WebhookEvent

logger = logging.getLogger(__name__)


# Exceptions raised while reading a signed event whose fields lack the documented shape.
MALFORMED_EVENT_ERRORS = (KeyError, ValueError, TypeError, OverflowError, RecursionError, AttributeError)


class WebhookRejected(Exception):
    """The request is not a valid signed Stripe event; the message gives the reason."""


def webhook_receive(*, payload: bytes, signature: str) -> tuple[WebhookEvent | None, str]:
    """Verify and apply one webhook delivery; return (stored event or None for a replay, outcome)."""
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRejected("Webhooks are not set up: STRIPE_WEBHOOK_SECRET is empty.")
    if not signature:
        raise WebhookRejected("Missing Stripe-Signature header.")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejected("The body is not UTF-8 text.") from exc
    try:
        stripe.WebhookSignature.verify_header(text, signature, secret, tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        raise WebhookRejected(f"Invalid signature: {exc.user_message or exc}") from exc
    try:
        event = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WebhookRejected(f"The body is not a JSON Stripe event: {type(exc).__name__}: {exc}"[:500]) from exc
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise WebhookRejected("The event has no id or type.")
    try:
        return event_apply(event)
    except MALFORMED_EVENT_ERRORS as exc:
        # A genuine (signed) event whose fields do not have the documented shape. Nothing was
        # stored, and the 400 shows up in Stripe's delivery log for staff.
        logger.exception("Stripe event %s (%s) could not be read", str(event.get("id"))[:120], str(event.get("type"))[:80])
        raise WebhookRejected(f"The event could not be read: {type(exc).__name__}: {exc}"[:500]) from exc


def event_apply(event: dict[str, Any]) -> tuple[WebhookEvent | None, str]:
    """Store the event and run its handler in one transaction; a known event id does nothing."""
    event_id = str(event["id"])[:120]
    event_type = str(event["type"])[:80]
    if WebhookEvent.objects.filter(event_id=event_id).exists():
        logger.info("Stripe event %s (%s) was already processed; ignoring the replay", event_id, event_type)
        return None, "duplicate"
    try:
        with transaction.atomic():
            stored = WebhookEvent.objects.create(
                event_id=event_id,
                type=event_type,
                livemode=bool(event.get("livemode")),
                stripe_created_at=stripe_billing.from_timestamp(event.get("created")),
                payload=event,
            )
            data = event.get("data")
            obj = data.get("object") if isinstance(data, dict) else None
            handler = HANDLERS.get(event_type)
            if handler is None:
                outcome, contract = "Not handled: this event type needs no action.", None
            elif not isinstance(obj, dict):
                outcome, contract = "Ignored: the event carries no object.", None
            else:
                outcome, contract = handler(obj)
            WebhookEvent.objects.filter(pk=stored.pk).update(outcome=outcome[:2000], contract=contract)
    except IntegrityError:
        # A concurrent delivery of the same event committed first.
        if WebhookEvent.objects.filter(event_id=event_id).exists():
            logger.info("Stripe event %s (%s) was processed by a concurrent delivery", event_id, event_type)
            return None, "duplicate"
        raise
    logger.info("Stripe event %s (%s): %s", event_id, event_type, outcome)
    stored.refresh_from_db()
    return stored, outcome


# --- finding the contract ------------------------------------------------------------------------


def _contract_public_id(obj: dict[str, Any]) -> str:
    candidates = [
        obj.get("metadata"),
        (obj.get("subscription_details") or {}).get("metadata"),
        ((obj.get("parent") or {}).get("subscription_details") or {}).get("metadata"),
    ]
    candidates += [line.get("metadata") for line in ((obj.get("lines") or {}).get("data") or [])]
    for metadata in candidates:
        if isinstance(metadata, dict) and metadata.get("contract_id"):
            if metadata.get("deployment", settings.DEPLOYMENT_NAME) != settings.DEPLOYMENT_NAME:
                return ""
            return str(metadata["contract_id"])
    return ""


def _locked_contract(obj: dict[str, Any], *, subscription_id: str = ""):
    """Return the contract an object is about, row-locked, or None when it is not ours."""
    from marketplace.models import Contract

    public_id = _contract_public_id(obj)
    query = None
    if public_id:
        try:
            query = Contract.objects.filter(public_id=uuid.UUID(public_id))
        except ValueError:
            return None
    elif subscription_id:
        contract_id = Subscription.objects.filter(subscription_id=subscription_id).values_list("contract_id", flat=True).first()
        if contract_id is None:
            return None
        query = Contract.objects.filter(pk=contract_id)
    if query is None:
        return None
    return query.select_for_update(of=("self",)).select_related("offering", "provider__user", "tenant", "cloud_account").first()


def _payment_for_charge(obj: dict[str, Any]) -> Payment | None:
    charge_id = obj.get("charge") if obj.get("object") != "charge" else obj.get("id")
    payment_intent = obj.get("payment_intent") or ""
    payment = None
    if charge_id:
        payment = Payment.objects.filter(stripe_charge_id=charge_id).first()
    if payment is None and payment_intent:
        payment = Payment.objects.filter(stripe_payment_intent_id=payment_intent).first()
    return payment


# --- handlers --------------------------------------------------------------------------------------


def _checkout_completed(obj: dict[str, Any]):
    contract = _locked_contract(obj)
    if contract is None:
        return "Ignored: the session names no rental of this platform.", None
    CheckoutSession.objects.filter(session_id=obj.get("id", "")).update(
        status=CheckoutSession.Status.COMPLETE, updated_at=timezone.now()
    )
    stripe_billing.subscription_remember(
        contract=contract, subscription_id=obj.get("subscription") or "", customer_id=obj.get("customer") or ""
    )
    if contract.status == "requested":
        return "Checkout completed; the rental is paid when the invoice is confirmed.", contract
    return f"Checkout completed; the rental is already {contract.status}.", contract


def _checkout_expired(obj: dict[str, Any]):
    from marketplace.models import Contract

    CheckoutSession.objects.filter(session_id=obj.get("id", "")).update(
        status=CheckoutSession.Status.EXPIRED, updated_at=timezone.now()
    )
    public_id = _contract_public_id(obj)
    contract = Contract.objects.filter(public_id=public_id).first() if _is_uuid(public_id) else None
    return "Checkout expired; the tenant can retry payment.", contract


def _invoice_paid(obj: dict[str, Any]):
    from marketplace.models import ContractStatus
    from marketplace.services import contracts as contract_services

    facts = stripe_billing.invoice_facts(obj)
    public_id = _contract_public_id(obj)
    if public_id and not _is_uuid(public_id):
        return "Ignored: the invoice names no rental of this platform.", None
    if not public_id and not Subscription.objects.filter(subscription_id=facts.subscription_id or "-").exists():
        return "Ignored: the invoice names no rental of this platform.", None
    if Payment.objects.filter(stripe_invoice_id=facts.invoice_id).exists():
        return f"Invoice {facts.invoice_id} was already recorded.", _locked_contract(obj, subscription_id=facts.subscription_id)
    # A network call, so it runs before the contract's row lock is taken.
    facts = stripe_billing.invoice_facts_with_payment_ids(facts)
    contract = _locked_contract(obj, subscription_id=facts.subscription_id)
    if contract is None:
        return "Ignored: the invoice names no rental of this platform.", None
    known = Subscription.objects.filter(contract=contract).first()
    stripe_billing.subscription_remember(contract=contract, subscription_id=facts.subscription_id, customer_id=facts.customer_id)
    payment, created = stripe_billing.payment_record_invoice(contract=contract, facts=facts)
    if not created:
        return f"Invoice {facts.invoice_id} was already recorded as payment {payment.pk}.", contract
    if known is not None and facts.subscription_id and facts.subscription_id != known.subscription_id:
        # A second subscription for one rental (two checkouts paid): refund it and cancel it.
        _refund_unwanted(contract, payment, f"The rental is already billed by subscription {known.subscription_id}.")
        subscription_id = facts.subscription_id
        transaction.on_commit(lambda: stripe_billing.subscription_cancel_by_id_later(subscription_id))
        return f"Second subscription {subscription_id} refunded and cancelled.", contract
    period = f"{facts.period_start:%Y-%m-%d} to {facts.period_end:%Y-%m-%d}"

    if contract.status == ContractStatus.REQUESTED:
        contract_services.contract_confirm_payment(contract=contract, payment=payment)
        return f"First payment confirmed ({period}); the rental is paid.", contract
    if contract.is_ended or contract.status in (ContractStatus.TERMINATING, ContractStatus.TERMINATION_FAILED):
        return _refund_unwanted(contract, payment, "The rental had already ended when this payment arrived."), contract
    if contract.cancel_at_period_end and contract.paid_until and facts.period_start >= contract.paid_until:
        return _refund_unwanted(contract, payment, "The tenant had cancelled the rental at the end of the paid period."), contract
    blocker = contract_services.renewal_blocker(contract) if facts.period_start >= (contract.paid_until or facts.period_start) else ""
    if blocker and contract.status == ContractStatus.ACTIVE:
        _refund_unwanted(contract, payment, f"Not renewed: {blocker}")
        contract_services.contract_terminate(contract=contract, actor=None, actor_label="system", reason=f"Not renewed: {blocker}")
        return f"Renewal refunded and the rental ended: {blocker}", contract
    contract_services.contract_extend_paid_period(
        contract=contract, period_end=facts.period_end, reason=f"Renewed by card until {facts.period_end:%Y-%m-%d %H:%M} UTC."
    )
    return f"Payment for {period} recorded; paid until {facts.period_end:%Y-%m-%d}.", contract


def _refund_unwanted(contract, payment: Payment, reason: str) -> str:
    from billing.services import payment_refund
    from marketplace.services import contracts as contract_services

    if payment_refund(payment=payment, reason=reason) is None:
        return f"Payment {payment.pk} needs no refund: it was refunded already."
    contract_services.contract_note(contract_id=contract.pk, reason=f"Payment {payment.pk} refunded: {reason}", actor_label="stripe")
    contract_services._stop_billing(contract)
    return f"Full refund of payment {payment.pk} started: {reason}"


def _invoice_payment_failed(obj: dict[str, Any]):
    from marketplace.models import ContractStatus
    from marketplace.services import contracts as contract_services
    from notifications.services import notify_contract_event

    facts = stripe_billing.invoice_facts(obj)
    contract = _locked_contract(obj, subscription_id=facts.subscription_id)
    if contract is None:
        return "Ignored: the invoice names no rental of this platform.", None
    if Payment.objects.filter(stripe_invoice_id=facts.invoice_id).exists():
        return "Ignored: this invoice was paid already (events arrived out of order).", contract
    if contract.status != ContractStatus.ACTIVE:
        return f"Noted: a payment failed while the rental is {contract.status}.", contract
    if contract.paid_until is not None and facts.period_end <= contract.paid_until:
        # A late copy of a failure for a period that a later payment already covers.
        return f"Ignored: the failed invoice's period ends {facts.period_end:%Y-%m-%d}, which is already paid.", contract
    if facts.next_payment_attempt is not None:
        contract_services.contract_note(
            contract_id=contract.pk, actor_label="stripe",
            reason=f"Renewal payment failed; Stripe tries again on {facts.next_payment_attempt:%Y-%m-%d %H:%M} UTC.",
        )
        notify_contract_event(event="renewal_payment_failed", contract=contract, to_provider=False)
        return f"Renewal payment failed; next try {facts.next_payment_attempt:%Y-%m-%d %H:%M} UTC; tenant notified.", contract
    reason = "The renewal payment failed and Stripe's retries are exhausted."
    notify_contract_event(event="renewal_payment_failed", contract=contract, to_provider=False)
    if contract.paid_until is None or contract.paid_until <= timezone.now():
        contract_services.contract_terminate(contract=contract, actor=None, actor_label="stripe", reason=reason)
        return f"{reason} The rental ended.", contract
    contract_services.contract_end_at_period_end(contract_id=contract.pk, reason=reason)
    contract_services._stop_billing(contract)
    return f"{reason} The rental ends with its paid period.", contract


def _subscription_updated(obj: dict[str, Any]):
    subscription = Subscription.objects.filter(subscription_id=obj.get("id", "")).first()
    if subscription is None:
        contract = _locked_contract(obj)
        if contract is None:
            return "Ignored: the subscription names no rental of this platform.", None
        if Subscription.objects.filter(contract=contract).exists():
            return "Ignored: the rental is billed by another subscription.", contract
        subscription = stripe_billing.subscription_remember(
            contract=contract, subscription_id=obj.get("id", ""), customer_id=obj.get("customer") or ""
        )
    items = ((obj.get("items") or {}).get("data")) or []
    period_end = obj.get("current_period_end") or (items[0].get("current_period_end") if items else None)
    Subscription.objects.filter(pk=subscription.pk).update(
        status=obj.get("status") or subscription.status,
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        current_period_end=stripe_billing.from_timestamp(period_end),
        updated_at=timezone.now(),
    )
    return f"Subscription is {obj.get('status')}.", subscription.contract


def _subscription_deleted(obj: dict[str, Any]):
    from marketplace.models import ContractStatus
    from marketplace.services import contracts as contract_services

    contract = _locked_contract(obj, subscription_id=obj.get("id", ""))
    if contract is None:
        return "Ignored: the subscription names no rental of this platform.", None
    known = Subscription.objects.filter(contract=contract).first()
    if known is not None and known.subscription_id != obj.get("id"):
        return f"Ignored: the rental is billed by subscription {known.subscription_id}.", contract
    stripe_billing.subscription_remember(contract=contract, subscription_id=obj.get("id", ""), status="canceled")
    Subscription.objects.filter(contract=contract).update(status="canceled", updated_at=timezone.now())
    if contract.status in (ContractStatus.PAID, ContractStatus.PROVISIONING):
        contract_services.contract_end_at_period_end(contract_id=contract.pk, reason="The subscription was cancelled at Stripe.")
        return "Subscription cancelled; the rental ends with its paid period.", contract
    if contract.status != ContractStatus.ACTIVE:
        return f"Subscription cancelled; the rental is already {contract.status}.", contract
    if contract.paid_until is None or contract.paid_until <= timezone.now():
        contract_services.contract_terminate(
            contract=contract, actor=None, actor_label="stripe", reason="The subscription ended and the paid period is over."
        )
        return "Subscription ended after the paid period; the rental ended.", contract
    contract_services.contract_end_at_period_end(contract_id=contract.pk, reason="The subscription was cancelled at Stripe.")
    return "Subscription cancelled; the rental ends with its paid period.", contract


def _charge_refunded(obj: dict[str, Any]):
    payment = _payment_for_charge(obj)
    if payment is None:
        return "Ignored: the charge belongs to no payment of this platform.", None
    changed = stripe_billing.refund_settle_from_charge(payment=payment, amount_refunded_total=int(obj.get("amount_refunded") or 0))
    if not changed:
        return f"Refund of payment {payment.pk} confirmed; it was already recorded.", payment.contract
    summary = ", ".join(f"refund {row.pk} ({row.amount_cents} cents)" for row in changed)
    return f"Settled from Stripe's refunded total: {summary}.", payment.contract


def _refund_updated(obj: dict[str, Any]):
    refund = Refund.objects.filter(reference=obj.get("id") or "-").select_related("payment__contract").first()
    if refund is None:
        return "Ignored: the refund belongs to no refund row of this platform.", None
    if refund.status == Refund.Status.SUCCEEDED:
        return f"Refund {refund.pk} was already recorded as succeeded.", refund.payment.contract
    refund = stripe_billing.refund_apply_stripe_status(
        refund_id=refund.pk, stripe_refund_id=obj["id"], status=str(obj.get("status") or ""),
        failure_reason=str(obj.get("failure_reason") or ""),
    )
    return f"Refund {refund.pk} is {refund.status}.", refund.payment.contract


def _dispute_created(obj: dict[str, Any]):
    from marketplace.services import contracts as contract_services
    from notifications.services import notify_contract_event

    payment = _payment_for_charge(obj)
    if payment is None:
        return "Ignored: the disputed charge belongs to no payment of this platform.", None
    dispute, created = Dispute.objects.get_or_create(
        dispute_id=obj.get("id", ""),
        defaults={
            "payment": payment,
            "amount_cents": int(obj.get("amount") or 0),
            "currency": (obj.get("currency") or payment.currency).upper(),
            "reason": (obj.get("reason") or "")[:60],
            "status": (obj.get("status") or "")[:32],
        },
    )
    if not created:
        return f"Dispute {dispute.dispute_id} was already recorded.", payment.contract
    contract = payment.contract
    contract_services.contract_note(
        contract_id=contract.pk, actor_label="stripe",
        reason=f"The card holder disputed payment {payment.pk} ({dispute.amount_cents / 100:.2f} {dispute.currency}, reason: {dispute.reason or 'not given'}).",
    )
    notify_contract_event(event="payment_disputed", contract=contract, to_tenant=False, to_provider=True, to_staff=True)
    return f"Dispute {dispute.dispute_id} recorded on payment {payment.pk}; staff and provider notified.", contract


def _dispute_updated(obj: dict[str, Any]):
    from marketplace.services import contracts as contract_services

    if not Dispute.objects.filter(dispute_id=obj.get("id") or "-").exists():
        # Closed before its `charge.dispute.created` arrived: record it first.
        outcome, _ = _dispute_created(obj)
        if outcome.startswith("Ignored"):
            return outcome, None
    Dispute.objects.filter(dispute_id=obj["id"]).update(status=(obj.get("status") or "")[:32], updated_at=timezone.now())
    dispute = Dispute.objects.select_related("payment__contract").get(dispute_id=obj["id"])
    contract = dispute.payment.contract
    if dispute.status == "lost":
        reversal = stripe_billing.dispute_record_loss(
            payment=dispute.payment, dispute_id=dispute.dispute_id, amount_cents=dispute.amount_cents
        )
        if reversal is not None:
            contract_services.contract_note(
                contract_id=contract.pk, actor_label="stripe",
                reason=f"Dispute {dispute.dispute_id} lost: {reversal.amount_cents / 100:.2f} {dispute.currency} taken back by the bank.",
            )
            return f"Dispute {dispute.dispute_id} lost: {reversal.amount_cents} cents reversed in the ledger.", contract
    return f"Dispute {dispute.dispute_id} is {dispute.status}.", contract


def _account_updated(obj: dict[str, Any]):
    from billing.payouts import payout_account_update_from_stripe

    if not obj.get("id"):
        return "Ignored: the account has no id.", None
    account = payout_account_update_from_stripe(
        stripe_account={
            "id": obj["id"],
            "details_submitted": bool(obj.get("details_submitted")),
            "payouts_enabled": bool(obj.get("payouts_enabled")),
        }
    )
    if account is None:
        return "Ignored: no payout account of this platform has this id.", None
    return f"Payout account of user {account.user_id}: payouts {'enabled' if account.payouts_enabled else 'not enabled yet'}.", None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError):
        return False
    return True


HANDLERS: dict[str, Callable[[dict[str, Any]], tuple[str, Any]]] = {
    "checkout.session.completed": _checkout_completed,
    "checkout.session.expired": _checkout_expired,
    "invoice.paid": _invoice_paid,
    "invoice.payment_failed": _invoice_payment_failed,
    "customer.subscription.created": _subscription_updated,
    "customer.subscription.updated": _subscription_updated,
    "customer.subscription.deleted": _subscription_deleted,
    "charge.refunded": _charge_refunded,
    "charge.refund.updated": _refund_updated,
    "refund.updated": _refund_updated,
    "charge.dispute.created": _dispute_created,
    "charge.dispute.updated": _dispute_updated,
    "charge.dispute.closed": _dispute_updated,
    "account.updated": _account_updated,
}


def sync_overdue_contract(*, contract_id: int) -> str:
    """Apply Stripe's current state of an active card rental whose renewal was not confirmed.

    A paid latest invoice that was never recorded is applied as if its `invoice.paid` event had
    arrived; an ended subscription ends the rental. A subscription still retrying is left alone.
    """
    from marketplace.models import Contract, ContractStatus
    from marketplace.services import contracts as contract_services

    subscription = stripe_billing.subscription_fetch(contract_id=contract_id)
    if subscription is None:
        return "no subscription"
    invoice = subscription.get("latest_invoice")
    if isinstance(invoice, dict) and invoice.get("status") == "paid":
        if not Payment.objects.filter(stripe_invoice_id=invoice.get("id")).exists():
            with transaction.atomic():
                outcome, _ = _invoice_paid(invoice)
            logger.info("Contract %s: applied a missed paid invoice %s: %s", contract_id, invoice.get("id"), outcome)
            return outcome
    status = subscription.get("status")
    reason = ""
    if status in stripe_billing.ENDED_SUBSCRIPTION_STATUSES:
        reason = f"The subscription is {status} at Stripe and the paid period is over."
    elif status == "past_due":
        reason = _past_due_reason(contract_id, invoice if isinstance(invoice, dict) else {})
    if reason:
        with transaction.atomic():
            contract = Contract.objects.select_for_update().get(pk=contract_id)
            if contract.status == ContractStatus.ACTIVE:
                contract_services.contract_terminate(contract=contract, actor=None, actor_label="stripe", reason=reason)
                contract_services._stop_billing(contract)
                return "ended"
    return f"subscription {status}"


def _past_due_reason(contract_id: int, invoice: dict[str, Any]) -> str:
    """Return why a past-due rental must end now, or "" while Stripe is still retrying in time."""
    from marketplace.models import Contract

    now = timezone.now()
    paid_until = Contract.objects.filter(pk=contract_id).values_list("paid_until", flat=True).get()
    grace = timedelta(days=settings.STRIPE_PAST_DUE_GRACE_DAYS)
    if paid_until is not None and now - paid_until > grace:
        return f"The renewal has been unpaid for more than {settings.STRIPE_PAST_DUE_GRACE_DAYS} days."
    next_attempt = stripe_billing.from_timestamp(invoice.get("next_payment_attempt"))
    if next_attempt is None:
        return "The renewal payment failed and Stripe schedules no further try."
    if next_attempt < now - timedelta(days=1):
        return f"The renewal payment failed and Stripe's last scheduled try ({next_attempt:%Y-%m-%d}) has passed."
    return ""


