"""Cloud account REST API: add against the fake Hetzner and Proxmox VE APIs, rename, token, validate, delete."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from marketplace.models import Contract, ContractStatus
from provisioning.models import Backend, CloudAccount, ValidationStatus
from tests.conftest import TEST_HCLOUD_TOKEN, TEST_PROXMOX_TOKEN_ID, TEST_PROXMOX_TOKEN_SECRET
from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_user,
)

pytestmark = pytest.mark.django_db

URL = "/api/v1/cloud-accounts/"


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def detail_url(account: CloudAccount, suffix: str = "") -> str:
    return f"{URL}{account.pk}/{suffix}"


def proxmox_body(api, **overrides) -> dict:
    body = {
        "backend": "proxmox",
        "label": "Rack 1",
        "proxmox_api_url": api.url,
        "proxmox_token_id": TEST_PROXMOX_TOKEN_ID,
        "token": TEST_PROXMOX_TOKEN_SECRET,
        "proxmox_node": "pve",
    }
    body.update(overrides)
    return body


@pytest.fixture
def user():
    return make_user()


@pytest.fixture
def api(user):
    return client_for(user)


# --- create ---------------------------------------------------------------------------------------


def test_create_hetzner_checks_token(api, user, hetzner_api):
    response = api.post(URL, {"backend": "hetzner", "label": "Prod", "token": TEST_HCLOUD_TOKEN}, format="json")

    body = response.json()
    account = CloudAccount.objects.get(owner=user)
    assert response.status_code == 201, body
    assert body["id"] == account.pk
    assert body["validation_status"] == "valid"
    assert body["has_token"] is True
    assert body["offering_count"] == 0
    assert body["live_rental_count"] == 0
    assert "token" not in body
    assert TEST_HCLOUD_TOKEN not in response.content.decode()
    assert account.get_token() == TEST_HCLOUD_TOKEN


def test_create_hetzner_rejected_token_is_400(api, hetzner_api):
    response = api.post(URL, {"backend": "hetzner", "label": "Prod", "token": "revoked-token"}, format="json")

    assert response.status_code == 400
    assert "Hetzner rejected this API token (HTTP 401" in response.json()["token"][0]
    assert "revoked-token" not in response.content.decode()
    assert not CloudAccount.objects.exists()


def test_create_hetzner_unreachable_api_is_400(api):
    response = api.post(URL, {"backend": "hetzner", "label": "Prod", "token": TEST_HCLOUD_TOKEN}, format="json")

    assert response.status_code == 400
    assert "Could not check the token against the Hetzner Cloud API" in response.json()["detail"]
    assert not CloudAccount.objects.exists()


def test_create_proxmox_checks_token_and_node(api, user, proxmox_api):
    response = api.post(URL, proxmox_body(proxmox_api, proxmox_vmid_min=7000, proxmox_vmid_max=7999), format="json")

    body = response.json()
    account = CloudAccount.objects.get(owner=user)
    assert response.status_code == 201, body
    assert body["proxmox_verify_tls"] is True
    assert body["proxmox_node"] == "pve"
    assert body["proxmox_token_id"] == TEST_PROXMOX_TOKEN_ID
    assert (body["proxmox_vmid_min"], body["proxmox_vmid_max"]) == (7000, 7999)
    assert TEST_PROXMOX_TOKEN_SECRET not in response.content.decode()
    assert account.get_token() == TEST_PROXMOX_TOKEN_SECRET


def test_create_proxmox_form_encoded_keeps_tls_verification_on(api, user, proxmox_api):
    response = api.post(URL, proxmox_body(proxmox_api))

    assert response.status_code == 201, response.json()
    assert CloudAccount.objects.get(owner=user).proxmox_verify_tls is True


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"token": "wrong-secret"}, "token", "invalid token value"),
        ({"token": ""}, "token", "secret is required"),
        ({"proxmox_node": "pve7"}, "proxmox_node", "'pve7' was not found"),
        ({"proxmox_api_url": "http://pve.example.com:8006"}, "proxmox_api_url", "use https://"),
        ({"proxmox_api_url": "http://127.0.0.1:9"}, "proxmox_api_url", "the connection failed"),
        ({"proxmox_api_url": "https://" + "a" * 400}, "proxmox_api_url", "no more than 300 characters"),
        ({"proxmox_token_id": "nobody"}, "proxmox_token_id", "USER@REALM!TOKENNAME"),
        ({"label": "x" * 1000}, "label", "no more than 80 characters"),
        ({"label": "Rack\u2066"}, "label", "U+2066"),
        ({"proxmox_vmid_min": 5}, "proxmox_vmid_min", "both ends"),
    ],
    ids=["wrong-secret", "empty-secret", "unknown-node", "http-remote", "unreachable", "huge-url", "bad-token-id",
         "huge-label", "bidi-label", "half-range"],
)
def test_create_proxmox_error_is_400_naming_field(api, proxmox_api, overrides, field, message):
    response = api.post(URL, proxmox_body(proxmox_api, **overrides), format="json")

    body = response.json()
    assert response.status_code == 400
    assert message in " ".join(body[field])
    assert TEST_PROXMOX_TOKEN_SECRET not in response.content.decode()
    assert not CloudAccount.objects.exists()


def test_create_proxmox_tls_failure_is_400(api):
    from tests.peers.proxmox_api import ProxmoxApiServer

    with ProxmoxApiServer(tokens={TEST_PROXMOX_TOKEN_ID: TEST_PROXMOX_TOKEN_SECRET}, tls=True) as server:
        response = api.post(URL, proxmox_body(server), format="json")

    assert response.status_code == 400
    assert "could not be verified" in response.json()["proxmox_verify_tls"][0]


def test_create_hetzner_with_proxmox_fields_is_400(api, hetzner_api):
    response = api.post(
        URL,
        {"backend": "hetzner", "label": "Prod", "token": TEST_HCLOUD_TOKEN, "proxmox_node": "pve"},
        format="json",
    )

    assert response.status_code == 400
    assert "Only Proxmox VE accounts take proxmox_node" in response.json()["proxmox_node"][0]
    assert not CloudAccount.objects.exists()


def test_create_twice_is_400_on_label(api, user, hetzner_api):
    body = {"backend": "hetzner", "label": "Prod", "token": TEST_HCLOUD_TOKEN}

    first = api.post(URL, body, format="json")
    second = api.post(URL, body, format="json")

    assert first.status_code == 201
    assert second.status_code == 400
    assert "already have a cloud account labelled 'Prod'" in second.json()["label"][0]
    assert CloudAccount.objects.filter(owner=user).count() == 1


def test_create_unknown_backend_is_400(api):
    response = api.post(URL, {"backend": "digitalocean", "label": "x"}, format="json")

    assert response.status_code == 400
    assert "backend" in response.json()


# --- list, rename ---------------------------------------------------------------------------------


def test_list_counts_offerings_and_live_rentals(api, user, django_assert_num_queries):
    provider = make_provider(user=user)
    account = make_cloud_account(owner=user, label="Busy")
    make_cloud_account(owner=user, label="Idle")
    offering = make_offering(provider=provider, cloud_account=account)
    make_contract(tenant=make_user(), offering=offering)
    ended = make_contract(tenant=make_user(), offering=offering)
    Contract.objects.filter(pk=ended.pk).update(status=ContractStatus.FAILED)

    with django_assert_num_queries(4):
        response = api.get(URL)

    rows = {row["label"]: row for row in response.json()["results"]}
    assert rows["Busy"]["offering_count"] == 1
    assert rows["Busy"]["live_rental_count"] == 1
    assert rows["Idle"]["offering_count"] == 0


def test_rename_with_patch(api, user):
    account = make_cloud_account(owner=user, label="Old")

    response = api.patch(detail_url(account), {"label": "New"}, format="json")

    account.refresh_from_db()
    assert response.status_code == 200
    assert response.json()["label"] == "New"
    assert account.label == "New"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"label": "Taken"}, "label", "already have a cloud account labelled 'Taken'"),
        ({"label": ""}, "label", "may not be blank"),
        ({"label": "y" * 81}, "label", "no more than 80"),
        ({"label": "New", "backend": "hetzner"}, "backend", "Only label can be changed"),
        ({"label": "New", "token": "x"}, "token", "Only label can be changed"),
        ({}, "label", "required"),
    ],
    ids=["taken", "empty", "huge", "backend", "token", "missing"],
)
def test_rename_bad_request_is_400(api, user, body, field, message):
    account = make_cloud_account(owner=user, label="Mine")
    make_cloud_account(owner=user, label="Taken")

    response = api.patch(detail_url(account), body, format="json")

    account.refresh_from_db()
    assert response.status_code == 400
    assert message in " ".join(response.json()[field])
    assert account.label == "Mine"


def test_put_is_not_allowed(api, user):
    account = make_cloud_account(owner=user)

    response = api.put(detail_url(account), {"label": "x", "backend": "sandbox"}, format="json")

    assert response.status_code == 405


# --- token, validate ------------------------------------------------------------------------------


def test_replace_token_checks_it_first(api, user, hetzner_api):
    account = make_cloud_account(owner=user, backend=Backend.HETZNER, token="old-token", validation_status=ValidationStatus.INVALID)

    rejected = api.post(detail_url(account, "token/"), {"token": "still-wrong"}, format="json")
    account.refresh_from_db()
    kept = account.get_token()
    accepted = api.post(detail_url(account, "token/"), {"token": TEST_HCLOUD_TOKEN}, format="json")
    account.refresh_from_db()

    assert rejected.status_code == 400
    assert "Hetzner rejected this API token" in rejected.json()["token"][0]
    assert kept == "old-token"
    assert accepted.status_code == 200
    assert accepted.json()["validation_status"] == "valid"
    assert TEST_HCLOUD_TOKEN not in accepted.content.decode()
    assert account.get_token() == TEST_HCLOUD_TOKEN


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [({}, "token", "required"), ({"token": ""}, "token", "may not be blank"), ({"token": "a b"}, "token", "position 2")],
    ids=["missing", "empty", "space"],
)
def test_replace_token_bad_input_is_400(api, user, hetzner_api, body, field, message):
    account = make_cloud_account(owner=user, backend=Backend.HETZNER, token=TEST_HCLOUD_TOKEN)

    response = api.post(detail_url(account, "token/"), body, format="json")

    assert response.status_code == 400
    assert message in " ".join(response.json()[field])
    assert hetzner_api.requests == []


def test_replace_token_of_sandbox_is_400(api, user):
    account = make_cloud_account(owner=user)

    response = api.post(detail_url(account, "token/"), {"token": "abc"}, format="json")

    assert response.status_code == 400
    assert "has no API token" in response.json()["token"][0]


def test_validate_records_result_and_is_rate_limited(api, user, hetzner_api, settings):
    settings.CLOUD_ACCOUNT_VALIDATE_INTERVAL_SECONDS = 45
    account = make_cloud_account(owner=user, backend=Backend.HETZNER, token=TEST_HCLOUD_TOKEN)
    hetzner_api.tokens.clear()

    first = api.post(detail_url(account, "validate/"))
    second = api.post(detail_url(account, "validate/"))

    assert first.status_code == 200
    assert first.json()["validation_status"] == "invalid"
    assert "Hetzner rejected this API token" in first.json()["last_error"]
    assert second.status_code == 429
    assert 1 <= int(second["Retry-After"]) <= 45
    assert "checked less than 45 seconds ago" in second.json()["detail"]
    assert len(hetzner_api.requests) == 1


def test_validate_limit_is_per_account(api, user, settings):
    settings.CLOUD_ACCOUNT_VALIDATE_INTERVAL_SECONDS = 45
    first = make_cloud_account(owner=user, label="A")
    second = make_cloud_account(owner=user, label="B")

    responses = [api.post(detail_url(first, "validate/")), api.post(detail_url(second, "validate/"))]

    assert [response.status_code for response in responses] == [200, 200]


# --- delete -----------------------------------------------------------------------------------------


def test_delete_unused_account_is_204(api, user):
    account = make_cloud_account(owner=user)

    response = api.delete(detail_url(account))

    assert response.status_code == 204
    assert not CloudAccount.all_objects.filter(pk=account.pk).exists()


def test_delete_in_use_is_409_naming_dependents(api, user):
    provider = make_provider(user=user)
    account = make_cloud_account(owner=user, label="Busy")
    offering = make_offering(provider=provider, cloud_account=account, name="Tiny box", slug="tiny-box")
    contract = make_contract(tenant=make_user(), offering=offering)

    response = api.delete(detail_url(account))

    body = response.json()
    assert response.status_code == 409
    assert "still used by offering 'Tiny box' and live rental 'Tiny box'" in body["detail"]
    assert body["offerings"] == [{"slug": "tiny-box", "name": "Tiny box"}]
    assert body["rentals"] == [{"id": str(contract.public_id), "offering_name": "Tiny box", "status": contract.status}]
    assert CloudAccount.objects.filter(pk=account.pk).exists()


def test_deleted_account_is_gone_from_api(api, user):
    provider = make_provider(user=user)
    account = make_cloud_account(owner=user, label="Old")
    other = make_cloud_account(owner=user, label="Other")
    offering = make_offering(provider=provider, cloud_account=account)
    contract = make_contract(tenant=make_user(), offering=offering)
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.TERMINATED)
    offering.cloud_account = other
    offering.save(update_fields=["cloud_account"])

    deleted = api.delete(detail_url(account))
    listing = api.get(URL)
    detail = api.get(detail_url(account))

    assert deleted.status_code == 204
    assert [row["label"] for row in listing.json()["results"]] == ["Other"]
    assert detail.status_code == 404
    assert CloudAccount.all_objects.get(pk=account.pk).deleted_at is not None


def test_schema_documents_cloud_account_actions(api):
    response = api.get("/api/schema/", {"format": "json"})

    paths = response.json()["paths"]
    assert set(paths["/api/v1/cloud-accounts/{id}/"]) >= {"get", "patch", "delete"}
    assert "409" in paths["/api/v1/cloud-accounts/{id}/"]["delete"]["responses"]
    assert "429" in paths["/api/v1/cloud-accounts/{id}/validate/"]["post"]["responses"]
    assert "post" in paths["/api/v1/cloud-accounts/{id}/token/"]
