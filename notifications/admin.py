"""Admin for notifications, with an action that queues sending again."""

from __future__ import annotations

import logging

from django.contrib import admin, messages
from django.db import transaction

from marketplace.admin import ReadOnlyAdminMixin, status_badge
from notifications.models import DeliveryStatus, Notification

logger = logging.getLogger(__name__)


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Stored notifications, read-only; "Retry sending" queues unsent ones for a worker."""

    list_display = ("id", "recipient", "event", "channel", "status_badge", "attempts", "created_at", "sent_at")
    list_filter = ("event", "status", "channel")
    list_select_related = ("recipient",)
    search_fields = ("recipient__email", "subject", "contract__public_id")
    date_hierarchy = "created_at"
    actions = ("retry_sending",)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Notification):
        return status_badge(obj.get_status_display(), obj.status_colour)

    @admin.action(description="Retry sending")
    def retry_sending(self, request, queryset) -> None:
        from notifications.tasks import send_notification_task

        queued: list[int] = []
        skipped: list[int] = []
        with transaction.atomic():
            for notification_id, status in queryset.order_by("pk").values_list("pk", "status"):
                if status == DeliveryStatus.SENT:
                    skipped.append(notification_id)
                    continue
                transaction.on_commit(lambda pk=notification_id: send_notification_task.delay(pk))
                queued.append(notification_id)
        if queued:
            logger.info("Notifications %s re-queued by staff user %s", queued, request.user.pk)
            self.message_user(request, f"Queued {len(queued)} notification(s) for sending.", messages.SUCCESS)
        if skipped:
            ids = ", ".join(str(pk) for pk in skipped)
            self.message_user(request, f"Skipped notification(s) {ids}: already sent.", messages.WARNING)
