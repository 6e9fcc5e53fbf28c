"""Admin for payments and refunds: a read-only ledger that only the billing services write."""

from __future__ import annotations

from django.contrib import admin

from billing.models import LedgerEntry, Payment, Refund
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
    list_display = ("id", "payment", "amount_cents", "status", "reference", "created_at")
    list_filter = ("status",)
    list_select_related = ("payment",)
    search_fields = ("reference", "reason", "payment__reference", "payment__contract__public_id")
    date_hierarchy = "created_at"


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Commission ledger: each party's share of each payment and refund; append-only."""

    list_display = ("created_at", "contract", "payment", "refund", "party", "beneficiary", "amount_cents", "currency")
    list_filter = ("party", "currency")
    list_select_related = ("contract", "payment", "refund", "beneficiary")
    search_fields = ("contract__public_id", "beneficiary__email")
    date_hierarchy = "created_at"
