"""The marketplace catalog page: filters, sort, pagination, empty states and query count."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from marketplace.models import Offering, ProductType, StockStatus, Visibility
from tests.factories import make_cloud_account, make_offering, make_provider, make_recipe

CATALOG_URL = reverse("marketplace:catalog")


def _names(response) -> set[str]:
    return {offering.name for offering in response.context["page"].object_list}


@pytest.fixture
def catalog(db):
    """Five public offerings that differ in one property each, plus one private offering."""
    provider = make_provider(display_name="Acme Compute")
    account = make_cloud_account(owner=provider.user)
    recipe_version = make_recipe(author=provider.user, name="Nginx status")
    make_offering(provider=provider, cloud_account=account, name="Small DE", price_cents=459, vcpu=2, memory_mib=4096, disk_gb=40)
    make_offering(
        provider=provider, cloud_account=account, name="Big FI", country="FI", city="Helsinki", location_code="hel1",
        price_cents=3000, vcpu=8, memory_mib=16384, disk_gb=160,
    )
    make_offering(
        provider=provider, cloud_account=account, name="GPU box", product_type=ProductType.GPU, price_cents=9000,
        vcpu=16, memory_mib=65536, disk_gb=300, gpu_model="NVIDIA L4", gpu_count=1,
    )
    make_offering(
        provider=provider, cloud_account=account, name="Nginx service", product_type=ProductType.SERVICE,
        recipe_version=recipe_version, price_cents=700,
    )
    make_offering(
        provider=provider, cloud_account=account, name="Cheap US", country="US", city="Ashburn, VA", location_code="ash",
        price_cents=100, vcpu=1, memory_mib=1024, disk_gb=20,
    )
    make_offering(provider=provider, cloud_account=account, name="Hidden one", visibility=Visibility.PRIVATE)
    return provider


@pytest.mark.django_db
def test_catalog_lists_public_offerings_only(client, catalog):
    response = client.get(CATALOG_URL)

    assert response.status_code == 200
    assert _names(response) == {"Small DE", "Big FI", "GPU box", "Nginx service", "Cheap US"}
    assert "Hidden one" not in response.content.decode()


@pytest.mark.django_db
def test_catalog_card_shows_price_specs_and_badges(client, catalog):
    html = client.get(CATALOG_URL).content.decode()

    assert "€4.59" in html
    assert "/ month" in html
    assert "Acme Compute" in html
    assert "Falkenstein, DE" in html
    assert "NVIDIA L4" in html
    assert "Recipe: Nginx status" in html
    assert "Sandbox — simulated, no real machine" in html


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"product_type": "gpu"}, {"GPU box"}),
        ({"product_type": "service"}, {"Nginx service"}),
        ({"country": "FI"}, {"Big FI"}),
        ({"country": "us"}, {"Cheap US"}),
        ({"price_min": "30"}, {"Big FI", "GPU box"}),
        ({"price_max": "5"}, {"Small DE", "Cheap US"}),
        ({"price_min": "4.59", "price_max": "7"}, {"Small DE", "Nginx service"}),
        ({"min_vcpu": "8"}, {"Big FI", "GPU box"}),
        ({"min_memory_gib": "16"}, {"Big FI", "GPU box"}),
        ({"min_disk_gb": "160"}, {"Big FI", "GPU box"}),
        ({"gpu": "true"}, {"GPU box"}),
        ({"gpu": "false"}, {"Small DE", "Big FI", "Nginx service", "Cheap US"}),
        ({"has_recipe": "true"}, {"Nginx service"}),
        ({"q": "helsinki"}, {"Big FI"}),
        ({"q": "nginx"}, {"Nginx service"}),
    ],
)
def test_catalog_filter_narrows_results(client, catalog, params, expected):
    response = client.get(CATALOG_URL, params)

    assert response.status_code == 200
    assert _names(response) == expected


@pytest.mark.django_db
def test_catalog_sort_by_price_descending(client, catalog):
    response = client.get(CATALOG_URL, {"sort": "-price"})

    names = [offering.name for offering in response.context["page"].object_list]
    assert names[0] == "GPU box"
    assert names[-1] == "Cheap US"


@pytest.mark.django_db
def test_catalog_country_select_lists_present_countries(client, catalog):
    html = client.get(CATALOG_URL).content.decode()

    options = re.findall(r'<option value="([A-Z]{2})"', html)
    assert options == ["DE", "FI", "US"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_vcpu": "abc"}, "min_vcpu"),
        ({"price_min": "-5"}, "price_min"),
        ({"product_type": "spaceship"}, "product_type"),
        ({"sort": "random"}, "sort"),
    ],
)
def test_catalog_invalid_filter_shows_error_and_ignores_it(client, catalog, params, field):
    response = client.get(CATALOG_URL, params)

    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert "invalid and were ignored" in response.content.decode()
    assert len(_names(response)) == 5


@pytest.mark.django_db
def test_catalog_invalid_filter_keeps_valid_ones(client, catalog):
    response = client.get(CATALOG_URL, {"min_vcpu": "abc", "country": "FI"})

    assert response.status_code == 200
    assert _names(response) == {"Big FI"}


@pytest.mark.django_db
def test_catalog_empty_marketplace_state(client):
    html = client.get(CATALOG_URL).content.decode()

    assert "No offerings yet" in html
    assert "Nothing matches these filters" not in html


@pytest.mark.django_db
def test_catalog_no_match_state_links_clear_filters(client, catalog):
    response = client.get(CATALOG_URL, {"min_vcpu": "500"})
    html = response.content.decode()

    assert _names(response) == set()
    assert "Nothing matches these filters" in html
    assert "No offerings yet" not in html
    assert f'href="{CATALOG_URL}"' in html
    assert "Clear filters" in html


@pytest.mark.django_db
def test_catalog_paginates_and_keeps_filters(client):
    provider = make_provider()
    account = make_cloud_account(owner=provider.user)
    for number in range(30):
        make_offering(provider=provider, cloud_account=account, name=f"DE {number:02d}", price_cents=1000 + number)
    make_offering(provider=provider, cloud_account=account, name="Finland", country="FI", location_code="hel1")

    first = client.get(CATALOG_URL, {"country": "DE", "sort": "price"})
    second = client.get(CATALOG_URL, {"country": "DE", "sort": "price", "page": "2"})

    assert len(first.context["page"].object_list) == 24
    assert first.context["paginator"].count == 30
    html = first.content.decode()
    assert 'href="?country=DE&amp;sort=price&amp;page=2"' in html
    assert [o.name for o in second.context["page"].object_list] == [f"DE {n:02d}" for n in range(24, 30)]


@pytest.mark.django_db
def test_catalog_out_of_range_page_shows_last_page(client, catalog):
    response = client.get(CATALOG_URL, {"page": "99"})

    assert response.status_code == 200
    assert response.context["page"].number == 1


@pytest.mark.django_db
def test_catalog_query_count_is_constant(client, django_assert_num_queries):
    provider = make_provider()
    account = make_cloud_account(owner=provider.user)
    for number in range(30):
        recipe_version = make_recipe(author=provider.user) if number % 3 == 0 else None
        make_offering(provider=provider, cloud_account=account, recipe_version=recipe_version)
    assert Offering.objects.count() == 30

    # Count, page rows (with provider, recipe and cloud account joined), and the country list.
    with django_assert_num_queries(3):
        response = client.get(CATALOG_URL)

    assert len(response.context["page"].object_list) == 24


@pytest.mark.django_db
def test_catalog_hides_offerings_of_invalid_cloud_accounts(client, catalog):
    provider = make_provider()
    broken = make_cloud_account(owner=provider.user, validation_status="invalid")
    make_offering(provider=provider, cloud_account=broken, name="Broken account")

    response = client.get(CATALOG_URL)

    assert "Broken account" not in _names(response)


@pytest.mark.django_db
def test_catalog_shows_out_of_stock_badge(client, catalog):
    Offering.objects.filter(name="Small DE").update(stock_status=StockStatus.OUT_OF_STOCK)

    html = client.get(CATALOG_URL).content.decode()

    assert "Out of stock" in html


@pytest.mark.django_db
def test_catalog_count_stops_at_cap(client):
    from marketplace.pagination import CappedCountPaginator

    provider = make_provider()
    account = make_cloud_account(owner=provider.user)
    for _ in range(7):
        make_offering(provider=provider, cloud_account=account)

    capped = CappedCountPaginator(Offering.objects.order_by("pk"), 2, max_count=5)
    exact = CappedCountPaginator(Offering.objects.order_by("pk"), 2, max_count=10)

    assert capped.count == 6
    assert capped.is_capped is True
    assert exact.count == 7
    assert exact.is_capped is False


@pytest.mark.django_db
def test_catalog_page_says_more_than_cap(client, settings):
    settings.CATALOG_COUNT_CAP = 3
    provider = make_provider()
    account = make_cloud_account(owner=provider.user)
    for _ in range(4):
        make_offering(provider=provider, cloud_account=account)

    response = client.get(CATALOG_URL)

    assert "More than 3 offerings" in response.content.decode()


def _heading(response) -> str:
    match = re.search(r'<h2 id="results-heading"[^>]*>\s*(.*?)\s*</h2>', response.content.decode(), re.S)
    assert match is not None
    return match.group(1)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params",
    [{"price_min": "abc"}, {"price_min": "abc", "min_vcpu": "-3"}, {"price_max": "1e308", "country": "XYZ"}],
)
def test_catalog_heading_when_every_filter_is_invalid(client, catalog, params):
    response = client.get(CATALOG_URL, params)

    assert _heading(response) == "5 offerings"
    assert "invalid and were ignored" in response.content.decode()


@pytest.mark.django_db
def test_catalog_heading_with_one_valid_filter(client, catalog):
    response = client.get(CATALOG_URL, {"price_min": "abc", "country": "FI"})

    assert _heading(response) == "1 offering matches your filters"


@pytest.mark.django_db
def test_catalog_heading_sort_only_is_not_a_filter(client, catalog):
    response = client.get(CATALOG_URL, {"sort": "-price"})

    assert _heading(response) == "5 offerings"


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["price_min", "price_max", "min_vcpu", "min_memory_gib", "min_disk_gb"])
def test_catalog_huge_number_gets_one_message(client, catalog, field):
    response = client.get(CATALOG_URL, {field: "1e308"})

    errors = response.context["form"].errors[field]
    assert len(errors) == 1
    assert "less than or equal to" in errors[0]
    assert "1e+50" not in response.content.decode()
