"""Browser journey in headless Chromium: a new user becomes a provider through the guided setup.

The provider signs up, creates a profile, connects a Hetzner account against the fake Hetzner
API, builds an offering from that account's live catalog, publishes it, and a second user rents
it through the pages. A real Celery worker provisions the rental against the same fake API and
the loopback sshd.
"""

from __future__ import annotations

import re

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.urls import reverse
from playwright.sync_api import Page, expect

from marketplace.models import Contract, ContractStatus, Offering, ProviderProfile, User, Visibility
from marketplace.services.onboarding import provider_onboarding_state
from provisioning.models import Backend, CloudAccount, ValidationStatus
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.journeys import make_tenant
from tests.test_browser_journeys import (  # noqa: F401  (fixtures used by name)
    CLOUD_CONFIG_SWAP_COUNTER_JS,
    _allow_orm_beside_playwright,
    browser,
    fresh_public_key,
    link_from_mail,
    offering_cards,
    page,
    poll_until_status,
    sign_in,
    swap_cloud_config,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PROVIDER_EMAIL = "new.provider@example.com"
PROVIDER_PASSWORD = "granite-harbour-5120"
OFFERING_NAME = "Onboarded cx22 in Falkenstein"


def current_step(browser_page: Page):
    """The link of the step on screen in the setup's step indicator."""
    return browser_page.get_by_role("list", name="Provider setup steps").locator('[aria-current="step"]')


def sign_up_and_confirm(browser_page: Page, *, email: str, password: str) -> None:
    """Sign up through the form and confirm the address through the emailed link, which signs in."""
    mail.outbox = []
    browser_page.goto(reverse("account_signup"))
    browser_page.get_by_label("Email").fill(email)
    browser_page.get_by_label("Password", exact=True).fill(password)
    browser_page.get_by_label("Password (again)").fill(password)
    browser_page.get_by_role("button", name="Create account").click()
    expect(browser_page.get_by_role("heading", name="Confirm your email address")).to_be_visible()
    browser_page.goto(link_from_mail(mail.outbox[-1], "/accounts/confirm-email/"))
    browser_page.get_by_role("button", name="Confirm").click()
    expect(browser_page.get_by_role("link", name=email)).to_be_visible()


def test_new_provider_onboards_and_tenant_rents(
    page: Page, live_server, settings, hetzner_api, session_sshd, celery_worker_process  # noqa: F811
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    page.add_init_script(CLOUD_CONFIG_SWAP_COUNTER_JS)
    page.clock.install()

    # A new user signs up and opens the provider area: the setup starts at the profile step.
    sign_up_and_confirm(page, email=PROVIDER_EMAIL, password=PROVIDER_PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Provider").click()
    expect(page.get_by_role("heading", name="Become a provider", level=1)).to_be_visible()
    expect(current_step(page)).to_have_text("Profile")

    # Profile: an empty name is rejected on the same step, and a valid one moves to the cloud account.
    page.get_by_role("button", name="Create provider profile").click()
    expect(page.locator(".field.has-error").first).to_be_visible()
    expect(current_step(page)).to_have_text("Profile")
    page.get_by_label("Display name").fill("Onboarding Metal")
    page.get_by_label("Country").fill("de")
    page.get_by_role("button", name="Create provider profile").click()
    expect(current_step(page)).to_have_text("Cloud account")
    expect(page.get_by_text("Your own hardware, provisioned by an agent")).to_be_visible()
    provider = User.objects.get(email=PROVIDER_EMAIL)
    assert ProviderProfile.objects.get(user=provider).display_name == "Onboarding Metal"

    # Cloud account: a wrong token is rejected by the fake Hetzner API, the right one is saved,
    # and the page returns to the setup at the offering step.
    page.get_by_role("link", name="Add a cloud account").click()
    page.wait_for_url(re.compile(r"/cloud-accounts/\?next="))
    hetzner_form = page.locator("#add-hetzner")
    hetzner_form.get_by_label("Label").fill("Hetzner project")
    hetzner_form.get_by_label("API token").fill("not-the-right-token")
    hetzner_form.get_by_role("button", name="Check and add Hetzner account").click()
    expect(page.locator("#add-hetzner .errorlist").first).to_be_visible()
    assert not CloudAccount.objects.filter(owner=provider).exists()
    hetzner_form = page.locator("#add-hetzner")
    hetzner_form.get_by_label("Label").fill("Hetzner project")
    hetzner_form.get_by_label("API token").fill(TEST_HCLOUD_TOKEN)
    hetzner_form.get_by_role("button", name="Check and add Hetzner account").click()
    page.wait_for_url(re.compile(r"/dashboard/provider/onboarding/$"))
    expect(page.get_by_text("Cloud account 'Hetzner project' added")).to_be_visible()
    expect(current_step(page)).to_have_text("First offering")
    account = CloudAccount.objects.get(owner=provider)
    assert (account.backend, account.validation_status) == (Backend.HETZNER, ValidationStatus.VALID)

    # First offering: the form loads server types, locations and images from the fake API.
    page.get_by_role("link", name="Create your first offering").click()
    expect(page.get_by_role("heading", name="New offering")).to_be_visible()
    server_type = page.get_by_label("Server type")
    expect(server_type).to_have_js_property("tagName", "SELECT")
    expect(server_type.locator("option", has_text="cx22")).to_have_count(1)
    swap_cloud_config(page, lambda: server_type.select_option("cx22"))
    expect(page.get_by_label("vCPU")).to_have_value("2")
    page.get_by_label("Location", exact=True).select_option("fsn1")
    page.get_by_label("Image").select_option("ubuntu-24.04")
    page.get_by_label("Name", exact=True).fill(OFFERING_NAME)
    page.get_by_label("Price per month").fill("6.40")
    page.get_by_label("Visibility").select_option("private")
    page.get_by_role("button", name="Create offering").click()
    page.wait_for_url(re.compile(r"/dashboard/provider/onboarding/$"))
    expect(current_step(page)).to_have_text("Publish")
    offering = Offering.objects.get(provider__user=provider)
    assert offering.visibility == Visibility.PRIVATE
    assert (offering.server_type, offering.location_code, offering.image) == ("cx22", "fsn1", "ubuntu-24.04")
    assert offering.price_cents == 640

    # The private draft is not in the catalog yet, and the dashboard shows the unfinished checklist.
    page.goto(reverse("marketplace:catalog") + "?q=Onboarded")
    expect(offering_cards(page)).to_have_count(0)
    page.goto(reverse("marketplace:provider_dashboard"))
    checklist = page.get_by_role("region", name=re.compile(r"^Finish setting up"))
    expect(checklist).to_contain_text("3 of 4 done")
    checklist.get_by_role("link", name="Publish").click()

    # Publish: the setup is complete, the checklist is gone and the catalog lists the offering.
    page.get_by_role("button", name=f"Publish {OFFERING_NAME}").click()
    expect(page.get_by_role("heading", name="Setup complete")).to_be_visible()
    offering.refresh_from_db()
    assert offering.visibility == Visibility.PUBLIC
    assert provider_onboarding_state(user=provider).complete is True
    page.goto(reverse("marketplace:provider_dashboard"))
    expect(page.get_by_role("heading", name="Provider dashboard")).to_be_visible()
    expect(page.get_by_role("region", name=re.compile(r"^Finish setting up"))).to_have_count(0)
    page.get_by_role("button", name="Sign out").click()
    page.goto(reverse("marketplace:catalog") + "?q=Onboarded")
    expect(offering_cards(page)).to_have_count(1)
    expect(offering_cards(page).first.get_by_role("heading", name=OFFERING_NAME)).to_be_visible()

    # A second user signs in through the login form and rents it. The worker provisions it on
    # the fake Hetzner API and the loopback sshd, and the rental page follows it to Active.
    tenant, _ = make_tenant(email="renter@example.com")
    EmailAddress.objects.create(user=tenant, email=tenant.email, verified=True, primary=True)
    offering_cards(page).first.get_by_role("link", name=re.compile(r"^Details of ")).click()
    page.get_by_role("link", name="Sign in to rent").click()
    sign_in(page, email="renter@example.com", password="tenant-password-1")
    page.wait_for_url(re.compile(rf"/offerings/{offering.slug}/rent/$"))
    page.get_by_label("Or paste a public key").fill(fresh_public_key())
    page.get_by_role("button", name="Pay and rent").click()
    page.wait_for_url(re.compile(r"/rentals/[0-9a-f-]{36}/$"))
    poll_until_status(page, "Active", timeout=90)

    contract = Contract.objects.get(tenant=tenant)
    assert contract.status == ContractStatus.ACTIVE, celery_worker_process.log_tail()
    assert contract.offering_id == offering.pk
    assert contract.cloud_account_id == account.pk
    assert contract.ip_address == "127.0.0.1"
    servers = list(hetzner_api.servers.values())
    assert len(servers) == 1
    assert servers[0]["labels"]["cloudmarket-contract"] == str(contract.pk)
    expect(page.locator("#ssh-command")).to_have_text(f"ssh -p {session_sshd.port} root@127.0.0.1")
