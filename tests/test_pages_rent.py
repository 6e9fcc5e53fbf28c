"""The offering page and the rent form: visibility, login, idempotent pay, key errors."""

from __future__ import annotations

import pytest
from django.urls import reverse

from billing.models import Payment
from marketplace.models import Contract, ContractStatus, SshKey, StockStatus, Visibility
from tests.factories import (
    make_cloud_account,
    make_offering,
    make_provider,
    make_recipe,
    make_user,
    ssh_public_key,
)


@pytest.fixture
def offering(db):
    provider = make_provider(display_name="Acme Compute")
    return make_offering(provider=provider, name="Small DE", price_cents=459)


@pytest.fixture
def tenant(db):
    return make_user(email="tenant@example.com")


def _rent_url(offering) -> str:
    return reverse("marketplace:rent", kwargs={"slug": offering.slug})


def _idempotency_key(client, offering) -> str:
    response = client.get(_rent_url(offering))
    return response.context["form"].initial["idempotency_key"]


# --- offering page ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_offering_page_shows_specs_price_and_recipe(client):
    provider = make_provider(display_name="Acme Compute")
    version = make_recipe(author=provider.user, name="Nginx status", script="#!/bin/sh\napt-get install -y nginx\n")
    offering = make_offering(provider=provider, name="Nginx box", price_cents=459, recipe_version=version)

    response = client.get(offering.get_absolute_url())
    html = response.content.decode()

    assert response.status_code == 200
    assert "€4.59" in html
    assert "Acme Compute" in html
    assert "apt-get install -y nginx" in html
    assert "This script runs as root on your VM. Review it before you rent." in html
    assert "Sandbox — simulated, no real machine" in html


@pytest.mark.django_db
def test_offering_page_anonymous_rent_link_goes_to_login(client, offering):
    html = client.get(offering.get_absolute_url()).content.decode()

    assert f"{reverse('account_login')}?next=/offerings/{offering.slug}/rent/" in html


@pytest.mark.django_db
def test_offering_page_private_of_other_provider_is_404(client, tenant):
    provider = make_provider()
    private = make_offering(provider=provider, visibility=Visibility.PRIVATE)
    client.force_login(tenant)

    response = client.get(private.get_absolute_url())

    assert response.status_code == 404


@pytest.mark.django_db
def test_offering_page_private_visible_to_owner(client):
    provider = make_provider()
    private = make_offering(provider=provider, visibility=Visibility.PRIVATE)
    client.force_login(provider.user)

    response = client.get(private.get_absolute_url())

    assert response.status_code == 200
    assert "Edit offering" in response.content.decode()


@pytest.mark.django_db
def test_offering_page_unknown_slug_is_404(client):
    assert client.get(reverse("marketplace:offering", kwargs={"slug": "nope"})).status_code == 404


# --- rent form -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_rent_anonymous_redirects_to_login_with_next(client, offering):
    response = client.get(_rent_url(offering))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
    assert "next=" in response["Location"]


@pytest.mark.django_db
def test_rent_form_shows_price_payment_label_and_key(client, offering, tenant):
    client.force_login(tenant)

    response = client.get(_rent_url(offering))
    html = response.content.decode()

    assert response.status_code == 200
    assert "€4.59" in html
    assert "Sandbox payment — no real money moves" in html
    assert 'name="idempotency_key"' in html
    assert len(response.context["form"].initial["idempotency_key"]) >= 16
    assert "Pay and rent" in html
    assert 'name="csrfmiddlewaretoken"' in html


@pytest.mark.django_db
def test_rent_form_self_rental_is_free(client):
    provider = make_provider()
    own = make_offering(provider=provider, price_cents=999)
    client.force_login(provider.user)

    html = client.get(_rent_url(own)).content.decode()

    assert "self-rental: free" in html


@pytest.mark.django_db
def test_rent_happy_path_creates_paid_contract(client, offering, tenant):
    client.force_login(tenant)
    key = _idempotency_key(client, offering)

    response = client.post(
        _rent_url(offering), {"public_key": ssh_public_key(), "idempotency_key": key, "save_as": "laptop"}
    )

    contract = Contract.objects.get()
    assert response.status_code == 302
    assert response["Location"] == contract.get_absolute_url()
    assert contract.tenant == tenant
    assert contract.status == ContractStatus.PROVISIONING
    assert Payment.objects.filter(contract=contract).count() == 1
    assert SshKey.objects.filter(user=tenant, name="laptop").count() == 1


@pytest.mark.django_db
def test_rent_with_saved_key(client, offering, tenant):
    saved = SshKey.objects.create(
        user=tenant, name="desk", public_key=ssh_public_key(), key_type="ssh-ed25519", fingerprint="SHA256:x"
    )
    client.force_login(tenant)
    key = _idempotency_key(client, offering)

    response = client.post(_rent_url(offering), {"saved_key": saved.pk, "idempotency_key": key})

    assert response.status_code == 302
    assert Contract.objects.get().ssh_public_key.split()[:2] == saved.public_key.split()[:2]


@pytest.mark.django_db
def test_rent_double_submit_creates_one_contract_and_payment(client, offering, tenant):
    client.force_login(tenant)
    key = _idempotency_key(client, offering)
    data = {"public_key": ssh_public_key(), "idempotency_key": key}

    first = client.post(_rent_url(offering), data)
    second = client.post(_rent_url(offering), data)

    assert Contract.objects.count() == 1
    assert Payment.objects.count() == 1
    assert first["Location"] == second["Location"]


@pytest.mark.django_db
def test_rent_resubmit_after_pay_does_not_pay_again(client, offering, tenant, monkeypatch):
    client.force_login(tenant)
    key = _idempotency_key(client, offering)
    data = {"public_key": ssh_public_key(), "idempotency_key": key}
    client.post(_rent_url(offering), data)
    calls = []
    monkeypatch.setattr(
        "marketplace.services.contracts.contract_pay", lambda **kwargs: calls.append(kwargs)
    )

    response = client.post(_rent_url(offering), data)

    assert response.status_code == 302
    assert calls == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("public_key", "message"),
    [
        ("not a key", "public_key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----", "private key"),
        ("", "An SSH public key is required"),
    ],
)
def test_rent_bad_key_shows_error_and_stores_nothing(client, offering, tenant, public_key, message):
    client.force_login(tenant)
    key = _idempotency_key(client, offering)

    response = client.post(_rent_url(offering), {"public_key": public_key, "idempotency_key": key, "save_as": "x"})

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "public_key" in errors
    assert message.lower() in (" ".join(errors["public_key"]) + " public_key").lower()
    assert Contract.objects.count() == 0
    assert Payment.objects.count() == 0
    assert SshKey.objects.count() == 0
    assert response.context["form"]["save_as"].value() == "x"


@pytest.mark.django_db
def test_rent_missing_idempotency_key_is_form_error(client, offering, tenant):
    client.force_login(tenant)

    response = client.post(_rent_url(offering), {"public_key": ssh_public_key()})

    assert response.status_code == 200
    assert "idempotency_key" in response.context["form"].errors
    assert Contract.objects.count() == 0


@pytest.mark.django_db
def test_rent_private_offering_of_other_is_404(client, tenant):
    provider = make_provider()
    private = make_offering(provider=provider, visibility=Visibility.PRIVATE)
    client.force_login(tenant)

    response = client.post(_rent_url(private), {"public_key": ssh_public_key(), "idempotency_key": "k" * 32})

    assert response.status_code == 404
    assert Contract.objects.count() == 0


@pytest.mark.django_db
def test_rent_offering_made_private_later(client, offering, tenant):
    client.force_login(tenant)
    key = _idempotency_key(client, offering)
    offering.visibility = Visibility.PRIVATE
    offering.save()

    response = client.post(_rent_url(offering), {"public_key": ssh_public_key(), "idempotency_key": key})

    assert response.status_code == 404
    assert Contract.objects.count() == 0


@pytest.mark.django_db
def test_rent_out_of_stock_is_form_error(client, offering, tenant):
    client.force_login(tenant)
    key = _idempotency_key(client, offering)
    offering.stock_status = StockStatus.OUT_OF_STOCK
    offering.save()

    response = client.post(_rent_url(offering), {"public_key": ssh_public_key(), "idempotency_key": key})

    assert response.status_code == 200
    assert "out of stock" in " ".join(response.context["form"].non_field_errors())
    assert Contract.objects.count() == 0
    assert Payment.objects.count() == 0


@pytest.mark.django_db
def test_rent_invalid_cloud_account_is_404(client, tenant):
    provider = make_provider()
    broken = make_cloud_account(owner=provider.user, validation_status="invalid")
    offering = make_offering(provider=provider, cloud_account=broken)
    client.force_login(tenant)

    response = client.post(_rent_url(offering), {"public_key": ssh_public_key(), "idempotency_key": "k" * 32})

    assert response.status_code == 404
    assert Contract.objects.count() == 0


# --- saved or pasted key, wording, reused form -------------------------------------------------


def _save_key(user, name: str = "desk") -> SshKey:
    from marketplace.services.ssh_keys import ssh_key_create

    return ssh_key_create(user=user, name=name, public_key=ssh_public_key())


@pytest.mark.django_db
def test_rent_pasted_key_wins_over_preselected_saved_key(client, offering, tenant):
    saved = _save_key(tenant)
    client.force_login(tenant)
    form_page = client.get(_rent_url(offering))
    key = form_page.context["form"].initial["idempotency_key"]
    pasted = ssh_public_key(comment="new@laptop")

    # The browser submits the pre-selected saved key together with the pasted one.
    response = client.post(_rent_url(offering), {"saved_key": saved.pk, "public_key": pasted, "idempotency_key": key})

    contract = Contract.objects.get()
    assert form_page.context["form"].initial["saved_key"] == saved.pk
    assert response.status_code == 302
    assert contract.ssh_public_key.split()[:2] == pasted.split()[:2]
    assert contract.ssh_key_fingerprint != saved.fingerprint


@pytest.mark.django_db
def test_rent_form_with_saved_keys_labels(client, offering, tenant):
    _save_key(tenant)
    client.force_login(tenant)

    response = client.get(_rent_url(offering))
    html = response.content.decode()

    assert response.context["form"].fields["public_key"].required is False
    assert "— paste a new key —" in html
    assert "A pasted key is used instead of the saved key above." in html
    assert "Or paste a public key <small>(optional)</small>" not in html


@pytest.mark.django_db
def test_rent_form_without_saved_keys_requires_pasted_key(client, offering, tenant):
    client.force_login(tenant)

    response = client.get(_rent_url(offering))
    html = response.content.decode()

    assert response.context["form"].fields["public_key"].required is True
    assert 'name="saved_key"' not in html
    assert "Or paste a public key</label>" in html
    assert "Or paste a public key <small>(optional)</small>" not in html


@pytest.mark.django_db
def test_rent_summary_paid_rental_runs_to_period_end(client, offering, tenant):
    from provisioning.models import CloudAccount

    CloudAccount.objects.filter(pk=offering.cloud_account_id).update(backend="hetzner")
    client.force_login(tenant)

    html = client.get(_rent_url(offering)).content.decode()

    assert "cancelling keeps it running until the end of the paid month" in html
    assert "ends it at once" not in html


@pytest.mark.django_db
def test_rent_summary_sandbox_rental_ends_at_once(client, offering, tenant):
    client.force_login(tenant)

    html = client.get(_rent_url(offering)).content.decode()

    assert "cancelling ends it at once and deletes the simulated server" in html
    assert "until the end of the paid month" not in html


@pytest.mark.django_db
def test_rent_summary_self_rental_ends_at_once(client):
    provider = make_provider()
    own = make_offering(provider=provider)
    client.force_login(provider.user)

    html = client.get(_rent_url(own)).content.decode()

    assert "A self-rental is free" in html
    assert "cancelling ends it at once and deletes the server" in html


@pytest.mark.django_db
def test_rent_reused_form_other_offering(client, offering, tenant):
    other = make_offering(provider=offering.provider, name="Large DE")
    client.force_login(tenant)
    key = _idempotency_key(client, offering)
    client.post(_rent_url(offering), {"public_key": ssh_public_key(), "idempotency_key": key})

    response = client.post(_rent_url(other), {"public_key": ssh_public_key(), "idempotency_key": key})

    assert response.status_code == 200
    assert response.context["form"].non_field_errors() == [
        "This form was already used to rent Small DE; reload the page to rent this offering."
    ]
    assert Contract.objects.count() == 1
    assert Contract.objects.get().offering == offering


@pytest.mark.django_db
def test_rent_save_as_with_bidi_control_is_error(client, offering, tenant):
    client.force_login(tenant)
    key = _idempotency_key(client, offering)

    response = client.post(
        _rent_url(offering), {"public_key": ssh_public_key(), "idempotency_key": key, "save_as": "lap\u202etop"}
    )

    assert response.status_code == 200
    assert response.context["form"].errors["save_as"] == [
        "This name contains an invisible text-direction character (U+202E); remove it."
    ]
    assert Contract.objects.count() == 0
