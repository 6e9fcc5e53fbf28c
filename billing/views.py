"""Billing pages: earnings, payments, billing details, invoices and credit notes with their PDFs."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from billing import selectors
from billing.forms import BillingProfileForm
from billing.models import BillingDocument, BillingProfile
from billing.pdf import format_rate, render_document_pdf
from billing.profiles import billing_profile_save


def _parse_month(value: str) -> dt.date:
    try:
        return dt.datetime.strptime(value, "%Y-%m").replace(tzinfo=dt.UTC).date()
    except ValueError:
        raise Http404(f"Invalid month {value!r}; expected YYYY-MM, for example 2026-01.") from None


@login_required
def earnings(request: HttpRequest) -> HttpResponse:
    """Render the monthly earnings statements and, with `?month=YYYY-MM`, that month's entries."""
    statements = selectors.earnings_statements(user=request.user)
    month = None
    entries = None
    if request.GET.get("month"):
        month = _parse_month(request.GET["month"])
        entries = list(selectors.earnings_entries(user=request.user, month=month))
    return render(
        request,
        "billing/earnings.html",
        {"statements": statements, "month": month, "entries": entries},
    )


@login_required
def payments(request: HttpRequest) -> HttpResponse:
    """Render the payment history of the signed-in user's rentals."""
    return render(request, "billing/payments.html", {"payments": selectors.tenant_payments(user=request.user)})


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


# Only the buyer and staff can open an invoice or credit note; for everyone else the selectors
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
