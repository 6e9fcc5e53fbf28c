"""The `next` parameter of provider actions: only paths and URLs on this site are followed.

Each case posts to the publish action, which redirects to `next` after publishing, by default
to the offering's page.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from marketplace.models import Visibility
from tests.factories import make_offering, make_provider

pytestmark = pytest.mark.django_db


@pytest.fixture
def draft():
    return make_offering(provider=make_provider(), name="Draft VM", visibility=Visibility.PRIVATE)


def publish(client, offering, next_value: str):
    client.force_login(offering.provider.user)
    return client.post(reverse("marketplace:offering_publish", kwargs={"slug": offering.slug}), {"next": next_value})


@pytest.mark.parametrize(
    "next_value",
    [
        "/dashboard/provider/onboarding/",
        "/dashboard/provider/rentals/?status=paid",
        "http://testserver/dashboard/provider/",
    ],
)
def test_next_on_this_site_is_followed(client, draft, next_value):
    response = publish(client, draft, next_value)

    assert response.status_code == 302
    assert response["Location"] == next_value


@pytest.mark.parametrize(
    "next_value",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "javascript:alert(1)",
        # Not URLs: Django's redirect() would look these up as view names and raise NoReverseMatch.
        "-1",
        "99999999",
        "\u00b2",
        "marketplace:provider_dashboard",
    ],
)
def test_next_elsewhere_or_not_a_url_goes_to_default(client, draft, next_value):
    response = publish(client, draft, next_value)

    assert response.status_code == 302
    assert response["Location"] == draft.get_absolute_url()
