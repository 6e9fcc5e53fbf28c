"""Notifications: one row per message to one recipient, sent by a worker after commit."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Event(models.TextChoices):
    RENTAL_PAID = "rental_paid", "Rental paid"
    RENTAL_ACTIVE = "rental_active", "Rental active"
    RENTAL_FAILED = "rental_failed", "Rental failed"
    RENTAL_REJECTED = "rental_rejected", "Rental rejected"
    RENTAL_REQUEST_EXPIRED = "rental_request_expired", "Rental request expired"
    RENTAL_CANCELLED = "rental_cancelled", "Rental cancelled"
    RENTAL_TERMINATED = "rental_terminated", "Rental terminated"
    TERMINATION_FAILED = "termination_failed", "Termination failed"
    CREDENTIALS_INVALID = "credentials_invalid", "Cloud credentials invalid"
    SERVER_MISSING = "server_missing", "Server missing"
    HEALTH_CHECK_FAILING = "health_check_failing", "Health check failing"
    HEALTH_CHECK_RECOVERED = "health_check_recovered", "Health check recovered"
    RENEWAL_PAYMENT_FAILED = "renewal_payment_failed", "Renewal payment failed"
    REFUND_FAILED = "refund_failed", "Refund failed"
    REFUND_COMPLETED = "refund_completed", "Refund completed"
    REFUND_DELAYED = "refund_delayed", "Refund delayed"
    PAYMENT_DISPUTED = "payment_disputed", "Payment disputed"
    PAYOUT_SENT = "payout_sent", "Payout sent"
    PAYOUT_FAILED = "payout_failed", "Payout failed"


class Channel(models.TextChoices):
    EMAIL = "email", "Email"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


DELIVERY_STATUS_COLOURS = {
    DeliveryStatus.PENDING: "grey",
    DeliveryStatus.SENT: "green",
    DeliveryStatus.FAILED: "red",
}


class Notification(models.Model):
    """One message about one event to one recipient over one channel."""

    MAX_ATTEMPTS = 5

    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    event = models.CharField(max_length=32, choices=Event.choices)
    channel = models.CharField(max_length=16, choices=Channel.choices, default=Channel.EMAIL)
    contract = models.ForeignKey(
        "marketplace.Contract", null=True, blank=True, on_delete=models.SET_NULL, related_name="notifications"
    )
    subject = models.CharField(max_length=200)
    body = models.TextField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"], name="notification_status_created")]

    def __str__(self) -> str:
        return f"{self.get_event_display()} to {self.recipient} ({self.status})"

    @property
    def status_colour(self) -> str:
        return DELIVERY_STATUS_COLOURS.get(self.status, "grey")
