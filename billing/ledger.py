"""The commission split and the append-only ledger of who earned what from each payment."""

from __future__ import annotations

from dataclasses import dataclass

from billing.models import LedgerEntry, LedgerParty, Payment, Refund

BASIS_POINTS = 10_000


@dataclass(frozen=True)
class Split:
    """Shares of one amount in cents; they always sum to the amount."""

    platform: int
    provider: int
    author: int


def split_amount(*, amount_cents: int, platform_bps: int, author_bps: int) -> Split:
    """Split `amount_cents` into platform, author and provider shares with integer arithmetic.

    The platform and author shares are rounded down; the provider gets the remainder, so the
    three always sum to the amount exactly. Works for negative amounts (refund reversals) by
    splitting the absolute value and negating each share.
    """
    if not 0 <= platform_bps <= BASIS_POINTS or not 0 <= author_bps <= BASIS_POINTS - platform_bps:
        raise ValueError(
            f"Invalid commission rates: platform {platform_bps} and author {author_bps} basis points; "
            f"each must be at least 0 and together at most {BASIS_POINTS}."
        )
    sign = -1 if amount_cents < 0 else 1
    magnitude = abs(amount_cents)
    platform = magnitude * platform_bps // BASIS_POINTS
    author = magnitude * author_bps // BASIS_POINTS
    provider = magnitude - platform - author
    return Split(platform=sign * platform, provider=sign * provider, author=sign * author)


def _entries(*, payment: Payment, amount_cents: int, refund: Refund | None) -> list[LedgerEntry]:
    contract = payment.contract
    split = split_amount(
        amount_cents=amount_cents, platform_bps=contract.commission_bps, author_bps=contract.author_share_bps
    )
    author = contract.recipe_version.recipe.author if contract.author_share_bps and contract.recipe_version_id else None
    rows = [
        (LedgerParty.PLATFORM, None, split.platform),
        (LedgerParty.PROVIDER, contract.provider.user, split.provider),
        (LedgerParty.AUTHOR, author, split.author),
    ]
    return [
        LedgerEntry(
            payment=payment,
            refund=refund,
            contract=contract,
            party=party,
            beneficiary=beneficiary,
            amount_cents=amount,
            currency=payment.currency,
            period_start=payment.period_start,
            period_end=payment.period_end,
        )
        for party, beneficiary, amount in rows
        if amount or party == LedgerParty.PROVIDER
    ]


def ledger_record_payment(*, payment: Payment) -> list[LedgerEntry]:
    """Write the split of a succeeded payment; free payments (0 cents) write nothing."""
    if payment.amount_cents == 0:
        return []
    return LedgerEntry.objects.bulk_create(_entries(payment=payment, amount_cents=payment.amount_cents, refund=None))


def ledger_record_refund(*, refund: Refund) -> list[LedgerEntry]:
    """Reverse the split of a refunded amount with negative entries."""
    if refund.amount_cents == 0:
        return []
    return LedgerEntry.objects.bulk_create(
        _entries(payment=refund.payment, amount_cents=-refund.amount_cents, refund=refund)
    )
