"""Create the demo data: users, a Sandbox provider with offerings from the Hetzner catalog, recipes.

Running it again changes nothing that exists already, so `manage.py up` can call it every time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from django.core.management.base import BaseCommand
from django.db import transaction

from marketplace.demo.catalog import load_hetzner_catalog
from marketplace.models import Offering, ProductType, ProviderProfile, StockStatus, User, Visibility
from provisioning.models import Backend, CloudAccount, ValidationStatus
from recipes.models import Recipe, RecipeVersion

logger = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"

DEMO_USERS = [
    # email, password, is_staff
    ("admin@example.com", "demo-admin-password", True),
    ("provider@example.com", "demo-provider-password", False),
    ("tenant@example.com", "demo-tenant-password", False),
]

# Server types and locations offered as plain VMs; a few across families and regions.
VM_OFFERINGS = [
    ("cx22", "fsn1"), ("cx32", "fsn1"), ("cx42", "nbg1"), ("cx52", "hel1"),
    ("cpx11", "ash"), ("cpx21", "hil"), ("cpx31", "sin"), ("cpx41", "fsn1"),
    ("cax11", "fsn1"), ("cax21", "nbg1"), ("cax31", "hel1"),
    ("ccx13", "fsn1"), ("ccx23", "ash"), ("ccx33", "nbg1"), ("ccx43", "hel1"),
]
# The provider resells at the Hetzner list price plus this markup, in percent.
MARKUP_PERCENT = 25


def _verified_user(email: str, password: str, *, is_staff: bool) -> User:
    from allauth.account.models import EmailAddress

    user = User.objects.filter(email=email).first()
    if user is None:
        user = User.objects.create_user(email=email, password=password, is_staff=is_staff, is_superuser=is_staff)
    EmailAddress.objects.update_or_create(
        user=user, email=email, defaults={"verified": True, "primary": True}
    )
    return user


class Command(BaseCommand):
    help = "Create demo users, a Sandbox provider with offerings built from the Hetzner catalog, and three recipes."

    @transaction.atomic
    def handle(self, *args, **options) -> None:
        users = {email: _verified_user(email, password, is_staff=staff) for email, password, staff in DEMO_USERS}
        provider_user = users["provider@example.com"]
        profile, _ = ProviderProfile.objects.get_or_create(
            user=provider_user,
            defaults={
                "display_name": "Demo Cloud (Sandbox)",
                "slug": "demo-cloud",
                "description": (
                    "A demonstration provider. Its offerings use the Sandbox backend: provisioning is "
                    "simulated and no real machine is created."
                ),
                "country": "DE",
                "auto_accept": True,
            },
        )
        account, _ = CloudAccount.objects.get_or_create(
            owner=provider_user,
            label="Demo Sandbox",
            defaults={"backend": Backend.SANDBOX, "validation_status": ValidationStatus.VALID},
        )

        versions = self._recipes(author=provider_user)
        catalog = load_hetzner_catalog()
        created = 0
        for type_name, location_code in VM_OFFERINGS:
            server_type = catalog.server_type(name=type_name)
            created += self._offering(
                profile, account, catalog, server_type, location_code, recipe_version=None
            )
        for version in versions.values():
            for type_name, location_code in (("cx22", "fsn1"), ("cpx21", "ash")):
                server_type = catalog.server_type(name=type_name)
                created += self._offering(profile, account, catalog, server_type, location_code, recipe_version=version)
        self.stdout.write(self.style.SUCCESS(f"Demo data ready ({created} offerings created)."))
        self.stdout.write("Sign in at http://127.0.0.1:8000/accounts/login/ with:")
        for email, password, staff in DEMO_USERS:
            self.stdout.write(f"  {email} / {password}{'  (staff: /admin/)' if staff else ''}")

    def _recipes(self, *, author: User) -> dict[str, RecipeVersion]:
        listing = json.loads((DEMO_DIR / "recipes.json").read_text(encoding="utf-8"))
        entries = listing["recipes"] if isinstance(listing, dict) else listing
        versions = {}
        for entry in entries:
            script = (DEMO_DIR / entry["file"]).read_text(encoding="utf-8")
            recipe, _ = Recipe.objects.get_or_create(
                slug=entry["slug"],
                defaults={"author": author, "name": entry["name"], "description": entry["description"]},
            )
            version = recipe.versions.order_by("-number").first()
            if version is None or version.script != script:
                number = (version.number + 1) if version else 1
                version = RecipeVersion.objects.create(recipe=recipe, number=number, script=script, changelog="Demo import.")
            versions[entry["slug"]] = version
        return versions

    def _offering(self, profile, account, catalog, server_type, location_code, *, recipe_version) -> int:
        location = catalog.location(code=location_code)
        list_price = server_type.price_cents(location=location_code)
        if list_price is None:
            return 0
        price = list_price * (100 + MARKUP_PERCENT) // 100
        image = "ubuntu-24.04"
        if recipe_version is not None:
            name = f"{recipe_version.recipe.name} on {server_type.name.upper()} in {location.city}"
            slug = f"{recipe_version.recipe.slug}-{server_type.name}-{location_code}"
            product_type = ProductType.SERVICE
            description = f"{recipe_version.recipe.description}\n\nRuns on a {server_type.description} in {location.city}."
        else:
            name = f"{server_type.name.upper()} in {location.city}"
            slug = f"{server_type.name}-{location_code}"
            product_type = ProductType.VM
            description = (
                f"{server_type.description}: {server_type.vcpu} vCPU ({server_type.cpu_type}), "
                f"{server_type.memory_mib // 1024} GiB memory, {server_type.disk_gb} GB disk, Ubuntu 24.04."
            )
        _, created = Offering.objects.get_or_create(
            slug=slug,
            defaults={
                "provider": profile,
                "cloud_account": account,
                "name": name,
                "description": description,
                "product_type": product_type,
                "vcpu": server_type.vcpu,
                "memory_mib": server_type.memory_mib,
                "disk_gb": server_type.disk_gb,
                "country": location.country,
                "city": location.city,
                "location_code": location_code,
                "server_type": server_type.name,
                "image": image,
                "recipe_version": recipe_version,
                "price_cents": price,
                "currency": catalog.currency,
                "visibility": Visibility.PUBLIC,
                "stock_status": StockStatus.IN_STOCK,
            },
        )
        return int(created)
