"""API error bodies: unmatched /api/ paths return JSON, and length errors state the length received."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    client = APIClient()
    client.force_login(make_user(email="lengths@example.com"))
    return client


@pytest.mark.parametrize(
    "path",
    [
        # Found by a review: the NUL byte matched no invoice route and Django's HTML page came back.
        "/api/v1/billing/invoices/%00/",
        "/api/v1/rentals/%00/",
        "/api/v1/no-such-endpoint/",
        "/api/v2/offerings/",
    ],
)
def test_unmatched_api_path_is_json_404(api, path):
    response = api.get(path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "/api/docs/" in response.json()["detail"]


def test_page_paths_keep_the_html_404(client):
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_length_error_states_length(api):
    response = api.put("/api/v1/billing/profile/", {"legal_name": "x" * 250, "country": "DE"}, format="json")

    assert response.status_code == 400
    assert response.json()["legal_name"] == ["Ensure this field has no more than 200 characters; this value has 250."]


def test_length_error_counts_unicode_characters(api):
    response = api.post("/api/v1/ssh-keys/", {"name": "ключ" * 30, "public_key": "ssh-ed25519 AAAA"}, format="json")

    assert response.status_code == 400
    assert "this value has 120." in response.json()["name"][0]
