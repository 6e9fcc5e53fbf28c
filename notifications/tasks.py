import logging
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from notifications.models import DeliveryStatus, Notification
from notifications.services import notification_send

logger = logging.getLogger(__name__)


@shared_task(bind=True, max_retries=Notification.MAX_ATTEMPTS - 1, acks_late=True)
def send_notification_task(self, notification_id: int) -> None:
    try:
        notification_send(notification_id=notification_id)
    except Exception as exc:
        countdown = min(600, 30 * 2**self.request.retries)
        logger.info("Retrying notification %s in %s s", notification_id, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc


@shared_task
def retry_pending_notifications_task() -> int:
    """Re-queue notifications still pending ten minutes after creation (a lost task or crash)."""
    cutoff = timezone.now() - timedelta(minutes=10)
    ids = list(
        Notification.objects.filter(status=DeliveryStatus.PENDING, created_at__lt=cutoff)
        .order_by("pk")
        .values_list("pk", flat=True)[:500]
    )
    for notification_id in ids:
        send_notification_task.delay(notification_id)
    if ids:
        logger.info("Re-queued %s pending notifications", len(ids))
    return len(ids)
