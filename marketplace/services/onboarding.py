"""Provider onboarding: which of the four setup steps a user has done, derived from their data.

The steps are profile, cloud account, first offering and publish. Each step's state is read
from the database on every call, never from the session, so the guided flow resumes wherever
the user left it, from any device, and the dashboard checklist matches what the API returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models
from django.db.models import QuerySet
from django.urls import reverse

from marketplace.models import Offering, ProviderProfile, User, Visibility
from provisioning.models import CloudAccount, ValidationStatus


class OnboardingStepKey(models.TextChoices):
    """The onboarding steps, in the order the guided flow visits them, with their titles."""

    PROFILE = "profile", "Profile"
    CLOUD_ACCOUNT = "cloud_account", "Cloud account"
    OFFERING = "offering", "First offering"
    PUBLISH = "publish", "Publish"


STEP_PROFILE = OnboardingStepKey.PROFILE
STEP_CLOUD_ACCOUNT = OnboardingStepKey.CLOUD_ACCOUNT
STEP_OFFERING = OnboardingStepKey.OFFERING
STEP_PUBLISH = OnboardingStepKey.PUBLISH
STEP_KEYS = tuple(OnboardingStepKey.values)
STEP_TITLES = dict(OnboardingStepKey.choices)

#: Visibilities that list an offering in somebody's catalog.
LISTED_VISIBILITIES = (Visibility.PUBLIC, Visibility.SHARED)


@dataclass(frozen=True)
class OnboardingStep:
    """One step of provider onboarding with its state and the flow page that completes it."""

    key: str
    title: str
    done: bool
    detail: str
    url: str


@dataclass(frozen=True)
class OnboardingState:
    """The four onboarding steps of one user, in flow order."""

    steps: tuple[OnboardingStep, ...]

    @property
    def complete(self) -> bool:
        return all(step.done for step in self.steps)

    @property
    def current(self) -> OnboardingStep | None:
        """The first step that is not done, or None when onboarding is complete."""
        return next((step for step in self.steps if not step.done), None)

    @property
    def done_count(self) -> int:
        return sum(1 for step in self.steps if step.done)

    def step(self, key: str) -> OnboardingStep:
        """Return the step named `key`; raises KeyError for a key not in STEP_KEYS."""
        for step in self.steps:
            if step.key == key:
                return step
        raise KeyError(f"Unknown onboarding step {key!r}; valid steps: {', '.join(STEP_KEYS)}.")

    def previous_done(self, key: str) -> bool:
        """Return whether every step before `key` is done."""
        index = STEP_KEYS.index(key)
        return all(step.done for step in self.steps[:index])


def onboarding_step_url(key: str) -> str:
    """Return the path of the guided flow's page for step `key`."""
    return f"{reverse('marketplace:provider_onboarding')}?step={key}"


def listed_offerings(*, user: User) -> QuerySet[Offering]:
    """Offerings of `user` that a catalog lists: public or shared, on a cloud account not marked invalid.

    The same rule as `selectors.catalog_offerings`, which hides offerings of invalid accounts.
    """
    return Offering.objects.filter(provider__user=user, visibility__in=LISTED_VISIBILITIES).exclude(
        cloud_account__validation_status=ValidationStatus.INVALID
    )


def publish_candidates(*, user: User) -> QuerySet[Offering]:
    """Private offerings of `user` on a usable cloud account, newest first: what the publish step offers."""
    return (
        Offering.objects.filter(provider__user=user, visibility=Visibility.PRIVATE)
        .exclude(cloud_account__validation_status=ValidationStatus.INVALID)
        .select_related("cloud_account")
        .order_by("-created_at", "-id")
    )


def _profile_step(profile: ProviderProfile | None) -> OnboardingStep:
    if profile is not None:
        detail = f"Public profile {profile.display_name!r}."
    else:
        detail = "Create the public profile that tenants see next to your offerings."
    return OnboardingStep(STEP_PROFILE, STEP_TITLES[STEP_PROFILE], profile is not None, detail, onboarding_step_url(STEP_PROFILE))


def _cloud_account_step(user: User) -> OnboardingStep:
    accounts = list(CloudAccount.objects.filter(owner=user).order_by("label", "id").only("label", "validation_status"))
    valid = [account for account in accounts if account.validation_status == ValidationStatus.VALID]
    if valid:
        detail = f"{valid[0].label!r} is valid."
    elif accounts:
        account = accounts[0]
        detail = (
            f"Cloud account {account.label!r} is {account.get_validation_status_display().lower()}; "
            "re-validate it or add another account."
        )
    else:
        detail = "Connect a Hetzner Cloud or Proxmox VE account, or a Sandbox account to try the platform."
    return OnboardingStep(
        STEP_CLOUD_ACCOUNT, STEP_TITLES[STEP_CLOUD_ACCOUNT], bool(valid), detail, onboarding_step_url(STEP_CLOUD_ACCOUNT)
    )


def _offering_step(user: User) -> OnboardingStep:
    count = Offering.objects.filter(provider__user=user).count()
    if count:
        detail = f"{count} offering{'s' if count != 1 else ''}."
    else:
        detail = "Create an offering from your cloud account's server types, locations and images."
    return OnboardingStep(STEP_OFFERING, STEP_TITLES[STEP_OFFERING], count > 0, detail, onboarding_step_url(STEP_OFFERING))


def _publish_step(user: User) -> OnboardingStep:
    listed = listed_offerings(user=user).order_by("-created_at", "-id").only("name").first()
    if listed is not None:
        detail = f"{listed.name!r} is listed in the catalog."
    else:
        detail = "Make an offering public, or share it with selected users, so tenants can rent it."
    return OnboardingStep(STEP_PUBLISH, STEP_TITLES[STEP_PUBLISH], listed is not None, detail, onboarding_step_url(STEP_PUBLISH))


def provider_onboarding_state(*, user: User) -> OnboardingState:
    """Return the state of `user`'s four onboarding steps, read from their profile, accounts and offerings.

    Profile: a provider profile exists. Cloud account: a cloud account that passed validation
    exists (deleted accounts do not count). First offering: any offering exists. Publish: an
    offering is public or shared and its cloud account is not marked invalid, so a catalog lists it.
    """
    profile = ProviderProfile.objects.filter(user=user).only("display_name").first()
    steps = (
        _profile_step(profile),
        _cloud_account_step(user),
        _offering_step(user),
        _publish_step(user),
    )
    return OnboardingState(steps=steps)
