"""Provider pages fit a 375 px wide phone screen, measured in headless Debian Chromium.

Wide tables scroll inside their own box, so the page itself must not scroll sideways.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from playwright.sync_api import Browser

from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_user,
)
from tests.test_browser_journeys import _allow_orm_beside_playwright, browser  # noqa: F401  (fixtures used by name)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE_WIDTH = 375

# The page's width, and every element that reaches past the right edge of the window without a
# scrolling ancestor that clips it.
OVERFLOW_JS = """() => {
    const width = document.documentElement.clientWidth;
    const clipped = (element) => {
        for (let parent = element.parentElement; parent; parent = parent.parentElement) {
            if (getComputedStyle(parent).overflowX !== 'visible') return true;
        }
        return false;
    };
    const outside = [];
    for (const element of document.querySelectorAll('body *')) {
        const box = element.getBoundingClientRect();
        if (box.width > 0 && box.right > width + 1 && !clipped(element)) {
            outside.push(`${element.tagName}.${element.className} ends at ${Math.round(box.right)}`);
        }
    }
    return {page: document.documentElement.scrollWidth, window: width, outside: outside.slice(0, 5)};
}"""


@pytest.mark.parametrize(
    "url_name", ["marketplace:provider_rentals", "marketplace:provider_dashboard", "provisioning:cloud_accounts"]
)
def test_provider_page_fits_phone_width(browser: Browser, live_server, url_name):  # noqa: F811
    user = make_user(email="provider.with.a.long.address@example.com")
    provider = make_provider(user=user, display_name="Phone Layout Cloud", auto_accept=False)
    account = make_cloud_account(owner=user, label="Sandbox account with a long label")
    offering = make_offering(provider=provider, cloud_account=account, name="Offering with a long name for phones")
    make_contract(tenant=make_user(email="tenant.with.a.long.address@example.com"), offering=offering)
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": PHONE_WIDTH, "height": 800})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value, "url": live_server.url}]
    )
    page = context.new_page()

    page.goto(f"{live_server.url}{reverse(url_name)}")
    widths = page.evaluate(OVERFLOW_JS)
    context.close()

    assert widths["outside"] == [], widths
    assert widths["page"] <= PHONE_WIDTH, widths
