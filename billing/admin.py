"""Admin for payments, refunds, invoices and credit notes: read-only records that only the billing services write."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from billing.models import (
    BillingProfile,
    CreditNote,
    DocumentCounter,
    Invoice,
    LedgerEntry,
    Payment,
    Refund,
)
from marketplace.admin import ReadOnlyAdminMixin, status_badge
from marketplace.templatetags.money import money


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


@admin.register(BillingProfile)
class BillingProfileAdmin(admin.ModelAdmin):
    """Users' billing details; editable, because issued invoices keep their own copy."""

    list_display = ("legal_name", "user", "country", "is_business", "vat_id", "updated_at")
    list_filter = ("is_business", "country")
    list_select_related = ("user",)
    search_fields = ("legal_name", "user__email", "vat_id")
    raw_id_fields = ("user",)


class _DocumentAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Issued invoices and credit notes: view only, with a link to the PDF."""

    list_display = ("number", "issued_at", "buyer_name", "buyer", "gross_display", "is_sandbox", "pdf_link")
    list_filter = ("series", "is_sandbox", "reverse_charge", "tax_source", "currency")
    list_select_related = ("buyer",)
    search_fields = ("number", "buyer_name", "buyer_email", "buyer__email", "buyer_vat_id")
    date_hierarchy = "issued_at"
    readonly_fields = ("pdf_link",)

    @admin.display(description="Total", ordering="gross_cents")
    def gross_display(self, obj) -> str:
        return money(obj.gross_cents, obj.currency)

    @admin.display(description="PDF")
    def pdf_link(self, obj):
        return format_html('<a href="{}">Download PDF</a>', obj.get_pdf_url())


@admin.register(Invoice)
class InvoiceAdmin(_DocumentAdmin):
    list_select_related = ("buyer", "payment")


@admin.register(CreditNote)
class CreditNoteAdmin(_DocumentAdmin):
    list_display = (*_DocumentAdmin.list_display[:4], "invoice", *_DocumentAdmin.list_display[4:])
    list_select_related = ("buyer", "invoice")


@admin.register(DocumentCounter)
class DocumentCounterAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The last number issued per series and year; only the invoicing service writes it."""

    list_display = ("series", "year", "last_sequence")
    list_filter = ("series", "year")
