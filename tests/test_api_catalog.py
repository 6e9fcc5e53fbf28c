"""API tests: the offering catalog, offering detail and recipes."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from marketplace.models import ProductType, Visibility
from provisioning.models import ValidationStatus
from tests.factories import make_cloud_account, make_offering, make_provider, make_recipe, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def catalog():
    """Offerings in two countries and types, one private and one on a broken cloud account."""
    provider = make_provider(display_name="Falcon Hosting")
    account = make_cloud_account(owner=provider.user)
    recipe = make_recipe(author=provider.user, name="Nginx")
    offerings = {
        "small": make_offering(provider=provider, cloud_account=account, name="Small DE", slug="small-de", price_cents=300, vcpu=1),
        "medium": make_offering(provider=provider, cloud_account=account, name="Medium FI", slug="medium-fi", price_cents=900, vcpu=4, country="FI", city="Helsinki", location_code="hel1"),
        "service": make_offering(provider=provider, cloud_account=account, name="Nginx box", slug="nginx-box", price_cents=1200, vcpu=2, product_type=ProductType.SERVICE, recipe_version=recipe),
        "private": make_offering(provider=provider, cloud_account=account, name="Private", slug="private", visibility=Visibility.PRIVATE),
    }
    broken_account = make_cloud_account(owner=provider.user, validation_status=ValidationStatus.INVALID)
    offerings["broken"] = make_offering(provider=provider, cloud_account=broken_account, name="Broken", slug="broken")
    return provider, offerings


def slugs(response) -> list[str]:
    return [item["slug"] for item in response.json()["results"]]


def test_catalog_lists_public_offerings_by_price(api, catalog) -> None:
    response = api.get("/api/v1/offerings/")

    assert response.status_code == 200
    assert slugs(response) == ["small-de", "medium-fi", "nginx-box"]
    assert response.json()["count"] == 3


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"country": "fi"}, ["medium-fi"]),
        ({"product_type": "service"}, ["nginx-box"]),
        ({"price_max": "9"}, ["small-de", "medium-fi"]),
        ({"price_min": "9"}, ["medium-fi", "nginx-box"]),
        ({"min_vcpu": "2"}, ["medium-fi", "nginx-box"]),
        ({"has_recipe": "true"}, ["nginx-box"]),
        ({"q": "helsinki"}, ["medium-fi"]),
        ({"sort": "-price"}, ["nginx-box", "medium-fi", "small-de"]),
        ({"sort": "-vcpu"}, ["medium-fi", "nginx-box", "small-de"]),
    ],
)
def test_catalog_filters(api, catalog, query, expected) -> None:
    response = api.get("/api/v1/offerings/", query)

    assert response.status_code == 200
    assert slugs(response) == expected


def test_catalog_rejects_invalid_filter_value(api, catalog) -> None:
    response = api.get("/api/v1/offerings/", {"sort": "cheapest"})

    assert response.status_code == 400
    assert "sort" in response.json()


def test_catalog_paginates(api) -> None:
    provider = make_provider()
    account = make_cloud_account(owner=provider.user)
    for index in range(30):
        make_offering(provider=provider, cloud_account=account, slug=f"bulk-{index:02d}", price_cents=100 + index)

    first = api.get("/api/v1/offerings/")
    second = api.get("/api/v1/offerings/", {"page": 2})

    assert first.json()["count"] == 30
    assert len(first.json()["results"]) == 24
    assert first.json()["next"].endswith("page=2")
    assert len(second.json()["results"]) == 6
    assert second.json()["next"] is None
    assert slugs(second)[0] == "bulk-24"


def test_catalog_query_count_does_not_grow(api, catalog, django_assert_num_queries) -> None:
    provider, _ = catalog
    account = make_cloud_account(owner=provider.user)
    for index in range(10):
        recipe = make_recipe(author=provider.user)
        make_offering(provider=provider, cloud_account=account, slug=f"extra-{index}", recipe_version=recipe)

    # One COUNT for the paginator and one SELECT with the provider, recipe and account joined.
    with django_assert_num_queries(2):
        response = api.get("/api/v1/offerings/", {"country": "DE"})

    assert response.status_code == 200
    assert response.json()["count"] == 12


def test_offering_detail_fields(api, catalog) -> None:
    response = api.get("/api/v1/offerings/nginx-box/")

    body = response.json()
    assert response.status_code == 200
    assert body["provider"] == {"slug": "falcon-hosting", "display_name": "Falcon Hosting", "country": "DE"}
    assert body["recipe"]["name"] == "Nginx"
    assert body["backend"] == "sandbox"
    assert body["is_rentable"] is True


def test_private_offering_detail_is_404_for_others(api, catalog) -> None:
    api.force_login(make_user())

    response = api.get("/api/v1/offerings/private/")

    assert response.status_code == 404


def test_private_offering_detail_visible_to_owner(api, catalog) -> None:
    provider, _ = catalog
    api.force_login(provider.user)

    response = api.get("/api/v1/offerings/private/")

    assert response.status_code == 200
    assert response.json()["visibility"] == "private"


def test_broken_account_offering_hidden_from_catalog_and_detail(api, catalog) -> None:
    listing = api.get("/api/v1/offerings/")
    detail = api.get("/api/v1/offerings/broken/")

    assert "broken" not in slugs(listing)
    assert detail.status_code == 404


def test_catalog_is_read_only(api, catalog) -> None:
    api.force_login(make_user())

    response = api.post("/api/v1/offerings/", {"name": "x"}, format="json")

    assert response.status_code == 405


def test_recipes_list_and_detail(api) -> None:
    author = make_user()
    version = make_recipe(author=author, name="PostgreSQL", script="#!/bin/sh\napt-get install -y postgresql\n")

    listing = api.get("/api/v1/recipes/")
    detail = api.get(f"/api/v1/recipes/{version.recipe.slug}/")

    assert listing.status_code == 200
    assert listing.json()["results"][0]["latest_version"] == 1
    assert detail.status_code == 200
    assert detail.json()["versions"][0]["number"] == 1
    assert "postgresql" in detail.json()["versions"][0]["script"]
    assert "email" not in detail.content.decode()


def test_recipe_detail_unknown_slug_is_404(api) -> None:
    response = api.get("/api/v1/recipes/no-such-recipe/")

    assert response.status_code == 404


def test_catalog_huge_number_gets_one_message(api, catalog) -> None:
    response = api.get("/api/v1/offerings/", {"price_min": "1e308"})

    assert response.status_code == 400
    assert response.json() == {"price_min": ["Ensure this value is less than or equal to 1000000."]}
