"""The offering form's live catalog: options from the fake Hetzner API, caching, spec fill-in,
the no-JavaScript "Load options" path, revalidation on save, the card preview and the API."""

from __future__ import annotations

import time

import pytest
from django.core.cache import cache
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace.models import Offering
from marketplace.services.cloud_catalog import cloud_catalog_cache_key
from notifications.models import Notification
from provisioning.models import Backend, ValidationStatus
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.factories import make_cloud_account, make_offering, make_provider, make_user

pytestmark = pytest.mark.django_db

NEW_OFFERING_URL = reverse("marketplace:offering_create")
OPTIONS_URL = reverse("marketplace:offering_catalog_options")
PREVIEW_URL = reverse("marketplace:offering_preview")


@pytest.fixture
def provider():
    return make_provider(display_name="Falkenstein Metal")


@pytest.fixture
def hetzner_account(provider, hetzner_api):
    return make_cloud_account(owner=provider.user, backend=Backend.HETZNER, label="Hetzner A", token=TEST_HCLOUD_TOKEN)


@pytest.fixture
def signed_in(client, provider):
    client.force_login(provider.user)
    return client


def catalog_requests(api) -> int:
    """Count the server type list requests the fake Hetzner API received."""
    return len(api.requests_matching("GET", "/server_types"))


def form_data(account, **overrides) -> dict:
    data = {
        "name": "Falkenstein small",
        "description": "",
        "product_type": "vm",
        "cloud_account": account.pk,
        "server_type": "cx22",
        "location_code": "fsn1",
        "image": "ubuntu-24.04",
        "vcpu": "2",
        "memory_mib": "4096",
        "disk_gb": "40",
        "gpu_model": "",
        "gpu_count": "0",
        "country": "",
        "city": "",
        "recipe_version": "",
        "price": "4.59",
        "currency": "EUR",
        "visibility": "public",
        "stock_status": "in_stock",
        "shared_with": "",
        "action": "save",
    }
    data.update(overrides)
    return data


# --- live options -------------------------------------------------------------------------------


def test_options_list_hetzner_catalog(signed_in, hetzner_account, hetzner_api):
    response = signed_in.get(OPTIONS_URL, {"cloud_account": hetzner_account.pk, "changed": "cloud_account"})

    html = response.content.decode()
    assert response.status_code == 200
    assert response["HX-Trigger"] == "offering-form-changed"
    assert "cx22: 2 vCPU, 4 GiB, 40 GB, x86" in html
    assert "cax11: 2 vCPU, 4 GiB, 40 GB, arm" in html
    assert "cx11" not in html  # Deprecated in every location, so not offered.
    assert "fsn1: Falkenstein, DE" in html
    assert "ubuntu-24.04 (arm, x86)" in html
    assert "ubuntu-20.04" not in html  # Deprecated image.
    assert 'name="vcpu"' in html
    assert "readonly" in html


def test_options_for_sandbox_keep_specs_editable(signed_in, provider):
    account = make_cloud_account(owner=provider.user, label="Sandbox")

    response = signed_in.get(OPTIONS_URL, {"cloud_account": account.pk, "server_type": "cx22", "vcpu": "7"})

    html = response.content.decode()
    assert "cx22" in html
    assert "readonly" not in html
    assert 'value="7"' in html


def test_server_type_change_fills_specs(signed_in, hetzner_account, hetzner_api):
    response = signed_in.get(
        OPTIONS_URL,
        {"cloud_account": hetzner_account.pk, "server_type": "cx32", "vcpu": "2", "changed": "server_type"},
    )

    form = response.context["form"]
    assert form["vcpu"].value() == "4"
    assert form["memory_mib"].value() == "8192"
    assert form["disk_gb"].value() == "80"


def test_options_are_cached_per_account_and_token(signed_in, provider, hetzner_account, hetzner_api):
    params = {"cloud_account": hetzner_account.pk}

    signed_in.get(OPTIONS_URL, params)
    after_first = catalog_requests(hetzner_api)
    signed_in.get(OPTIONS_URL, params)
    after_second = catalog_requests(hetzner_api)

    assert after_first == 1
    assert after_second == 1  # Served from the cache.

    hetzner_api.tokens.add("rotated-hcloud-token-0123456789")
    old_key = cloud_catalog_cache_key(hetzner_account)
    hetzner_account.set_token("rotated-hcloud-token-0123456789")
    hetzner_account.save()
    new_key = cloud_catalog_cache_key(hetzner_account)
    signed_in.get(OPTIONS_URL, params)

    assert new_key != old_key
    assert TEST_HCLOUD_TOKEN not in new_key
    assert catalog_requests(hetzner_api) == 2  # A new token never reads the old copy.

    other_account = make_cloud_account(
        owner=provider.user, backend=Backend.HETZNER, label="Hetzner B", token=TEST_HCLOUD_TOKEN
    )
    signed_in.get(OPTIONS_URL, {"cloud_account": other_account.pk})

    assert catalog_requests(hetzner_api) == 3  # Cached per account.


def test_options_cache_expires(signed_in, hetzner_account, hetzner_api, settings):
    settings.OFFERING_CATALOG_CACHE_SECONDS = 1
    params = {"cloud_account": hetzner_account.pk}

    signed_in.get(OPTIONS_URL, params)
    time.sleep(1.2)
    signed_in.get(OPTIONS_URL, params)

    assert catalog_requests(hetzner_api) == 2


def test_backend_error_shows_inline_with_status(signed_in, hetzner_account, hetzner_api):
    hetzner_api.add_fault("GET", "/server_types", status=503, times=None)

    response = signed_in.get(OPTIONS_URL, {"cloud_account": hetzner_account.pk, "server_type": "cx22"})

    html = response.content.decode()
    assert response.status_code == 200
    assert "Could not load server types, locations and images from Hetzner A" in html
    assert "Valid" in html  # The account's status badge: a 503 does not prove the token invalid.
    assert '<input type="text" name="server_type"' in html  # Typing stays possible.
    assert cache.get(cloud_catalog_cache_key(hetzner_account)) is None  # Errors are not cached.

    hetzner_api.clear_faults()
    recovered = signed_in.get(OPTIONS_URL, {"cloud_account": hetzner_account.pk})

    assert "cx22: 2 vCPU" in recovered.content.decode()


def test_rejected_token_marks_account_invalid(signed_in, provider, hetzner_account, hetzner_api):
    hetzner_api.tokens.clear()

    response = signed_in.get(OPTIONS_URL, {"cloud_account": hetzner_account.pk})

    hetzner_account.refresh_from_db()
    html = response.content.decode()
    assert hetzner_account.validation_status == ValidationStatus.INVALID
    assert "Hetzner rejected this API token" in hetzner_account.last_error
    assert "Invalid" in html
    assert "Hetzner rejected this API token" in html
    assert Notification.objects.filter(recipient=provider.user, event="credentials_invalid").count() == 1


def test_options_for_another_users_account_are_404(signed_in, hetzner_api):
    foreign = make_cloud_account(owner=make_user(), backend=Backend.HETZNER, label="Not yours", token=TEST_HCLOUD_TOKEN)

    response = signed_in.get(OPTIONS_URL, {"cloud_account": foreign.pk})

    assert response.status_code == 404
    assert catalog_requests(hetzner_api) == 0


def test_form_page_renders_catalog_choices(signed_in, hetzner_account, hetzner_api):
    response = signed_in.get(NEW_OFFERING_URL)

    html = response.content.decode()
    assert response.status_code == 200
    assert '<select name="server_type"' in html
    assert "cx32: 4 vCPU, 8 GiB, 80 GB, x86" in html
    assert 'id="card-preview"' in html
    assert "Load options" in html


# --- without JavaScript -------------------------------------------------------------------------


def test_load_options_fills_form_without_saving(signed_in, provider, hetzner_api):
    hetzner = make_cloud_account(owner=provider.user, backend=Backend.HETZNER, label="Hetzner", token=TEST_HCLOUD_TOKEN)

    response = signed_in.post(
        NEW_OFFERING_URL,
        form_data(hetzner, server_type="cpx21", vcpu="", memory_mib="", disk_gb="", action="load_options"),
    )

    form = response.context["form"]
    html = response.content.decode()
    assert response.status_code == 200
    assert Offering.objects.count() == 0
    assert form["vcpu"].value() == "3"
    assert form["memory_mib"].value() == "4096"
    assert form["disk_gb"].value() == "80"
    assert form["name"].value() == "Falkenstein small"
    assert "cpx21: 3 vCPU" in html
    assert "errorlist" not in html


def test_save_fills_blank_fixed_specs(signed_in, hetzner_account, hetzner_api):
    response = signed_in.post(NEW_OFFERING_URL, form_data(hetzner_account, vcpu="", memory_mib="", disk_gb=""))

    offering = Offering.objects.get()
    assert response.status_code == 302
    assert (offering.vcpu, offering.memory_mib, offering.disk_gb) == (2, 4096, 40)
    assert (offering.country, offering.city) == ("DE", "Falkenstein")


# --- saving checks a fresh catalog ----------------------------------------------------------


def test_save_rechecks_catalog_that_changed(signed_in, hetzner_account, hetzner_api):
    signed_in.get(OPTIONS_URL, {"cloud_account": hetzner_account.pk})
    assert "debian-12" in str(cache.get(cloud_catalog_cache_key(hetzner_account)).image_names())
    hetzner_api.deprecate_image("debian-12")
    hetzner_api.deprecate_server_type("cx32")
    before = catalog_requests(hetzner_api)

    response = signed_in.post(
        NEW_OFFERING_URL,
        form_data(hetzner_account, server_type="cx32", vcpu="4", memory_mib="8192", disk_gb="80", image="debian-12"),
    )

    errors = response.context["form"].errors
    assert response.status_code == 200
    assert catalog_requests(hetzner_api) == before + 1  # Saving asked the API, not the cache.
    assert "Unknown server type 'cx32'" in " ".join(errors["server_type"])
    assert "Unknown image 'debian-12'" in " ".join(errors["image"])
    assert Offering.objects.count() == 0
    assert "debian-12" not in cache.get(cloud_catalog_cache_key(hetzner_account)).image_names()


def test_save_rejects_specs_unlike_server_type(signed_in, hetzner_account, hetzner_api):
    response = signed_in.post(NEW_OFFERING_URL, form_data(hetzner_account, vcpu="3", disk_gb="400"))

    errors = response.context["form"].errors
    assert "server type 'cx22' has 2" in " ".join(errors["vcpu"])
    assert "set it to 40" in " ".join(errors["disk_gb"])
    assert "memory_mib" not in errors
    assert Offering.objects.count() == 0


def test_sandbox_accepts_specs_unlike_server_type(signed_in, provider):
    account = make_cloud_account(owner=provider.user, label="Sandbox")

    response = signed_in.post(NEW_OFFERING_URL, form_data(account, vcpu="3", disk_gb="400"))

    assert response.status_code == 302
    assert Offering.objects.get().vcpu == 3


def test_edit_keeps_value_the_catalog_dropped(signed_in, provider, hetzner_account, hetzner_api):
    offering = make_offering(provider=provider, cloud_account=hetzner_account, image="debian-12")
    hetzner_api.deprecate_image("debian-12")

    response = signed_in.get(reverse("marketplace:offering_edit", kwargs={"slug": offering.slug}))

    assert "debian-12 (not offered by this account)" in response.content.decode()


# --- card preview -----------------------------------------------------------------------------


def test_preview_renders_catalog_card(signed_in, hetzner_account, hetzner_api):
    response = signed_in.post(
        PREVIEW_URL, form_data(hetzner_account, name="Preview box", price="12.50", stock_status="limited")
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "Preview box" in html
    assert "€12.50" in html
    assert "Falkenstein, DE" in html  # Filled in from the chosen location.
    assert "Limited" in html
    assert "by Falkenstein Metal" in html
    assert Offering.objects.count() == 0


def test_preview_tolerates_invalid_values(signed_in, hetzner_account, hetzner_api):
    response = signed_in.post(
        PREVIEW_URL, form_data(hetzner_account, name="", price="1e999999", vcpu="lots", currency="???")
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "Untitled offering" in html
    assert "€0.00" in html
    assert "<strong>0</strong> vCPU" in html


# A digit such as "²" (U+00B2) passes str.isdigit() but int() rejects it.
NON_ASCII_DIGIT = "\u00b2"


def test_preview_tolerates_non_ascii_digits(signed_in, hetzner_account, hetzner_api):
    response = signed_in.post(
        PREVIEW_URL,
        form_data(hetzner_account, vcpu=NON_ASCII_DIGIT, recipe_version=NON_ASCII_DIGIT, price="3"),
    )

    assert response.status_code == 200
    assert "<strong>0</strong> vCPU" in response.content.decode()


def test_preview_with_non_ascii_account_id(signed_in, hetzner_account, hetzner_api):
    response = signed_in.post(PREVIEW_URL, form_data(hetzner_account, cloud_account=NON_ASCII_DIGIT))

    assert response.status_code == 200


def test_options_with_non_ascii_account_id_is_404(signed_in, hetzner_account, hetzner_api):
    response = signed_in.get(OPTIONS_URL, {"cloud_account": NON_ASCII_DIGIT, "changed": "cloud_account"})

    assert response.status_code == 404


@pytest.mark.parametrize("action", ["load_options", "save"])
def test_form_with_non_ascii_account_id(signed_in, hetzner_account, hetzner_api, action):
    response = signed_in.post(NEW_OFFERING_URL, form_data(hetzner_account, cloud_account=NON_ASCII_DIGIT, action=action))

    assert response.status_code == 200
    assert Offering.objects.count() == 0


# --- API ------------------------------------------------------------------------------------


def api_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_api_catalog_lists_options(provider, hetzner_account, hetzner_api):
    client = api_client(provider.user)
    url = f"/api/v1/cloud-accounts/{hetzner_account.pk}/catalog/"

    first = client.get(url)
    second = client.get(url)

    body = first.json()
    assert first.status_code == 200, body
    assert body["cached"] is False
    assert second.json()["cached"] is True
    assert catalog_requests(hetzner_api) == 1
    assert body["backend"] == "hetzner"
    assert body["editable_spec_fields"] == []
    cx22 = next(item for item in body["server_types"] if item["name"] == "cx22")
    assert (cx22["vcpu"], cx22["memory_mib"], cx22["disk_gb"]) == (2, 4096, 40)
    assert {"code": "fsn1", "city": "Falkenstein", "country": "DE", "description": "Falkenstein DC Park 1"} in body["locations"]
    assert {"name": "ubuntu-24.04", "architectures": ["arm", "x86"]} in body["images"]


def test_api_catalog_backend_error_is_502(provider, hetzner_account, hetzner_api):
    hetzner_api.add_fault("GET", "/server_types", status=500, times=None)

    response = api_client(provider.user).get(f"/api/v1/cloud-accounts/{hetzner_account.pk}/catalog/")

    body = response.json()
    assert response.status_code == 502
    assert "Could not load server types" in body["detail"]
    assert body["validation_status"] == "valid"


def test_api_catalog_of_another_user_is_404(hetzner_account, hetzner_api):
    response = api_client(make_user()).get(f"/api/v1/cloud-accounts/{hetzner_account.pk}/catalog/")

    assert response.status_code == 404
    assert catalog_requests(hetzner_api) == 0


def test_api_catalog_anonymous_is_401(hetzner_account):
    response = APIClient().get(f"/api/v1/cloud-accounts/{hetzner_account.pk}/catalog/")

    assert response.status_code == 401


def test_api_offering_specs_checked_against_server_type(provider, hetzner_account, hetzner_api):
    body = {
        "name": "API box", "cloud_account": hetzner_account.pk, "server_type": "cx22", "location_code": "fsn1",
        "image": "ubuntu-24.04", "vcpu": 8, "memory_mib": 4096, "disk_gb": 40, "price_cents": 500,
    }

    response = api_client(provider.user).post("/api/v1/provider/offerings/", body, format="json")

    assert response.status_code == 400
    assert "server type 'cx22' has 2" in response.json()["vcpu"][0]
