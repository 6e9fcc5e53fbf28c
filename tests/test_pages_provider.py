"""Provider pages: become a provider, cloud accounts, the offering form and the public profile."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from marketplace.models import Offering, ProviderProfile, Visibility
from marketplace.services.providers import provider_profile_create
from provisioning.models import CloudAccount
from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_recipe,
    make_user,
)
from tests.test_break_billing import _in_threads

NEW_OFFERING_URL = reverse("marketplace:offering_create")


@pytest.fixture
def provider(db):
    return make_provider(display_name="Acme Compute")


@pytest.fixture
def account(provider):
    return make_cloud_account(owner=provider.user, label="Sandbox A")


def _offering_data(account, **overrides) -> dict:
    data = {
        "name": "Tiny box",
        "description": "",
        "product_type": "vm",
        "cloud_account": account.pk,
        "server_type": "cx22",
        "location_code": "fsn1",
        "image": "ubuntu-24.04",
        "vcpu": "2",
        "memory_mib": "4096",
        "disk_gb": "40",
        "gpu_model": "",
        "gpu_count": "0",
        "country": "",
        "city": "",
        "recipe_version": "",
        "price": "4.59",
        "currency": "EUR",
        "visibility": "public",
        "stock_status": "in_stock",
    }
    data.update(overrides)
    return data


# --- becoming a provider ----------------------------------------------------------------------


@pytest.mark.django_db
def test_provider_dashboard_without_profile_shows_become_form(client):
    client.force_login(make_user())

    html = client.get(reverse("marketplace:provider_dashboard")).content.decode()

    assert "Become a provider" in html


@pytest.mark.django_db
def test_become_provider_creates_profile(client):
    user = make_user()
    client.force_login(user)

    response = client.post(
        reverse("marketplace:provider_profile_save"),
        {"profile-display_name": "Fjord Cloud", "profile-country": "no", "profile-auto_accept": "on"},
    )

    profile = ProviderProfile.objects.get(user=user)
    assert response.status_code == 302
    assert profile.slug == "fjord-cloud"
    assert profile.country == "NO"
    assert profile.auto_accept is True


@pytest.mark.django_db
def test_become_provider_similar_name_gets_unique_slug(client, provider):
    user = make_user()
    client.force_login(user)

    client.post(reverse("marketplace:provider_profile_save"), {"profile-display_name": "Acme-Compute"})

    assert ProviderProfile.objects.get(user=user).slug == "acme-compute-2"


@pytest.mark.django_db
def test_become_provider_invalid_keeps_values(client):
    client.force_login(make_user())

    response = client.post(
        reverse("marketplace:provider_profile_save"),
        {"profile-display_name": "", "profile-description": "We sell servers.", "profile-country": "Germany"},
    )

    assert response.status_code == 200
    form = response.context["form"]
    assert "display_name" in form.errors
    assert "country" in form.errors
    assert "We sell servers." in response.content.decode()
    assert ProviderProfile.objects.count() == 0


@pytest.mark.django_db
def test_profile_edit_updates_profile(client, provider):
    client.force_login(provider.user)

    client.post(
        reverse("marketplace:provider_profile_save"),
        {"profile-display_name": "Acme Cloud", "profile-country": "DE", "profile-website": "https://acme.example"},
    )

    provider.refresh_from_db()
    assert provider.display_name == "Acme Cloud"
    assert provider.slug == "acme-compute"
    assert provider.auto_accept is False


def textarea_text(length: int) -> str:
    """Return text of `length` characters as a browser counts them, with CRLF line ends as browsers submit them.

    A textarea's maxlength counts a line break as one character, but the form posts it as two.
    """
    lines, rest = divmod(length - 4, 5)
    return "line" + "\r\nline" * lines + "x" * rest


@pytest.mark.django_db
def test_profile_description_line_ends_count_once(client, provider):
    client.force_login(provider.user)
    description = textarea_text(5000)

    response = client.post(
        reverse("marketplace:provider_profile_save"),
        {"profile-display_name": "Acme Compute", "profile-description": description},
    )

    provider.refresh_from_db()
    assert response.status_code == 302
    assert provider.description == description.replace("\r\n", "\n")


# --- dashboard ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_provider_dashboard_lists_offerings_rentals_and_accounts(client, provider, account):
    offering = make_offering(provider=provider, cloud_account=account, name="Tiny box")
    tenant = make_user(email="renter@example.com")
    contract = make_contract(tenant=tenant, offering=offering)
    client.force_login(provider.user)

    html = client.get(reverse("marketplace:provider_dashboard")).content.decode()

    assert "Tiny box" in html
    assert reverse("marketplace:offering_edit", kwargs={"slug": offering.slug}) in html
    assert "renter@example.com" in html
    assert contract.ssh_key_fingerprint in html
    assert "Sandbox A" in html
    assert f"badge-{account.status_colour}" in html


@pytest.mark.django_db
def test_provider_dashboard_accept_button_only_when_waiting(client, account):
    provider = ProviderProfile.objects.get(user=account.owner)
    provider.auto_accept = False
    provider.save()
    offering = make_offering(provider=provider, cloud_account=account)
    make_contract(tenant=make_user(), offering=offering)
    client.force_login(provider.user)

    html = client.get(reverse("marketplace:provider_dashboard")).content.decode()

    assert ">Accept</button>" in html


@pytest.mark.django_db
def test_add_sandbox_cloud_account(client, provider):
    client.force_login(provider.user)

    response = client.post(
        reverse("marketplace:cloud_account_add"),
        {"cloud-backend": "sandbox", "cloud-label": "Playground", "cloud-token": ""},
    )

    assert response.status_code == 302
    assert CloudAccount.objects.get(owner=provider.user, label="Playground").backend == "sandbox"


@pytest.mark.django_db
def test_cloud_account_duplicate_label_error(client, provider, account):
    client.force_login(provider.user)

    response = client.post(
        reverse("marketplace:cloud_account_add"),
        {"cloud-backend": "sandbox", "cloud-label": "Sandbox A", "cloud-token": "secret-token-value"},
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "already have a cloud account labelled" in html
    assert "secret-token-value" not in html
    assert CloudAccount.objects.filter(owner=provider.user).count() == 1


@pytest.mark.django_db
def test_add_hetzner_account_without_token_is_error(client, provider):
    client.force_login(provider.user)

    response = client.post(
        reverse("marketplace:cloud_account_add"),
        {"cloud-backend": "hetzner", "cloud-label": "Real", "cloud-token": ""},
    )

    assert response.status_code == 200
    assert "token is required" in response.content.decode()
    assert not CloudAccount.objects.filter(label="Real").exists()


# --- offering form -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_offering_create_happy_path(client, provider, account):
    version = make_recipe(author=provider.user, name="Nginx status")
    client.force_login(provider.user)
    assert "Nginx status v1" in client.get(NEW_OFFERING_URL).content.decode()

    response = client.post(NEW_OFFERING_URL, _offering_data(account, recipe_version=version.pk))

    offering = Offering.objects.get()
    assert response.status_code == 302
    assert response["Location"] == offering.get_absolute_url()
    assert offering.price_cents == 459
    assert offering.slug == "tiny-box"
    assert offering.country == "DE"
    assert offering.city == "Falkenstein"
    assert offering.recipe_version == version


@pytest.mark.django_db
def test_offering_description_line_ends_count_once(client, provider, account):
    client.force_login(provider.user)
    description = textarea_text(10000)

    response = client.post(NEW_OFFERING_URL, _offering_data(account, description=description))

    assert response.status_code == 302
    assert Offering.objects.get().description == description.replace("\r\n", "\n")


@pytest.mark.django_db
def test_offering_create_same_name_gets_unique_slug(client, provider, account):
    client.force_login(provider.user)

    client.post(NEW_OFFERING_URL, _offering_data(account))
    client.post(NEW_OFFERING_URL, _offering_data(account))

    assert sorted(Offering.objects.values_list("slug", flat=True)) == ["tiny-box", "tiny-box-2"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("price", "message"),
    [
        ("-1", "cannot be negative"),
        ("4.599", "at most two decimals"),
        ("99999999", "too high"),
        ("abc", "Enter the price as a number"),
        ("", "required"),
    ],
)
def test_offering_form_rejects_bad_price(client, provider, account, price, message):
    client.force_login(provider.user)

    response = client.post(NEW_OFFERING_URL, _offering_data(account, price=price))

    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors["price"])
    assert Offering.objects.count() == 0


@pytest.mark.django_db
def test_offering_form_unknown_server_type_lists_valid_ones(client, provider, account):
    client.force_login(provider.user)

    response = client.post(NEW_OFFERING_URL, _offering_data(account, server_type="cx9000"))

    errors = " ".join(response.context["form"].errors["server_type"])
    assert response.status_code == 200
    assert "cx9000" in errors
    assert "cx22" in errors
    assert response.context["form"]["name"].value() == "Tiny box"
    assert Offering.objects.count() == 0


@pytest.mark.django_db
def test_offering_form_unknown_location_and_image(client, provider, account):
    client.force_login(provider.user)

    response = client.post(NEW_OFFERING_URL, _offering_data(account, location_code="mars1", image="windows-95"))

    errors = response.context["form"].errors
    assert "mars1" in " ".join(errors["location_code"])
    assert "windows-95" in " ".join(errors["image"])
    assert Offering.objects.count() == 0


@pytest.mark.django_db
def test_offering_form_missing_fields(client, provider, account):
    client.force_login(provider.user)

    response = client.post(NEW_OFFERING_URL, {"name": "Only a name"})

    errors = response.context["form"].errors
    assert response.status_code == 200
    for field in ("cloud_account", "server_type", "location_code", "image", "vcpu", "memory_mib", "disk_gb", "price"):
        assert field in errors, field
    assert Offering.objects.count() == 0


@pytest.mark.django_db
def test_offering_form_rejects_other_users_cloud_account(client, provider, account):
    other_account = make_cloud_account(owner=make_user(), label="Not yours")
    client.force_login(provider.user)

    response = client.post(NEW_OFFERING_URL, _offering_data(account, cloud_account=other_account.pk))

    assert response.status_code == 200
    assert "cloud_account" in response.context["form"].errors
    assert "Not yours" not in response.content.decode()
    assert Offering.objects.count() == 0


@pytest.mark.django_db
def test_offering_service_rejects_other_users_cloud_account(provider):
    from django.core.exceptions import ValidationError

    from marketplace.services.providers import offering_create

    other_account = make_cloud_account(owner=make_user())
    values = {
        "name": "X", "cloud_account": other_account, "server_type": "cx22", "location_code": "fsn1",
        "image": "ubuntu-24.04", "vcpu": 2, "memory_mib": 4096, "disk_gb": 40, "price_cents": 100,
    }

    with pytest.raises(ValidationError) as excinfo:
        offering_create(user=provider.user, values=values)

    assert "cloud_account" in excinfo.value.message_dict


@pytest.mark.django_db
def test_offering_edit_by_owner(client, provider, account):
    offering = make_offering(provider=provider, cloud_account=account, name="Old name", price_cents=100)
    client.force_login(provider.user)
    url = reverse("marketplace:offering_edit", kwargs={"slug": offering.slug})
    form = client.get(url).context["form"]
    assert form["price"].value() == pytest.approx(1)

    response = client.post(
        url, _offering_data(account, name="New name", price="12.30", visibility="private", confirmed_visibility="private")
    )

    offering.refresh_from_db()
    assert response.status_code == 302
    assert offering.name == "New name"
    assert offering.price_cents == 1230
    assert offering.visibility == Visibility.PRIVATE


@pytest.mark.django_db
def test_offering_edit_by_other_user_is_404(client, provider, account):
    offering = make_offering(provider=provider, cloud_account=account)
    other = make_provider()
    client.force_login(other.user)

    url = reverse("marketplace:offering_edit", kwargs={"slug": offering.slug})

    assert client.get(url).status_code == 404
    assert client.post(url, _offering_data(account)).status_code == 404


@pytest.mark.django_db
def test_offering_create_without_profile_redirects(client):
    client.force_login(make_user())

    response = client.get(NEW_OFFERING_URL)

    assert response.status_code == 302
    assert response["Location"] == reverse("marketplace:provider_dashboard")


# --- public profile ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_public_provider_page_lists_public_offerings(client, provider, account):
    make_offering(provider=provider, cloud_account=account, name="Public box")
    make_offering(provider=provider, cloud_account=account, name="Secret box", visibility=Visibility.PRIVATE)

    response = client.get(provider.get_absolute_url())
    html = response.content.decode()

    assert response.status_code == 200
    assert "Acme Compute" in html
    assert "Public box" in html
    assert "Secret box" not in html


# --- names, limits and tokens ----------------------------------------------------------------


@pytest.mark.django_db
def test_become_provider_name_taken_in_other_case(client, provider):
    client.force_login(make_user())

    response = client.post(reverse("marketplace:provider_profile_save"), {"profile-display_name": "ACME compute"})

    assert response.status_code == 200
    assert response.context["form"].errors["display_name"] == [
        "A provider named 'Acme Compute' already exists; choose another name."
    ]
    assert ProviderProfile.objects.count() == 1


@pytest.mark.django_db
def test_become_provider_sandbox_name_is_reserved(client):
    client.force_login(make_user())

    response = client.post(reverse("marketplace:provider_profile_save"), {"profile-display_name": "Sandbox Hosting"})

    assert response.status_code == 200
    assert response.context["form"].errors["display_name"] == [
        '"Sandbox" is reserved for simulated offerings; choose another name.'
    ]
    assert ProviderProfile.objects.count() == 0


@pytest.mark.django_db
def test_become_provider_bidi_name_is_rejected(client):
    client.force_login(make_user())

    response = client.post(reverse("marketplace:provider_profile_save"), {"profile-display_name": "Acme\u202e"})

    assert response.status_code == 200
    assert response.context["form"].errors["display_name"] == [
        "This name contains an invisible text-direction character (U+202E); remove it."
    ]


@pytest.mark.django_db
def test_become_provider_lower_case_country_is_accepted(client):
    user = make_user()
    client.force_login(user)

    client.post(reverse("marketplace:provider_profile_save"), {"profile-display_name": "Nordic", "profile-country": "fi"})

    assert ProviderProfile.objects.get(user=user).country == "FI"


@pytest.mark.django_db
def test_cloud_account_label_with_bidi_control_is_error(client, provider):
    client.force_login(provider.user)

    response = client.post(
        reverse("marketplace:cloud_account_add"),
        {"cloud-backend": "sandbox", "cloud-label": "Play\u2066ground", "cloud-token": ""},
    )

    assert response.status_code == 200
    assert "invisible text-direction character (U+2066)" in response.content.decode()
    assert not CloudAccount.objects.filter(owner=provider.user).exists()


@pytest.mark.django_db
def test_cloud_account_token_max_length_matches_api():
    from marketplace.forms import CloudAccountForm
    from provisioning.api.serializers import CloudAccountSerializer

    accepted = CloudAccountForm(data={"backend": "hetzner", "label": "Prod", "token": "t" * 500})
    too_long = CloudAccountForm(data={"backend": "hetzner", "label": "Prod", "token": "t" * 501})

    assert accepted.is_valid(), accepted.errors
    assert not too_long.is_valid()
    assert CloudAccountSerializer().fields["token"].max_length == 500


@pytest.mark.django_db
def test_add_hetzner_account_rejected_token_message(client, provider, hetzner_api):
    client.force_login(provider.user)

    response = client.post(
        reverse("marketplace:cloud_account_add"),
        {"cloud-backend": "hetzner", "cloud-label": "Real", "cloud-token": "revoked-token"},
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert "Hetzner rejected this API token (HTTP 401: unable to authenticate)." in html
    assert "validate_credentials" not in html
    assert "revoked-token" not in html


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("gpu_model", "gpu_count"),
    [("NVIDIA L4", "0"), ("", "2")],
    ids=["model-without-count", "count-without-model"],
)
def test_offering_form_gpu_fields_go_together(client, provider, account, gpu_model, gpu_count):
    client.force_login(provider.user)

    response = client.post(NEW_OFFERING_URL, _offering_data(account, gpu_model=gpu_model, gpu_count=gpu_count))

    errors = response.context["form"].errors
    assert response.status_code == 200
    assert "gpu_model" in errors
    assert "gpu_count" in errors
    assert "GPU model" in errors["gpu_count"][0]
    assert "GPU count" in errors["gpu_model"][0]
    assert not Offering.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [("memory_mib", str(16 * 1024 * 1024 + 1)), ("disk_gb", "1000001"), ("gpu_count", "65"), ("country", "XX")],
)
def test_offering_form_rejects_out_of_range_values(client, provider, account, field, value):
    overrides = {field: value}
    if field == "gpu_count":
        overrides["gpu_model"] = "NVIDIA L4"
    client.force_login(provider.user)

    response = client.post(NEW_OFFERING_URL, _offering_data(account, **overrides))

    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not Offering.objects.exists()


@pytest.mark.django_db
def test_offering_form_currency_is_a_fixed_list(client, provider, account):
    client.force_login(provider.user)

    page = client.get(NEW_OFFERING_URL).content.decode()
    response = client.post(NEW_OFFERING_URL, _offering_data(account, currency="XYZ"))

    assert '<option value="EUR" selected>' in page
    assert '<option value="JPY">' not in page
    assert "currency" in response.context["form"].errors
    assert not Offering.objects.exists()


@pytest.mark.django_db
def test_offering_form_lower_case_country_is_accepted(client, provider, account):
    client.force_login(provider.user)

    response = client.post(NEW_OFFERING_URL, _offering_data(account, country="fi", city="Helsinki"))

    assert response.status_code == 302
    assert Offering.objects.get().country == "FI"


@pytest.mark.django_db
def test_offering_form_name_with_bidi_control_is_rejected(client, provider, account):
    client.force_login(provider.user)

    response = client.post(NEW_OFFERING_URL, _offering_data(account, name="Cheap\u202eGPU"))

    assert response.context["form"].errors["name"] == [
        "This name contains an invisible text-direction character (U+202E); remove it."
    ]


@pytest.mark.django_db(transaction=True)
def test_concurrent_profile_creates_make_one_profile():
    user = make_user()

    errors = _in_threads(*[lambda: provider_profile_create(user=user, display_name="Twin Cloud") for _ in range(4)])

    assert ProviderProfile.objects.filter(user=user).count() == 1
    assert len(errors) == 3, errors
    for error in errors:
        assert isinstance(error, ValidationError), repr(error)
        assert error.messages == ["You already have a provider profile; edit it on the provider dashboard."]
