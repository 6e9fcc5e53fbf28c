"""The confirmation step before a public offering is hidden, clicked through in headless Chromium.

The page's script disables submit buttons once a form is sent, so these tests check that the
server still receives which of the two buttons was clicked.
"""

from __future__ import annotations

import pytest
from allauth.account.models import EmailAddress
from django.urls import reverse
from playwright.sync_api import Page, expect

from marketplace.models import Offering, Visibility
from tests.factories import (
    DEFAULT_PASSWORD,
    make_cloud_account,
    make_offering,
    make_provider,
    make_user,
)
from tests.test_browser_journeys import (  # noqa: F401  (fixtures used by name)
    _allow_orm_beside_playwright,
    browser,
    open_sign_in,
    page,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PROVIDER_EMAIL = "visibility.provider@example.com"


@pytest.fixture
def public_offering() -> Offering:
    user = make_user(email=PROVIDER_EMAIL)
    EmailAddress.objects.create(user=user, email=PROVIDER_EMAIL, verified=True, primary=True)
    provider = make_provider(user=user, display_name="Visibility Cloud")
    account = make_cloud_account(owner=user, label="Sandbox")
    return make_offering(provider=provider, cloud_account=account, name="Public box", visibility=Visibility.PUBLIC)


def open_hide_confirmation(browser_page: Page, offering: Offering) -> None:
    """Rename the offering and make it private in its form, which opens the confirmation step."""
    open_sign_in(browser_page, email=PROVIDER_EMAIL, password=DEFAULT_PASSWORD)
    browser_page.goto(reverse("marketplace:offering_edit", kwargs={"slug": offering.slug}))
    browser_page.get_by_label("Name", exact=True).fill("Renamed box")
    browser_page.get_by_label("Visibility").select_option("private")
    browser_page.get_by_role("button", name="Save changes").click()
    expect(browser_page.get_by_role("heading", name="Make Public box private?")).to_be_visible()


def test_back_to_form_keeps_offering_public(page: Page, live_server, public_offering):  # noqa: F811
    open_hide_confirmation(page, public_offering)

    page.get_by_role("button", name="Back to the form").click()

    expect(page.get_by_role("heading", name="Edit Public box")).to_be_visible()
    expect(page.get_by_label("Name", exact=True)).to_have_value("Renamed box")
    expect(page.get_by_label("Visibility")).to_have_value("private")
    public_offering.refresh_from_db()
    assert public_offering.visibility == Visibility.PUBLIC
    assert public_offering.name == "Public box"


def test_save_after_going_back_asks_again(page: Page, live_server, public_offering):  # noqa: F811
    open_hide_confirmation(page, public_offering)
    page.get_by_role("button", name="Back to the form").click()

    page.get_by_role("button", name="Save changes").click()

    expect(page.get_by_role("heading", name="Make Public box private?")).to_be_visible()
    public_offering.refresh_from_db()
    assert public_offering.visibility == Visibility.PUBLIC


def test_confirm_makes_offering_private(page: Page, live_server, public_offering):  # noqa: F811
    open_hide_confirmation(page, public_offering)

    page.get_by_role("button", name="Yes, make it private and save").click()

    expect(page.get_by_text("Offering 'Renamed box' saved.")).to_be_visible()
    public_offering.refresh_from_db()
    assert public_offering.visibility == Visibility.PRIVATE
    assert public_offering.name == "Renamed box"
