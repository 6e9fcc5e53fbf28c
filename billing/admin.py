"""Admin for payments and refunds: a read-only ledger that only the billing services write."""

from __future__ import annotations

from django.contrib import admin, messages

from billing.models import (
    CheckoutSession,
    Dispute,
    LedgerEntry,
    Payment,
    PaymentMethod,
    Refund,
    StripeCustomer,
    Subscription,
    WebhookEvent,
)
from marketplace.admin import ReadOnlyAdminMixin, status_badge


class RefundInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Refund
    fields = ("created_at", "amount_cents", "status", "reason", "reference", "error")
    readonly_fields = fields
    extra = 0


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "contract", "method", "status_badge", "amount_display", "period_start", "period_end", "created_at")
    list_filter = ("method", "status", "currency")
    list_select_related = ("contract",)
    search_fields = ("reference", "contract__public_id", "contract__tenant__email")
    date_hierarchy = "created_at"
    inlines = (RefundInline,)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Payment):
        return status_badge(obj.get_status_display(), obj.status_colour)

    @admin.display(description="Amount", ordering="amount_cents")
    def amount_display(self, obj: Payment) -> str:
        return f"{obj.amount_cents / 100:.2f} {obj.currency}"


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Refunds; a failed card refund is red here and can be retried at once."""

    list_display = ("id", "payment", "amount_cents", "status", "attempts", "next_attempt_at", "error", "reference", "created_at")
    list_filter = ("status", "payment__method")
    list_select_related = ("payment",)
    search_fields = ("reference", "reason", "payment__reference", "payment__contract__public_id")
    date_hierarchy = "created_at"
    actions = ("retry_refund",)

    @admin.action(description="Retry the selected card refunds now", permissions=["change"])
    def retry_refund(self, request, queryset):
        from billing.tasks import refund_execute_task

        retried = 0
        for refund in queryset.select_related("payment"):
            if refund.status == Refund.Status.SUCCEEDED or refund.payment.method != PaymentMethod.STRIPE:
                continue
            refund_execute_task.delay(refund.pk)
            retried += 1
        if retried:
            self.message_user(request, f"Queued {retried} refund(s) for another try; reload in a few seconds.", messages.SUCCESS)
        else:
            self.message_user(request, "Nothing to retry: only pending or failed card refunds can be retried.", messages.WARNING)

    def has_change_permission(self, request, obj=None) -> bool:
        # Without an object this gates the retry action; every change page stays view-only.
        return obj is None and admin.ModelAdmin.has_change_permission(self, request)


@admin.register(StripeCustomer)
class StripeCustomerAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("customer_id", "user", "created_at")
    search_fields = ("customer_id", "user__email")
    list_select_related = ("user",)


@admin.register(CheckoutSession)
class CheckoutSessionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("session_id", "contract", "status", "expires_at", "created_at")
    list_filter = ("status",)
    search_fields = ("session_id", "contract__public_id")
    list_select_related = ("contract",)


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("subscription_id", "contract", "status", "cancel_at_period_end", "current_period_end", "cancel_error")
    list_filter = ("status", "cancel_at_period_end")
    search_fields = ("subscription_id", "customer_id", "contract__public_id")
    list_select_related = ("contract",)


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Every Stripe event received, with what the platform did about it."""

    list_display = ("event_id", "type", "received_at", "contract", "outcome")
    list_filter = ("type", "livemode")
    search_fields = ("event_id", "contract__public_id", "outcome")
    list_select_related = ("contract",)
    date_hierarchy = "received_at"


@admin.register(Dispute)
class DisputeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("dispute_id", "payment", "amount_cents", "currency", "reason", "status", "created_at")
    list_filter = ("status", "reason")
    search_fields = ("dispute_id", "payment__contract__public_id")
    list_select_related = ("payment",)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Commission ledger: each party's share of each payment and refund; append-only."""

    list_display = ("created_at", "contract", "payment", "refund", "party", "beneficiary", "amount_cents", "currency")
    list_filter = ("party", "currency")
    list_select_related = ("contract", "payment", "refund", "beneficiary")
    search_fields = ("contract__public_id", "beneficiary__email")
    date_hierarchy = "created_at"
