"""Celery tasks for payouts: the monthly run and one Stripe transfer per payout."""

from celery import shared_task
from django.utils import timezone

from billing.payouts import (
    payout_send_transfer,
    payouts_create_for_period,
    payouts_queue_stale_transfers,
    previous_month_bounds,
)


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
