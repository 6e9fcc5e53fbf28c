"""Tax on invoices: split a tax-inclusive amount into net and tax, and decide the reverse charge.

Prices are tax-inclusive: the amount charged is the gross. All arithmetic is on integer cents.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from billing.models import TaxSource
from billing.vat import is_eu_country, vat_country, vat_id_is_valid

logger = logging.getLogger(__name__)

BASIS_POINTS = 10_000

REVERSE_CHARGE_NOTE = (
    "Reverse charge: VAT to be accounted for by the recipient (Article 196, Council Directive 2006/112/EC)."
)


@dataclass(frozen=True)
class TaxSplit:
    """A gross amount in cents split into net and tax; net + tax == gross."""

    net_cents: int
    tax_cents: int
    gross_cents: int
    rate_bps: int
    source: str
    reverse_charge: bool = False


def split_inclusive(*, gross_cents: int, rate_bps: int) -> tuple[int, int]:
    """Split a non-negative tax-inclusive `gross_cents` at `rate_bps` into (net, tax), rounding net half up.

    net = gross * 10000 / (10000 + rate), rounded to the nearest cent, and tax = gross - net,
    so the two always sum to gross exactly.
    """
    if gross_cents < 0:
        raise ValueError(f"Invalid gross amount {gross_cents}: expected 0 or more cents.")
    if not 0 <= rate_bps <= BASIS_POINTS:
        raise ValueError(f"Invalid tax rate {rate_bps} basis points: expected 0 to {BASIS_POINTS}.")
    divisor = BASIS_POINTS + rate_bps
    net = (2 * gross_cents * BASIS_POINTS + divisor) // (2 * divisor)
    return net, gross_cents - net


def reverse_charge_applies(*, buyer_is_business: bool, buyer_vat_id: str, buyer_country: str, seller_country: str) -> bool:
    """Return whether an EU business buyer in another member state than the seller accounts for the VAT.

    The buyer needs a VAT id of valid format whose member state is the buyer's country.
    """
    if not (buyer_is_business and buyer_vat_id and vat_id_is_valid(buyer_vat_id)):
        return False
    if vat_country(buyer_vat_id) != buyer_country:
        return False
    return is_eu_country(buyer_country) and is_eu_country(seller_country) and buyer_country != seller_country


def tax_for_payment(
    *,
    gross_cents: int,
    processor_tax_cents: int | None,
    configured_rate_bps: int,
    reverse_charge: bool,
    payment_id: int | None = None,
) -> TaxSplit:
    """Return the tax split of a payment of `gross_cents`.

    Tax computed by the payment processor (Stripe Tax) wins, because it is what the buyer was
    charged. Otherwise a reverse-charge sale carries no tax, and any other sale is split at the
    configured rate.
    """
    if processor_tax_cents is not None:
        if not 0 <= processor_tax_cents <= gross_cents:
            raise ValueError(
                f"Invalid processor tax {processor_tax_cents} cents on payment {payment_id}: "
                f"expected 0 to the gross amount {gross_cents}."
            )
        net = gross_cents - processor_tax_cents
        rate = (2 * processor_tax_cents * BASIS_POINTS + net) // (2 * net) if net else 0
        if reverse_charge and processor_tax_cents:
            # NOTE: the processor charged tax although the buyer qualifies for the reverse charge
            # (for example Stripe was not sent the VAT id), so the invoice shows the tax charged.
            logger.warning(
                "Payment %s: processor charged %s cents tax on a reverse-charge sale; invoicing the tax charged",
                payment_id, processor_tax_cents,
            )
        return TaxSplit(
            net_cents=net,
            tax_cents=processor_tax_cents,
            gross_cents=gross_cents,
            rate_bps=rate,
            source=TaxSource.PROCESSOR,
            reverse_charge=reverse_charge and processor_tax_cents == 0,
        )
    if reverse_charge:
        return TaxSplit(
            net_cents=gross_cents, tax_cents=0, gross_cents=gross_cents, rate_bps=0,
            source=TaxSource.REVERSE_CHARGE, reverse_charge=True,
        )
    net, tax = split_inclusive(gross_cents=gross_cents, rate_bps=configured_rate_bps)
    return TaxSplit(
        net_cents=net, tax_cents=tax, gross_cents=gross_cents, rate_bps=configured_rate_bps,
        source=TaxSource.CONFIGURED_RATE,
    )


def credit_share(*, total_cents: int, credited_before_cents: int, refunded_before_cents: int, refund_cents: int, gross_cents: int) -> int:
    """Return the part of `total_cents` (an invoice's tax) to credit for a refund of `refund_cents`.

    Allocates on the cumulative refunded amount, rounding half up, minus what earlier credit
    notes already credited. So several partial refunds that add up to the gross credit exactly
    the invoice's total, never a cent more or less.
    """
    refunded_after = refunded_before_cents + refund_cents
    if gross_cents <= 0 or not 0 < refunded_after <= gross_cents:
        raise ValueError(
            f"Invalid refund of {refund_cents} cents after {refunded_before_cents} cents already refunded: "
            f"the invoice's gross is {gross_cents} cents."
        )
    due_after = (2 * total_cents * refunded_after + gross_cents) // (2 * gross_cents)
    return due_after - credited_before_cents
