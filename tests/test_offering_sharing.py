"""Offering visibility (public, shared with an allowlist, private), the confirmation before a
public offering is hidden, duplicating, publishing, and who may see, edit, copy, publish or rent what."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace.models import (
    Contract,
    ContractStatus,
    Offering,
    OfferingAllowlistEntry,
    Visibility,
)
from marketplace.services.contracts import contract_create, new_idempotency_key
from marketplace.services.offerings import offering_duplicate, offering_publish
from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_user,
    ssh_public_key,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def provider():
    return make_provider(display_name="Acme Compute")


@pytest.fixture
def friend():
    return make_user(email="friend@example.com")


@pytest.fixture
def stranger():
    return make_user(email="stranger@example.com")


@pytest.fixture
def shared(provider):
    offering = make_offering(provider=provider, name="Friends only", slug="friends-only", visibility=Visibility.SHARED)
    OfferingAllowlistEntry.objects.create(offering=offering, email="friend@example.com")
    return offering


def api_client(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def edit_url(offering) -> str:
    return reverse("marketplace:offering_edit", kwargs={"slug": offering.slug})


def form_data(offering, **overrides) -> dict:
    data = {
        "name": offering.name,
        "description": "",
        "product_type": "vm",
        "cloud_account": offering.cloud_account_id,
        "server_type": offering.server_type,
        "location_code": offering.location_code,
        "image": offering.image,
        "vcpu": str(offering.vcpu),
        "memory_mib": str(offering.memory_mib),
        "disk_gb": str(offering.disk_gb),
        "gpu_model": "",
        "gpu_count": "0",
        "country": "",
        "city": "",
        "recipe_version": "",
        "price": "5.00",
        "currency": "EUR",
        "visibility": offering.visibility,
        "stock_status": "in_stock",
        "shared_with": "",
        "action": "save",
    }
    data.update(overrides)
    return data


# --- shared visibility ----------------------------------------------------------------------


def test_allowlisted_user_sees_shared_offering(client, shared, friend):
    client.force_login(friend)

    catalog = client.get(reverse("marketplace:catalog"))
    page = client.get(shared.get_absolute_url())
    api_list = api_client(friend).get("/api/v1/offerings/")
    api_detail = api_client(friend).get("/api/v1/offerings/friends-only/")

    assert "Friends only" in catalog.content.decode()
    assert page.status_code == 200
    assert [item["slug"] for item in api_list.json()["results"]] == ["friends-only"]
    assert api_detail.status_code == 200
    assert api_detail.json()["visibility"] == "shared"


def test_allowlist_matches_email_in_any_case(client, provider):
    offering = make_offering(provider=provider, visibility=Visibility.SHARED)
    OfferingAllowlistEntry.objects.create(offering=offering, email="mixed@example.com")
    client.force_login(make_user(email="Mixed@example.com"))

    assert client.get(offering.get_absolute_url()).status_code == 200


def test_others_do_not_see_shared_offering(client, shared, stranger):
    client.force_login(stranger)

    catalog = client.get(reverse("marketplace:catalog"))
    page = client.get(shared.get_absolute_url())
    rent_page = client.get(reverse("marketplace:rent", kwargs={"slug": shared.slug}))
    api_list = api_client(stranger).get("/api/v1/offerings/")
    api_detail = api_client(stranger).get("/api/v1/offerings/friends-only/")
    anonymous_page = api_client().get("/api/v1/offerings/friends-only/")

    assert "Friends only" not in catalog.content.decode()
    assert page.status_code == 404
    assert rent_page.status_code == 404
    assert api_list.json()["results"] == []
    assert api_detail.status_code == 404
    assert anonymous_page.status_code == 404


def test_shared_offering_absent_from_public_catalog(client, shared):
    anonymous = client.get(reverse("marketplace:catalog"))
    provider_page = client.get(shared.provider.get_absolute_url())

    assert "Friends only" not in anonymous.content.decode()
    assert "Friends only" not in provider_page.content.decode()


def test_allowlisted_user_rents_shared_offering(shared, friend):
    body = {"offering": "friends-only", "ssh_public_key": ssh_public_key(), "idempotency_key": new_idempotency_key()}

    response = api_client(friend).post("/api/v1/rentals/", body, format="json")

    assert response.status_code == 201, response.json()
    assert Contract.objects.get().tenant == friend


def test_others_cannot_rent_shared_offering(shared, stranger):
    body = {"offering": "friends-only", "ssh_public_key": ssh_public_key(), "idempotency_key": new_idempotency_key()}

    response = api_client(stranger).post("/api/v1/rentals/", body, format="json")

    assert response.status_code == 400
    assert "No offering with slug 'friends-only'" in response.json()["offering"][0]
    with pytest.raises(ValidationError, match="shared with selected users only"):
        contract_create(tenant=stranger, offering=shared, ssh_public_key=ssh_public_key(), idempotency_key=new_idempotency_key())
    assert Contract.objects.count() == 0


def test_form_saves_shared_visibility_and_allowlist(client, provider):
    offering = make_offering(provider=provider, visibility=Visibility.PRIVATE)
    client.force_login(provider.user)

    response = client.post(
        edit_url(offering),
        form_data(offering, visibility="shared", shared_with="Alice@Example.com, bob@example.com\nalice@example.com"),
    )

    offering.refresh_from_db()
    assert response.status_code == 302
    assert offering.visibility == Visibility.SHARED
    assert sorted(offering.allowlist_entries.values_list("email", flat=True)) == ["alice@example.com", "bob@example.com"]
    reopened = client.get(edit_url(offering))
    assert reopened.context["form"]["shared_with"].value() == "alice@example.com\nbob@example.com"


def test_form_rejects_invalid_allowlist_address(client, provider):
    offering = make_offering(provider=provider, visibility=Visibility.PRIVATE)
    client.force_login(provider.user)

    response = client.post(edit_url(offering), form_data(offering, visibility="shared", shared_with="ok@example.com, not-an-email"))

    offering.refresh_from_db()
    assert response.status_code == 200
    assert "'not-an-email' is not a valid email address" in " ".join(response.context["form"].errors["shared_with"])
    assert offering.visibility == Visibility.PRIVATE
    assert offering.allowlist_entries.count() == 0


# --- confirmation before hiding a public offering -----------------------------------------------


def test_hiding_public_offering_asks_first(client, provider):
    offering = make_offering(provider=provider, name="Popular box")
    rental = make_contract(tenant=make_user(), offering=offering)
    client.force_login(provider.user)

    response = client.post(edit_url(offering), form_data(offering, visibility="private", price="9.99"))

    html = response.content.decode()
    offering.refresh_from_db()
    assert response.status_code == 200
    assert "Make Popular box private?" in html
    assert "Its 1 running rental continue unchanged." in html
    assert 'name="confirmed_visibility" value="private"' in html
    assert 'name="price" value="9.99"' in html
    assert offering.visibility == Visibility.PUBLIC
    assert offering.price_cents == 500

    confirmed = client.post(
        edit_url(offering), form_data(offering, visibility="private", price="9.99", confirmed_visibility="private")
    )

    offering.refresh_from_db()
    rental.refresh_from_db()
    assert confirmed.status_code == 302
    assert offering.visibility == Visibility.PRIVATE
    assert offering.price_cents == 999
    assert rental.status in (ContractStatus.PROVISIONING, ContractStatus.ACTIVE)


def test_confirmation_for_other_visibility_asks_again(client, provider):
    offering = make_offering(provider=provider)
    client.force_login(provider.user)

    response = client.post(edit_url(offering), form_data(offering, visibility="shared", confirmed_visibility="private"))

    offering.refresh_from_db()
    assert "Make " in response.content.decode()
    assert offering.visibility == Visibility.PUBLIC


def test_confirmation_back_returns_to_form(client, provider):
    offering = make_offering(provider=provider)
    client.force_login(provider.user)

    response = client.post(edit_url(offering), form_data(offering, visibility="private", price="7.00", action="edit"))

    offering.refresh_from_db()
    assert response.status_code == 200
    assert response.context["form"]["price"].value() == "7.00"
    assert response.context["form"]["visibility"].value() == "private"
    assert offering.visibility == Visibility.PUBLIC


def test_making_private_offering_public_needs_no_confirmation(client, provider):
    offering = make_offering(provider=provider, visibility=Visibility.PRIVATE)
    client.force_login(provider.user)

    response = client.post(edit_url(offering), form_data(offering, visibility="public"))

    offering.refresh_from_db()
    assert response.status_code == 302
    assert offering.visibility == Visibility.PUBLIC


def test_api_patch_hiding_needs_confirmation(provider):
    offering = make_offering(provider=provider, slug="popular")
    make_contract(tenant=make_user(), offering=offering)
    client = api_client(provider.user)

    rejected = client.patch("/api/v1/provider/offerings/popular/", {"visibility": "private"}, format="json")
    confirmed = client.patch(
        "/api/v1/provider/offerings/popular/", {"visibility": "private", "confirm_visibility": True}, format="json"
    )

    assert rejected.status_code == 400
    assert "1 running rental" in rejected.json()["confirm_visibility"][0]
    assert "confirm_visibility: true" in rejected.json()["confirm_visibility"][0]
    assert confirmed.status_code == 200
    assert "confirm_visibility" not in confirmed.json()
    assert Offering.objects.get(slug="popular").visibility == Visibility.PRIVATE


def test_api_visibility_endpoint_sets_allowlist(provider):
    offering = make_offering(provider=provider, slug="popular")
    client = api_client(provider.user)
    url = "/api/v1/provider/offerings/popular/visibility/"
    body = {"visibility": "shared", "allowlist": ["Friend@Example.com"]}

    current = client.get(url)
    rejected = client.patch(url, body, format="json")
    confirmed = client.patch(url, {**body, "confirm_visibility": True}, format="json")
    invalid = client.patch(url, {"visibility": "shared", "allowlist": ["nope"]}, format="json")
    emptied = client.patch(url, {"visibility": "shared", "allowlist": []}, format="json")

    assert current.json() == {"visibility": "public", "allowlist": [], "running_rentals": 0}
    assert rejected.status_code == 400
    assert "confirm_visibility" in rejected.json()
    assert confirmed.status_code == 200
    assert confirmed.json() == {"visibility": "shared", "allowlist": ["friend@example.com"], "running_rentals": 0}
    assert invalid.status_code == 400
    assert "'nope' is not a valid email address" in invalid.json()["allowlist"][0]
    assert emptied.json()["allowlist"] == []
    offering.refresh_from_db()
    assert offering.visibility == Visibility.SHARED


def test_api_edit_with_allowlist_is_400(provider):
    # Found by a review: the allowlist sent with an edit was dropped, so the shared offering had an empty allowlist.
    make_offering(provider=provider, slug="popular")
    client = api_client(provider.user)

    response = client.patch(
        "/api/v1/provider/offerings/popular/",
        {"visibility": "shared", "allowlist": ["friend@example.com"], "confirm_visibility": True},
        format="json",
    )

    assert response.status_code == 400
    assert "/visibility/" in response.json()["allowlist"][0]
    assert Offering.objects.get(slug="popular").visibility == Visibility.PUBLIC


def test_api_visibility_unknown_value_is_400(provider):
    make_offering(provider=provider, slug="popular")

    response = api_client(provider.user).patch(
        "/api/v1/provider/offerings/popular/visibility/", {"visibility": "secret"}, format="json"
    )

    assert response.status_code == 400
    assert "visibility" in response.json()


# --- duplicate ------------------------------------------------------------------------------


def test_duplicate_copies_as_private_draft(client, provider, shared):
    client.force_login(provider.user)

    response = client.post(reverse("marketplace:offering_duplicate", kwargs={"slug": shared.slug}))
    second = client.post(reverse("marketplace:offering_duplicate", kwargs={"slug": shared.slug}))

    copy = Offering.objects.get(slug="friends-only-copy")
    assert response.status_code == 302
    assert response["Location"] == edit_url(copy)
    assert second["Location"] == reverse("marketplace:offering_edit", kwargs={"slug": "friends-only-copy-2"})
    assert copy.name == "Friends only (copy)"
    assert copy.visibility == Visibility.PRIVATE
    assert copy.provider == provider
    assert (copy.server_type, copy.price_cents, copy.cloud_account) == (shared.server_type, shared.price_cents, shared.cloud_account)
    assert list(copy.allowlist_entries.values_list("email", flat=True)) == ["friend@example.com"]
    assert Offering.objects.get(slug="friends-only").visibility == Visibility.SHARED


def test_duplicate_long_name_stays_within_limit(provider):
    offering = make_offering(provider=provider, name="x" * 120)

    copy = offering_duplicate(offering=offering, user=provider.user)

    assert len(copy.name) == 120
    assert copy.name.endswith(" (copy)")


def test_api_duplicate(provider):
    make_offering(provider=provider, slug="popular", name="Popular")

    response = api_client(provider.user).post("/api/v1/provider/offerings/popular/duplicate/")

    assert response.status_code == 201
    assert response.json()["slug"] == "popular-copy"
    assert response.json()["visibility"] == "private"


# --- authorization --------------------------------------------------------------------------


def test_other_provider_cannot_edit_duplicate_or_see_drafts(client, provider):
    draft = make_offering(provider=provider, slug="secret-draft", visibility=Visibility.PRIVATE)
    other = make_provider(display_name="Other Compute")
    client.force_login(other.user)
    api = api_client(other.user)

    assert client.get(draft.get_absolute_url()).status_code == 404
    assert client.get(edit_url(draft)).status_code == 404
    assert client.post(edit_url(draft), form_data(draft, name="Taken")).status_code == 404
    assert client.post(reverse("marketplace:offering_duplicate", kwargs={"slug": draft.slug})).status_code == 404
    assert api.get("/api/v1/offerings/secret-draft/").status_code == 404
    assert api.get("/api/v1/provider/offerings/secret-draft/").status_code == 404
    assert api.post("/api/v1/provider/offerings/secret-draft/duplicate/").status_code == 404
    assert api.get("/api/v1/provider/offerings/secret-draft/visibility/").status_code == 404
    visibility_patch = api.patch(
        "/api/v1/provider/offerings/secret-draft/visibility/", {"visibility": "public"}, format="json"
    )
    assert visibility_patch.status_code == 404
    assert Offering.objects.count() == 1
    draft.refresh_from_db()
    assert draft.visibility == Visibility.PRIVATE
    assert draft.name != "Taken"


def test_duplicate_needs_post_and_sign_in(client, provider):
    offering = make_offering(provider=provider)
    url = reverse("marketplace:offering_duplicate", kwargs={"slug": offering.slug})

    anonymous = client.post(url)
    client.force_login(provider.user)
    get = client.get(url)

    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("account_login"))
    assert get.status_code == 405
    assert Offering.objects.count() == 1


def test_other_provider_cannot_publish_draft(client, provider):
    draft = make_offering(provider=provider, slug="secret-draft", visibility=Visibility.PRIVATE)
    other = make_provider(display_name="Other Compute")
    client.force_login(other.user)

    page_response = client.post(reverse("marketplace:offering_publish", kwargs={"slug": draft.slug}))

    assert page_response.status_code == 404
    with pytest.raises(PermissionError, match=f"does not own offering {draft.pk}"):
        offering_publish(offering=draft, user=other.user)
    draft.refresh_from_db()
    assert draft.visibility == Visibility.PRIVATE


def test_publish_needs_post_and_sign_in(client, provider):
    draft = make_offering(provider=provider, visibility=Visibility.PRIVATE)
    url = reverse("marketplace:offering_publish", kwargs={"slug": draft.slug})

    anonymous = client.post(url)
    client.force_login(provider.user)
    get = client.get(url)

    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("account_login"))
    assert get.status_code == 405
    draft.refresh_from_db()
    assert draft.visibility == Visibility.PRIVATE


def test_others_cannot_rent_private_draft(client, provider, stranger):
    draft = make_offering(provider=provider, slug="secret-draft", visibility=Visibility.PRIVATE)
    client.force_login(stranger)
    rent_url = reverse("marketplace:rent", kwargs={"slug": draft.slug})
    body = {"offering": "secret-draft", "ssh_public_key": ssh_public_key(), "idempotency_key": new_idempotency_key()}

    rent_page = client.get(rent_url)
    rent_post = client.post(rent_url, {"ssh_public_key": ssh_public_key()})
    api_response = api_client(stranger).post("/api/v1/rentals/", body, format="json")

    assert rent_page.status_code == 404
    assert rent_post.status_code == 404
    assert api_response.status_code == 400
    assert "No offering with slug 'secret-draft'" in api_response.json()["offering"][0]
    with pytest.raises(ValidationError, match="private and cannot be rented"):
        contract_create(tenant=stranger, offering=draft, ssh_public_key=ssh_public_key(), idempotency_key=new_idempotency_key())
    assert Contract.objects.count() == 0


def test_private_draft_not_listed_for_others(client, provider, stranger):
    make_offering(provider=provider, name="Secret draft", slug="secret-draft", visibility=Visibility.PRIVATE)
    other = make_provider(display_name="Other Compute")

    anonymous_catalog = client.get(reverse("marketplace:catalog")).content.decode()
    anonymous_api = api_client().get("/api/v1/offerings/").json()
    client.force_login(stranger)
    stranger_catalog = client.get(reverse("marketplace:catalog")).content.decode()
    stranger_api = api_client(stranger).get("/api/v1/offerings/").json()
    other_own_list = api_client(other.user).get("/api/v1/provider/offerings/").json()
    client.force_login(other.user)
    other_csv = client.get(reverse("marketplace:offering_csv_export")).content.decode()
    other_dashboard = client.get(reverse("marketplace:provider_dashboard")).content.decode()

    assert "Secret draft" not in anonymous_catalog
    assert anonymous_api["results"] == []
    assert "Secret draft" not in stranger_catalog
    assert stranger_api["results"] == []
    assert other_own_list["results"] == []
    assert "secret-draft" not in other_csv
    assert "Secret draft" not in other_dashboard


def test_preview_ignores_other_users_cloud_account(client, provider):
    own_account = make_cloud_account(owner=provider.user, label="Own sandbox")
    other_account = make_cloud_account(owner=make_user(), label="Their sandbox")
    client.force_login(provider.user)
    values = {"name": "Preview VM", "server_type": "cx22", "location_code": "fsn1", "image": "ubuntu-24.04", "price": "5"}

    own_preview = client.post(reverse("marketplace:offering_preview"), {**values, "cloud_account": own_account.pk})
    other_preview = client.post(reverse("marketplace:offering_preview"), {**values, "cloud_account": other_account.pk})

    assert own_preview.status_code == 200
    assert "Falkenstein" in own_preview.content.decode()
    assert other_preview.status_code == 200
    assert "Falkenstein" not in other_preview.content.decode()
    assert "Sandbox" not in other_preview.content.decode()
