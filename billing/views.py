"""Billing pages: earnings and payouts, payments, billing details, invoices and credit notes with
their PDFs, the Stripe customer portal, and the Stripe webhook endpoint."""

from __future__ import annotations

import datetime as dt
import logging

import stripe
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import payouts, selectors
from billing.forms import BillingProfileForm
from billing.gateway import stripe_enabled
from billing.models import BillingDocument, BillingProfile, StripeCustomer
from billing.pdf import format_rate, render_document_pdf
from billing.profiles import billing_profile_save
from billing.stripe_billing import portal_url
from billing.webhooks import WebhookRejected, webhook_receive

logger = logging.getLogger(__name__)


def _parse_month(value: str) -> dt.date:
    try:
        month = dt.datetime.strptime(value, "%Y-%m").replace(tzinfo=dt.UTC).date()
    except ValueError:
        raise Http404(f"Invalid month {value!r}; expected YYYY-MM, for example 2026-01.") from None
    if month.year >= dt.MAXYEAR:
        raise Http404(f"Invalid month {value!r}: the year must be before {dt.MAXYEAR}.")
    return month


@login_required
def earnings(request: HttpRequest) -> HttpResponse:
    """Render the monthly statements with their payouts and, with `?month=YYYY-MM`, that month's entries."""
    statements = selectors.earnings_statements(user=request.user)
    payout_list = list(selectors.beneficiary_payouts(user=request.user))
    by_month = selectors.payouts_by_month(payout_list)
    today = timezone.now().astimezone(dt.UTC).date()
    current_month = today.replace(day=1)
    rows = [
        {
            "statement": statement,
            "payout": by_month.get((statement.month, statement.currency)),
            "month_open": statement.month >= current_month,
        }
        for statement in statements
    ]
    month = None
    entries = None
    if request.GET.get("month"):
        month = _parse_month(request.GET["month"])
        entries = list(selectors.earnings_entries(user=request.user, month=month))
    connect_enabled = payouts.connect_enabled()
    return render(
        request,
        "billing/earnings.html",
        {
            "rows": rows,
            "statements": statements,
            "has_sandbox_earnings": any(statement.sandbox_cents for statement in statements),
            "payouts": payout_list,
            "connect_enabled": connect_enabled,
            "payout_account": selectors.payout_account_of(user=request.user) if connect_enabled else None,
            "month": month,
            "entries": entries,
        },
    )


def _redirect_to_onboarding(request: HttpRequest) -> HttpResponse:
    try:
        url = payouts.payout_account_onboarding_link(
            user=request.user,
            return_url=request.build_absolute_uri(reverse("billing:payouts_return")),
            refresh_url=request.build_absolute_uri(reverse("billing:payouts_refresh")),
        )
    except (payouts.PayoutsUnavailable, payouts.PayoutStripeError) as exc:
        messages.error(request, str(exc))
        return redirect("billing:earnings")
    return redirect(url)


@login_required
@require_POST
def payouts_setup(request: HttpRequest) -> HttpResponse:
    """Send the user to Stripe's onboarding form, creating their Express account the first time."""
    return _redirect_to_onboarding(request)


@login_required
@require_GET
def payouts_refresh(request: HttpRequest) -> HttpResponse:
    """Redirect to a new onboarding link after Stripe reports the previous one expired or used.

    This is a GET because Stripe redirects the browser here. So it only creates a link for an
    existing Stripe account and never creates an account.
    """
    account = selectors.payout_account_of(user=request.user)
    if account is None or not account.stripe_account_id:
        return redirect("billing:earnings")
    return _redirect_to_onboarding(request)


@login_required
@require_GET
def payouts_return(request: HttpRequest) -> HttpResponse:
    """Read the user's account state from Stripe after they leave the form, then show it."""
    try:
        account = payouts.payout_account_refresh(user=request.user)
    except (payouts.PayoutsUnavailable, payouts.PayoutStripeError) as exc:
        messages.error(request, str(exc))
        return redirect("billing:earnings")
    if account is None:
        messages.warning(request, "Payout setup has not started yet.")
    elif account.payouts_enabled:
        messages.success(request, "Payout setup is complete: your next payouts are sent to your Stripe account.")
    else:
        messages.warning(request, f"Payout setup: {account.setup_label.lower()}. Continue setup to finish it.")
    return redirect("billing:earnings")


@login_required
def payments(request: HttpRequest) -> HttpResponse:
    """Render the payment history of the signed-in user's rentals."""
    return render(
        request,
        "billing/payments.html",
        {"payments": selectors.tenant_payments(user=request.user), "stripe_enabled": stripe_enabled()},
    )


@login_required
@require_POST
def payment_methods_portal(request: HttpRequest) -> HttpResponse:
    """Send the user to Stripe's customer portal to manage saved cards and see receipts."""
    back = request.build_absolute_uri(reverse("billing:payments"))
    if not stripe_enabled():
        messages.error(request, "Card payments are not set up on this installation, so there are no saved cards.")
        return redirect(back)
    if not StripeCustomer.objects.filter(user=request.user).exists():
        messages.info(request, "You have no saved cards yet: Stripe saves your card when you first pay for a rental by card.")
        return redirect(back)
    try:
        url = portal_url(user=request.user, return_url=back)
    except stripe.StripeError as exc:
        logger.warning("Customer portal for user %s failed: %s", request.user.pk, exc)
        messages.error(request, "The card management page could not be opened; the payment processor did not respond. Try again in a minute.")
        return redirect(back)
    return redirect(url)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Receive a Stripe event: 200 once applied (or already applied), 400 when not genuine.

    An unexpected error returns 500 with nothing stored, so Stripe delivers the event again.
    """
    try:
        payload = request.body
    except RequestDataTooBig:
        logger.warning("Stripe webhook rejected: body larger than DATA_UPLOAD_MAX_MEMORY_SIZE")
        return JsonResponse({"error": "The request body is too large for a Stripe event."}, status=413)
    try:
        event, outcome = webhook_receive(payload=payload, signature=request.headers.get("Stripe-Signature", ""))
    except WebhookRejected as exc:
        logger.warning("Stripe webhook rejected from %s: %s", request.META.get("REMOTE_ADDR"), exc)
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"received": True, "duplicate": event is None, "outcome": outcome})


@login_required
@require_http_methods(["GET", "POST"])
def overview(request: HttpRequest) -> HttpResponse:
    """Render the tenant billing page: billing details form, invoices and credit notes; save the form on POST."""
    profile = BillingProfile.objects.filter(user=request.user).first()
    form = BillingProfileForm(request.POST or None, instance=profile)
    if request.method == "POST" and form.is_valid():
        try:
            billing_profile_save(user=request.user, actor=request.user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, "Billing details saved. New invoices use them; issued invoices stay as they are.")
            return redirect("billing:overview")
    return render(
        request,
        "billing/overview.html",
        {
            "form": form,
            "has_profile": profile is not None,
            "invoices": selectors.tenant_invoices(user=request.user),
            "credit_notes": selectors.tenant_credit_notes(user=request.user),
            "stripe_enabled": bool(settings.STRIPE_SECRET_KEY),
        },
    )


def _document_page(request: HttpRequest, document: BillingDocument, *, kind: str) -> HttpResponse:
    return render(
        request,
        "billing/document_detail.html",
        {"document": document, "kind": kind, "tax_rate": format_rate(document.tax_rate_bps)},
    )


def _pdf_response(document: BillingDocument, *, filename_prefix: str) -> HttpResponse:
    response = HttpResponse(render_document_pdf(document), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{filename_prefix}-{document.number}.pdf"'
    response["Cache-Control"] = "private"
    return response


# Only the buyer and staff can open an invoice or credit note. For everyone else the selectors
# find nothing, so the pages and PDFs return 404 without revealing that the number exists.


@login_required
@require_GET
def invoice_detail(request: HttpRequest, number: str) -> HttpResponse:
    """Render one invoice."""
    invoice = get_object_or_404(selectors.invoices_visible_to(user=request.user), number=number)
    return _document_page(request, invoice, kind="Invoice")


@login_required
@require_GET
def invoice_pdf(request: HttpRequest, number: str) -> HttpResponse:
    """Send one invoice as PDF."""
    invoice = get_object_or_404(selectors.invoices_visible_to(user=request.user), number=number)
    return _pdf_response(invoice, filename_prefix="invoice")


@login_required
@require_GET
def credit_note_detail(request: HttpRequest, number: str) -> HttpResponse:
    """Render one credit note."""
    credit_note = get_object_or_404(selectors.credit_notes_visible_to(user=request.user), number=number)
    return _document_page(request, credit_note, kind="Credit note")


@login_required
@require_GET
def credit_note_pdf(request: HttpRequest, number: str) -> HttpResponse:
    """Send one credit note as PDF."""
    credit_note = get_object_or_404(selectors.credit_notes_visible_to(user=request.user), number=number)
    return _pdf_response(credit_note, filename_prefix="credit-note")
