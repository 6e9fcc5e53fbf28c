"""The payment abstraction: collect a period's payment and refund a contract.

Without Stripe configured, payments use the `sandbox` method: they succeed at once and move
no money, and every page that shows them labels them so. Self-rentals use the `free` method and
record a zero amount.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from billing.invoicing import credit_note_issue_for_refund, invoice_issue_for_payment
from billing.ledger import ledger_record_payment, ledger_record_refund
from billing.models import Payment, PaymentMethod, PaymentStatus, Refund

logger = logging.getLogger(__name__)


class PaymentFailed(Exception):
    """The payment method declined the charge."""


def payment_method_check(*, offering, tenant) -> str:
    """Return the payment method a rental of `offering` by `tenant` would use, or raise.

    Sandbox payments move no money, so they only pay for Sandbox offerings, which create no
    machine. A real backend needs a real payment method; until card payments exist, renting it
    is refused unless SANDBOX_PAYMENTS_FOR_REAL_BACKENDS is set (development against a fake
    cloud only). Self-rentals are free on every backend.
    """
    if offering.provider.user_id == tenant.pk or offering.price_cents == 0:
        return PaymentMethod.FREE
    if offering.cloud_account.backend == "sandbox" or settings.SANDBOX_PAYMENTS_FOR_REAL_BACKENDS:
        return PaymentMethod.SANDBOX
    # TODO: return PaymentMethod.STRIPE once card payments through Stripe exist.
    raise ValidationError(
        "This offering runs on a real cloud and needs card payment, which this installation has not "
        "set up yet. Only Sandbox offerings can be rented for now."
    )


def _method_for(contract) -> str:
    if contract.is_self_rental or contract.price_cents == 0:
        return PaymentMethod.FREE
    if contract.backend == "sandbox" or settings.SANDBOX_PAYMENTS_FOR_REAL_BACKENDS:
        return PaymentMethod.SANDBOX
    raise PaymentFailed(f"Rental {contract.public_id} runs on a real cloud and no real payment method is set up.")


def payment_collect(*, contract, period_start: datetime, period_end: datetime) -> Payment:
    """Record the payment for one billing period of `contract`; sandbox and free succeed at once."""
    method = _method_for(contract)
    amount = 0 if method == PaymentMethod.FREE else contract.price_cents
    payment = Payment.objects.create(
        contract=contract,
        method=method,
        status=PaymentStatus.SUCCEEDED,
        amount_cents=amount,
        currency=contract.currency,
        period_start=period_start,
        period_end=period_end,
        reference=f"{method}-{contract.public_id.hex[:12]}-{period_start:%Y%m%d%H%M%S}",
    )
    _payment_succeeded(payment)
    logger.info("Payment %s collected for contract %s: %s %s via %s", payment.pk, contract.pk, amount, contract.currency, method)
    return payment


@transaction.atomic
def payment_refund_contract(*, contract, reason: str) -> list[Refund]:
    """Refund every succeeded payment of `contract` in full.

    A refund row is written first; the sandbox and free methods complete it at once. A refund
    is only shown as done when its row has status `succeeded`.
    """
    refunds = []
    payments = Payment.objects.select_for_update().filter(contract=contract, status=PaymentStatus.SUCCEEDED).order_by("pk")
    for payment in payments:
        refund = Refund.objects.create(payment=payment, amount_cents=payment.amount_cents, reason=reason[:2000])
        if payment.method in (PaymentMethod.SANDBOX, PaymentMethod.FREE):
            refund.status = Refund.Status.SUCCEEDED
            refund.reference = f"{payment.reference}-refund"
            refund.save(update_fields=["status", "reference", "updated_at"])
            _refund_succeeded(refund)
            payment.status = PaymentStatus.REFUNDED
        else:
            payment.status = PaymentStatus.REFUND_PENDING
        payment.save(update_fields=["status", "updated_at"])
        refunds.append(refund)
        logger.info("Refund %s of payment %s for contract %s: %s", refund.pk, payment.pk, contract.pk, refund.status)
    return refunds


def _payment_succeeded(payment: Payment) -> None:
    """Book a payment that succeeded: its ledger split and its invoice (none for 0 cents)."""
    ledger_record_payment(payment=payment)
    invoice_issue_for_payment(payment=payment)


def _refund_succeeded(refund: Refund) -> None:
    """Book a refund that succeeded: the ledger reversal and its credit note (none for 0 cents)."""
    ledger_record_refund(refund=refund)
    credit_note_issue_for_refund(refund=refund)


def contract_refund_state(contract) -> str:
    """Summarise refunds for display: "", "refunded", "pending" or "failed"."""
    statuses = set(contract.payments.values_list("status", flat=True))
    if PaymentStatus.REFUND_FAILED in statuses:
        return "failed"
    if PaymentStatus.REFUND_PENDING in statuses:
        return "pending"
    if PaymentStatus.REFUNDED in statuses and PaymentStatus.SUCCEEDED not in statuses:
        return "refunded"
    return ""
