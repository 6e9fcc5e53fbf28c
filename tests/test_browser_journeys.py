"""Browser journeys in headless Debian Chromium: catalog, renting, sign-up, bad input, providers.

Playwright's sync API drives `/usr/bin/chromium` against pytest-django's `live_server`, which
runs in this process on the test database. Rentals are provisioned by a real Celery worker
process (`celery_worker_process`) on the same database, with the Sandbox backend.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.core.management import call_command
from django.urls import reverse
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from marketplace.models import Contract, ContractStatus, Offering, ProviderProfile, SshKey, User
from provisioning.models import CloudAccount
from recipes.keys import generate_keypair
from recipes.models import Recipe, RecipeVersion
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.journeys import wait_for_status

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Default Playwright timeout for actions and `expect`, in milliseconds.
DEFAULT_TIMEOUT_MS = 15_000

TENANT_EMAIL = "tenant@example.com"
TENANT_PASSWORD = "demo-tenant-password"
PROVIDER_EMAIL = "provider@example.com"
PROVIDER_PASSWORD = "demo-provider-password"

#: sessionStorage key under which `RENTAL_RECORDER_JS` appends what the rental page showed.
RENTAL_LOG_KEY = "browser-test-rental-log"

# Runs before any page script on every document of the context. On each page load and after
# each htmx swap it appends the status badge and the step states of the polled rental section to
# sessionStorage, which survives the full reloads that HX-Refresh triggers on a status change.
# `pageId` is random per document, so a "swap" record proves an update without a reload.
RENTAL_RECORDER_JS = """
(() => {
  const key = "__LOG_KEY__";
  const pageId = Math.random().toString(36).slice(2);
  function record(kind) {
    const live = document.getElementById("rental-live");
    if (!live) return;
    const steps = (state) => Array.from(live.querySelectorAll("ol.steps li." + state + " > span:not(.dot)"))
      .map((label) => label.firstChild.textContent.trim());
    const badge = live.querySelector(".page-head .badge");
    const log = JSON.parse(sessionStorage.getItem(key) || "[]");
    log.push({kind, pageId, status: badge ? badge.textContent.trim() : "", current: steps("current"), done: steps("done")});
    sessionStorage.setItem(key, JSON.stringify(log));
  }
  document.addEventListener("DOMContentLoaded", () => record("load"));
  document.addEventListener("htmx:afterSettle", () => record("swap"));
})();
""".replace("__LOG_KEY__", RENTAL_LOG_KEY)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _allow_orm_beside_playwright() -> Iterator[None]:
    """Let this thread use the ORM while Playwright's sync API is running.

    The sync API keeps an asyncio event loop on the test thread, so Django finds a running loop
    and raises SynchronousOnlyOperation for every query in a test body or in pytest-django's
    database flush. The ORM calls here are plain blocking calls between browser actions, never
    inside a coroutine, so the check does not apply. Test-only: the variable is removed again.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(scope="module")
def browser(_allow_orm_beside_playwright) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, live_server, request, tmp_path) -> Iterator[Page]:
    """A fresh browser context and page on the live server; screenshot into tmp_path on failure."""
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.add_init_script(RENTAL_RECORDER_JS)
    browser_page = context.new_page()
    # No page of the app opens a dialog today. Accepting keeps a future confirm() from blocking.
    browser_page.on("dialog", lambda dialog: dialog.accept())
    failures_before = request.session.testsfailed
    try:
        yield browser_page
        # The call phase's report is logged before fixture teardown, so the counter has moved
        # if the test body failed.
        if request.session.testsfailed > failures_before:
            screenshot = tmp_path / "failure.png"
            try:
                browser_page.screenshot(path=str(screenshot), full_page=True)
            except PlaywrightError as exc:
                logger.warning(
                    "Screenshot of failed test %s not saved: %s", request.node.nodeid, exc
                )
            else:
                logger.info("Screenshot of failed test %s: %s", request.node.nodeid, screenshot)
                request.node.add_report_section("teardown", "screenshot", str(screenshot))
    finally:
        context.close()


@pytest.fixture
def demo_data() -> None:
    """Create the demo users, the Sandbox provider and its offerings with `manage.py seed_demo`."""
    call_command("seed_demo", stdout=io.StringIO())


# --- helpers --------------------------------------------------------------------------------


def sign_in(page: Page, *, email: str, password: str) -> None:
    """Fill and send the sign-in form that is open in `page`."""
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


def open_sign_in(page: Page, *, email: str, password: str) -> None:
    page.goto(reverse("account_login"))
    sign_in(page, email=email, password=password)
    expect(page.get_by_role("link", name=email)).to_be_visible()


def status_badge(page: Page):
    """The status badge of the polled rental section."""
    return page.get_by_role("region", name="Status").locator(".badge").first


def poll_until_status(page: Page, label: str, *, timeout: float = 40.0) -> None:
    """Advance the page clock so htmx polls often, until the rental status badge shows `label`.

    The rental section polls every 2 seconds, longer than the whole Sandbox pipeline takes with
    the test worker's 0.3 s steps. Jumping the page's fake clock 2 s ahead every 0.15 s fires
    the page's own htmx polling timer that often, so the test observes each step as it changes.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if status_badge(page).inner_text(timeout=1_000).strip() == label:
                return
            page.clock.fast_forward(2_000)
        except PlaywrightError:
            # The page is reloading after HX-Refresh, so the next round reads the new document.
            pass
        page.wait_for_timeout(150)
    expect(status_badge(page)).to_have_text(label, timeout=1)


def rental_log(page: Page) -> list[dict]:
    return json.loads(page.evaluate("key => sessionStorage.getItem(key) || '[]'", RENTAL_LOG_KEY))


def offering_cards(page: Page):
    return page.get_by_role("article")


def card_facts(text: str) -> tuple[int, str]:
    """Return (vCPU, country code) parsed from an offering card's text."""
    vcpu = re.search(r"(\d+)\s*vCPU", text)
    country = re.search(r",\s*([A-Z]{2})\s*$", text, re.MULTILINE)
    assert vcpu is not None, f"No vCPU count in card text {text!r}"
    assert country is not None, f"No country code in card text {text!r}"
    return int(vcpu.group(1)), country.group(1)


def link_from_mail(message, path_prefix: str) -> str:
    match = re.search(r"https?://\S+" + re.escape(path_prefix) + r"\S*", message.body)
    assert match is not None, f"No {path_prefix} link in the email body:\n{message.body}"
    return match.group(0)


def fresh_public_key() -> str:
    return generate_keypair("tenant@browser-test").public_line


def contracts_of(email: str):
    return Contract.objects.filter(tenant=User.objects.get(email=email))


# Counts the htmx swaps of the offering form's cloud configuration fields in window.__cloudConfigSwaps.
CLOUD_CONFIG_SWAP_COUNTER_JS = """
document.addEventListener("htmx:afterSettle", (event) => {
  const url = event.detail.xhr ? event.detail.xhr.responseURL : "";
  if (url.includes("catalog-options")) window.__cloudConfigSwaps = (window.__cloudConfigSwaps || 0) + 1;
});
"""


def swap_cloud_config(page: Page, change) -> None:
    """Run `change` on the offering form and wait until htmx swapped in and set up the new fields.

    Waiting for the response alone is not enough: a change made before htmx has processed the
    swapped-in fields sends no request.
    """
    before = page.evaluate("() => window.__cloudConfigSwaps || 0")
    change()
    page.wait_for_function("count => (window.__cloudConfigSwaps || 0) > count", arg=before)


# --- journeys -------------------------------------------------------------------------------


def test_rental_journey_demo_data(page: Page, live_server, celery_worker_process, demo_data):
    # The catalog as a visitor: filter by country, minimum vCPU and sort; the URL keeps them.
    # A fake page clock, which flows at real speed, lets poll_until_status() speed up polling.
    page.clock.install()
    page.goto(reverse("marketplace:catalog"))
    unfiltered_count = offering_cards(page).count()

    page.get_by_label("Country").select_option("DE")
    page.get_by_label("Min vCPU").fill("4")
    page.get_by_label("Sort").select_option("-vcpu")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"[?&]country=DE"))

    query = parse_qs(urlparse(page.url).query)
    assert query.get("country") == ["DE"]
    assert query.get("min_vcpu") == ["4"]
    assert query.get("sort") == ["-vcpu"]
    expect(page.get_by_label("Min vCPU")).to_have_value("4")
    facts = [card_facts(text) for text in offering_cards(page).all_inner_texts()]
    assert facts, "No offering matched country DE with at least 4 vCPU"
    assert len(facts) < unfiltered_count
    assert all(country == "DE" for _, country in facts), facts
    assert all(vcpu >= 4 for vcpu, _ in facts), facts
    assert [vcpu for vcpu, _ in facts] == sorted((vcpu for vcpu, _ in facts), reverse=True)

    # A ready-made service: its recipe script and the root warning are on the offering page.
    page.get_by_role("link", name="Clear filters").first.click()
    page.get_by_label("Ready-made service (has recipe)").select_option("true")
    page.get_by_label("Country").select_option("DE")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"[?&]has_recipe=true"))
    first_card = offering_cards(page).first
    expect(first_card.get_by_text(re.compile(r"^Recipe: "))).to_be_visible()
    first_card.get_by_role("link", name=re.compile(r"^Details of ")).click()
    page.wait_for_url(re.compile(r"/offerings/[\w-]+/$"))
    slug = urlparse(page.url).path.rstrip("/").rsplit("/", 1)[-1]
    offering = Offering.objects.select_related("recipe_version").get(slug=slug)
    assert offering.recipe_version is not None
    expect(page.get_by_role("heading", name=offering.name, level=1)).to_be_visible()
    expect(page.get_by_text("This script runs as root on your VM")).to_be_visible()
    script_block = page.get_by_label(re.compile(r"^Recipe script"))
    assert script_block.inner_text().strip() == offering.recipe_version.script.strip()

    # Renting needs an account: the button leads to sign-in, which returns to the rent form.
    page.get_by_role("link", name="Sign in to rent").click()
    page.wait_for_url(re.compile(r"/accounts/login/"))
    assert parse_qs(urlparse(page.url).query).get("next") == [
        reverse("marketplace:rent", kwargs={"slug": slug})
    ]
    sign_in(page, email=TENANT_EMAIL, password=TENANT_PASSWORD)
    page.wait_for_url(re.compile(rf"/offerings/{slug}/rent/$"))

    # Paste a new key, save it for later, pay; the rental page then follows provisioning live.
    public_key = fresh_public_key()
    page.get_by_label("Or paste a public key").fill(public_key)
    page.get_by_label("Save this key as").fill("browser laptop")
    page.get_by_role("button", name="Pay and rent").click()
    page.wait_for_url(re.compile(r"/rentals/[0-9a-f-]{36}/$"))
    rental_url = page.url
    expect(page.get_by_text("Saved the key as 'browser laptop'.")).to_be_visible()

    poll_until_status(page, "Active")

    log = rental_log(page)
    step_labels = [
        "Creating server",
        "Waiting for boot",
        "Waiting for SSH",
        "Running recipe",
        "Finalizing",
    ]
    seen_current = [
        step for entry in log if entry["status"] == "Provisioning" for step in entry["current"]
    ]
    assert seen_current, f"No provisioning step was ever shown as current: {log}"
    assert set(seen_current) <= set(step_labels), log
    seen_positions = [step_labels.index(step) for step in seen_current]
    assert seen_positions == sorted(seen_positions), f"Steps went backwards: {log}"
    live_steps = [entry for entry in log if entry["kind"] == "swap" and entry["current"]]
    assert live_steps, f"The step list never updated without a page reload: {log}"
    assert log[-1]["status"] == "Active"
    assert log[-1]["done"] == step_labels
    steps = page.get_by_role("region", name="Status").get_by_role("listitem")
    expect(steps).to_have_count(5)
    for index in range(5):
        expect(steps.nth(index)).to_contain_text("(done)")

    expect(page.get_by_role("heading", name="Connection")).to_be_visible()
    expect(page.locator("#ssh-command")).to_have_text(
        re.compile(r"^ssh root@203\.0\.113\.\d{1,3}$")
    )
    expect(page.get_by_text("Sandbox — simulated, no real machine").first).to_be_visible()
    expect(page.get_by_label("Recipe output")).to_contain_text("nothing was executed")

    contract = contracts_of(TENANT_EMAIL).get()
    assert contract.status == ContractStatus.ACTIVE
    assert contract.ssh_public_key.split()[1] == public_key.split()[1]
    assert SshKey.objects.filter(user=contract.tenant, name="browser laptop").count() == 1

    # My rentals lists it as active.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="My rentals").click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=contract.offering_name))
    expect(row).to_have_count(1)
    expect(row.locator(".badge", has_text="Active")).to_be_visible()

    # Cancel: a Sandbox rental ends now, and the page follows it to Terminated.
    row.get_by_role("link", name=contract.offering_name).click()
    page.wait_for_url(rental_url)
    page.get_by_label("Yes, cancel this rental").check()
    page.get_by_role("button", name="Cancel rental").click()
    expect(page.get_by_text("The rental was cancelled.")).to_be_visible()

    poll_until_status(page, "Terminated")

    contract.refresh_from_db()
    assert contract.status == ContractStatus.TERMINATED
    expect(page.get_by_role("button", name="Cancel rental")).to_have_count(0)


def test_sign_up_and_password_reset(page: Page, live_server, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    mail.outbox = []
    email = "new.tenant@example.com"
    first_password = "harbour-lantern-4817"
    second_password = "copper-meadow-9023"

    # Sign up: the address must be confirmed before the first sign-in.
    page.goto(reverse("account_signup"))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(first_password)
    page.get_by_label("Password (again)").fill(first_password)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Confirm your email address")).to_be_visible()
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [email]

    # The emailed link confirms the address and signs the new user in.
    page.goto(link_from_mail(mail.outbox[0], "/accounts/confirm-email/"))
    expect(page.get_by_text(f"Confirm that {email} is your email address.")).to_be_visible()
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("link", name=email)).to_be_visible()
    assert User.objects.get(email=email).emailaddress_set.get().verified is True

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    expect(page.get_by_role("link", name=email)).to_have_count(0)

    # Reset the password through the emailed link.
    page.goto(reverse("account_reset_password"))
    page.get_by_label("Email").fill(email)
    page.get_by_role("button", name="Send reset link").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    assert len(mail.outbox) == 2
    page.goto(link_from_mail(mail.outbox[1], "/accounts/password/reset/key/"))
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New Password", exact=True).fill(second_password)
    page.get_by_label("New Password (again)", exact=True).fill(second_password)
    page.get_by_role("button", name="Set new password").click()
    expect(page.get_by_role("heading", name="Password changed")).to_be_visible()

    # The old password no longer works; the new one does.
    page.goto(reverse("account_login"))
    sign_in(page, email=email, password=first_password)
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_role("link", name=email)).to_have_count(0)
    sign_in(page, email=email, password=second_password)
    expect(page.get_by_role("link", name=email)).to_be_visible()


def test_rent_form_invalid_key_and_double_click(
    page: Page, live_server, celery_worker_process, demo_data
):
    open_sign_in(page, email=TENANT_EMAIL, password=TENANT_PASSWORD)
    page.goto(reverse("marketplace:rent", kwargs={"slug": "cx22-fsn1"}))
    key_field = page.get_by_label("Or paste a public key")
    save_as_field = page.get_by_label("Save this key as")

    # An invalid key: the error sits next to the key field and the other input stays.
    key_field.fill("ssh-rsa AAAA not-a-key")
    save_as_field.fill("work laptop")
    page.get_by_role("button", name="Pay and rent").click()

    key_error = page.locator(".field.has-error", has=key_field).locator(".errorlist")
    expect(key_error).to_be_visible()
    expect(key_error).not_to_be_empty()
    expect(key_field).to_have_value("ssh-rsa AAAA not-a-key")
    expect(save_as_field).to_have_value("work laptop")
    assert contracts_of(TENANT_EMAIL).count() == 0

    # A double click on the fixed form sends one request and creates one rental.
    rent_posts = []
    page.on(
        "request",
        lambda request: rent_posts.append(request.url) if request.method == "POST" else None,
    )
    key_field.fill(fresh_public_key())
    page.get_by_role("button", name="Pay and rent").dblclick()
    page.wait_for_url(re.compile(r"/rentals/[0-9a-f-]{36}/$"))

    contracts = list(contracts_of(TENANT_EMAIL))
    assert len(contracts) == 1
    assert len(rent_posts) == 1, rent_posts
    wait_for_status(contracts[0], {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=30)


def test_rent_form_sent_twice_at_once(page: Page, live_server, celery_worker_process, demo_data):
    open_sign_in(page, email=TENANT_EMAIL, password=TENANT_PASSWORD)
    page.goto(reverse("marketplace:rent", kwargs={"slug": "cx22-fsn1"}))
    page.get_by_label("Or paste a public key").fill(fresh_public_key())

    # Two POSTs of the same form, sent together, as from a browser that resubmits.
    final_urls = page.evaluate(
        """async () => {
            const form = document.querySelector("form[data-disable-on-submit]");
            const send = () => fetch(form.action || location.href, {method: "POST", body: new FormData(form), credentials: "same-origin"});
            const responses = await Promise.all([send(), send()]);
            return responses.map((response) => [response.status, response.url]);
        }"""
    )

    contracts = list(contracts_of(TENANT_EMAIL))
    assert len(contracts) == 1
    rental_url = live_server.url + contracts[0].get_absolute_url()
    assert final_urls == [[200, rental_url], [200, rental_url]]
    wait_for_status(contracts[0], {ContractStatus.ACTIVE, ContractStatus.FAILED}, timeout=30)
    assert contracts[0].payments.count() == 1


def test_provider_creates_offering(page: Page, live_server, demo_data):
    page.add_init_script(CLOUD_CONFIG_SWAP_COUNTER_JS)
    open_sign_in(page, email=PROVIDER_EMAIL, password=PROVIDER_PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Provider").click()
    expect(page.get_by_role("heading", name="Provider dashboard")).to_be_visible()
    page.get_by_role("link", name="New offering").click()
    expect(page.get_by_role("heading", name="New offering")).to_be_visible()

    account = CloudAccount.objects.get(owner__email=PROVIDER_EMAIL, label="Demo Sandbox")
    name = "Browser test VM in Falkenstein"
    page.get_by_label("Name", exact=True).fill(name)
    # The demo account is the provider's only one, so the form opens with its catalog loaded.
    swap_cloud_config(page, lambda: page.get_by_label("Cloud account").select_option(str(account.pk)))
    swap_cloud_config(page, lambda: page.get_by_label("Server type").select_option("cx22"))
    page.get_by_label("Location", exact=True).select_option("fsn1")
    page.get_by_label("Image").select_option("ubuntu-24.04")
    page.get_by_label("vCPU").fill("2")
    page.get_by_label("Memory (MiB)").fill("4096")
    page.get_by_label("Disk (GB)").fill("40")
    price_field = page.get_by_label("Price per month")

    # A negative price is rejected next to the price field, and the form keeps its values.
    price_field.fill("-5")
    page.get_by_role("button", name="Create offering").click()
    price_error = page.locator(".field.has-error", has=price_field).locator(".errorlist")
    expect(price_error).to_have_text("The price cannot be negative.")
    expect(page.get_by_label("Name", exact=True)).to_have_value(name)
    assert not Offering.objects.filter(name=name).exists()

    # Fixed, it is created and the catalog lists it.
    price_field.fill("7.50")
    page.get_by_role("button", name="Create offering").click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()
    offering = Offering.objects.get(name=name)
    assert offering.price_cents == 750
    assert offering.cloud_account == account

    page.goto(reverse("marketplace:catalog") + "?q=" + "Browser+test+VM")
    expect(offering_cards(page)).to_have_count(1)
    expect(offering_cards(page).first.get_by_role("heading", name=name)).to_be_visible()


def test_seed_demo_finds_recipe_files():
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo", stdout=io.StringIO())  # a second run changes nothing

    assert Offering.objects.filter(recipe_version__isnull=False).count() == 6
    assert Recipe.objects.count() == 3
    assert RecipeVersion.objects.count() == 3


def test_provider_builds_offering_from_live_catalog(page: Page, live_server, hetzner_api):
    provider = User.objects.create_user(email=PROVIDER_EMAIL, password=PROVIDER_PASSWORD)
    EmailAddress.objects.create(user=provider, email=PROVIDER_EMAIL, verified=True, primary=True)
    ProviderProfile.objects.create(user=provider, display_name="Live Catalog Compute", slug="live-catalog-compute")
    CloudAccount.objects.create(owner=provider, backend="sandbox", label="Sandbox", validation_status="valid")
    hetzner = CloudAccount(owner=provider, backend="hetzner", label="Hetzner project", validation_status="valid")
    hetzner.set_token(TEST_HCLOUD_TOKEN)
    hetzner.save()
    page.add_init_script(CLOUD_CONFIG_SWAP_COUNTER_JS)
    open_sign_in(page, email=PROVIDER_EMAIL, password=PROVIDER_PASSWORD)
    page.goto(reverse("marketplace:offering_create"))

    # Two accounts, so nothing is chosen yet and the catalog fields are plain text inputs.
    server_type = page.get_by_label("Server type")
    expect(server_type).to_have_js_property("tagName", "INPUT")
    swap_cloud_config(page, lambda: page.get_by_label("Cloud account").select_option(str(hetzner.pk)))
    expect(server_type).to_have_js_property("tagName", "SELECT")
    expect(server_type.locator("option", has_text="cx32: 4 vCPU, 8 GiB, 80 GB, x86")).to_have_count(1)
    expect(server_type.locator("option", has_text="cx11")).to_have_count(0)

    # Choosing a server type fills the specs, which Hetzner fixes, and the preview follows.
    swap_cloud_config(page, lambda: server_type.select_option("cx32"))
    expect(page.get_by_label("vCPU")).to_have_value("4")
    expect(page.get_by_label("Memory (MiB)")).to_have_value("8192")
    expect(page.get_by_label("vCPU")).to_have_attribute("readonly", "")
    page.get_by_label("Location", exact=True).select_option("hel1")
    page.get_by_label("Image").select_option("debian-12")
    page.get_by_label("Name", exact=True).fill("Helsinki medium")
    page.get_by_label("Price per month").fill("11.90")
    page.get_by_label("Price per month").blur()
    preview = page.locator("#card-preview")
    expect(preview.get_by_role("heading", name="Helsinki medium")).to_be_visible()
    expect(preview).to_contain_text("€11.90")
    expect(preview).to_contain_text("Helsinki, FI")
    expect(preview.locator(".specs")).to_contain_text("4 vCPU")

    page.get_by_role("button", name="Create offering").click()
    expect(page.get_by_role("heading", name="Helsinki medium", level=1)).to_be_visible()
    offering = Offering.objects.get(name="Helsinki medium")
    assert (offering.server_type, offering.location_code, offering.image) == ("cx32", "hel1", "debian-12")
    assert (offering.vcpu, offering.memory_mib, offering.disk_gb) == (4, 8192, 80)
    assert (offering.country, offering.city, offering.price_cents) == ("FI", "Helsinki", 1190)


def test_owner_creates_lists_and_stops_resource(page: Page, live_server, celery_worker_process):
    owner = User.objects.create_user(email=PROVIDER_EMAIL, password=PROVIDER_PASSWORD)
    EmailAddress.objects.create(user=owner, email=PROVIDER_EMAIL, verified=True, primary=True)
    ProviderProfile.objects.create(user=owner, display_name="Own Boxes", slug="own-boxes")
    account = CloudAccount.objects.create(owner=owner, backend="sandbox", label="Sandbox", validation_status="valid")
    page.clock.install()
    open_sign_in(page, email=PROVIDER_EMAIL, password=PROVIDER_PASSWORD)

    # The empty list leads to the wizard, which loads the account's catalog once it is chosen.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="My resources").click()
    expect(page.get_by_text("You have no resources yet.")).to_be_visible()
    page.get_by_role("link", name="Create your first VM").click()
    expect(page.get_by_role("heading", name="New resource")).to_be_visible()
    page.get_by_label("Cloud account").select_option(str(account.pk))
    expect(page.get_by_label("Server type")).to_be_visible()
    page.get_by_label("Location").select_option("fsn1")
    page.get_by_label("Server type").select_option("cx22")
    page.get_by_label("Image").select_option("ubuntu-24.04")
    page.get_by_label("Name", exact=True).fill("Browser box")
    page.get_by_label("SSH public key").fill(fresh_public_key())
    page.get_by_role("button", name="Create VM").click()

    # The detail page polls until the worker reports the VM running.
    expect(page.get_by_role("heading", name="Browser box", level=1)).to_be_visible()
    poll_until_status(page, "Running")
    page.reload()
    expect(page.locator("#ssh-command")).to_contain_text("root@203.0.113.")

    # Listing it creates a public offering with a stock of one.
    page.get_by_label("Title").fill("Browser box for rent")
    page.get_by_label("Monthly price").fill("4.00")
    page.get_by_label("Remove my keys from root while rented").check()
    page.get_by_role("button", name="List on marketplace").click()
    expect(page.get_by_text("is listed on the marketplace as Browser box for rent")).to_be_visible()
    offering = Offering.objects.get(resource__name="Browser box")
    assert offering.price_cents == 400
    assert offering.visibility == "public"
    assert offering.resource.remove_owner_keys_while_rented is True

    # Stopping shows a confirmation page first.
    page.get_by_role("link", name="Stop…").click()
    expect(page.get_by_text("powered off at once")).to_be_visible()
    page.get_by_role("button", name="Stop Browser box").click()
    poll_until_status(page, "Stopped")
    offering.refresh_from_db()
    assert offering.stock_status == "out_of_stock"
