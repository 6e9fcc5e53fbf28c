import logging

from celery import shared_task

from marketplace.services.contracts import (
    contracts_cancel_abandoned,
    contracts_end_expired,
    contracts_reject_unanswered,
)

logger = logging.getLogger(__name__)


@shared_task(expires=55)
def end_expired_rentals_task() -> None:
    """End or renew rentals whose paid period is over; runs every minute."""
    ended = contracts_end_expired()
    if ended:
        logger.info("Ended %s rentals at period end: %s", len(ended), ended)
    abandoned = contracts_cancel_abandoned()
    if abandoned:
        logger.info("Cancelled %s unpaid rental requests: %s", len(abandoned), abandoned)


@shared_task(expires=290)
def reject_unanswered_rentals_task() -> list[int]:
    """Reject and refund paid rentals their provider neither accepted nor rejected in time; runs every 5 minutes."""
    rejected = contracts_reject_unanswered()
    if rejected:
        logger.info("Rejected %s paid rentals their provider did not accept or reject in time: %s", len(rejected), rejected)
    return rejected
