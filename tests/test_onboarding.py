"""Provider onboarding: the step states, the guided setup pages, the dashboard checklist and the API."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from marketplace.models import Offering, ProviderProfile, Visibility
from marketplace.services.onboarding import provider_onboarding_state
from provisioning.models import CloudAccount, ValidationStatus
from tests.factories import (
    make_cloud_account,
    make_offering,
    make_provider,
    make_user,
    offering_form_data,
)

pytestmark = pytest.mark.django_db

FLOW_URL = reverse("marketplace:provider_onboarding")
API_URL = "/api/v1/provider/onboarding/"


def done_steps(user) -> list[str]:
    return [step.key for step in provider_onboarding_state(user=user).steps if step.done]


@pytest.fixture
def complete_provider():
    """A provider with every onboarding step done: profile, valid account, public offering."""
    profile = make_provider(display_name="Complete Compute")
    make_offering(provider=profile, name="Listed VM", visibility=Visibility.PUBLIC)
    return profile


# --- step states ------------------------------------------------------------------------------


def test_state_of_new_user_starts_at_profile():
    user = make_user()

    state = provider_onboarding_state(user=user)

    assert done_steps(user) == []
    assert state.complete is False
    assert state.current.key == "profile"
    assert [step.key for step in state.steps] == ["profile", "cloud_account", "offering", "publish"]
    assert [step.title for step in state.steps] == ["Profile", "Cloud account", "First offering", "Publish"]
    assert state.steps[1].url == f"{FLOW_URL}?step=cloud_account"


def test_state_profile_only_needs_account():
    profile = make_provider(display_name="Fresh Compute")

    state = provider_onboarding_state(user=profile.user)

    assert done_steps(profile.user) == ["profile"]
    assert state.current.key == "cloud_account"
    assert "Fresh Compute" in state.steps[0].detail


@pytest.mark.parametrize("status", [ValidationStatus.UNCHECKED, ValidationStatus.INVALID])
def test_state_ignores_account_not_validated(status):
    profile = make_provider()
    make_cloud_account(owner=profile.user, label="Broken project", validation_status=status)

    state = provider_onboarding_state(user=profile.user)

    assert done_steps(profile.user) == ["profile"]
    assert "Broken project" in state.step("cloud_account").detail
    assert "re-validate it" in state.step("cloud_account").detail


def test_state_ignores_deleted_account():
    profile = make_provider()
    account = make_cloud_account(owner=profile.user)
    CloudAccount.all_objects.filter(pk=account.pk).update(deleted_at=timezone.now())

    assert done_steps(profile.user) == ["profile"]


def test_state_private_offering_is_not_published():
    profile = make_provider()
    make_offering(provider=profile, visibility=Visibility.PRIVATE)

    state = provider_onboarding_state(user=profile.user)

    assert done_steps(profile.user) == ["profile", "cloud_account", "offering"]
    assert state.current.key == "publish"


@pytest.mark.parametrize("visibility", [Visibility.PUBLIC, Visibility.SHARED])
def test_state_listed_offering_completes(visibility):
    profile = make_provider()
    make_offering(provider=profile, name="Listed VM", visibility=visibility)

    state = provider_onboarding_state(user=profile.user)

    assert state.complete is True
    assert state.current is None
    assert state.done_count == 4
    assert "'Listed VM' is listed" in state.step("publish").detail


def test_state_invalid_account_not_published():
    profile = make_provider()
    make_cloud_account(owner=profile.user, label="Good")
    broken = make_cloud_account(owner=profile.user, label="Broken", validation_status=ValidationStatus.INVALID)
    make_offering(provider=profile, cloud_account=broken, visibility=Visibility.PUBLIC)

    assert done_steps(profile.user) == ["profile", "cloud_account", "offering"]


def test_state_counts_only_own_data(complete_provider):
    user = make_user()

    assert done_steps(user) == []


def test_state_step_unknown_key_raises():
    state = provider_onboarding_state(user=make_user())

    with pytest.raises(KeyError, match="Unknown onboarding step 'payout'"):
        state.step("payout")


# --- guided setup pages -----------------------------------------------------------------------


def test_flow_needs_sign_in(client):
    response = client.get(FLOW_URL)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_flow_new_user_shows_profile_form(client):
    client.force_login(make_user())

    html = client.get(FLOW_URL).content.decode()

    assert "Become a provider" in html
    assert 'aria-current="step">Profile</a>' in html
    assert 'name="profile-display_name"' in html
    assert f'name="next" value="{FLOW_URL}"' in html


def test_flow_profile_returns_to_flow(client):
    user = make_user()
    client.force_login(user)

    response = client.post(
        reverse("marketplace:provider_profile_save"), {"profile-display_name": "Step One Cloud", "next": FLOW_URL}
    )
    page = client.get(FLOW_URL).content.decode()

    assert response.status_code == 302
    assert response["Location"] == FLOW_URL
    assert ProviderProfile.objects.get(user=user).display_name == "Step One Cloud"
    assert 'aria-current="step">Cloud account</a>' in page
    assert f"{reverse('provisioning:cloud_accounts')}?next={FLOW_URL}" in page


def test_profile_save_ignores_next_to_other_host(client):
    client.force_login(make_user())

    response = client.post(
        reverse("marketplace:provider_profile_save"),
        {"profile-display_name": "Redirect Cloud", "next": "https://attacker.example/steal"},
    )

    assert response.status_code == 302
    assert response["Location"] == FLOW_URL


def test_profile_update_returns_to_dashboard(client):
    profile = make_provider(display_name="Old Name")
    client.force_login(profile.user)

    response = client.post(reverse("marketplace:provider_profile_save"), {"profile-display_name": "New Name"})

    assert response["Location"] == reverse("marketplace:provider_dashboard")


def test_flow_invalid_profile_stays_in_flow(client):
    client.force_login(make_user())

    response = client.post(reverse("marketplace:provider_profile_save"), {"profile-display_name": "", "next": FLOW_URL})
    html = response.content.decode()

    assert response.status_code == 200
    assert 'aria-current="step">Profile</a>' in html
    assert "has-error" in html
    assert f'name="next" value="{FLOW_URL}"' in html
    assert not ProviderProfile.objects.exists()


def test_flow_agent_note_has_no_link(client):
    profile = make_provider()
    client.force_login(profile.user)

    html = client.get(FLOW_URL).content.decode()

    assert "Add a cloud account" in html
    assert "provisioned by an agent you install on the host, is planned and not available yet" in html
    assert "agent-pools" not in html
    assert "Back: Profile" in html


def test_cloud_account_add_returns_to_next(client):
    profile = make_provider()
    client.force_login(profile.user)
    add_url = reverse("provisioning:cloud_account_add", kwargs={"backend": "sandbox"})

    page = client.get(reverse("provisioning:cloud_accounts"), {"next": FLOW_URL}).content.decode()
    response = client.post(add_url, {"sandbox-label": "Playground", "next": FLOW_URL})

    assert f'<input type="hidden" name="next" value="{FLOW_URL}">' in page
    assert response.status_code == 302
    assert response["Location"] == FLOW_URL
    assert done_steps(profile.user) == ["profile", "cloud_account"]


def test_cloud_account_add_ignores_next_to_other_host(client):
    profile = make_provider()
    client.force_login(profile.user)
    add_url = reverse("provisioning:cloud_account_add", kwargs={"backend": "sandbox"})

    response = client.post(add_url, {"sandbox-label": "Playground", "next": "//attacker.example/"})

    account = CloudAccount.objects.get(owner=profile.user)
    assert response["Location"] == reverse("provisioning:cloud_account", kwargs={"pk": account.pk})


def test_cloud_account_add_error_keeps_next(client):
    profile = make_provider()
    client.force_login(profile.user)
    add_url = reverse("provisioning:cloud_account_add", kwargs={"backend": "sandbox"})

    response = client.post(add_url, {"sandbox-label": "", "next": FLOW_URL})

    assert response.status_code == 200
    assert f'<input type="hidden" name="next" value="{FLOW_URL}">' in response.content.decode()


def test_offering_form_returns_to_next(client):
    profile = make_provider()
    account = make_cloud_account(owner=profile.user)
    client.force_login(profile.user)
    create_url = reverse("marketplace:offering_create")

    form_page = client.get(create_url, {"next": FLOW_URL}).content.decode()
    response = client.post(create_url, {**offering_form_data(account), "next": FLOW_URL})

    assert f'<input type="hidden" name="next" value="{FLOW_URL}">' in form_page
    assert response.status_code == 302
    assert response["Location"] == FLOW_URL
    assert Offering.objects.get(provider=profile).visibility == Visibility.PRIVATE
    assert 'aria-current="step">Publish</a>' in client.get(FLOW_URL).content.decode()


def test_offering_form_ignores_next_to_other_host(client):
    profile = make_provider()
    account = make_cloud_account(owner=profile.user)
    client.force_login(profile.user)

    response = client.post(
        reverse("marketplace:offering_create"), {**offering_form_data(account), "next": "https://attacker.example/"}
    )

    assert response["Location"] == Offering.objects.get(provider=profile).get_absolute_url()


def test_flow_step_needs_earlier_steps(client):
    client.force_login(make_provider().user)

    html = client.get(FLOW_URL, {"step": "offering"}).content.decode()

    assert "Finish the earlier steps first" in html
    assert f'href="{FLOW_URL}?step=cloud_account">Cloud account</a>.' in html
    assert reverse("marketplace:offering_create") not in html


def test_flow_publish_step_publishes_draft(client):
    profile = make_provider()
    draft = make_offering(provider=profile, name="Draft VM", visibility=Visibility.PRIVATE)
    client.force_login(profile.user)
    publish_url = reverse("marketplace:offering_publish", kwargs={"slug": draft.slug})

    page = client.get(FLOW_URL).content.decode()
    response = client.post(publish_url, {"next": FLOW_URL})
    done_page = client.get(response["Location"]).content.decode()

    assert f'action="{publish_url}"' in page
    assert response.status_code == 302
    assert response["Location"] == FLOW_URL
    draft.refresh_from_db()
    assert draft.visibility == Visibility.PUBLIC
    assert "Setup complete" in done_page
    assert "&#x27;Draft VM&#x27; is public now" in done_page


def test_publish_on_invalid_account_is_rejected(client):
    profile = make_provider()
    broken = make_cloud_account(owner=profile.user, label="Broken", validation_status=ValidationStatus.INVALID)
    draft = make_offering(provider=profile, cloud_account=broken, visibility=Visibility.PRIVATE)
    client.force_login(profile.user)

    response = client.post(reverse("marketplace:offering_publish", kwargs={"slug": draft.slug}), follow=True)

    draft.refresh_from_db()
    assert draft.visibility == Visibility.PRIVATE
    assert "Cloud account &#x27;Broken&#x27; is invalid" in response.content.decode()


def test_flow_publish_step_without_candidates_explains(client):
    profile = make_provider()
    make_cloud_account(owner=profile.user, label="Good")
    broken = make_cloud_account(owner=profile.user, label="Broken", validation_status=ValidationStatus.INVALID)
    make_offering(provider=profile, cloud_account=broken, visibility=Visibility.PRIVATE)
    client.force_login(profile.user)

    html = client.get(FLOW_URL).content.decode()

    assert "None of your offerings can be published" in html


def test_flow_complete_shows_summary(client, complete_provider):
    client.force_login(complete_provider.user)

    summary = client.get(FLOW_URL).content.decode()
    profile_step = client.get(FLOW_URL, {"step": "profile"}).content.decode()

    assert "Setup complete" in summary
    assert 'aria-current="step"' not in summary
    assert "Complete Compute" in profile_step
    assert 'name="profile-display_name"' not in profile_step
    assert "Next: Cloud account" in profile_step


def test_flow_page_query_count(client, complete_provider, django_assert_max_num_queries):
    client.force_login(complete_provider.user)

    with django_assert_max_num_queries(12):
        client.get(FLOW_URL, {"step": "publish"})


# --- dashboard checklist ----------------------------------------------------------------------


def test_dashboard_shows_checklist_until_complete(client):
    profile = make_provider()
    client.force_login(profile.user)
    dashboard_url = reverse("marketplace:provider_dashboard")

    before = client.get(dashboard_url).content.decode()
    make_offering(provider=profile, visibility=Visibility.PUBLIC)
    after = client.get(dashboard_url).content.decode()

    assert "Finish setting up (1 of 4 done)" in before
    assert f'href="{FLOW_URL}?step=cloud_account">Cloud account</a>' in before
    assert "Connect a Hetzner Cloud or Proxmox VE account" in before
    assert "Finish setting up" not in after


def test_dashboard_without_profile_opens_flow(client):
    client.force_login(make_user())

    html = client.get(reverse("marketplace:provider_dashboard")).content.decode()

    assert 'aria-current="step">Profile</a>' in html


# --- API ---------------------------------------------------------------------------------------


def test_api_onboarding_needs_authentication():
    response = APIClient().get(API_URL)

    assert response.status_code in (401, 403)


def test_api_onboarding_new_user():
    client = APIClient()
    client.force_login(make_user())

    response = client.get(API_URL)

    assert response.status_code == 200
    body = response.json()
    assert body["complete"] is False
    assert body["current_step"] == "profile"
    assert [step["key"] for step in body["steps"]] == ["profile", "cloud_account", "offering", "publish"]
    assert [step["done"] for step in body["steps"]] == [False, False, False, False]
    assert body["steps"][0]["url"] == f"{FLOW_URL}?step=profile"


def test_api_onboarding_complete(complete_provider):
    client = APIClient()
    client.force_login(complete_provider.user)

    body = client.get(API_URL).json()

    assert body["complete"] is True
    assert body["current_step"] is None
    assert all(step["done"] for step in body["steps"])


def test_api_onboarding_shows_own_state_only(complete_provider):
    client = APIClient()
    client.force_login(make_provider().user)

    body = client.get(API_URL).json()

    assert body["current_step"] == "cloud_account"
    assert "Complete Compute" not in str(body)


def test_api_onboarding_is_read_only():
    client = APIClient()
    client.force_login(make_user())

    response = client.post(API_URL, {}, format="json")

    assert response.status_code == 405


def test_api_onboarding_in_schema():
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()

    operation = schema["paths"][API_URL]["get"]
    assert operation["summary"] == "Show your provider setup steps"
    assert "OnboardingStepEnum" in schema["components"]["schemas"]
