"""Test data for invoices and credit notes: rentals, card payments and refunds written as rows.

Card payments are created directly because the Stripe path that records them is built
separately; the invoicing services only read the payment row.
"""

from __future__ import annotations

import datetime as dt

from billing.models import Payment, PaymentMethod, PaymentStatus, Refund
from marketplace.models import Contract
from marketplace.services import contracts
from provisioning.models import Backend
from tests.journeys import make_offering, make_provider, make_tenant

PERIOD_START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
PERIOD_END = dt.datetime(2026, 4, 1, 12, 0, tzinfo=dt.UTC)


def make_rental(*, tenant_email: str = "buyer@example.com", provider_email: str = "seller@example.com", slug: str = "invoice-vm") -> Contract:
    """Return a requested, unpaid sandbox rental of a 5.74 EUR offering."""
    _provider, account = make_provider(email=provider_email, backend=Backend.SANDBOX)
    offering = make_offering(account=account, script=None, slug=slug)
    tenant, public_key = make_tenant(email=tenant_email)
    contract, _ = contracts.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=public_key, idempotency_key=contracts.new_idempotency_key()
    )
    return contract


def make_card_payment(
    contract: Contract,
    *,
    amount_cents: int = 1190,
    processor_tax_cents: int | None = None,
    status: str = PaymentStatus.SUCCEEDED,
    period_start: dt.datetime = PERIOD_START,
) -> Payment:
    """Record a card payment of `contract` as the Stripe webhook handler would."""
    return Payment.objects.create(
        contract=contract,
        method=PaymentMethod.STRIPE,
        status=status,
        amount_cents=amount_cents,
        currency="EUR",
        period_start=period_start,
        period_end=period_start + dt.timedelta(days=31),
        processor_tax_cents=processor_tax_cents,
    )


def make_succeeded_refund(payment: Payment, *, amount_cents: int) -> Refund:
    return Refund.objects.create(
        payment=payment, amount_cents=amount_cents, status=Refund.Status.SUCCEEDED, reason="Test refund."
    )
