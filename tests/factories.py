"""Test data builders: plain functions that create rows through the services where one exists."""

from __future__ import annotations

import itertools

import asyncssh
from django.utils import timezone

from marketplace.models import Contract, Offering, ProviderProfile, User, Visibility
from provisioning.models import Backend, CloudAccount, ValidationStatus
from recipes.models import Recipe, RecipeVersion

DEFAULT_PASSWORD = "correct-horse-battery-staple-42"

_sequence = itertools.count(1)


def ssh_public_key(comment: str = "tester@laptop") -> str:
    """Return a fresh ed25519 public key line in OpenSSH format."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key.export_public_key("openssh").decode().strip()


def make_user(*, email: str | None = None, password: str = DEFAULT_PASSWORD, **extra) -> User:
    email = email or f"user{next(_sequence)}@example.com"
    return User.objects.create_user(email=email, password=password, **extra)


def make_superuser(*, email: str | None = None, password: str = DEFAULT_PASSWORD) -> User:
    email = email or f"admin{next(_sequence)}@example.com"
    return User.objects.create_superuser(email=email, password=password)


def make_provider(*, user: User | None = None, display_name: str | None = None, auto_accept: bool = True) -> ProviderProfile:
    from marketplace.services.providers import provider_profile_create

    user = user or make_user()
    display_name = display_name or f"Provider {next(_sequence)}"
    return provider_profile_create(user=user, display_name=display_name, country="DE", auto_accept=auto_accept)


def make_cloud_account(
    *,
    owner: User,
    backend: str = Backend.SANDBOX,
    label: str | None = None,
    token: str = "",
    validation_status: str = ValidationStatus.VALID,
) -> CloudAccount:
    """Create a cloud account row directly; no backend is called."""
    account = CloudAccount(owner=owner, backend=backend, label=label or f"Account {next(_sequence)}")
    if token:
        account.set_token(token)
    account.validation_status = validation_status
    account.validated_at = timezone.now()
    account.save()
    return account


def make_recipe(*, author: User, name: str | None = None, script: str = "#!/bin/sh\necho ready\n") -> RecipeVersion:
    """Create a recipe with one version and return the version."""
    number = next(_sequence)
    name = name or f"Recipe {number}"
    recipe = Recipe.objects.create(author=author, name=name, slug=f"recipe-{number}", description=f"{name} description")
    return RecipeVersion.objects.create(recipe=recipe, number=1, script=script, changelog="First version.")


def make_offering(
    *,
    provider: ProviderProfile,
    cloud_account: CloudAccount | None = None,
    **fields,
) -> Offering:
    """Create an offering row directly with catalog-valid sandbox defaults; `fields` override them."""
    number = next(_sequence)
    cloud_account = cloud_account or make_cloud_account(owner=provider.user)
    values = {
        "name": f"Offering {number}",
        "slug": f"offering-{number}",
        "description": "A small test server.",
        "vcpu": 2,
        "memory_mib": 4096,
        "disk_gb": 40,
        "country": "DE",
        "city": "Falkenstein",
        "location_code": "fsn1",
        "server_type": "cx22",
        "image": "ubuntu-24.04",
        "price_cents": 500,
        "currency": "EUR",
        "visibility": Visibility.PUBLIC,
    }
    values.update(fields)
    return Offering.objects.create(provider=provider, cloud_account=cloud_account, **values)


def make_contract(*, tenant: User, offering: Offering, pay: bool = True) -> Contract:
    """Rent `offering` as `tenant` through the contract services (paid unless `pay` is False)."""
    from marketplace.services.contracts import contract_create, contract_pay, new_idempotency_key

    contract, _ = contract_create(
        tenant=tenant, offering=offering, ssh_public_key=ssh_public_key(), idempotency_key=new_idempotency_key()
    )
    if pay:
        contract = contract_pay(contract=contract, actor=tenant)
    return contract


def offering_form_data(account: CloudAccount, **overrides) -> dict:
    """Return the offering form's POST data for a Sandbox cx22 in fsn1 on `account`; `overrides` replace fields."""
    data = {
        "name": "Onboarding VM",
        "product_type": "vm",
        "cloud_account": account.pk,
        "server_type": "cx22",
        "location_code": "fsn1",
        "image": "ubuntu-24.04",
        "vcpu": "2",
        "memory_mib": "4096",
        "disk_gb": "40",
        "gpu_count": "0",
        "price": "5.00",
        "currency": "EUR",
        "visibility": "private",
        "stock_status": "in_stock",
        "action": "save",
    }
    data.update(overrides)
    return data
