"""Read-only queries over payments, the earnings ledger, invoices and credit notes, for pages and the API."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Prefetch, Q, QuerySet, Sum
from django.db.models.functions import TruncMonth

from billing.models import CreditNote, Invoice, LedgerEntry, Payment, Payout, PayoutAccount, Refund


@dataclass(frozen=True)
class Statement:
    """A user's earnings in one currency for one calendar month (UTC) of payment periods."""

    month: dt.date
    currency: str
    gross_cents: int
    reversed_cents: int
    net_cents: int
    entry_count: int
    # The part of net_cents from sandbox payments: simulated money that is never paid out.
    sandbox_cents: int = 0

    @property
    def month_key(self) -> str:
        """The month as "YYYY-MM", the value of the earnings page's `month` parameter."""
        return f"{self.month:%Y-%m}"


def earnings_statements(*, user) -> list[Statement]:
    """Sum the ledger entries credited to `user` per month of `period_start` and currency, newest first.

    Gross is the sum of positive entries (payments), reversed the sum of negative entries
    (refunds, so zero or less), net their total. A refund's entries carry the period of the
    payment they reverse, so they land in the same month as that payment.
    """
    rows = (
        LedgerEntry.objects.filter(beneficiary=user)
        .annotate(month=TruncMonth("period_start", tzinfo=dt.UTC))
        .values("month", "currency")
        .annotate(
            gross=Sum("amount_cents", filter=Q(amount_cents__gt=0), default=0),
            reversed=Sum("amount_cents", filter=Q(amount_cents__lt=0), default=0),
            net=Sum("amount_cents", default=0),
            sandbox=Sum("amount_cents", filter=Q(payment__method="sandbox"), default=0),
            entry_count=Count("id"),
        )
        .order_by("-month", "currency")
    )
    return [
        Statement(
            month=row["month"].date() if isinstance(row["month"], dt.datetime) else row["month"],
            currency=row["currency"],
            gross_cents=row["gross"],
            reversed_cents=row["reversed"],
            net_cents=row["net"],
            entry_count=row["entry_count"],
            sandbox_cents=row["sandbox"],
        )
        for row in rows
    ]


def earnings_entries(*, user, month: dt.date) -> QuerySet[LedgerEntry]:
    """Return the ledger entries credited to `user` whose `period_start` falls in `month` (UTC), oldest first."""
    start = dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=dt.UTC)
    return (
        LedgerEntry.objects.filter(beneficiary=user, period_start__gte=start, period_start__lt=end)
        .select_related("contract", "refund")
        .order_by("created_at", "id")
    )


def tenant_payments(*, user) -> QuerySet[Payment]:
    """Return the payments for `user`'s rentals as tenant, newest first, with contract and refunds loaded."""
    return (
        Payment.objects.filter(contract__tenant=user)
        .select_related("contract", "invoice")
        .prefetch_related(Prefetch("refunds", queryset=Refund.objects.order_by("-created_at", "-id")))
        .order_by("-created_at", "-id")
    )


def beneficiary_payouts(*, user) -> QuerySet[Payout]:
    """Return the payouts to `user`, newest month first."""
    return Payout.objects.filter(beneficiary=user).order_by("-period_start", "currency", "-id")


def payouts_by_month(payouts) -> dict[tuple[dt.date, str], Payout]:
    """Index payouts by (first day of their month, currency), the key of a `Statement`."""
    return {(payout.period_start.astimezone(dt.UTC).date(), payout.currency): payout for payout in payouts}


def payout_account_of(*, user) -> PayoutAccount | None:
    """Return the user's Stripe payout account row, or None before payout setup started."""
    return PayoutAccount.objects.filter(user=user).first()
def tenant_invoices(*, user) -> QuerySet[Invoice]:
    """Return the invoices made out to `user`, newest first."""
    return Invoice.objects.filter(buyer=user).order_by("-issued_at", "-id")


def tenant_credit_notes(*, user) -> QuerySet[CreditNote]:
    """Return the credit notes made out to `user`, newest first, with the invoice each one credits."""
    return CreditNote.objects.filter(buyer=user).select_related("invoice").order_by("-issued_at", "-id")


def invoices_visible_to(*, user) -> QuerySet[Invoice]:
    """Return the invoices `user` may open: their own, or every invoice for staff."""
    queryset = Invoice.objects.select_related("payment__contract")
    return queryset if user.is_staff else queryset.filter(buyer=user)


def credit_notes_visible_to(*, user) -> QuerySet[CreditNote]:
    """Return the credit notes `user` may open: their own, or every credit note for staff."""
    queryset = CreditNote.objects.select_related("invoice", "refund")
    return queryset if user.is_staff else queryset.filter(buyer=user)
