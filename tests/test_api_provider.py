"""API tests: provider profile and offerings, cloud accounts, SSH keys, and the OpenAPI schema."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from marketplace.models import Offering, ProviderProfile, SshKey
from provisioning.models import CloudAccount
from tests.factories import (
    make_cloud_account,
    make_offering,
    make_provider,
    make_recipe,
    make_user,
    ssh_public_key,
)

pytestmark = pytest.mark.django_db

# Never a real token: the Hetzner endpoint points at a closed loopback port in tests.
PLAINTEXT_TOKEN = "plaintext-hetzner-token-must-never-be-echoed-0123456789"


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


# --- provider profile ----------------------------------------------------------------------


def test_profile_get_without_profile_is_404() -> None:
    response = client_for(make_user()).get("/api/v1/provider/profile/")

    assert response.status_code == 404


def test_profile_create_get_and_patch() -> None:
    user = make_user()
    client = client_for(user)

    created = client.post(
        "/api/v1/provider/profile/", {"display_name": "Nordic Metal", "country": "fi", "auto_accept": False}, format="json"
    )
    patched = client.patch("/api/v1/provider/profile/", {"description": "Bare metal in Helsinki."}, format="json")
    fetched = client.get("/api/v1/provider/profile/")

    assert created.status_code == 201
    assert created.json()["slug"] == "nordic-metal"
    assert created.json()["country"] == "FI"
    assert patched.status_code == 200
    assert fetched.json()["description"] == "Bare metal in Helsinki."
    assert fetched.json()["display_name"] == "Nordic Metal"
    assert fetched.json()["auto_accept"] is False


def test_profile_create_twice_is_400() -> None:
    provider = make_provider()

    response = client_for(provider.user).post("/api/v1/provider/profile/", {"display_name": "Again"}, format="json")

    assert response.status_code == 400
    assert ProviderProfile.objects.filter(user=provider.user).count() == 1


def test_profile_invalid_country_is_400_naming_field() -> None:
    response = client_for(make_user()).post(
        "/api/v1/provider/profile/", {"display_name": "Bad Country", "country": "D1"}, format="json"
    )

    assert response.status_code == 400
    assert "country" in response.json()


def test_profile_anonymous_write_is_401() -> None:
    response = APIClient().post("/api/v1/provider/profile/", {"display_name": "Nobody"}, format="json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


# --- provider offerings --------------------------------------------------------------------


@pytest.fixture
def provider():
    return make_provider(display_name="Acme Cloud")


@pytest.fixture
def account(provider):
    return make_cloud_account(owner=provider.user, label="Acme sandbox")


def offering_body(account, **overrides) -> dict:
    body = {
        "name": "Acme medium",
        "description": "Four cores.",
        "product_type": "vm",
        "cloud_account": account.pk,
        "vcpu": 4,
        "memory_mib": 8192,
        "disk_gb": 80,
        "location_code": "nbg1",
        "server_type": "cx32",
        "image": "ubuntu-24.04",
        "price_cents": 1500,
        "currency": "EUR",
        "visibility": "public",
        "stock_status": "in_stock",
    }
    body.update(overrides)
    return body


def test_provider_offering_create(provider, account) -> None:
    response = client_for(provider.user).post("/api/v1/provider/offerings/", offering_body(account), format="json")

    body = response.json()
    assert response.status_code == 201, body
    assert body["slug"] == "acme-medium"
    assert body["country"] == "DE"  # Filled in from the nbg1 location.
    assert body["city"] == "Nuremberg"
    assert Offering.objects.get(slug="acme-medium").provider == provider


def test_provider_offering_create_unknown_server_type_is_400(provider, account) -> None:
    response = client_for(provider.user).post(
        "/api/v1/provider/offerings/", offering_body(account, server_type="zz99"), format="json"
    )

    assert response.status_code == 400
    assert "server_type" in response.json()


def test_provider_offering_create_negative_price_is_400(provider, account) -> None:
    response = client_for(provider.user).post(
        "/api/v1/provider/offerings/", offering_body(account, price_cents=-1), format="json"
    )

    assert response.status_code == 400
    assert "price_cents" in response.json()


def test_provider_offering_create_with_foreign_account_is_400(provider) -> None:
    foreign = make_cloud_account(owner=make_user())

    response = client_for(provider.user).post("/api/v1/provider/offerings/", offering_body(foreign), format="json")

    assert response.status_code == 400
    assert "cloud_account" in response.json()
    assert Offering.objects.count() == 0


def test_provider_offering_create_without_profile_is_400() -> None:
    user = make_user()
    account = make_cloud_account(owner=user)

    response = client_for(user).post("/api/v1/provider/offerings/", offering_body(account), format="json")

    assert response.status_code == 400
    assert Offering.objects.count() == 0


def test_provider_offering_patch(provider, account) -> None:
    offering = make_offering(provider=provider, cloud_account=account, slug="acme-small")
    recipe = make_recipe(author=provider.user)

    response = client_for(provider.user).patch(
        "/api/v1/provider/offerings/acme-small/",
        {"price_cents": 777, "stock_status": "limited", "recipe_version": recipe.pk},
        format="json",
    )

    offering.refresh_from_db()
    assert response.status_code == 200, response.json()
    assert offering.price_cents == 777
    assert offering.stock_status == "limited"
    assert offering.recipe_version == recipe
    assert offering.slug == "acme-small"


def test_provider_offering_put_is_not_allowed(provider, account) -> None:
    make_offering(provider=provider, cloud_account=account, slug="acme-small")

    response = client_for(provider.user).put("/api/v1/provider/offerings/acme-small/", offering_body(account), format="json")

    assert response.status_code == 405


def test_provider_offerings_of_another_provider_are_404(provider, account) -> None:
    make_offering(provider=provider, cloud_account=account, slug="acme-small")
    other = make_provider(display_name="Other")
    client = client_for(other.user)

    listing = client.get("/api/v1/provider/offerings/")
    detail = client.get("/api/v1/provider/offerings/acme-small/")
    patch = client.patch("/api/v1/provider/offerings/acme-small/", {"price_cents": 1}, format="json")

    assert listing.json()["results"] == []
    assert detail.status_code == 404
    assert patch.status_code == 404
    assert Offering.objects.get(slug="acme-small").price_cents != 1


def test_provider_offerings_list_query_count(provider, account, django_assert_num_queries) -> None:
    for index in range(5):
        make_offering(provider=provider, cloud_account=account, slug=f"acme-{index}", recipe_version=make_recipe(author=provider.user))
    client = client_for(provider.user)

    # Session, user, COUNT and one SELECT with the account and recipe version joined.
    with django_assert_num_queries(4):
        response = client.get("/api/v1/provider/offerings/")

    assert response.json()["count"] == 5


# --- cloud accounts ------------------------------------------------------------------------


def test_cloud_account_create_sandbox() -> None:
    response = client_for(make_user()).post(
        "/api/v1/cloud-accounts/", {"backend": "sandbox", "label": "Play"}, format="json"
    )

    assert response.status_code == 201
    assert response.json()["validation_status"] == "valid"
    assert response.json()["has_token"] is False


def test_cloud_account_duplicate_label_is_400() -> None:
    user = make_user()
    make_cloud_account(owner=user, label="Play")

    response = client_for(user).post("/api/v1/cloud-accounts/", {"backend": "sandbox", "label": "Play"}, format="json")

    assert response.status_code == 400
    assert "label" in response.json()


def test_cloud_account_hetzner_without_token_is_400() -> None:
    response = client_for(make_user()).post(
        "/api/v1/cloud-accounts/", {"backend": "hetzner", "label": "Prod"}, format="json"
    )

    assert response.status_code == 400
    assert "token" in response.json()


def test_cloud_account_token_never_in_any_response(hetzner_api) -> None:
    hetzner_api.tokens.add(PLAINTEXT_TOKEN)
    user = make_user()
    client = client_for(user)

    created = client.post(
        "/api/v1/cloud-accounts/", {"backend": "hetzner", "label": "Prod", "token": PLAINTEXT_TOKEN}, format="json"
    )
    account = CloudAccount.objects.get(owner=user, label="Prod")
    later = {
        "list": client.get("/api/v1/cloud-accounts/"),
        "detail": client.get(f"/api/v1/cloud-accounts/{account.pk}/"),
        "validate": client.post(f"/api/v1/cloud-accounts/{account.pk}/validate/"),
    }

    assert created.status_code == 201, created.json()
    assert created.json()["has_token"] is True
    assert "token" not in created.json()
    assert account.get_token() == PLAINTEXT_TOKEN
    for response in [created, *later.values()]:
        assert PLAINTEXT_TOKEN.encode() not in response.content
        assert account.token_ciphertext.encode() not in response.content
    for name, response in later.items():
        assert response.status_code == 200, name


def test_cloud_account_validate_sandbox() -> None:
    user = make_user()
    account = make_cloud_account(owner=user, validation_status="unchecked")

    response = client_for(user).post(f"/api/v1/cloud-accounts/{account.pk}/validate/")

    assert response.status_code == 200
    assert response.json()["validation_status"] == "valid"


def test_cloud_accounts_of_another_user_are_404() -> None:
    owner = make_user()
    account = make_cloud_account(owner=owner, validation_status="unchecked")
    client = client_for(make_user())

    listing = client.get("/api/v1/cloud-accounts/")
    detail = client.get(f"/api/v1/cloud-accounts/{account.pk}/")
    validate = client.post(f"/api/v1/cloud-accounts/{account.pk}/validate/")

    assert listing.json()["results"] == []
    assert detail.status_code == 404
    assert validate.status_code == 404
    account.refresh_from_db()
    assert account.validation_status == "unchecked"


def test_cloud_accounts_anonymous_is_401() -> None:
    response = APIClient().get("/api/v1/cloud-accounts/")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


# --- SSH keys ------------------------------------------------------------------------------


def test_ssh_key_create_list_delete() -> None:
    user = make_user()
    client = client_for(user)

    created = client.post("/api/v1/ssh-keys/", {"name": "laptop", "public_key": ssh_public_key()}, format="json")
    listing = client.get("/api/v1/ssh-keys/")
    deleted = client.delete(f"/api/v1/ssh-keys/{created.json()['id']}/")

    assert created.status_code == 201
    assert created.json()["key_type"] == "ssh-ed25519"
    assert created.json()["fingerprint"].startswith("SHA256:")
    assert [item["name"] for item in listing.json()["results"]] == ["laptop"]
    assert deleted.status_code == 204
    assert SshKey.objects.filter(user=user).count() == 0


def test_ssh_key_invalid_is_400_naming_public_key() -> None:
    response = client_for(make_user()).post("/api/v1/ssh-keys/", {"name": "bad", "public_key": "ssh-rsa AAAA"}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["public_key"]


def test_ssh_key_duplicate_is_400_naming_public_key() -> None:
    client = client_for(make_user())
    key = ssh_public_key()
    client.post("/api/v1/ssh-keys/", {"name": "one", "public_key": key}, format="json")

    response = client.post("/api/v1/ssh-keys/", {"name": "two", "public_key": key}, format="json")

    assert response.status_code == 400
    assert "public_key" in response.json()


def test_ssh_keys_of_another_user_are_404() -> None:
    from marketplace.services.ssh_keys import ssh_key_create

    key = ssh_key_create(user=make_user(), name="theirs", public_key=ssh_public_key())
    client = client_for(make_user())

    listing = client.get("/api/v1/ssh-keys/")
    detail = client.get(f"/api/v1/ssh-keys/{key.pk}/")
    deleted = client.delete(f"/api/v1/ssh-keys/{key.pk}/")

    assert listing.json()["results"] == []
    assert detail.status_code == 404
    assert deleted.status_code == 404
    assert SshKey.objects.filter(pk=key.pk).exists()


def test_ssh_keys_anonymous_write_is_401() -> None:
    response = APIClient().post("/api/v1/ssh-keys/", {"name": "x", "public_key": ssh_public_key()}, format="json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


# --- schema --------------------------------------------------------------------------------


def test_schema_validates_without_warnings(tmp_path) -> None:
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))

    assert "/api/v1/rentals/" in (tmp_path / "schema.yaml").read_text()


def test_schema_and_docs_are_served() -> None:
    schema = APIClient().get("/api/schema/")
    docs = APIClient().get("/api/docs/")

    assert schema.status_code == 200
    assert docs.status_code == 200


# --- names and offering limits --------------------------------------------------------------


def test_profile_name_taken_in_other_case_is_400() -> None:
    make_provider(display_name="Nordic Metal")

    response = client_for(make_user()).post("/api/v1/provider/profile/", {"display_name": "NORDIC metal"}, format="json")

    assert response.status_code == 400
    assert response.json() == {"display_name": ["A provider named 'Nordic Metal' already exists; choose another name."]}


def test_profile_sandbox_name_is_400() -> None:
    response = client_for(make_user()).post("/api/v1/provider/profile/", {"display_name": "SandBox Inc"}, format="json")

    assert response.status_code == 400
    assert response.json() == {"display_name": ['"Sandbox" is reserved for simulated offerings; choose another name.']}


def test_profile_rename_to_sandbox_is_400() -> None:
    provider = make_provider(display_name="Plain Name")

    response = client_for(provider.user).patch("/api/v1/provider/profile/", {"display_name": "Sandbox"}, format="json")

    provider.refresh_from_db()
    assert response.status_code == 400
    assert provider.display_name == "Plain Name"


def test_profile_bidi_name_is_400() -> None:
    response = client_for(make_user()).post("/api/v1/provider/profile/", {"display_name": "Nordic\u2069"}, format="json")

    assert response.status_code == 400
    assert response.json()["display_name"] == [
        "This name contains an invisible text-direction character (U+2069); remove it."
    ]


def test_ssh_key_bidi_name_is_400() -> None:
    response = client_for(make_user()).post(
        "/api/v1/ssh-keys/", {"name": "\u202blaptop", "public_key": ssh_public_key()}, format="json"
    )

    assert response.status_code == 400
    assert "U+202B" in response.json()["name"][0]


def test_cloud_account_bidi_label_is_400() -> None:
    response = client_for(make_user()).post(
        "/api/v1/cloud-accounts/", {"backend": "sandbox", "label": "Play\u200f"}, format="json"
    )

    assert response.status_code == 400
    assert "U+200F" in response.json()["label"][0]


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"name": "Cheap\u202eGPU"}, {"name"}),
        ({"currency": "XYZ"}, {"currency"}),
        ({"memory_mib": 16 * 1024 * 1024 + 1}, {"memory_mib"}),
        ({"disk_gb": 1_000_001}, {"disk_gb"}),
        ({"gpu_model": "NVIDIA L4", "gpu_count": 65}, {"gpu_count"}),
        ({"gpu_model": "NVIDIA L4", "gpu_count": 0}, {"gpu_model", "gpu_count"}),
        ({"gpu_count": 2}, {"gpu_model", "gpu_count"}),
        ({"country": "XX", "city": "Nowhere"}, {"country"}),
    ],
    ids=["bidi-name", "currency", "memory", "disk", "gpu-count", "gpu-model-only", "gpu-count-only", "country"],
)
def test_provider_offering_invalid_value_is_400(provider, account, overrides, fields) -> None:
    response = client_for(provider.user).post(
        "/api/v1/provider/offerings/", offering_body(account, **overrides), format="json"
    )

    assert response.status_code == 400
    assert fields <= set(response.json()), response.json()
    assert not Offering.objects.exists()


def test_provider_offering_currency_is_upper_cased(provider, account) -> None:
    response = client_for(provider.user).post(
        "/api/v1/provider/offerings/", offering_body(account, currency="chf"), format="json"
    )

    assert response.status_code == 201, response.json()
    assert response.json()["currency"] == "CHF"
