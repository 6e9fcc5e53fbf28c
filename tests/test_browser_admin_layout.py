"""The provisioning queue admin list fits a 1400 px window, measured in headless Debian Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from playwright.sync_api import Browser, sync_playwright

from marketplace.models import Contract, ContractStatus
from tests.factories import make_contract, make_offering, make_provider, make_superuser, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop on this thread, so Django would refuse the
    # plain blocking ORM calls of the test body without this (test-only) switch.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS, headless=True)
            yield chromium
            chromium.close()


def test_provisioning_queue_fits_1400_px(browser, live_server):
    now = timezone.now()
    offering = make_offering(provider=make_provider(display_name="Queue Cloud"), name="GPU box with a long offering name")
    for index in range(3):
        contract = make_contract(tenant=make_user(), offering=offering)
        Contract.objects.filter(pk=contract.pk).update(
            status=ContractStatus.PROVISIONING,
            provisioning_step="waiting_for_ssh",
            lease_owner=f"worker-host-{index}.internal:123456:0f1e2d3c-4b5a-6978-8796-a5b4c3",
            lease_claimed_at=now,
            lease_expires_at=now + timedelta(seconds=120),
            attempts=4,
            last_error="TransientCloudError: " + "the cloud API answered 503 Service Unavailable; " * 4,
        )
    client = Client()
    client.force_login(make_superuser())
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value, "url": live_server.url}]
    )
    page = context.new_page()

    page.goto(f"{live_server.url}/admin/marketplace/provisioningqueueentry/")
    rows = page.locator("#result_list tbody tr").count()
    widths = page.evaluate(
        """() => {
            const results = document.querySelector('#changelist-form .results');
            return {scroll: results.scrollWidth, client: results.clientWidth, page: document.documentElement.scrollWidth};
        }"""
    )
    context.close()

    assert rows == 3
    assert widths["scroll"] <= widths["client"], widths
    assert widths["page"] <= 1400, widths
