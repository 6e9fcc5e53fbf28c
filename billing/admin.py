"""Admin for payments, refunds, the ledger, payouts, invoices and credit notes.

Only the billing services write these rows. Payout rows change only through the actions "Mark
paid out" and "Retry transfer"; failed card refunds can be retried with "Retry refund".
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.template.response import TemplateResponse
from django.utils.html import format_html

from billing import payouts
from billing.forms import MarkPaidOutForm
from billing.models import (
    BillingProfile,
    CheckoutSession,
    CreditNote,
    Dispute,
    DocumentCounter,
    Invoice,
    LedgerEntry,
    Payment,
    PaymentMethod,
    Payout,
    PayoutAccount,
    PayoutEvent,
    Refund,
    StripeCustomer,
    Subscription,
    WebhookEvent,
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

    list_display = ("created_at", "contract", "payment", "refund", "party", "beneficiary", "amount_cents", "currency", "payout")
    list_filter = ("party", "currency")
    list_select_related = ("contract", "payment", "refund", "beneficiary", "payout")
    search_fields = ("contract__public_id", "beneficiary__email")
    date_hierarchy = "created_at"


class PayoutEventInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = PayoutEvent
    fields = ("created_at", "from_status", "to_status", "actor", "reason")
    readonly_fields = fields
    extra = 0


@admin.register(Payout)
class PayoutAdmin(admin.ModelAdmin):
    """Payouts, read-only. Staff record manual payments and retry failed Stripe transfers with the actions."""

    list_display = (
        "id", "beneficiary", "month_display", "amount_display", "method", "status_badge", "transfer_attempt",
        "paid_at", "stripe_transfer_id",
    )
    list_filter = ("status", "method", "currency")
    list_select_related = ("beneficiary",)
    search_fields = ("beneficiary__email", "stripe_transfer_id", "note")
    date_hierarchy = "period_start"
    inlines = (PayoutEventInline,)
    actions = ("mark_paid_out", "retry_transfer")

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in Payout._meta.fields] + ["status_badge"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Without an object, this permission gates the actions. Every change page is view-only.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Payout):
        return status_badge(obj.get_status_display(), obj.status_colour)

    @admin.display(description="Month", ordering="period_start")
    def month_display(self, obj: Payout) -> str:
        return f"{obj.period_start:%Y-%m}"

    @admin.display(description="Amount", ordering="amount_cents")
    def amount_display(self, obj: Payout) -> str:
        return f"{obj.amount_cents / 100:.2f} {obj.currency}"

    @admin.action(description="Mark paid out (paid outside Stripe)", permissions=["change"])
    def mark_paid_out(self, request, queryset):
        """Ask for a note on an intermediate page, then record each selected payout as paid."""
        form = MarkPaidOutForm(request.POST if "apply" in request.POST else None)
        if not form.is_bound or not form.is_valid():
            return TemplateResponse(
                request,
                "admin/billing/payout/mark_paid_out.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Mark payouts paid out",
                    "opts": self.model._meta,
                    "payouts": queryset.select_related("beneficiary").order_by("pk"),
                    "form": form,
                    "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                },
            )
        done: list[int] = []
        for payout in queryset.order_by("pk"):
            try:
                payouts.payout_mark_paid(payout=payout, staff_user=request.user, note=form.cleaned_data["note"])
            except (payouts.InvalidPayoutTransition, PermissionDenied, ValidationError) as exc:
                self.message_user(request, _error_text(exc), messages.WARNING)
            else:
                done.append(payout.pk)
        if done:
            self.message_user(request, f"Marked paid out: payout(s) {', '.join(map(str, done))}.", messages.SUCCESS)
        return None

    @admin.action(description="Retry transfer (failed Stripe payouts)", permissions=["change"])
    def retry_transfer(self, request, queryset) -> None:
        done: list[int] = []
        for payout in queryset.order_by("pk"):
            try:
                payouts.payout_transfer_retry(payout=payout, staff_user=request.user)
            except (payouts.InvalidPayoutTransition, payouts.PayoutsUnavailable, PermissionDenied) as exc:
                self.message_user(request, _error_text(exc), messages.WARNING)
            else:
                done.append(payout.pk)
        if done:
            self.message_user(request, f"Transfer queued again: payout(s) {', '.join(map(str, done))}.", messages.SUCCESS)


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)


@admin.register(PayoutAccount)
class PayoutAccountAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Stripe Express accounts of beneficiaries, with the onboarding state last read from Stripe."""

    list_display = ("user", "stripe_account_id", "details_submitted", "payouts_enabled", "updated_at")
    list_filter = ("details_submitted", "payouts_enabled")
    list_select_related = ("user",)
    search_fields = ("user__email", "stripe_account_id")


@admin.register(PayoutEvent)
class PayoutEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """History of payout status changes, append-only."""

    list_display = ("created_at", "payout", "from_status", "to_status", "actor", "reason")
    list_filter = ("to_status",)
    list_select_related = ("payout", "actor")
    search_fields = ("payout__beneficiary__email", "reason")
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
