"""Celery tasks for card payments (refunds, subscription changes, checks against Stripe) and payouts."""

from __future__ import annotations

import logging
from datetime import timedelta

import stripe
from celery import shared_task
from django.conf import settings
from django.utils import timezone

from billing import stripe_billing
from billing.gateway import stripe_enabled
from billing.models import CheckoutSession, Refund, Subscription
from billing.payouts import (
    payout_send_transfer,
    payouts_create_for_period,
    payouts_queue_stale_transfers,
    previous_month_bounds,
)

logger = logging.getLogger(__name__)


@shared_task(acks_late=True)
def refund_execute_task(refund_id: int) -> None:
    """Call the Refund API for one refund row; failures are recorded and retried by the sweep."""
    if not Refund.objects.filter(pk=refund_id).exists():
        logger.info("Refund %s no longer exists; nothing to do", refund_id)
        return
    stripe_billing.refund_execute(refund_id=refund_id)


@shared_task(expires=55)
def refunds_retry_due_task() -> None:
    """Retry failed and unconfirmed refunds whose backoff has passed; runs every minute."""
    if not stripe_enabled():
        return
    due = stripe_billing.refunds_due()
    for refund_id in due:
        refund_execute_task.delay(refund_id)
    if due:
        logger.info("Retrying %s refunds: %s", len(due), due)


def _retry_after_stripe_error(task, exc: stripe.StripeError, what: str, *, max_countdown: int = 3600):
    """Log a failed Stripe call of `task` and return the retry to raise, with exponential backoff."""
    logger.warning("%s failed (try %s): %s", what, task.request.retries + 1, exc)
    return task.retry(exc=exc, countdown=min(30 * 2**task.request.retries, max_countdown))


@shared_task(bind=True, acks_late=True, max_retries=8)
def subscription_cancel_task(self, contract_id: int) -> None:
    """Cancel a rental's Stripe subscription now; retried with backoff when Stripe fails."""
    try:
        stripe_billing.subscription_cancel(contract_id=contract_id)
    except stripe.StripeError as exc:
        raise _retry_after_stripe_error(self, exc, f"Contract {contract_id}: cancelling the subscription") from exc


@shared_task(bind=True, acks_late=True, max_retries=8)
def subscription_cancel_by_id_task(self, subscription_id: str) -> None:
    """Cancel a duplicate subscription that no rental keeps; retried with backoff when Stripe fails."""
    try:
        stripe_billing.subscription_cancel_by_id(subscription_id=subscription_id)
    except stripe.StripeError as exc:
        raise _retry_after_stripe_error(self, exc, f"Cancelling subscription {subscription_id}") from exc


@shared_task(bind=True, acks_late=True, max_retries=8)
def subscription_cancel_at_period_end_task(self, contract_id: int) -> None:
    """Tell Stripe not to renew a rental the tenant cancelled; retried when Stripe fails."""
    try:
        stripe_billing.subscription_cancel_at_period_end(contract_id=contract_id)
    except stripe.StripeError as exc:
        raise _retry_after_stripe_error(self, exc, f"Contract {contract_id}: cancel at period end") from exc


@shared_task(bind=True, acks_late=True, max_retries=5)
def checkout_expire_task(self, session_row_id: int) -> None:
    """Expire an open Checkout Session of a rental that was cancelled before payment."""
    session = CheckoutSession.objects.filter(pk=session_row_id).first()
    if session is None or session.status != CheckoutSession.Status.OPEN:
        return
    try:
        stripe_billing.checkout_expire(session=session)
    except stripe.StripeError as exc:
        raise _retry_after_stripe_error(self, exc, f"Checkout {session.session_id}: expiring", max_countdown=1800) from exc


@shared_task(expires=840)
def stripe_sync_task() -> None:
    """Check card rentals against Stripe where a webhook may have been lost; every 15 minutes.

    Covers active rentals whose renewal is overdue, and subscriptions the platform asked to
    cancel without Stripe confirming.
    """
    if not stripe_enabled():
        return
    from billing.webhooks import sync_overdue_contract
    from marketplace.models import Contract, ContractStatus

    cutoff = timezone.now() - timedelta(seconds=settings.STRIPE_RENEWAL_SYNC_AFTER_SECONDS)
    overdue = Contract.objects.filter(
        status=ContractStatus.ACTIVE, payment_method="stripe", cancel_at_period_end=False, paid_until__lt=cutoff
    ).values_list("pk", flat=True)[:200]
    for contract_id in list(overdue):
        try:
            sync_overdue_contract(contract_id=contract_id)
        except stripe.StripeError as exc:
            logger.warning("Contract %s: checking the subscription at Stripe failed: %s", contract_id, exc)
    unconfirmed = Subscription.objects.filter(cancel_requested_at__lt=cutoff).exclude(status="canceled").values_list(
        "contract_id", flat=True
    )[:200]
    for contract_id in list(unconfirmed):
        subscription_cancel_task.delay(contract_id)


@shared_task(expires=6 * 3600)
def payouts_create_monthly_task() -> list[int]:
    """Create the payouts of the previous calendar month (UTC) and queue lost transfers again."""
    period_start, period_end = previous_month_bounds(timezone.now())
    created = payouts_create_for_period(period_start=period_start, period_end=period_end)
    payouts_queue_stale_transfers()
    return [payout.pk for payout in created]


@shared_task(acks_late=True)
def payout_send_transfer_task(payout_id: int) -> None:
    """Send one payout's Stripe transfer. A failure marks the payout failed, for staff to retry."""
    payout_send_transfer(payout_id=payout_id)
