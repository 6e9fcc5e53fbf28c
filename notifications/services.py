"""The notification dispatcher: render a message per recipient, store it, send after commit."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.template.loader import render_to_string

from notifications.models import Channel, Notification

logger = logging.getLogger(__name__)


def notify(*, event: str, recipient, context: dict, contract=None) -> Notification:
    """Store one email notification and send it through a worker once the transaction commits."""
    from notifications.tasks import send_notification_task

    context = {**context, "recipient": recipient, "site_url": settings.SITE_URL}
    rendered = render_to_string(f"notifications/email/{event}.txt", context).strip()
    subject, _, body = rendered.partition("\n")
    notification = Notification.objects.create(
        recipient=recipient,
        event=event,
        channel=Channel.EMAIL,
        contract=contract,
        subject=subject.strip()[:200],
        body=body.strip(),
    )
    notification_id = notification.pk
    transaction.on_commit(lambda: send_notification_task.delay(notification_id))
    logger.info("Notification %s (%s) queued for user %s", notification.pk, event, recipient.pk)
    return notification


def notify_contract_event(*, event: str, contract, to_tenant: bool = True, to_provider: bool = True, to_staff: bool = False) -> list[Notification]:
    """Notify the tenant and/or the provider (and staff, for alerts) about a contract event."""
    recipients = []
    if to_tenant:
        recipients.append(("tenant", contract.tenant))
    if to_provider and contract.provider.user_id != contract.tenant_id:
        recipients.append(("provider", contract.provider.user))
    if to_staff:
        for user in get_user_model().objects.filter(is_staff=True, is_active=True).order_by("pk"):
            recipients.append(("staff", user))
    sent = []
    for role, user in recipients:
        sent.append(notify(event=event, recipient=user, context={"contract": contract, "role": role}, contract=contract))
    return sent


def notification_send(*, notification_id: int) -> bool:
    """Send one stored notification by email; return True once it is sent.

    Raises the email backend's error after recording it, so the task can retry.
    """
    from django.core.mail import send_mail
    from django.utils import timezone

    from notifications.models import DeliveryStatus

    with transaction.atomic():
        notification = Notification.objects.select_for_update(of=("self",)).select_related("recipient").filter(pk=notification_id).first()
        if notification is None:
            logger.info("Notification %s no longer exists; nothing to send", notification_id)
            return False
        if notification.status == DeliveryStatus.SENT:
            logger.info("Notification %s was already sent", notification_id)
            return True
        notification.attempts += 1
        try:
            send_mail(notification.subject, notification.body, None, [notification.recipient.email])
        except Exception as exc:  # Email backends raise many types (SMTP, socket, TLS).
            notification.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            if notification.attempts >= Notification.MAX_ATTEMPTS:
                notification.status = DeliveryStatus.FAILED
            notification.save(update_fields=["attempts", "last_error", "status"])
            logger.warning("Notification %s failed on attempt %s: %s", notification_id, notification.attempts, exc)
            raise
        notification.status = DeliveryStatus.SENT
        notification.sent_at = timezone.now()
        notification.last_error = ""
        notification.save(update_fields=["attempts", "last_error", "status", "sent_at"])
    logger.info("Notification %s sent to user %s", notification_id, notification.recipient_id)
    return True
