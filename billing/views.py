"""Read-only billing pages: a provider's or recipe author's earnings and a tenant's payments."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from billing import selectors


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
