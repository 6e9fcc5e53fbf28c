"""Invoices and credit notes: gapless numbering per series and year, immutability, tax, refunds."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from billing.invoicing import SANDBOX_NOTE, credit_note_issue_for_refund, invoice_issue_for_payment
from billing.models import (
    BillingProfile,
    CreditNote,
    DocumentCounter,
    DocumentSeries,
    ImmutableDocumentError,
    Invoice,
    PaymentStatus,
    Refund,
    TaxSource,
)
from billing.tax import REVERSE_CHARGE_NOTE, credit_share, split_inclusive, tax_for_payment
from marketplace.services import contracts
from tests.billing_documents import make_card_payment, make_rental, make_succeeded_refund
from tests.conftest import REPO_ROOT, database_url_for_workers

db = pytest.mark.django_db


def _sequence_numbers(series: str, year: int) -> list[int]:
    return sorted(Invoice.objects.filter(series=series, year=year).values_list("sequence", flat=True))


# --- series and numbering -----------------------------------------------------------------------


@db
def test_sandbox_payment_gets_test_invoice():
    contract = make_rental()

    contracts.contract_pay(contract=contract, actor=contract.tenant)
    invoice = Invoice.objects.get()

    year = timezone.now().year
    assert invoice.number == f"TEST-{year}-000001"
    assert invoice.series == DocumentSeries.SANDBOX_INVOICE
    assert invoice.is_sandbox
    assert SANDBOX_NOTE in invoice.notes
    assert "Sandbox: no money was charged" in invoice.notes
    assert invoice.gross_cents == 574
    assert invoice.payment.contract == contract
    assert invoice.buyer == contract.tenant
    assert not DocumentCounter.objects.filter(series=DocumentSeries.INVOICE).exists()


@db
def test_free_self_rental_gets_no_invoice():
    contract = make_rental()
    own = contracts.contract_create(
        tenant=contract.provider.user,
        offering=contract.offering,
        ssh_public_key=contract.ssh_public_key,
        idempotency_key=contracts.new_idempotency_key(),
    )[0]

    contracts.contract_pay(contract=own, actor=own.tenant)

    assert own.payments.get().amount_cents == 0
    assert not Invoice.objects.exists()


@db
def test_sandbox_and_card_series_are_separate():
    contract = make_rental()
    contracts.contract_pay(contract=contract, actor=contract.tenant)
    year = timezone.now().year

    card = [invoice_issue_for_payment(payment=make_card_payment(contract)) for _ in range(3)]

    assert [invoice.number for invoice in card] == [f"{year}-000001", f"{year}-000002", f"{year}-000003"]
    assert all(not invoice.is_sandbox for invoice in card)
    assert all(SANDBOX_NOTE not in invoice.notes for invoice in card)
    assert Invoice.objects.filter(is_sandbox=True).get().number == f"TEST-{year}-000001"


@db
def test_numbering_restarts_each_utc_year():
    contract = make_rental()
    december = dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    # 00:30 on 1 January in UTC+01:00 is still 31 December in UTC.
    new_year_in_berlin = dt.datetime(2027, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    january = dt.datetime(2027, 1, 1, 0, 0, tzinfo=dt.UTC)

    first = invoice_issue_for_payment(payment=make_card_payment(contract), issued_at=december)
    second = invoice_issue_for_payment(payment=make_card_payment(contract), issued_at=new_year_in_berlin)
    third = invoice_issue_for_payment(payment=make_card_payment(contract), issued_at=january)
    fourth = invoice_issue_for_payment(payment=make_card_payment(contract), issued_at=january)

    assert first.number == "2026-000001"
    assert second.number == "2026-000002"
    assert third.number == "2027-000001"
    assert fourth.number == "2027-000002"
    assert DocumentCounter.objects.get(series=DocumentSeries.INVOICE, year=2026).last_sequence == 2
    assert DocumentCounter.objects.get(series=DocumentSeries.INVOICE, year=2027).last_sequence == 2


@db
def test_issue_is_idempotent():
    payment = make_card_payment(make_rental())

    first = invoice_issue_for_payment(payment=payment)
    second = invoice_issue_for_payment(payment=payment)

    assert first.pk == second.pk
    assert Invoice.objects.count() == 1
    assert DocumentCounter.objects.get(series=DocumentSeries.INVOICE).last_sequence == 1


@db
def test_rolled_back_issue_leaves_no_gap():
    contract = make_rental()
    rolled_back = make_card_payment(contract)
    next_payment = make_card_payment(contract)

    with pytest.raises(RuntimeError, match="simulated crash"), transaction.atomic():
        invoice_issue_for_payment(payment=rolled_back)
        raise RuntimeError("simulated crash after issuing")
    invoice = invoice_issue_for_payment(payment=next_payment)

    assert invoice.sequence == 1
    assert not Invoice.objects.filter(payment=rolled_back).exists()


@db
@pytest.mark.parametrize("status", [PaymentStatus.PENDING, PaymentStatus.FAILED])
def test_unpaid_payment_rejected(status):
    payment = make_card_payment(make_rental(), status=status)

    with pytest.raises(ValueError, match="only a payment that succeeded"):
        invoice_issue_for_payment(payment=payment)

    assert not Invoice.objects.exists()


# --- immutability ------------------------------------------------------------------------------


@db
def test_issued_invoice_cannot_change():
    invoice = invoice_issue_for_payment(payment=make_card_payment(make_rental()))

    invoice.gross_cents = 1
    with pytest.raises(ImmutableDocumentError, match="cannot be changed"):
        invoice.save()
    with pytest.raises(ImmutableDocumentError, match="cannot be deleted"):
        invoice.delete()
    with pytest.raises(ImmutableDocumentError, match="update"):
        Invoice.objects.filter(pk=invoice.pk).update(gross_cents=1)
    with pytest.raises(ImmutableDocumentError, match="delete"):
        Invoice.objects.filter(pk=invoice.pk).delete()

    assert Invoice.objects.get(pk=invoice.pk).gross_cents == 1190


@db
def test_issued_credit_note_cannot_change():
    payment = make_card_payment(make_rental())
    credit_note = credit_note_issue_for_refund(refund=make_succeeded_refund(payment, amount_cents=1190))

    credit_note.notes = "edited"
    with pytest.raises(ImmutableDocumentError):
        credit_note.save()
    with pytest.raises(ImmutableDocumentError):
        credit_note.delete()
    with pytest.raises(ImmutableDocumentError):
        CreditNote.objects.all().update(notes="edited")

    assert CreditNote.objects.get().notes.startswith("Credit note for invoice")


@db
def test_profile_change_keeps_issued_invoice():
    contract = make_rental(tenant_email="snapshot@example.com")
    before = invoice_issue_for_payment(payment=make_card_payment(contract))
    BillingProfile.objects.create(
        user=contract.tenant, legal_name="Łódź Müller 東京", address_line1="ul. Piotrkowska 1", postal_code="90-001",
        city="Łódź", country="PL",
    )

    after = invoice_issue_for_payment(payment=make_card_payment(contract))
    before.refresh_from_db()

    assert before.buyer_name == "snapshot@example.com"
    assert before.buyer_country == ""
    assert after.buyer_name == "Łódź Müller 東京"
    assert after.buyer_address_lines == ["ul. Piotrkowska 1", "90-001 Łódź", "PL"]
    assert after.buyer_email == "snapshot@example.com"


@db
def test_seller_snapshot_from_settings(settings):
    settings.BILLING_SELLER_NAME = "Cloudmarket GmbH"
    settings.BILLING_SELLER_ADDRESS = "Hauptstraße 1\n10115 Berlin"
    settings.BILLING_SELLER_VAT_ID = "DE123456789"
    settings.BILLING_SELLER_EMAIL = "billing@example.com"

    invoice = invoice_issue_for_payment(payment=make_card_payment(make_rental()))
    settings.BILLING_SELLER_NAME = "Renamed Ltd"
    invoice.refresh_from_db()

    assert invoice.seller_name == "Cloudmarket GmbH"
    assert invoice.seller_address_lines == ["Hauptstraße 1", "10115 Berlin", "DE"]
    assert invoice.seller_vat_id == "DE123456789"
    assert invoice.seller_email == "billing@example.com"


@db
def test_invoice_line_has_offering_and_period():
    contract = make_rental()

    invoice = invoice_issue_for_payment(payment=make_card_payment(contract))

    assert invoice.lines == [
        {
            "description": contract.offering_name,
            "period_start": "2026-03-01T12:00:00+00:00",
            "period_end": "2026-04-01T12:00:00+00:00",
            "net_cents": 1190,
            "tax_cents": 0,
            "gross_cents": 1190,
        }
    ]


# --- tax ---------------------------------------------------------------------------------------


@given(gross=st.integers(min_value=0, max_value=10**12), rate=st.integers(min_value=0, max_value=10_000))
def test_split_inclusive_sums_exactly(gross, rate):
    net, tax = split_inclusive(gross_cents=gross, rate_bps=rate)

    assert net + tax == gross
    assert 0 <= tax <= gross
    # net is the exact quotient gross / (1 + rate) rounded to the nearest cent.
    assert abs(2 * net * (10_000 + rate) - 2 * gross * 10_000) <= 10_000 + rate


@pytest.mark.parametrize(
    ("gross", "rate", "net", "tax"),
    [(1190, 1900, 1000, 190), (574, 1900, 482, 92), (1, 1900, 1, 0), (0, 1900, 0, 0), (1000, 0, 1000, 0), (107, 700, 100, 7)],
)
def test_split_inclusive_examples(gross, rate, net, tax):
    assert split_inclusive(gross_cents=gross, rate_bps=rate) == (net, tax)


@pytest.mark.parametrize(("gross", "rate"), [(-1, 1900), (100, -1), (100, 10_001)])
def test_split_inclusive_rejects_bad_input(gross, rate):
    with pytest.raises(ValueError, match="Invalid"):
        split_inclusive(gross_cents=gross, rate_bps=rate)


@given(
    gross=st.integers(min_value=1, max_value=10**9),
    tax_share=st.floats(min_value=0, max_value=0.5),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=6),
)
def test_partial_credits_sum_to_invoice(gross, tax_share, cuts):
    tax_total = int(gross * tax_share)
    points = sorted({0, gross, *(int(gross * cut) for cut in cuts)})
    refunds = [high - low for low, high in zip(points, points[1:], strict=False) if high > low]

    credited = 0
    refunded = 0
    for refund in refunds:
        share = credit_share(
            total_cents=tax_total, credited_before_cents=credited, refunded_before_cents=refunded,
            refund_cents=refund, gross_cents=gross,
        )
        assert 0 <= share <= refund
        credited += share
        refunded += refund

    assert refunded == gross
    assert credited == tax_total


def test_credit_share_rejects_over_refund():
    with pytest.raises(ValueError, match="already refunded"):
        credit_share(total_cents=190, credited_before_cents=190, refunded_before_cents=1190, refund_cents=1, gross_cents=1190)


def test_processor_tax_wins():
    split = tax_for_payment(gross_cents=1190, processor_tax_cents=190, configured_rate_bps=700, reverse_charge=False)

    assert (split.net_cents, split.tax_cents, split.gross_cents) == (1000, 190, 1190)
    assert split.rate_bps == 1900
    assert split.source == TaxSource.PROCESSOR


def test_processor_tax_out_of_range_rejected():
    with pytest.raises(ValueError, match="Invalid processor tax"):
        tax_for_payment(gross_cents=100, processor_tax_cents=101, configured_rate_bps=0, reverse_charge=False)


@db
def test_configured_rate_splits_invoice(settings):
    settings.BILLING_TAX_RATE_BPS = 1900

    invoice = invoice_issue_for_payment(payment=make_card_payment(make_rental(), amount_cents=1190))

    assert (invoice.net_cents, invoice.tax_cents, invoice.gross_cents) == (1000, 190, 1190)
    assert invoice.tax_rate_bps == 1900
    assert invoice.tax_source == TaxSource.CONFIGURED_RATE
    assert not invoice.reverse_charge
    assert invoice.lines[0]["tax_cents"] == 190


@db
def test_processor_tax_on_invoice(settings):
    settings.BILLING_TAX_RATE_BPS = 700

    invoice = invoice_issue_for_payment(payment=make_card_payment(make_rental(), amount_cents=2380, processor_tax_cents=380))

    assert (invoice.net_cents, invoice.tax_cents) == (2000, 380)
    assert invoice.tax_rate_bps == 1900
    assert invoice.tax_source == TaxSource.PROCESSOR


def _business_profile(user, *, country: str, vat_id: str, is_business: bool = True) -> BillingProfile:
    # Written directly, without the form's checks, to show what issuing does with a bad profile.
    return BillingProfile.objects.create(
        user=user, legal_name="Société Exemple SARL", address_line1="1 rue de la Paix", postal_code="75002",
        city="Paris", country=country, is_business=is_business, vat_id=vat_id,
    )


@db
@pytest.mark.parametrize(
    ("country", "vat_id", "is_business", "seller_country", "reverse_charge"),
    [
        ("FR", "FR12345678901", True, "DE", True),
        ("FR", "FRXX345678901", True, "DE", True),
        ("GR", "EL123456789", True, "DE", True),
        ("DE", "DE123456789", True, "DE", False),
        ("DE", "DE123456789", True, "FR", True),
        ("DE", "DE12345", True, "FR", False),
        ("FR", "FR12345678901", False, "DE", False),
        ("FR", "FR12345678901", True, "US", False),
        ("FR", "DE123456789", True, "AT", False),
        ("CH", "CHE123456789", True, "DE", False),
    ],
)
def test_reverse_charge_rules(settings, country, vat_id, is_business, seller_country, reverse_charge):
    settings.BILLING_TAX_RATE_BPS = 1900
    settings.BILLING_SELLER_COUNTRY = seller_country
    contract = make_rental()
    _business_profile(contract.tenant, country=country, vat_id=vat_id, is_business=is_business)

    invoice = invoice_issue_for_payment(payment=make_card_payment(contract, amount_cents=1190))

    assert invoice.reverse_charge is reverse_charge
    if reverse_charge:
        assert (invoice.net_cents, invoice.tax_cents, invoice.tax_rate_bps) == (1190, 0, 0)
        assert invoice.tax_source == TaxSource.REVERSE_CHARGE
        assert REVERSE_CHARGE_NOTE in invoice.notes
        assert invoice.buyer_vat_id == vat_id
    else:
        assert (invoice.net_cents, invoice.tax_cents) == (1000, 190)
        assert REVERSE_CHARGE_NOTE not in invoice.notes


def test_reverse_charge_note_text():
    assert REVERSE_CHARGE_NOTE == (
        "Reverse charge: VAT to be accounted for by the recipient (Article 196, Council Directive 2006/112/EC)."
    )


@db
def test_processor_tax_overrides_reverse_charge(settings):
    settings.BILLING_SELLER_COUNTRY = "DE"
    contract = make_rental()
    _business_profile(contract.tenant, country="FR", vat_id="FR12345678901")

    charged = invoice_issue_for_payment(payment=make_card_payment(contract, amount_cents=1200, processor_tax_cents=200))
    exempt = invoice_issue_for_payment(payment=make_card_payment(contract, amount_cents=1200, processor_tax_cents=0))

    assert charged.tax_cents == 200
    assert not charged.reverse_charge
    assert exempt.tax_cents == 0
    assert exempt.reverse_charge
    assert REVERSE_CHARGE_NOTE in exempt.notes


# --- credit notes ------------------------------------------------------------------------------


@db
def test_full_refund_credit_note_mirrors_invoice(settings):
    settings.BILLING_TAX_RATE_BPS = 1900
    payment = make_card_payment(make_rental(), amount_cents=1190)
    invoice = invoice_issue_for_payment(payment=payment)

    credit_note = credit_note_issue_for_refund(refund=make_succeeded_refund(payment, amount_cents=1190))

    year = timezone.now().year
    assert credit_note.number == f"CN-{year}-000001"
    assert credit_note.invoice == invoice
    assert (credit_note.net_cents, credit_note.tax_cents, credit_note.gross_cents) == (-1000, -190, -1190)
    assert credit_note.tax_rate_bps == invoice.tax_rate_bps
    assert credit_note.buyer == invoice.buyer
    assert credit_note.buyer_name == invoice.buyer_name
    assert credit_note.lines[0]["gross_cents"] == -1190
    assert credit_note.lines[0]["description"] == f"Refund: {invoice.lines[0]['description']}"
    assert f"Credit note for invoice {invoice.number}." in credit_note.notes


@db
def test_partial_refunds_credit_exactly_the_invoice(settings):
    settings.BILLING_TAX_RATE_BPS = 1900
    payment = make_card_payment(make_rental(), amount_cents=1000)
    invoice = invoice_issue_for_payment(payment=payment)

    notes = [
        credit_note_issue_for_refund(refund=make_succeeded_refund(payment, amount_cents=amount))
        for amount in (333, 333, 334)
    ]

    assert invoice.tax_cents == 160
    assert [note.sequence for note in notes] == [1, 2, 3]
    assert sum(note.gross_cents for note in notes) == -invoice.gross_cents
    assert sum(note.tax_cents for note in notes) == -invoice.tax_cents
    assert sum(note.net_cents for note in notes) == -invoice.net_cents
    for note in notes:
        assert note.net_cents + note.tax_cents == note.gross_cents


@db
def test_refund_beyond_invoice_rejected():
    payment = make_card_payment(make_rental(), amount_cents=500)
    credit_note_issue_for_refund(refund=make_succeeded_refund(payment, amount_cents=500))

    with pytest.raises(ValueError, match="already refunded"):
        credit_note_issue_for_refund(refund=make_succeeded_refund(payment, amount_cents=1))

    assert CreditNote.objects.count() == 1


@db
def test_credit_note_is_idempotent():
    payment = make_card_payment(make_rental())
    refund = make_succeeded_refund(payment, amount_cents=1190)

    first = credit_note_issue_for_refund(refund=refund)
    second = credit_note_issue_for_refund(refund=refund)

    assert first.pk == second.pk
    assert CreditNote.objects.count() == 1


@db
def test_pending_refund_gets_no_credit_note():
    payment = make_card_payment(make_rental())
    refund = Refund.objects.create(payment=payment, amount_cents=1190, reason="Waiting for Stripe.")

    with pytest.raises(ValueError, match="only a refund that succeeded"):
        credit_note_issue_for_refund(refund=refund)

    assert not CreditNote.objects.exists()


@db
def test_refund_of_uninvoiced_payment_issues_invoice_first():
    payment = make_card_payment(make_rental())

    credit_note = credit_note_issue_for_refund(refund=make_succeeded_refund(payment, amount_cents=1190))

    assert credit_note.invoice == Invoice.objects.get(payment=payment)


@db
def test_failed_sandbox_rental_gets_test_credit_note():
    contract = make_rental()
    contract = contracts.contract_pay(contract=contract, actor=contract.tenant)

    contracts.contract_fail(contract_id=contract.pk, reason="Simulated boot failure.")

    year = timezone.now().year
    credit_note = CreditNote.objects.get()
    assert credit_note.number == f"TEST-CN-{year}-000001"
    assert credit_note.is_sandbox
    assert credit_note.invoice.number == f"TEST-{year}-000001"
    assert credit_note.gross_cents == -574
    assert SANDBOX_NOTE in credit_note.notes
    assert not DocumentCounter.objects.filter(series=DocumentSeries.CREDIT_NOTE).exists()


# --- concurrency on PostgreSQL -----------------------------------------------------------------


def _require_postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.fail("Concurrent numbering is tested on PostgreSQL: set DATABASE_URL or use tests/run.")


@pytest.mark.django_db(transaction=True)
def test_concurrent_threads_number_without_gaps():
    _require_postgresql()
    contract = make_rental()
    payments = [make_card_payment(contract) for _ in range(40)]
    # Every payment is issued by two threads at once, to check idempotency under contention.
    batches = [payments[index::4] for index in range(4)] * 2
    barrier = threading.Barrier(len(batches))
    errors: list[BaseException] = []

    def issue(batch) -> None:
        try:
            barrier.wait(timeout=30)
            for payment in batch:
                invoice_issue_for_payment(payment=payment)
        except BaseException as error:  # reported by the assert below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=issue, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    year = timezone.now().year
    assert errors == []
    assert Invoice.objects.count() == 40
    assert _sequence_numbers(DocumentSeries.INVOICE, year) == list(range(1, 41))
    assert set(Invoice.objects.values_list("payment_id", flat=True)) == {payment.pk for payment in payments}
    assert DocumentCounter.objects.get(series=DocumentSeries.INVOICE, year=year).last_sequence == 40


@pytest.mark.django_db(transaction=True)
def test_concurrent_processes_number_without_gaps(tmp_path):
    _require_postgresql()
    contract = make_rental()
    payments = [make_card_payment(contract) for _ in range(60)]
    go_file = tmp_path / "go"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_workers(),
        "VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "cloudmarket.settings",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.invoice_issuer", str(go_file), *(str(payment.pk) for payment in payments[index::4])],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for index in range(4)
    ]

    go_file.touch()
    outputs = [process.communicate(timeout=120) for process in processes]

    for process, (_stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    printed = [line.split() for stdout, _ in outputs for line in stdout.splitlines()]
    year = timezone.now().year
    assert len(printed) == 60
    assert len({number for _, number in printed}) == 60
    assert _sequence_numbers(DocumentSeries.INVOICE, year) == list(range(1, 61))
    assert {int(payment_id) for payment_id, _ in printed} == {payment.pk for payment in payments}
