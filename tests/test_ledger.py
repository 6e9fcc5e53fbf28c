"""Commission split and ledger: integer shares that always sum to what was charged."""

from __future__ import annotations

import pytest
from django.db.models import Sum
from hypothesis import given
from hypothesis import strategies as st

from billing.ledger import BASIS_POINTS, split_amount
from billing.models import LedgerEntry
from marketplace.services import contracts as contract_services
from provisioning.models import Backend
from recipes.models import Recipe, RecipeVersion
from tests.journeys import make_offering, make_provider, make_tenant


@st.composite
def rates(draw):
    platform = draw(st.integers(min_value=0, max_value=BASIS_POINTS))
    author = draw(st.integers(min_value=0, max_value=BASIS_POINTS - platform))
    return platform, author


@given(amount=st.integers(min_value=-10**12, max_value=10**12), rates=rates())
def test_split_sums_to_amount(amount, rates):
    platform_bps, author_bps = rates

    split = split_amount(amount_cents=amount, platform_bps=platform_bps, author_bps=author_bps)

    assert split.platform + split.provider + split.author == amount
    assert split_amount(amount_cents=-amount, platform_bps=platform_bps, author_bps=author_bps) == type(split)(
        platform=-split.platform, provider=-split.provider, author=-split.author
    )


def test_split_default_rates():
    split = split_amount(amount_cents=574, platform_bps=2000, author_bps=500)

    assert split.platform == 114
    assert split.author == 28
    assert split.provider == 432


@pytest.mark.parametrize(("platform_bps", "author_bps"), [(-1, 0), (10_001, 0), (6_000, 5_000)])
def test_split_rejects_bad_rates(platform_bps, author_bps):
    with pytest.raises(ValueError, match="Invalid commission rates"):
        split_amount(amount_cents=100, platform_bps=platform_bps, author_bps=author_bps)


@pytest.mark.django_db
def test_ledger_payment_and_refund_sum():
    provider, account = make_provider(backend=Backend.SANDBOX)
    author, _ = make_tenant(email="author@example.com")
    recipe = Recipe.objects.create(author=author, name="Community nginx", slug="community-nginx")
    version = RecipeVersion.objects.create(recipe=recipe, number=1, script="echo hi\n")
    offering = make_offering(account=account, script=None, slug="ledger-vm")
    offering.recipe_version = version
    offering.save()
    tenant, key = make_tenant()
    contract, _ = contract_services.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=key, idempotency_key="ledger-1"
    )

    contract = contract_services.contract_pay(contract=contract, actor=tenant)
    charged = LedgerEntry.objects.filter(contract=contract)
    shares = {entry.party: entry for entry in charged}

    assert charged.aggregate(total=Sum("amount_cents"))["total"] == contract.price_cents
    assert shares["platform"].amount_cents == 114
    assert shares["author"].beneficiary == author
    assert shares["author"].amount_cents == 28
    assert shares["provider"].beneficiary == provider
    assert shares["provider"].amount_cents == 432

    contract_services.contract_fail(contract_id=contract.pk, reason="Recipe failed.")

    assert LedgerEntry.objects.filter(contract=contract).aggregate(total=Sum("amount_cents"))["total"] == 0
    assert LedgerEntry.objects.filter(contract=contract, refund__isnull=False).count() == 3


@pytest.mark.django_db
def test_ledger_no_author_share_for_own_recipe():
    _, account = make_provider(backend=Backend.SANDBOX)
    offering = make_offering(account=account, script="echo own\n", slug="own-recipe")
    tenant, key = make_tenant()
    contract, _ = contract_services.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=key, idempotency_key="ledger-2"
    )

    contract = contract_services.contract_pay(contract=contract, actor=tenant)

    assert contract.author_share_bps == 0
    assert set(LedgerEntry.objects.filter(contract=contract).values_list("party", flat=True)) == {"platform", "provider"}
