import logging

from celery import shared_task

from marketplace.services.contracts import contracts_cancel_abandoned, contracts_end_expired

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
