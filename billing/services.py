"""The payment abstraction: collect a period's payment and refund a contract.

Without Stripe configured, payments use the `sandbox` method: they succeed at once and move
no money, and every page that shows them labels them so. Self-rentals use the `free` method and
record a zero amount.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing.gateway import stripe_enabled
from billing.invoicing import credit_note_issue_for_refund, invoice_issue_for_payment
from billing.ledger import ledger_record_payment, ledger_record_refund
from billing.models import Payment, PaymentMethod, PaymentStatus, Refund

logger = logging.getLogger(__name__)


class PaymentFailed(Exception):
    """The payment method declined the charge."""


def payment_method_check(*, offering, tenant) -> str:
    """Return the payment method a rental of `offering` by `tenant` would use, or raise.

    Self-rentals and free offerings are free on every backend. Sandbox offerings create no
    machine and use sandbox payments (no money moves), unless STRIPE_FOR_SANDBOX_OFFERINGS asks
    for card payments there too (a Stripe test-mode demo). Offerings on real clouds need card
    payment through Stripe; without Stripe, renting them is refused unless
    SANDBOX_PAYMENTS_FOR_REAL_BACKENDS is set (development against a fake cloud only).
    """
    if offering.provider.user_id == tenant.pk or offering.price_cents == 0:
        return PaymentMethod.FREE
    is_sandbox = offering.cloud_account.backend == "sandbox"
    if is_sandbox and not (stripe_enabled() and settings.STRIPE_FOR_SANDBOX_OFFERINGS):
        return PaymentMethod.SANDBOX
    if stripe_enabled():
        return PaymentMethod.STRIPE
    if settings.SANDBOX_PAYMENTS_FOR_REAL_BACKENDS:
        return PaymentMethod.SANDBOX
    raise ValidationError(
        "This offering runs on a real cloud and needs card payment, which this installation has not "
        "set up yet. Only Sandbox offerings can be rented for now."
    )


def _method_for(contract) -> str:
    if contract.payment_method:
        return contract.payment_method
    # Rentals made before the method was stored.
    if contract.is_self_rental or contract.price_cents == 0:
        return PaymentMethod.FREE
    return PaymentMethod.SANDBOX


def payment_collect(*, contract, period_start: datetime, period_end: datetime) -> Payment:
    """Record the payment for one billing period of `contract`; sandbox and free succeed at once."""
    method = _method_for(contract)
    if method == PaymentMethod.STRIPE:
        raise PaymentFailed(
            f"Rental {contract.public_id} is paid by card: Stripe collects its payments, the platform does not."
        )
    if method == PaymentMethod.SANDBOX and not contract.is_sandbox and not settings.SANDBOX_PAYMENTS_FOR_REAL_BACKENDS:
        raise PaymentFailed(
            f"Rental {contract.public_id} runs on a real cloud; sandbox payments (no money) no longer pay for it."
        )
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
    """Refund what is left of every succeeded payment of `contract`."""
    payments = Payment.objects.select_for_update().filter(contract=contract, status=PaymentStatus.SUCCEEDED).order_by("pk")
    refunds = [payment_refund(payment=payment, reason=reason) for payment in payments]
    return [refund for refund in refunds if refund is not None]


@transaction.atomic
def payment_refund(*, payment: Payment, reason: str) -> Refund | None:
    """Refund what is left of one payment; None when refunds already cover all of it.

    What is left is the amount minus every refund that succeeded or is still being tried,
    decided under the payment's row lock, so two callers never refund the same money twice.

    A refund row is written first. Sandbox and free payments complete it at once; card payments
    stay `refund_pending` until the Refund API answers (a worker calls it after commit, and a
    periodic task retries failures). A refund is only shown as done when its row succeeded.
    """
    payment = Payment.objects.select_for_update().get(pk=payment.pk)
    covered = sum(
        Refund.objects.filter(
            payment=payment, status__in=[Refund.Status.SUCCEEDED, Refund.Status.PENDING, Refund.Status.FAILED]
        ).values_list("amount_cents", flat=True)
    )
    remaining = payment.amount_cents - covered
    if remaining <= 0 and payment.amount_cents > 0:
        logger.info("Payment %s needs no refund: refunds already cover %s cents", payment.pk, covered)
        return None
    refund = Refund.objects.create(payment=payment, amount_cents=max(remaining, 0), reason=reason[:2000])
    if payment.method in (PaymentMethod.SANDBOX, PaymentMethod.FREE) or payment.amount_cents == 0:
        refund.status = Refund.Status.SUCCEEDED
        refund.reference = f"{payment.reference}-refund"
        refund.save(update_fields=["status", "reference", "updated_at"])
        _refund_succeeded(refund)
        payment.status = PaymentStatus.REFUNDED
    else:
        from billing.tasks import refund_execute_task

        # If the task below is lost (a worker crash before it ran), the retry sweep finds the row.
        refund.next_attempt_at = timezone.now() + timedelta(minutes=5)
        refund.save(update_fields=["next_attempt_at", "updated_at"])
        refund_id = refund.pk
        transaction.on_commit(lambda: refund_execute_task.delay(refund_id))
        payment.status = PaymentStatus.REFUND_PENDING
    payment.save(update_fields=["status", "updated_at"])
    logger.info("Refund %s of payment %s for contract %s: %s", refund.pk, payment.pk, payment.contract_id, refund.status)
    return refund


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
