"""Helpers for journey tests: build marketplace data and wait for contracts to settle."""

from __future__ import annotations

import time

from django.db import close_old_connections

from marketplace.models import Contract, ContractStatus, Offering, ProviderProfile, User
from provisioning.models import Backend, CloudAccount, ValidationStatus
from recipes.keys import generate_keypair
from recipes.models import Recipe, RecipeVersion

SETTLED = {
    ContractStatus.ACTIVE,
    ContractStatus.FAILED,
    ContractStatus.TERMINATED,
    ContractStatus.TERMINATION_FAILED,
    ContractStatus.REJECTED,
    ContractStatus.CANCELLED,
}


def make_provider(*, email: str = "provider@example.com", backend: str = Backend.HETZNER, token: str = "") -> tuple[User, CloudAccount]:
    user = User.objects.create_user(email=email, password="provider-password-1")
    local_part = email.split("@")[0]
    ProviderProfile.objects.create(user=user, display_name=f"Loopback Cloud {local_part}", slug=local_part, auto_accept=True)
    account = CloudAccount(owner=user, backend=backend, label=f"{backend} account", validation_status=ValidationStatus.VALID)
    if token:
        account.set_token(token)
    account.save()
    return user, account


def make_offering(*, account: CloudAccount, script: str | None, slug: str = "loopback-cx22") -> Offering:
    version = None
    if script is not None:
        recipe = Recipe.objects.create(author=account.owner, name=f"Recipe {slug}", slug=f"recipe-{slug}")
        version = RecipeVersion.objects.create(recipe=recipe, number=1, script=script)
    return Offering.objects.create(
        provider=account.owner.provider_profile,
        cloud_account=account,
        name=f"Offering {slug}",
        slug=slug,
        vcpu=2,
        memory_mib=4096,
        disk_gb=40,
        country="DE",
        city="Falkenstein",
        location_code="fsn1",
        server_type="cx22",
        image="ubuntu-24.04",
        recipe_version=version,
        price_cents=574,
        currency="EUR",
    )


def make_tenant(*, email: str = "tenant@example.com") -> tuple[User, str]:
    user = User.objects.create_user(email=email, password="tenant-password-1")
    keypair = generate_keypair("tenant@laptop")
    return user, keypair.public_line


def rent(*, tenant, public_key: str, offering: Offering) -> Contract:
    """Create and pay a contract for `offering`, so a worker starts provisioning it."""
    from marketplace.services import contracts as contract_services

    contract, _ = contract_services.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=public_key, idempotency_key=f"key-{offering.slug}"
    )
    return contract_services.contract_pay(contract=contract, actor=tenant)


def wait_for_status(contract: Contract, statuses, *, timeout: float = 90.0) -> Contract:
    """Poll the database until the contract reaches one of `statuses` (set by a worker process)."""
    expected = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        close_old_connections()
        contract.refresh_from_db()
        if contract.status in expected:
            return contract
        time.sleep(0.2)
    raise AssertionError(
        f"Contract {contract.pk} is {contract.status} (step {contract.provisioning_step!r}, "
        f"reason {contract.status_reason!r}) after {timeout} s; expected {sorted(expected)}."
    )


def wait_until(predicate, *, timeout: float = 30.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"Timed out after {timeout} s waiting for {message}.")
