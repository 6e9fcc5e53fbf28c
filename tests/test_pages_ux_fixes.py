"""Page details: sign-up email length, email page, dashboard address, ended rentals, favicon, admin."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils import timezone

from marketplace.models import Contract, ContractStatus, SshKey, User
from marketplace.services.contracts import contract_fail, contract_reject
from tests.factories import make_contract, make_offering, make_provider, make_superuser, make_user

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-pass-phrase-42"


def _set(contract, **fields) -> Contract:
    # Test setup only: put the contract into a state the pipeline would reach.
    Contract.objects.filter(pk=contract.pk).update(**fields)
    contract.refresh_from_db()
    return contract


@pytest.fixture
def tenant():
    return make_user(email="tenant@example.com")


@pytest.fixture
def manual_provider():
    return make_provider(display_name="Manual Cloud", auto_accept=False)


@pytest.fixture
def paid_contract(manual_provider, tenant):
    return make_contract(tenant=tenant, offering=make_offering(provider=manual_provider))


# --- sign-up email length ----------------------------------------------------------------------


def test_signup_rejects_email_over_254_characters(client):
    email = "x" * 300 + "@example.org"

    response = client.post(reverse("account_signup"), {"email": email, "password1": PASSWORD, "password2": PASSWORD})

    assert response.status_code == 200
    assert "Email addresses can have at most 254 characters." in response.context["form"].errors["email"][0]
    assert not User.objects.exists()


def test_signup_accepts_email_of_254_characters(client):
    email = "x" * 242 + "@example.org"
    assert len(email) == 254

    client.post(reverse("account_signup"), {"email": email, "password1": PASSWORD, "password2": PASSWORD})

    assert User.objects.get().email == email


def test_add_email_rejects_email_over_254_characters(client, tenant):
    client.force_login(tenant)

    long_email = "y" * 300 + "@example.org"

    response = client.post(reverse("account_email"), {"action_add": "", "email": long_email})

    assert "Email addresses can have at most 254 characters." in response.content.decode()
    assert not tenant.emailaddress_set.filter(email__startswith="yyyy").exists()


# --- email page ----------------------------------------------------------------------------------


def test_email_page_uses_site_form_style(client, tenant):
    tenant.emailaddress_set.create(email=tenant.email, primary=True, verified=True)
    client.force_login(tenant)

    html = client.get(reverse("account_email")).content.decode()

    assert 'type="radio" name="email" value="tenant@example.com" id="email_radio_0" checked' in html
    assert '<label class="inline" for="email_radio_0">tenant@example.com</label>' in html
    assert '<button type="submit" name="action_remove" class="danger">Remove</button>' in html
    assert '<button type="submit" name="action_send" class="secondary">Re-send verification</button>' in html
    assert 'aria-current="page"' in html


# --- dashboard and ended rentals ------------------------------------------------------------------


@pytest.mark.parametrize(
    "status", [ContractStatus.TERMINATED, ContractStatus.FAILED, ContractStatus.REJECTED, ContractStatus.CANCELLED]
)
def test_dashboard_hides_address_of_ended_rental(client, tenant, paid_contract, status):
    _set(paid_contract, status=status, ip_address="203.0.113.7")
    client.force_login(tenant)

    html = client.get(reverse("marketplace:dashboard")).content.decode()

    assert "203.0.113.7" not in html
    assert '<span class="muted">—</span>' in html


def test_dashboard_shows_address_of_active_rental(client, tenant, paid_contract):
    _set(paid_contract, status=ContractStatus.ACTIVE, ip_address="203.0.113.7")
    client.force_login(tenant)

    html = client.get(reverse("marketplace:dashboard")).content.decode()

    assert "<code>203.0.113.7</code>" in html


def test_rejected_rental_shows_no_paid_until_nor_steps(client, tenant, manual_provider, paid_contract):
    contract_reject(contract=paid_contract, actor=manual_provider.user, reason="No capacity.")
    client.force_login(tenant)

    html = client.get(paid_contract.get_absolute_url()).content.decode()

    assert "Paid until" not in html
    assert "<h3>Provisioning</h3>" not in html
    assert "Creating server" not in html


def test_failed_rental_after_provisioning_started_shows_steps(client, tenant, manual_provider, paid_contract):
    _set(paid_contract, status=ContractStatus.PROVISIONING, provisioning_step="waiting_for_boot")
    contract_fail(contract_id=paid_contract.pk, reason="The server did not boot within 300 s.")
    client.force_login(tenant)

    html = client.get(paid_contract.get_absolute_url()).content.decode()

    assert "<h3>Provisioning</h3>" in html
    assert "Paid until" not in html


def test_failed_rental_shows_reason_once(client, tenant, paid_contract):
    _set(paid_contract, status=ContractStatus.PROVISIONING, provisioning_step="creating_server")
    contract_fail(contract_id=paid_contract.pk, reason="Hetzner rejected the server type cx99.")
    client.force_login(tenant)

    html = client.get(paid_contract.get_absolute_url()).content.decode()
    status_section = html.split('id="history-heading"')[0]

    assert status_section.count("Hetzner rejected the server type cx99.") == 1


def test_terminated_rental_keeps_paid_until(client, tenant, paid_contract):
    now = timezone.now()
    _set(
        paid_contract,
        status=ContractStatus.TERMINATED,
        activated_at=now - timedelta(days=3),
        ended_at=now,
        paid_until=now + timedelta(days=27),
    )
    client.force_login(tenant)

    html = client.get(paid_contract.get_absolute_url()).content.decode()

    assert "Paid until" in html
    assert "<h3>Provisioning</h3>" in html


def test_paid_rental_waiting_for_provider_keeps_steps(client, tenant, paid_contract):
    client.force_login(tenant)

    html = client.get(paid_contract.get_absolute_url()).content.decode()

    assert "Paid until" in html
    assert "<h3>Provisioning</h3>" in html


# --- favicon --------------------------------------------------------------------------------------


def test_pages_link_svg_favicon(client):
    html = client.get(reverse("marketplace:catalog")).content.decode()

    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html
    assert finders.find("favicon.svg") is not None


def test_favicon_ico_redirects_to_svg(client):
    response = client.get("/favicon.ico")

    assert response.status_code == 301
    assert response["Location"] == "/static/favicon.svg"


# --- admin ----------------------------------------------------------------------------------------


def test_admin_names_ssh_keys(client):
    client.force_login(make_superuser())

    html = client.get(reverse("admin:index")).content.decode()

    assert SshKey._meta.verbose_name_plural == "SSH keys"
    assert ">SSH keys<" in html
    assert "Ssh keys" not in html


@pytest.mark.parametrize(
    "url_name", ["admin:marketplace_contract_add", "admin:marketplace_sshkey_add", "admin:billing_payment_add"]
)
def test_admin_add_page_403_logs_one_line(client, caplog, url_name):
    client.force_login(make_superuser())

    with caplog.at_level(logging.INFO):
        response = client.get(reverse(url_name))

    assert response.status_code == 403
    forbidden = [record for record in caplog.records if record.name == "django.request"]
    assert len(forbidden) == 1
    assert forbidden[0].exc_info is None
