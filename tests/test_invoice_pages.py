"""Billing page, invoice and credit note pages, PDFs and API: content, bad input, authorization, query counts."""

from __future__ import annotations

import io

import pytest
from django.urls import reverse
from pypdf import PdfReader
from rest_framework.test import APIClient

from billing.invoicing import credit_note_issue_for_refund, invoice_issue_for_payment
from billing.models import BillingProfile, Invoice, Subscription
from billing.pdf import format_rate, render_document_pdf
from marketplace.models import Contract, ContractStatus
from marketplace.services import contracts
from tests.billing_documents import make_card_payment, make_rental, make_succeeded_refund
from tests.factories import make_superuser, make_user

pytestmark = pytest.mark.django_db

UNICODE_NAME = "Łódź Müller 東京 GmbH"


@pytest.fixture
def documents(settings):
    """A buyer with a Unicode billing name, one card invoice at 19 % and its full credit note."""
    settings.BILLING_TAX_RATE_BPS = 1900
    contract = make_rental(tenant_email="buyer@example.com")
    BillingProfile.objects.create(
        user=contract.tenant, legal_name=UNICODE_NAME, address_line1="ul. Piotrkowska 1", postal_code="90-001",
        city="Łódź", country="PL",
    )
    payment = make_card_payment(contract, amount_cents=1190)
    invoice = invoice_issue_for_payment(payment=payment)
    credit_note = credit_note_issue_for_refund(refund=make_succeeded_refund(payment, amount_cents=1190))
    return {"tenant": contract.tenant, "contract": contract, "invoice": invoice, "credit_note": credit_note}


def _pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(content)).pages)


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _profile_post(**overrides) -> dict[str, str]:
    data = {
        "legal_name": "Example GmbH",
        "address_line1": "Hauptstraße 1",
        "address_line2": "",
        "postal_code": "10115",
        "city": "Berlin",
        "country": "DE",
        "vat_id": "",
    }
    data.update(overrides)
    return data


# --- billing page ------------------------------------------------------------------------------


def test_billing_page_empty_state(client):
    client.force_login(make_user())

    response = client.get(reverse("billing:overview"))

    assert response.status_code == 200
    assert "No invoices yet" in response.text
    assert "No credit notes" in response.text
    assert reverse("billing:payments") in response.text
    assert "made out to your email address" in response.text


def test_billing_page_lists_documents(client, documents):
    client.force_login(documents["tenant"])

    response = client.get(reverse("billing:overview"))

    assert response.status_code == 200
    assert documents["invoice"].number in response.text
    assert documents["credit_note"].number in response.text
    assert documents["invoice"].get_pdf_url() in response.text
    assert documents["credit_note"].get_pdf_url() in response.text
    assert "€11.90" in response.text
    assert "-€11.90" in response.text


def test_billing_page_marks_sandbox_invoices(client):
    contract = make_rental()
    contracts.contract_pay(contract=contract, actor=contract.tenant)
    client.force_login(contract.tenant)

    response = client.get(reverse("billing:overview"))

    assert Invoice.objects.get().number.startswith("TEST-")
    assert "Sandbox — no money was charged" in response.text


def test_billing_page_requires_sign_in(client):
    response = client.get(reverse("billing:overview"))

    assert response.status_code == 302
    assert reverse("account_login") in response["Location"]


def test_nav_and_dashboard_link_billing(client):
    client.force_login(make_user())

    response = client.get(reverse("marketplace:dashboard"))

    assert response.text.count(f'href="{reverse("billing:overview")}"') == 2


@pytest.mark.parametrize(("secret_key", "visible"), [("", False), ("sk_test_123", True)])
def test_payment_methods_block_needs_stripe(client, settings, secret_key, visible):
    settings.STRIPE_SECRET_KEY = secret_key
    client.force_login(make_user())

    response = client.get(reverse("billing:overview"))

    assert ("Manage saved cards" in response.text) is visible


def test_billing_page_query_count(client, documents, django_assert_num_queries):
    payment = make_card_payment(documents["contract"])
    invoice_issue_for_payment(payment=payment)
    credit_note_issue_for_refund(refund=make_succeeded_refund(payment, amount_cents=100))
    client.force_login(documents["tenant"])
    client.get(reverse("billing:overview"))

    # Session, user, profile, invoices, credit notes with their invoices.
    with django_assert_num_queries(5):
        response = client.get(reverse("billing:overview"))

    assert response.status_code == 200
    assert len(response.context["invoices"]) == 2
    assert len(response.context["credit_notes"]) == 2


# --- billing details form ----------------------------------------------------------------------


def test_profile_form_saves_unicode_and_normalises(client):
    user = make_user()
    client.force_login(user)

    response = client.post(
        reverse("billing:overview"),
        _profile_post(
            legal_name="Société Générale Ελλάς 東京", city="Αθήνα", postal_code="105 57", country="gr",
            is_business="on", vat_id="el 123.456-789",
        ),
    )

    assert response.status_code == 302
    profile = BillingProfile.objects.get(user=user)
    assert profile.legal_name == "Société Générale Ελλάς 東京"
    assert profile.country == "GR"
    assert profile.vat_id == "EL123456789"
    assert profile.is_business


def test_profile_form_updates_existing_profile(client):
    user = make_user()
    client.force_login(user)
    client.post(reverse("billing:overview"), _profile_post())

    client.post(reverse("billing:overview"), _profile_post(city="München"))

    assert BillingProfile.objects.get(user=user).city == "München"
    assert BillingProfile.objects.count() == 1


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"legal_name": "x" * 1_000_000}, "legal_name", "at most 200 characters"),
        ({"city": "B" * 101}, "city", "at most 100 characters"),
        ({"legal_name": ""}, "legal_name", "This field is required"),
        ({"legal_name": "Evil\u202eCorp"}, "legal_name", "U+202E"),
        ({"country": "Germany"}, "country", "at most 2 characters"),
        ({"country": "XX"}, "country", "'XX' is not an ISO 3166-1 country code"),
        ({"is_business": "on", "vat_id": "DE12345"}, "vat_id", "VAT id 'DE12345' is invalid for DE: expected DE followed by 9 digits"),
        ({"is_business": "on", "vat_id": "FR123"}, "vat_id", "expected FR followed by 2 letters or digits and 9 digits"),
        ({"is_business": "on", "vat_id": "GR123456789"}, "vat_id", "Greek VAT ids use the prefix EL"),
        ({"vat_id": "DE123456789"}, "vat_id", "applies only to purchases by a business"),
        ({"is_business": "on", "vat_id": "FR12345678901"}, "vat_id", "belongs to FR, but the billing country is DE"),
    ],
)
def test_profile_form_rejects_bad_input(client, overrides, field, message):
    user = make_user()
    client.force_login(user)

    response = client.post(reverse("billing:overview"), _profile_post(**overrides))

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not BillingProfile.objects.filter(user=user).exists()


def test_profile_form_error_is_rendered(client):
    client.force_login(make_user())

    response = client.post(reverse("billing:overview"), _profile_post(is_business="on", vat_id="DE12345"))

    assert "VAT id &#x27;DE12345&#x27; is invalid for DE" in response.text


# --- invoice and credit note pages and PDFs -----------------------------------------------------


def test_invoice_page_shows_snapshot(client, documents):
    invoice = documents["invoice"]
    client.force_login(documents["tenant"])

    response = client.get(invoice.get_absolute_url())

    assert response.status_code == 200
    assert f"Invoice {invoice.number}" in response.text
    assert UNICODE_NAME in response.text
    assert "90-001 Łódź" in response.text
    assert "€10.00" in response.text
    assert "€1.90" in response.text
    assert "Tax (19 %)" in response.text
    assert invoice.get_pdf_url() in response.text


def test_credit_note_page_links_invoice(client, documents):
    credit_note = documents["credit_note"]
    client.force_login(documents["tenant"])

    response = client.get(credit_note.get_absolute_url())

    assert response.status_code == 200
    assert f"Credit note {credit_note.number}" in response.text
    assert documents["invoice"].get_absolute_url() in response.text
    assert "-€11.90" in response.text


def test_invoice_pdf_contains_number_and_unicode_name(client, documents):
    invoice = documents["invoice"]
    client.force_login(documents["tenant"])

    response = client.get(invoice.get_pdf_url())

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == f'attachment; filename="invoice-{invoice.number}.pdf"'
    assert response.content.startswith(b"%PDF-")
    text = _pdf_text(response.content)
    assert f"Invoice {invoice.number}" in text
    assert UNICODE_NAME in text
    assert "ul. Piotrkowska 1" in text
    assert "€11.90" in text
    assert "Tax (19 %)" in text
    assert "Sandbox" not in text


def test_credit_note_pdf_references_invoice(client, documents):
    credit_note = documents["credit_note"]
    client.force_login(documents["tenant"])

    response = client.get(credit_note.get_pdf_url())

    assert response.status_code == 200
    text = _pdf_text(response.content)
    assert f"Credit note {credit_note.number}" in text
    assert f"Credits invoice: {documents['invoice'].number}" in text
    assert "-€11.90" in text


def test_pdf_is_deterministic(client, documents):
    client.force_login(documents["tenant"])

    first = client.get(documents["invoice"].get_pdf_url()).content
    second = client.get(documents["invoice"].get_pdf_url()).content

    assert first == second


def test_sandbox_pdf_is_marked(client):
    contract = make_rental()
    contracts.contract_pay(contract=contract, actor=contract.tenant)
    invoice = Invoice.objects.get()
    client.force_login(contract.tenant)

    text = _pdf_text(client.get(invoice.get_pdf_url()).content)

    assert invoice.number in text
    assert "Sandbox: no money was charged" in text


def test_reverse_charge_pdf_has_note(settings):
    settings.BILLING_SELLER_COUNTRY = "DE"
    contract = make_rental()
    BillingProfile.objects.create(
        user=contract.tenant, legal_name="Exemple SARL", address_line1="1 rue de la Paix", city="Paris",
        country="FR", is_business=True, vat_id="FR12345678901",
    )
    invoice = invoice_issue_for_payment(payment=make_card_payment(contract))

    text = _pdf_text(render_document_pdf(invoice))

    assert "VAT id: FR12345678901" in text
    assert "Reverse charge: VAT to be accounted for by the recipient" in text


def test_pdf_of_long_lines_wraps():
    contract = make_rental()
    BillingProfile.objects.create(
        user=contract.tenant, legal_name="W" * 200, address_line1="Straße " * 28, city="C" * 100, country="DE",
    )
    invoice = invoice_issue_for_payment(payment=make_card_payment(contract))

    content = render_document_pdf(invoice)

    assert content.startswith(b"%PDF-")
    assert invoice.number in _pdf_text(content)


@pytest.mark.parametrize(("rate_bps", "text"), [(1900, "19 %"), (750, "7.5 %"), (0, "0 %"), (2125, "21.25 %")])
def test_format_rate(rate_bps, text):
    assert format_rate(rate_bps) == text


# --- authorization -----------------------------------------------------------------------------


def test_other_user_gets_404_everywhere(client, documents):
    stranger = make_user(email="stranger@example.com")
    client.force_login(stranger)
    api = _api(stranger)
    invoice = documents["invoice"]
    credit_note = documents["credit_note"]

    pages = [
        invoice.get_absolute_url(), invoice.get_pdf_url(), credit_note.get_absolute_url(), credit_note.get_pdf_url(),
    ]
    api_urls = [
        f"/api/v1/billing/invoices/{invoice.number}/",
        f"/api/v1/billing/invoices/{invoice.number}/pdf/",
        f"/api/v1/billing/credit-notes/{credit_note.number}/",
        f"/api/v1/billing/credit-notes/{credit_note.number}/pdf/",
    ]

    for url in pages:
        assert client.get(url).status_code == 404, url
    for url in api_urls:
        response = api.get(url)
        assert response.status_code == 404, url
        assert response["Content-Type"] == "application/json"
    assert api.get("/api/v1/billing/invoices/").json()["count"] == 0
    assert api.get("/api/v1/billing/credit-notes/").json()["count"] == 0
    overview = client.get(reverse("billing:overview"))
    assert invoice.number not in overview.text


def test_anonymous_is_refused(client, documents):
    invoice = documents["invoice"]

    page = client.get(invoice.get_pdf_url())
    api = APIClient().get(f"/api/v1/billing/invoices/{invoice.number}/pdf/")

    assert page.status_code == 302
    assert api.status_code == 401


def test_staff_can_open_any_document(client, documents):
    client.force_login(make_superuser())

    page = client.get(documents["invoice"].get_absolute_url())
    pdf = client.get(documents["credit_note"].get_pdf_url())

    assert page.status_code == 200
    assert pdf.status_code == 200


def test_unknown_number_404(client, documents):
    client.force_login(documents["tenant"])

    assert client.get(reverse("billing:invoice", args=["2026-999999"])).status_code == 404
    assert client.get(reverse("billing:credit_note", args=[documents["invoice"].number])).status_code == 404


# --- API ---------------------------------------------------------------------------------------


def test_api_lists_and_retrieves_documents(documents):
    api = _api(documents["tenant"])
    invoice = documents["invoice"]
    credit_note = documents["credit_note"]

    listing = api.get("/api/v1/billing/invoices/").json()
    detail = api.get(f"/api/v1/billing/invoices/{invoice.number}/").json()
    credit = api.get(f"/api/v1/billing/credit-notes/{credit_note.number}/").json()

    assert listing["count"] == 1
    assert listing["results"][0]["number"] == invoice.number
    assert detail["gross_cents"] == 1190
    assert detail["net_cents"] == 1000
    assert detail["tax_cents"] == 190
    assert detail["tax_rate_bps"] == 1900
    assert detail["buyer_name"] == UNICODE_NAME
    assert detail["lines"][0]["period_start"] == "2026-03-01T12:00:00Z"
    assert detail["pdf_url"] == f"/api/v1/billing/invoices/{invoice.number}/pdf/"
    assert credit["invoice"] == invoice.number
    assert credit["gross_cents"] == -1190


def test_api_pdf_download(documents):
    api = _api(documents["tenant"])
    invoice = documents["invoice"]

    response = api.get(f"/api/v1/billing/invoices/{invoice.number}/pdf/", HTTP_ACCEPT="application/pdf")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert invoice.number in _pdf_text(response.content)


def test_api_list_query_count(documents, django_assert_num_queries):
    for _ in range(3):
        payment = make_card_payment(documents["contract"])
        invoice_issue_for_payment(payment=payment)
        credit_note_issue_for_refund(refund=make_succeeded_refund(payment, amount_cents=10))
    api = _api(documents["tenant"])

    # Count and page, for each list.
    with django_assert_num_queries(2):
        invoices = api.get("/api/v1/billing/invoices/")
    with django_assert_num_queries(2):
        credit_notes = api.get("/api/v1/billing/credit-notes/")

    assert invoices.json()["count"] == 4
    assert credit_notes.json()["count"] == 4


def test_api_profile_get_and_put():
    user = make_user()
    api = _api(user)

    missing = api.get("/api/v1/billing/profile/")
    created = api.put(
        "/api/v1/billing/profile/",
        {"legal_name": "Ελληνική Εταιρεία", "address_line1": "Οδός 1", "city": "Αθήνα", "country": "gr",
         "is_business": True, "vat_id": "EL 123 456 789"},
        format="json",
    )
    replaced = api.put(
        "/api/v1/billing/profile/",
        {"legal_name": "Private Person", "address_line1": "Street 1", "city": "Vienna", "country": "AT"},
        format="json",
    )
    shown = api.get("/api/v1/billing/profile/")

    assert missing.status_code == 404
    assert "set them with PUT" in missing.json()["detail"]
    assert created.status_code == 201, created.json()
    assert created.json()["vat_id"] == "EL123456789"
    assert created.json()["country"] == "GR"
    assert replaced.status_code == 200, replaced.json()
    assert shown.json()["vat_id"] == ""
    assert shown.json()["is_business"] is False
    assert shown.json()["country"] == "AT"
    assert BillingProfile.objects.get(user=user).legal_name == "Private Person"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"is_business": True, "vat_id": "DE12345"}, "vat_id", "'DE12345' is invalid for DE"),
        ({"vat_id": "DE123456789"}, "vat_id", "applies only to purchases by a business"),
        ({"legal_name": "x" * 100_000}, "legal_name", "no more than 200 characters"),
        ({"country": "XX"}, "country", "'XX' is not an ISO 3166-1 country code"),
        ({"city": ""}, "city", "may not be blank"),
    ],
)
def test_api_profile_rejects_bad_input(overrides, field, message):
    user = make_user()
    body = {"legal_name": "Example GmbH", "address_line1": "Hauptstraße 1", "city": "Berlin", "country": "DE"}
    body.update(overrides)

    response = _api(user).put("/api/v1/billing/profile/", body, format="json")

    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert message in " ".join(response.json()[field])
    assert not BillingProfile.objects.filter(user=user).exists()


def test_schema_documents_billing_endpoints(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    paths = schema["paths"]
    assert "/api/v1/billing/invoices/" in paths
    assert "/api/v1/billing/invoices/{number}/pdf/" in paths
    assert "application/pdf" in paths["/api/v1/billing/invoices/{number}/pdf/"]["get"]["responses"]["200"]["content"]
    assert "/api/v1/billing/credit-notes/{number}/" in paths
    assert set(paths["/api/v1/billing/profile/"]) >= {"get", "put"}


# --- admin -------------------------------------------------------------------------------------


def test_admin_documents_are_read_only(client, documents):
    client.force_login(make_superuser())
    invoice = documents["invoice"]
    credit_note = documents["credit_note"]

    changelist = client.get(reverse("admin:billing_invoice_changelist"))
    change = client.get(reverse("admin:billing_invoice_change", args=[invoice.pk]))
    credit_change = client.get(reverse("admin:billing_creditnote_change", args=[credit_note.pk]))
    post = client.post(reverse("admin:billing_invoice_change", args=[invoice.pk]), {"gross_cents": 1})
    delete = client.get(reverse("admin:billing_invoice_delete", args=[invoice.pk]))
    add = client.get(reverse("admin:billing_invoice_add"))

    assert changelist.status_code == 200
    assert invoice.number in changelist.text
    assert change.status_code == 200
    assert invoice.get_pdf_url() in change.text
    assert 'name="_save"' not in change.text
    assert credit_change.status_code == 200
    assert credit_note.get_pdf_url() in credit_change.text
    assert post.status_code == 403
    assert delete.status_code == 403
    assert add.status_code == 403
    assert Invoice.objects.get(pk=invoice.pk).gross_cents == 1190


def test_pdf_without_dejavu_falls_back_to_helvetica(settings, documents, tmp_path, caplog):
    settings.BILLING_PDF_FONT_DIR = str(tmp_path)

    content = render_document_pdf(documents["invoice"])

    text = _pdf_text(content)
    assert documents["invoice"].number in text
    assert "Łódź" not in text
    assert "Müller" in text
    assert "fonts-dejavu-core" in caplog.text


def test_pdf_without_cjk_font_still_renders(settings, documents, tmp_path, caplog):
    settings.BILLING_PDF_CJK_FONT = str(tmp_path / "missing.ttf")

    content = render_document_pdf(documents["invoice"])

    assert "Łódź Müller" in _pdf_text(content)
    assert "fonts-droid-fallback" in caplog.text


def test_rental_page_links_credit_note(client, documents):
    client.force_login(documents["tenant"])

    response = client.get(reverse("marketplace:rental", args=[documents["contract"].public_id]))

    assert f"Credit note {documents['credit_note'].number}" in response.text
    assert reverse("billing:credit_note", args=[documents["credit_note"].number]) in response.text


@pytest.mark.parametrize(("status", "shown"), [("past_due", True), ("unpaid", True), ("active", False)])
def test_rental_page_asks_to_update_card(client, status, shown):
    # Found by a review: a tenant whose renewal failed got an email but no hint on the rental page.
    contract = make_rental(tenant_email="late@example.com")
    Contract.objects.filter(pk=contract.pk).update(payment_method="stripe", status=ContractStatus.ACTIVE)
    Subscription.objects.create(contract=contract, subscription_id=f"sub_{status}", status=status)
    client.force_login(contract.tenant)

    response = client.get(reverse("marketplace:rental", args=[contract.public_id]))

    assert ("Update your card" in response.text) is shown
