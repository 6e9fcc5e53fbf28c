"""Earnings and payment pages and API: monthly sums with refunds, isolation between users, query counts."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from billing.models import LedgerEntry
from billing.selectors import earnings_statements
from billing.services import payment_collect
from marketplace.services import contracts
from provisioning.models import Backend
from tests.journeys import make_offering, make_provider, make_tenant

pytestmark = pytest.mark.django_db

EARLIER_START = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)
EARLIER_END = dt.datetime(2025, 4, 10, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def billing_data():
    """A sandbox provider with one paid-then-failed (refunded) rental, one paid rental and an earlier period."""
    provider, account = make_provider(email="earner@example.com", backend=Backend.SANDBOX)
    offering = make_offering(account=account, script=None, slug="sandbox-small")
    tenant, public_key = make_tenant(email="payer@example.com")

    kept, _ = contracts.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=public_key, idempotency_key=contracts.new_idempotency_key()
    )
    kept = contracts.contract_pay(contract=kept, actor=tenant)
    payment_collect(contract=kept, period_start=EARLIER_START, period_end=EARLIER_END)

    failed, _ = contracts.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=public_key, idempotency_key=contracts.new_idempotency_key()
    )
    failed = contracts.contract_pay(contract=failed, actor=tenant)
    contracts.contract_fail(contract_id=failed.pk, reason="Simulated boot failure.")

    return {"provider": provider, "tenant": tenant, "offering": offering, "kept": kept, "failed": failed}


def _provider_share() -> int:
    return LedgerEntry.objects.filter(party="provider", amount_cents__gt=0).values_list("amount_cents", flat=True).first()


def test_statements_sum_months_and_refund(billing_data):
    share = _provider_share()
    assert share > 0

    statements = earnings_statements(user=billing_data["provider"])

    assert len(statements) == 2
    current, earlier = statements
    assert current.month > earlier.month
    assert earlier.month == dt.date(2025, 3, 1)
    assert earlier.gross_cents == share
    assert earlier.reversed_cents == 0
    assert earlier.net_cents == share
    assert earlier.entry_count == 1
    assert current.currency == "EUR"
    assert current.gross_cents == 2 * share
    assert current.reversed_cents == -share
    assert current.net_cents == share
    assert current.entry_count == 3


def test_earnings_page_shows_statements_and_month(client, billing_data):
    share = _provider_share()
    client.force_login(billing_data["provider"])

    response = client.get(reverse("billing:earnings"))
    detail = client.get(reverse("billing:earnings"), {"month": "2025-03"})

    assert response.status_code == 200
    assert "March 2025" in response.text
    assert "no real money" in response.text
    assert f"-€{share / 100:.2f}" in response.text
    assert detail.status_code == 200
    assert "Entries for March 2025" in detail.text
    assert "Offering sandbox-small" in detail.text


def test_earnings_page_invalid_month_404(client, billing_data):
    client.force_login(billing_data["provider"])

    response = client.get(reverse("billing:earnings"), {"month": "2025-13"})

    assert response.status_code == 404


def test_earnings_page_query_count(client, billing_data, django_assert_num_queries):
    client.force_login(billing_data["provider"])
    client.get(reverse("billing:earnings"))

    # Session, user, statements aggregate, payouts, month entries.
    with django_assert_num_queries(5):
        response = client.get(reverse("billing:earnings"), {"month": "2025-03"})

    assert response.status_code == 200


def test_payments_page_lists_tenant_payments(client, billing_data):
    client.force_login(billing_data["tenant"])

    response = client.get(reverse("billing:payments"))

    assert response.status_code == 200
    assert response.context["payments"].count() == 3
    assert "Sandbox — no real money" in response.text
    assert "Refunded" in response.text
    assert billing_data["kept"].get_absolute_url() in response.text


def test_other_user_sees_nothing(client, billing_data):
    stranger, _ = make_tenant(email="stranger@example.com")
    client.force_login(stranger)
    api = APIClient()
    api.force_authenticate(stranger)

    earnings_page = client.get(reverse("billing:earnings"))
    payments_page = client.get(reverse("billing:payments"))
    earnings_api = api.get("/api/v1/billing/earnings/")
    payments_api = api.get("/api/v1/billing/payments/")

    assert "No earnings yet" in earnings_page.text
    assert "Offering sandbox-small" not in earnings_page.text
    assert "No payments yet" in payments_page.text
    assert earnings_api.status_code == 200
    assert earnings_api.json() == []
    assert payments_api.status_code == 200
    assert payments_api.json()["count"] == 0


def test_api_returns_own_data(billing_data):
    share = _provider_share()
    provider_api = APIClient()
    provider_api.force_authenticate(billing_data["provider"])
    tenant_api = APIClient()
    tenant_api.force_authenticate(billing_data["tenant"])

    earnings = provider_api.get("/api/v1/billing/earnings/").json()
    payments = tenant_api.get("/api/v1/billing/payments/").json()

    assert [row["month"] for row in earnings][1] == "2025-03"
    assert earnings[0]["net_cents"] == share
    assert earnings[0]["reversed_cents"] == -share
    assert payments["count"] == 3
    assert {row["status"] for row in payments["results"]} == {"succeeded", "refunded"}
    assert all(row["moves_real_money"] is False for row in payments["results"])


def test_anonymous_redirected_or_401(client):
    api = APIClient()

    earnings_page = client.get(reverse("billing:earnings"))
    payments_page = client.get(reverse("billing:payments"))
    earnings_api = api.get("/api/v1/billing/earnings/")
    payments_api = api.get("/api/v1/billing/payments/")

    assert earnings_page.status_code == 302
    assert "/accounts/login/" in earnings_page["Location"]
    assert payments_page.status_code == 302
    assert earnings_api.status_code == 401
    assert payments_api.status_code == 401
