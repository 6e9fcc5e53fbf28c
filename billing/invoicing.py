"""Issue invoices for succeeded payments and credit notes for succeeded refunds.

Numbers are gapless per series and calendar year (UTC): the series' counter row is locked with
SELECT ... FOR UPDATE and the document is inserted in the same transaction. The lock is held
until the outermost transaction commits, so issuing in one series is serialised across all
processes. Sandbox payments move no money and get numbers in their own series (TEST-...). So the
real series contains no test documents. Free payments get no invoice.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import (
    SERIES_PREFIXES,
    BillingProfile,
    CreditNote,
    DocumentCounter,
    DocumentSeries,
    Invoice,
    Payment,
    PaymentMethod,
    PaymentStatus,
    Refund,
)
from billing.tax import REVERSE_CHARGE_NOTE, credit_share, reverse_charge_applies, tax_for_payment

logger = logging.getLogger(__name__)

SANDBOX_NOTE = "Sandbox: no money was charged. This document is for testing and is not a tax invoice."

#: Payment statuses that mean the money was received at some point (a refund may have followed).
_PAID_STATUSES = {
    PaymentStatus.SUCCEEDED,
    PaymentStatus.REFUND_PENDING,
    PaymentStatus.REFUNDED,
    PaymentStatus.REFUND_FAILED,
}


def document_number(*, series: str, year: int, sequence: int) -> str:
    """Format a document number: "2026-000001", "CN-2026-000001", "TEST-2026-000001"."""
    return f"{SERIES_PREFIXES[series]}{year}-{sequence:06d}"


def _next_sequence(*, series: str, year: int) -> int:
    """Lock the (series, year) counter, creating it on first use, and return its next sequence number."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("Document numbers must be taken inside the transaction that inserts the document.")
    # INSERT ... ON CONFLICT DO NOTHING, so two processes starting a new year do not collide.
    DocumentCounter.objects.bulk_create([DocumentCounter(series=series, year=year)], ignore_conflicts=True)
    counter = DocumentCounter.objects.select_for_update().get(series=series, year=year)
    counter.last_sequence += 1
    counter.save(update_fields=["last_sequence"])
    return counter.last_sequence


def _seller_snapshot() -> dict[str, str]:
    return {
        "seller_name": settings.BILLING_SELLER_NAME,
        "seller_address": settings.BILLING_SELLER_ADDRESS,
        "seller_country": settings.BILLING_SELLER_COUNTRY,
        "seller_vat_id": settings.BILLING_SELLER_VAT_ID,
        "seller_email": settings.BILLING_SELLER_EMAIL,
    }


def _buyer_snapshot(user) -> dict[str, object]:
    """Copy the buyer's billing profile; without one the invoice is made out to the account's email."""
    snapshot: dict[str, object] = {"buyer": user, "buyer_email": user.email, "buyer_name": user.email}
    profile = BillingProfile.objects.filter(user=user).first()
    if profile is None:
        return snapshot
    snapshot.update(
        buyer_name=profile.legal_name,
        buyer_address_line1=profile.address_line1,
        buyer_address_line2=profile.address_line2,
        buyer_postal_code=profile.postal_code,
        buyer_city=profile.city,
        buyer_country=profile.country,
        buyer_vat_id=profile.vat_id if profile.is_business else "",
        buyer_is_business=profile.is_business,
    )
    return snapshot


def _period_line(*, description: str, period_start: dt.datetime, period_end: dt.datetime, net: int, tax: int, gross: int) -> dict:
    return {
        "description": description,
        "period_start": period_start.astimezone(dt.UTC).isoformat(),
        "period_end": period_end.astimezone(dt.UTC).isoformat(),
        "net_cents": net,
        "tax_cents": tax,
        "gross_cents": gross,
    }


def invoice_issue_for_payment(*, payment: Payment, issued_at: dt.datetime | None = None) -> Invoice | None:
    """Issue the invoice for a succeeded payment and return it; return the existing one if already issued.

    Returns None for payments of 0 cents (free self-rentals), which get no invoice. Raises
    ValueError for a payment that has not succeeded. `issued_at` defaults to now; its calendar
    year (UTC) picks the number series, and callers other than tests should leave it unset.
    """
    if payment.amount_cents == 0 or payment.method == PaymentMethod.FREE:
        return None
    with transaction.atomic():
        # The payment row lock makes concurrent calls for one payment wait, then find the invoice.
        payment = Payment.objects.select_for_update().get(pk=payment.pk)
        existing = Invoice.objects.filter(payment=payment).first()
        if existing is not None:
            return existing
        if payment.status not in _PAID_STATUSES:
            raise ValueError(f"Payment {payment.pk} is {payment.status}; only a payment that succeeded gets an invoice.")

        contract = payment.contract
        issued_at = issued_at or timezone.now()
        year = issued_at.astimezone(dt.UTC).year
        # Sandbox payments and Stripe test-mode payments move no real money.
        is_sandbox = payment.method == PaymentMethod.SANDBOX or not payment.livemode
        series = DocumentSeries.SANDBOX_INVOICE if is_sandbox else DocumentSeries.INVOICE
        seller = _seller_snapshot()
        buyer = _buyer_snapshot(contract.tenant)
        reverse_charge = reverse_charge_applies(
            buyer_is_business=bool(buyer.get("buyer_is_business")),
            buyer_vat_id=str(buyer.get("buyer_vat_id", "")),
            buyer_country=str(buyer.get("buyer_country", "")),
            seller_country=seller["seller_country"],
        )
        split = tax_for_payment(
            gross_cents=payment.amount_cents,
            processor_tax_cents=payment.processor_tax_cents,
            configured_rate_bps=settings.BILLING_TAX_RATE_BPS,
            reverse_charge=reverse_charge,
            payment_id=payment.pk,
        )
        notes = []
        if split.reverse_charge:
            notes.append(REVERSE_CHARGE_NOTE)
        if is_sandbox:
            notes.append(SANDBOX_NOTE)

        sequence = _next_sequence(series=series, year=year)
        invoice = Invoice.objects.create(
            number=document_number(series=series, year=year, sequence=sequence),
            series=series,
            year=year,
            sequence=sequence,
            issued_at=issued_at,
            is_sandbox=is_sandbox,
            payment=payment,
            **seller,
            **buyer,
            currency=payment.currency,
            net_cents=split.net_cents,
            tax_cents=split.tax_cents,
            gross_cents=split.gross_cents,
            tax_rate_bps=split.rate_bps,
            tax_source=split.source,
            reverse_charge=split.reverse_charge,
            notes="\n".join(notes),
            lines=[
                _period_line(
                    description=contract.offering_name,
                    period_start=payment.period_start,
                    period_end=payment.period_end,
                    net=split.net_cents,
                    tax=split.tax_cents,
                    gross=split.gross_cents,
                )
            ],
        )
    logger.info(
        "Invoice %s issued for payment %s of contract %s: %s %s gross, %s tax (%s)",
        invoice.number, payment.pk, contract.pk, invoice.gross_cents, invoice.currency, invoice.tax_cents, invoice.tax_source,
    )
    return invoice


def credit_note_issue_for_refund(*, refund: Refund, issued_at: dt.datetime | None = None) -> CreditNote | None:
    """Issue the credit note for a succeeded refund and return it; return the existing one if already issued.

    The credit note references the invoice of the refunded payment (issued first if missing)
    and mirrors its net/tax split with negative amounts, allocated so that the credit notes of
    one invoice never credit more tax than it charged. Returns None for a refund of 0 cents.
    Raises ValueError for a refund that has not succeeded or exceeds what is left to refund.
    """
    if refund.amount_cents == 0:
        return None
    with transaction.atomic():
        # Payment before refund, the order payment_refund_contract locks them in.
        Payment.objects.select_for_update().filter(pk=refund.payment_id).first()
        refund = Refund.objects.select_for_update(of=("self",)).select_related("payment").get(pk=refund.pk)
        existing = CreditNote.objects.filter(refund=refund).first()
        if existing is not None:
            return existing
        if refund.status != Refund.Status.SUCCEEDED:
            raise ValueError(f"Refund {refund.pk} is {refund.status}; only a refund that succeeded gets a credit note.")
        invoice = invoice_issue_for_payment(payment=refund.payment)
        if invoice is None:
            return None

        earlier = CreditNote.objects.filter(invoice=invoice).aggregate(gross=Sum("gross_cents"), tax=Sum("tax_cents"))
        tax = credit_share(
            total_cents=invoice.tax_cents,
            credited_before_cents=-(earlier["tax"] or 0),
            refunded_before_cents=-(earlier["gross"] or 0),
            refund_cents=refund.amount_cents,
            gross_cents=invoice.gross_cents,
        )
        gross = refund.amount_cents
        net = gross - tax

        issued_at = issued_at or timezone.now()
        year = issued_at.astimezone(dt.UTC).year
        series = DocumentSeries.SANDBOX_CREDIT_NOTE if invoice.is_sandbox else DocumentSeries.CREDIT_NOTE
        notes = [f"Credit note for invoice {invoice.number}."]
        if invoice.reverse_charge:
            notes.append(REVERSE_CHARGE_NOTE)
        if invoice.is_sandbox:
            notes.append(SANDBOX_NOTE)
        invoice_line = invoice.lines[0] if invoice.lines else {}
        party_fields = {
            name: getattr(invoice, name)
            for name in (
                "seller_name", "seller_address", "seller_country", "seller_vat_id", "seller_email",
                "buyer_name", "buyer_email", "buyer_address_line1", "buyer_address_line2", "buyer_postal_code",
                "buyer_city", "buyer_country", "buyer_vat_id", "buyer_is_business",
            )
        }

        sequence = _next_sequence(series=series, year=year)
        credit_note = CreditNote.objects.create(
            number=document_number(series=series, year=year, sequence=sequence),
            series=series,
            year=year,
            sequence=sequence,
            issued_at=issued_at,
            is_sandbox=invoice.is_sandbox,
            refund=refund,
            invoice=invoice,
            buyer_id=invoice.buyer_id,
            **party_fields,
            currency=invoice.currency,
            net_cents=-net,
            tax_cents=-tax,
            gross_cents=-gross,
            tax_rate_bps=invoice.tax_rate_bps,
            tax_source=invoice.tax_source,
            reverse_charge=invoice.reverse_charge,
            notes="\n".join(notes),
            lines=[
                {
                    **invoice_line,
                    "description": f"Refund: {invoice_line.get('description', invoice.number)}",
                    "net_cents": -net,
                    "tax_cents": -tax,
                    "gross_cents": -gross,
                }
            ],
        )
    logger.info(
        "Credit note %s issued for refund %s of payment %s (invoice %s): %s %s gross",
        credit_note.number, refund.pk, refund.payment_id, invoice.number, credit_note.gross_cents, credit_note.currency,
    )
    return credit_note
