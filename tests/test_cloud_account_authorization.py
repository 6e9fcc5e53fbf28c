"""No user can see, rename, validate, replace the token of, delete or use another user's cloud account."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace.models import Offering
from provisioning.models import Backend, CloudAccount, ValidationStatus
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.factories import make_cloud_account, make_offering, make_provider, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def victim_account():
    account = make_cloud_account(
        owner=make_user(), backend=Backend.HETZNER, label="Victim prod", token=TEST_HCLOUD_TOKEN,
        validation_status=ValidationStatus.UNCHECKED,
    )
    return CloudAccount.objects.get(pk=account.pk)


@pytest.fixture
def intruder():
    return make_provider().user


def _unchanged(account: CloudAccount) -> None:
    fresh = CloudAccount.all_objects.get(pk=account.pk)
    assert fresh.label == account.label
    assert fresh.token_ciphertext == account.token_ciphertext
    assert fresh.validation_status == account.validation_status
    assert fresh.validated_at == account.validated_at
    assert fresh.deleted_at is None


PAGE_REQUESTS = [
    ("get", "cloud_account", {}),
    ("post", "cloud_account_rename", {"rename-label": "Mine now"}),
    ("post", "cloud_account_token", {"token-token": "intruder-token"}),
    ("post", "cloud_account_validate", {}),
    ("get", "cloud_account_delete", {}),
    ("post", "cloud_account_delete", {}),
]


@pytest.mark.parametrize(("method", "name", "data"), PAGE_REQUESTS, ids=[f"{m}-{n}" for m, n, _ in PAGE_REQUESTS])
def test_pages_of_other_users_account_are_404(victim_account, intruder, method, name, data):
    client = Client()
    client.force_login(intruder)
    url = reverse(f"provisioning:{name}", kwargs={"pk": victim_account.pk})

    response = getattr(client, method)(url, data)

    assert response.status_code == 404
    assert b"Victim prod" not in response.content
    _unchanged(victim_account)


def test_list_page_shows_only_own_accounts(victim_account, intruder):
    client = Client()
    client.force_login(intruder)
    make_cloud_account(owner=intruder, label="Intruder sandbox")

    response = client.get(reverse("provisioning:cloud_accounts"))

    assert [account.label for account in response.context["accounts"]] == ["Intruder sandbox"]
    assert b"Victim prod" not in response.content


API_REQUESTS = [
    ("get", "", None),
    ("patch", "", {"label": "Mine now"}),
    ("post", "token/", {"token": "intruder-token"}),
    ("post", "validate/", None),
    ("delete", "", None),
]


@pytest.mark.parametrize(("method", "suffix", "body"), API_REQUESTS, ids=[f"{m}-{s or 'detail'}" for m, s, _ in API_REQUESTS])
def test_api_of_other_users_account_is_404(victim_account, intruder, method, suffix, body):
    client = APIClient()
    client.force_login(intruder)

    response = getattr(client, method)(f"/api/v1/cloud-accounts/{victim_account.pk}/{suffix}", body, format="json")

    assert response.status_code == 404
    assert b"Victim prod" not in response.content
    _unchanged(victim_account)


def test_api_list_shows_only_own_accounts(victim_account, intruder):
    client = APIClient()
    client.force_login(intruder)

    response = client.get("/api/v1/cloud-accounts/")

    assert response.json()["results"] == []


def test_anonymous_gets_no_account(victim_account):
    page = Client().get(reverse("provisioning:cloud_account", kwargs={"pk": victim_account.pk}))
    api = APIClient().get(f"/api/v1/cloud-accounts/{victim_account.pk}/")

    assert page.status_code == 302
    assert api.status_code == 401


def test_offering_form_rejects_other_users_account(victim_account, intruder):
    client = Client()
    client.force_login(intruder)

    response = client.post(
        reverse("marketplace:offering_create"),
        {
            "name": "Stolen", "product_type": "vm", "cloud_account": victim_account.pk, "server_type": "cx22",
            "location_code": "fsn1", "image": "ubuntu-24.04", "vcpu": "2", "memory_mib": "4096", "disk_gb": "40",
            "gpu_count": "0", "price": "1.00", "currency": "EUR", "visibility": "public", "stock_status": "in_stock",
        },
    )

    assert response.status_code == 200
    assert "cloud_account" in response.context["form"].errors
    assert not Offering.objects.filter(cloud_account=victim_account).exists()


def test_offering_api_rejects_other_users_account(victim_account, intruder):
    client = APIClient()
    client.force_login(intruder)

    response = client.post(
        "/api/v1/provider/offerings/",
        {
            "name": "Stolen", "cloud_account": victim_account.pk, "server_type": "cx22", "location_code": "fsn1",
            "image": "ubuntu-24.04", "vcpu": 2, "memory_mib": 4096, "disk_gb": 40, "price_cents": 100,
            "currency": "EUR",
        },
        format="json",
    )

    assert response.status_code == 400
    assert "cloud_account" in response.json()
    assert not Offering.objects.filter(cloud_account=victim_account).exists()


def test_offering_edit_cannot_move_to_other_users_account(victim_account, intruder):
    own = make_cloud_account(owner=intruder)
    offering = make_offering(provider=intruder.provider_profile, cloud_account=own, slug="intruder-box")
    client = APIClient()
    client.force_login(intruder)

    response = client.patch(
        "/api/v1/provider/offerings/intruder-box/", {"cloud_account": victim_account.pk}, format="json"
    )

    offering.refresh_from_db()
    assert response.status_code == 400
    assert "cloud_account" in response.json()
    assert offering.cloud_account_id == own.pk
