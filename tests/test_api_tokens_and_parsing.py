"""API token sign-in, the token page, deeply nested JSON, and parallel rents with one idempotency key."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.urls import reverse
from knox.models import AuthToken
from rest_framework.test import APIClient

from marketplace.api.tokens import api_token_create, api_token_revoke
from marketplace.models import Contract, ContractStatus
from marketplace.services import contracts as contract_services
from tests.factories import make_offering, make_provider, make_user, ssh_public_key

DEEPLY_NESTED_JSON = '{"a":' * 5000 + "1" + "}" * 5000


@pytest.fixture
def tenant(db):
    return make_user(email="tenant@example.com")


@pytest.fixture
def offering(db):
    return make_offering(provider=make_provider(display_name="Acme Cloud"), slug="acme-small")


def _token_client(key: str, **kwargs) -> APIClient:
    client = APIClient(**kwargs)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


# --- token authentication ----------------------------------------------------------------------


@pytest.mark.django_db
def test_token_authenticates_rental_list(tenant, offering):
    token = api_token_create(user=tenant)

    response = _token_client(token.key).get("/api/v1/rentals/")

    assert response.status_code == 200
    assert response.json()["count"] == 0


@pytest.mark.django_db
def test_revoked_token_is_401(tenant):
    token = api_token_create(user=tenant)
    api_token_revoke(user=tenant)

    response = _token_client(token.key).get("/api/v1/rentals/")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["\xff\xfe", "caf\xe9"])
def test_token_that_is_not_utf8_is_401(tenant, key):
    # WSGI passes header bytes decoded as ISO-8859-1, so "\xff" here is the byte 0xFF.
    response = _token_client(key).get("/api/v1/rentals/")

    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.django_db
def test_token_rent_needs_no_csrf_token(tenant, offering):
    token = api_token_create(user=tenant)
    client = _token_client(token.key, enforce_csrf_checks=True)

    response = client.post("/api/v1/rentals/", {"offering": "acme-small", "ssh_public_key": ssh_public_key()}, format="json")

    assert response.status_code == 201, response.json()
    assert Contract.objects.get().tenant == tenant


@pytest.mark.django_db
def test_session_rent_still_needs_csrf_token(tenant, offering):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(tenant)

    response = client.post("/api/v1/rentals/", {"offering": "acme-small", "ssh_public_key": ssh_public_key()}, format="json")

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


@pytest.mark.django_db
def test_api_docs_describe_token_header(client):
    schema = client.get("/api/schema/?format=json").json()

    assert "Authorization: Token <key>" in schema["info"]["description"]
    assert "knoxApiToken" in schema["components"]["securitySchemes"]


# --- token page ----------------------------------------------------------------------------------

TOKEN_URL = reverse("marketplace:api_token")


@pytest.mark.django_db
def test_token_page_requires_login(client):
    response = client.get(TOKEN_URL)

    assert response.status_code == 302
    assert reverse("account_login") in response["Location"]


def _shown_key(response, token: AuthToken) -> str:
    """Return the full key the page shows for `token` (found by the prefix knox stores)."""
    match = re.search(re.escape(token.token_key) + r"[0-9a-f]+", response.content.decode())
    assert match, "the page does not show the new key"
    return match.group(0)


@pytest.mark.django_db
def test_token_page_shows_new_key_once(client, tenant):
    client.force_login(tenant)

    created = client.post(TOKEN_URL, {"action": "create"}, follow=True)
    again = client.get(TOKEN_URL)

    token = AuthToken.objects.get(user=tenant)
    key = _shown_key(created, token)
    assert _token_client(key).get("/api/v1/rentals/").status_code == 200
    assert key not in token.digest  # only a hash of the key is stored
    assert "Authorization: Token &lt;key&gt;" in created.content.decode()
    assert key not in again.content.decode()
    assert "You have a token, created" in again.content.decode()
    assert again["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_token_page_create_twice_keeps_first_key(client, tenant):
    client.force_login(tenant)
    client.post(TOKEN_URL, {"action": "create"})
    first = AuthToken.objects.get(user=tenant).digest

    response = client.post(TOKEN_URL, {"action": "create"}, follow=True)

    assert AuthToken.objects.get(user=tenant).digest == first
    assert "You already have an API token" in response.content.decode()


@pytest.mark.django_db
def test_token_page_regenerate_replaces_key(client, tenant):
    client.force_login(tenant)
    old = api_token_create(user=tenant).key

    response = client.post(TOKEN_URL, {"action": "regenerate"}, follow=True)

    new = _shown_key(response, AuthToken.objects.get(user=tenant))
    assert new != old
    assert _token_client(old).get("/api/v1/rentals/").status_code == 401
    assert _token_client(new).get("/api/v1/rentals/").status_code == 200


@pytest.mark.django_db
def test_token_page_revoke_deletes_token(client, tenant):
    client.force_login(tenant)
    api_token_create(user=tenant)

    response = client.post(TOKEN_URL, {"action": "revoke"}, follow=True)

    assert not AuthToken.objects.filter(user=tenant).exists()
    assert "Token revoked" in response.content.decode()
    assert "Create token" in response.content.decode()


@pytest.mark.django_db
def test_account_menu_links_token_and_email_pages(client, tenant):
    client.force_login(tenant)

    html = client.get(reverse("marketplace:catalog")).content.decode()

    assert f'href="{TOKEN_URL}"' in html
    assert f'href="{reverse("account_email")}"' in html


# --- deeply nested JSON ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/v1/rentals/", "/api/v1/ssh-keys/", "/api/v1/provider/profile/", "/api/v1/cloud-accounts/"]
)
def test_deeply_nested_json_is_400(tenant, path):
    client = APIClient()
    client.force_login(tenant)

    response = client.post(path, DEEPLY_NESTED_JSON, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == {"detail": "JSON nested too deeply."}


@pytest.mark.django_db
def test_shallow_invalid_json_keeps_drf_message(tenant):
    client = APIClient()
    client.force_login(tenant)

    response = client.post("/api/v1/rentals/", '{"offering":', content_type="application/json")

    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error")


# --- one idempotency key, concurrent requests --------------------------------------------------


@pytest.mark.django_db
def test_rent_replay_paid_by_concurrent_request_is_200(tenant, offering, monkeypatch):
    key = "parallel-rent-key-0001"
    client = APIClient()
    client.force_login(tenant)
    contract, _ = contract_services.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=ssh_public_key(), idempotency_key=key
    )
    real_pay = contract_services.contract_pay

    def pay_after_concurrent_request(*, contract, actor):
        # The concurrent request pays first; this request's pay then finds the contract paid.
        real_pay(contract=contract, actor=actor)
        return real_pay(contract=contract, actor=actor)

    monkeypatch.setattr(contract_services, "contract_pay", pay_after_concurrent_request)

    response = client.post(
        "/api/v1/rentals/",
        {"offering": "acme-small", "ssh_public_key": ssh_public_key(), "idempotency_key": key},
        format="json",
    )

    assert response.status_code == 200, response.json()
    assert response.json()["public_id"] == str(contract.public_id)
    assert Contract.objects.count() == 1
    assert Contract.objects.get().status == ContractStatus.PROVISIONING


@pytest.mark.django_db(transaction=True)
def test_parallel_rents_with_one_key_return_one_rental(live_server):
    tenant = make_user(email="parallel@example.com")
    make_offering(provider=make_provider(display_name="Parallel Cloud"), slug="parallel-small")
    token = api_token_create(user=tenant)
    body = json.dumps(
        {"offering": "parallel-small", "ssh_public_key": ssh_public_key(), "idempotency_key": "parallel-rent-key-0002"}
    ).encode()

    def post_rent(_index: int) -> tuple[int, str]:
        request = urllib.request.Request(
            f"{live_server.url}/api/v1/rentals/",
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Token {token.key}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())["public_id"]
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(post_rent, range(10)))

    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 9 + [201], results
    assert len({public_id for _, public_id in results}) == 1
    assert Contract.objects.count() == 1
