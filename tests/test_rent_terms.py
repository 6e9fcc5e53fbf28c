"""Renting confirms the terms the tenant saw, and real-cloud offerings without card payment show a notice."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace.models import Contract
from provisioning.models import Backend
from tests.factories import (
    make_cloud_account,
    make_offering,
    make_provider,
    make_recipe,
    make_user,
    ssh_public_key,
)

pytestmark = pytest.mark.django_db

PAYMENT_NOTICE = "This offering runs on a real cloud and needs card payment, which this installation has not set up yet."


@pytest.fixture
def provider():
    return make_provider(display_name="Acme Compute")


@pytest.fixture
def offering(provider):
    return make_offering(provider=provider, slug="acme-small", name="Acme small", price_cents=459)


@pytest.fixture
def tenant():
    return make_user(email="tenant@example.com")


@pytest.fixture
def hetzner_offering(provider):
    account = make_cloud_account(owner=provider.user, backend=Backend.HETZNER, token="fake-token")
    return make_offering(provider=provider, cloud_account=account, slug="acme-real", name="Acme real", price_cents=900)


def _rent_url(offering) -> str:
    return reverse("marketplace:rent", kwargs={"slug": offering.slug})


def _form_values(client, offering) -> dict:
    form = client.get(_rent_url(offering)).context["form"]
    return {
        "idempotency_key": form.initial["idempotency_key"],
        "expected_price_cents": form.initial["expected_price_cents"],
        "expected_recipe_version_id": form.initial["expected_recipe_version_id"],
        "public_key": ssh_public_key(),
    }


# --- rent page --------------------------------------------------------------------------------


def test_rent_page_pins_price_and_recipe(client, tenant, offering):
    client.force_login(tenant)

    html = client.get(_rent_url(offering)).content.decode()

    assert 'name="expected_price_cents" value="459"' in html
    assert 'name="expected_recipe_version_id" value="0"' in html


def test_rent_page_pins_recipe_version_id(client, tenant, provider):
    version = make_recipe(author=provider.user)
    offering = make_offering(provider=provider, recipe_version=version)
    client.force_login(tenant)

    html = client.get(_rent_url(offering)).content.decode()

    assert f'name="expected_recipe_version_id" value="{version.pk}"' in html


def test_rent_after_price_change_shows_new_price(client, tenant, offering):
    client.force_login(tenant)
    values = _form_values(client, offering)
    offering.price_cents = 999
    offering.save()

    response = client.post(_rent_url(offering), values)
    html = response.content.decode()

    assert response.status_code == 200
    assert Contract.objects.count() == 0
    errors = response.context["form"].non_field_errors()
    assert len(errors) == 1
    assert "changed from 4.59 to 9.99 EUR" in errors[0]
    assert "€9.99" in html
    # The re-rendered form confirms the new price on the next submit.
    assert 'name="expected_price_cents" value="999"' in html


def test_rent_confirming_new_price_succeeds(client, tenant, offering):
    client.force_login(tenant)
    values = _form_values(client, offering)
    offering.price_cents = 999
    offering.save()
    client.post(_rent_url(offering), values)

    response = client.post(_rent_url(offering), {**values, "expected_price_cents": 999})

    contract = Contract.objects.get()
    assert response.status_code == 302
    assert contract.price_cents == 999


def test_rent_after_recipe_change_is_rejected(client, tenant, provider, offering):
    client.force_login(tenant)
    values = _form_values(client, offering)
    offering.recipe_version = make_recipe(author=provider.user, script="#!/bin/sh\nrm -rf /srv\n")
    offering.save()

    response = client.post(_rent_url(offering), values)

    assert Contract.objects.count() == 0
    assert "recipe of this offering changed" in response.context["form"].non_field_errors()[0]
    assert f'name="expected_recipe_version_id" value="{offering.recipe_version_id}"' in response.content.decode()


def test_rent_without_expected_fields_still_works(client, tenant, offering):
    # A page rendered before the hidden fields existed.
    client.force_login(tenant)
    values = _form_values(client, offering)
    del values["expected_price_cents"], values["expected_recipe_version_id"]

    response = client.post(_rent_url(offering), values)

    assert response.status_code == 302
    assert Contract.objects.count() == 1


# --- API ----------------------------------------------------------------------------------------


def _api(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_api_rent_with_matching_terms_is_201(tenant, offering):
    response = _api(tenant).post(
        "/api/v1/rentals/",
        {"offering": "acme-small", "ssh_public_key": ssh_public_key(), "expected_price_cents": 459, "expected_recipe_version_id": 0},
        format="json",
    )

    assert response.status_code == 201, response.json()


def test_api_rent_old_price_is_400(tenant, offering):
    response = _api(tenant).post(
        "/api/v1/rentals/",
        {"offering": "acme-small", "ssh_public_key": ssh_public_key(), "expected_price_cents": 400},
        format="json",
    )

    body = response.json()
    assert response.status_code == 400
    assert list(body) == ["expected_price_cents"]
    assert "459" in body["expected_price_cents"][0]
    assert Contract.objects.count() == 0


def test_api_rent_old_recipe_is_400(tenant, provider, offering):
    version = make_recipe(author=provider.user)
    offering.recipe_version = version
    offering.save()

    response = _api(tenant).post(
        "/api/v1/rentals/",
        {"offering": "acme-small", "ssh_public_key": ssh_public_key(), "expected_recipe_version_id": 0},
        format="json",
    )

    body = response.json()
    assert response.status_code == 400
    assert list(body) == ["expected_recipe_version_id"]
    assert f"recipe version {version.pk}" in body["expected_recipe_version_id"][0]


def test_api_offering_shows_recipe_version_id(provider, offering):
    version = make_recipe(author=provider.user)
    offering.recipe_version = version
    offering.save()

    body = APIClient().get("/api/v1/offerings/acme-small/").json()

    assert body["recipe"]["id"] == version.pk


def test_openapi_documents_expected_fields(client):
    schema = client.get("/api/schema/?format=json").json()

    properties = schema["components"]["schemas"]["RentalCreate"]["properties"]
    assert "expected_price_cents" in properties
    assert "expected_recipe_version_id" in properties


# --- real cloud without card payment ----------------------------------------------------------


@pytest.fixture
def production_payments(settings):
    settings.SANDBOX_PAYMENTS_FOR_REAL_BACKENDS = False


def test_offering_page_shows_notice_instead_of_rent_button(client, tenant, hetzner_offering, production_payments):
    client.force_login(tenant)

    html = client.get(hetzner_offering.get_absolute_url()).content.decode()

    assert PAYMENT_NOTICE in html
    assert "Rent this machine" not in html


def test_offering_page_notice_for_anonymous(client, hetzner_offering, production_payments):
    html = client.get(hetzner_offering.get_absolute_url()).content.decode()

    assert PAYMENT_NOTICE in html
    assert "Sign in to rent" not in html


def test_rent_page_shows_notice_instead_of_form(client, tenant, hetzner_offering, production_payments):
    client.force_login(tenant)

    html = client.get(_rent_url(hetzner_offering)).content.decode()

    assert PAYMENT_NOTICE in html
    assert "Pay and rent" not in html
    assert 'name="public_key"' not in html


def test_rent_post_on_real_cloud_creates_nothing(client, tenant, hetzner_offering, production_payments):
    client.force_login(tenant)

    response = client.post(
        _rent_url(hetzner_offering), {"idempotency_key": "k" * 24, "public_key": ssh_public_key()}
    )

    assert response.status_code == 200
    assert PAYMENT_NOTICE in response.content.decode()
    assert Contract.objects.count() == 0


def test_provider_can_rent_own_real_offering_free(client, provider, hetzner_offering, production_payments):
    client.force_login(provider.user)
    assert PAYMENT_NOTICE not in client.get(hetzner_offering.get_absolute_url()).content.decode()
    values = _form_values(client, hetzner_offering)

    response = client.post(_rent_url(hetzner_offering), values)

    contract = Contract.objects.get()
    assert response.status_code == 302
    assert contract.is_self_rental
    assert contract.price_cents == 0


def test_sandbox_offering_has_no_notice(client, tenant, offering, production_payments):
    client.force_login(tenant)

    html = client.get(offering.get_absolute_url()).content.decode()

    assert PAYMENT_NOTICE not in html
    assert "Rent this machine" in html
