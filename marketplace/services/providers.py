"""Provider-side writes: the provider profile and the offerings a provider sells."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Value
from django.db.models.functions import Lower
from django.utils.text import slugify

from marketplace.models import Offering, ProviderProfile, User
from marketplace.services.cloud_catalog import (
    SPEC_FIELDS,
    CatalogUnavailable,
    CloudCatalog,
    cloud_catalog_fetch,
)
from provisioning.backends.base import Location, ServerType
from provisioning.models import CloudAccount

logger = logging.getLogger(__name__)

#: Offering fields a provider sets through `offering_create` and `offering_update`.
OFFERING_EDITABLE_FIELDS = (
    "name",
    "description",
    "product_type",
    "cloud_account",
    "vcpu",
    "memory_mib",
    "disk_gb",
    "gpu_model",
    "gpu_count",
    "country",
    "city",
    "location_code",
    "server_type",
    "image",
    "recipe_version",
    "price_cents",
    "currency",
    "visibility",
    "stock_status",
)

#: Upper bound of a monthly price in cents, the same as the model's validator (1,000,000.00).
MAX_PRICE_CENTS = 100_000_000

_PROFILE_FIELDS = ("display_name", "description", "website", "country", "auto_accept")


def _unique_slug(model, text: str, *, fallback: str, max_length: int) -> str:
    """Slugify `text` and append -2, -3, ... until no row of `model` uses the slug."""
    base = slugify(text)[: max_length - 8].strip("-") or fallback
    existing_slugs = set(model.objects.filter(slug__startswith=base).values_list("slug", flat=True))
    candidate = base
    number = 2
    while candidate in existing_slugs:
        candidate = f"{base}-{number}"
        number += 1
    return candidate


def unique_offering_slug(text: str) -> str:
    """Return a slug made from `text` that no offering uses yet."""
    return _unique_slug(Offering, text, fallback="offering", max_length=140)


# --- provider profile -----------------------------------------------------------------------

DISPLAY_NAME_CONSTRAINT = "providerprofile_display_name_ci_unique"

#: The word that marks simulated offerings in the UI; only staff may put it in a provider's name.
RESERVED_NAME_WORD = "sandbox"


def provider_named(*, display_name: str, exclude_pk: int | None = None) -> ProviderProfile | None:
    """Return the provider profile whose display name equals `display_name` in any letter case.

    Compares with the database's LOWER(), the same function as the unique constraint.
    """
    profiles = ProviderProfile.objects.annotate(name_lower=Lower("display_name")).filter(
        name_lower=Lower(Value(display_name))
    )
    if exclude_pk is not None:
        profiles = profiles.exclude(pk=exclude_pk)
    return profiles.first()


def duplicate_name_message(existing_name: str) -> str:
    return f"A provider named {existing_name!r} already exists; choose another name."


def provider_display_name_check(
    *, display_name: str, actor: User, profile: ProviderProfile | None = None, previous_name: str = ""
) -> None:
    """Raise a ValidationError keyed by display_name if another provider could be mistaken for this one.

    Rejects a name that another profile uses in any letter case, and for non-staff users a new
    name (one that differs from `previous_name`) that contains the word "sandbox" in any case
    or width.
    """
    existing = provider_named(display_name=display_name, exclude_pk=profile.pk if profile is not None else None)
    if existing is not None:
        raise ValidationError({"display_name": duplicate_name_message(existing.display_name)}, code="duplicate_name")
    if display_name == previous_name or actor.is_staff:
        return
    if RESERVED_NAME_WORD in unicodedata.normalize("NFKC", display_name).casefold():
        raise ValidationError(
            {"display_name": "\"Sandbox\" is reserved for simulated offerings; choose another name."},
            code="reserved_name",
        )


def _save_profile(profile: ProviderProfile, **save_kwargs) -> None:
    """Save `profile`; a name taken by a concurrent request becomes the same error as the check's."""
    try:
        with transaction.atomic():
            profile.save(**save_kwargs)
    except IntegrityError as exc:
        if DISPLAY_NAME_CONSTRAINT not in str(exc):
            raise
        logger.info("Provider profile %s: display name %r taken concurrently: %s", profile.pk, profile.display_name, exc)
        raise ValidationError(
            {"display_name": duplicate_name_message(profile.display_name)}, code="duplicate_name"
        ) from exc


@transaction.atomic
def provider_profile_create(
    *,
    user: User,
    display_name: str,
    description: str = "",
    website: str = "",
    country: str = "",
    auto_accept: bool = True,
) -> ProviderProfile:
    """Make `user` a provider with a public profile; the slug is derived from the display name."""
    # Locking the user row serialises concurrent creates for one user (a double-submitted form),
    # so the later ones see the first profile and get the message below.
    User.objects.select_for_update().filter(pk=user.pk).first()
    if ProviderProfile.objects.filter(user=user).exists():
        raise ValidationError("You already have a provider profile; edit it on the provider dashboard.")
    profile = ProviderProfile(
        user=user,
        display_name=display_name.strip(),
        description=description.strip(),
        website=website.strip(),
        country=country.strip().upper(),
        auto_accept=auto_accept,
        slug=_unique_slug(ProviderProfile, display_name, fallback="provider", max_length=80),
    )
    provider_display_name_check(display_name=profile.display_name, actor=user)
    profile.full_clean()
    _save_profile(profile)
    logger.info("Provider profile %s created for user %s", profile.pk, user.pk)
    return profile


@transaction.atomic
def provider_profile_update(
    *,
    profile: ProviderProfile,
    actor: User,
    display_name: str,
    description: str,
    website: str,
    country: str,
    auto_accept: bool,
) -> ProviderProfile:
    """Change a provider's public profile; the slug stays, so existing links keep working."""
    if profile.user_id != actor.pk and not actor.is_staff:
        raise PermissionError(f"User {actor.pk} may not edit provider profile {profile.pk}.")
    profile = ProviderProfile.objects.select_for_update().get(pk=profile.pk)
    previous_name = profile.display_name
    profile.display_name = display_name.strip()
    profile.description = description.strip()
    profile.website = website.strip()
    profile.country = country.strip().upper()
    profile.auto_accept = auto_accept
    provider_display_name_check(
        display_name=profile.display_name, actor=actor, profile=profile, previous_name=previous_name
    )
    profile.full_clean()
    _save_profile(profile, update_fields=list(_PROFILE_FIELDS))
    logger.info("Provider profile %s updated by user %s", profile.pk, actor.pk)
    return profile


# --- offerings ------------------------------------------------------------------------------


def _check_price(price_cents: Any) -> None:
    if isinstance(price_cents, bool) or not isinstance(price_cents, int):
        raise ValidationError({"price_cents": "The price must be a whole number of cents."})
    if price_cents < 0:
        raise ValidationError({"price_cents": "The price cannot be negative."})
    if price_cents > MAX_PRICE_CENTS:
        raise ValidationError(
            {"price_cents": f"The price is too high: the maximum is {MAX_PRICE_CENTS // 100:,} per month."}
        )


def _check_cloud_account(account: CloudAccount | None, user: User) -> None:
    if account is None:
        raise ValidationError({"cloud_account": "Choose the cloud account that runs this offering."})
    if account.owner_id != user.pk:
        raise ValidationError({"cloud_account": "This cloud account is not yours; choose one of your own accounts."})
    if account.deleted_at is not None:
        raise ValidationError({"cloud_account": f"Cloud account {account.label!r} was deleted; choose another account."})


@dataclass(frozen=True)
class BackendCatalog:
    """The server types, locations and images one cloud account's backend offers.

    A catalog built without server type details has no `server_type_specs`, and every spec
    field counts as editable, so vCPU, memory and disk are not checked.
    """

    account_id: int
    server_types: frozenset[str]
    locations: Mapping[str, Location]
    images: frozenset[str]
    server_type_specs: Mapping[str, ServerType] = field(default_factory=dict)
    editable_spec_fields: frozenset[str] = frozenset(SPEC_FIELDS)
    backend_label: str = ""

    @classmethod
    def from_cloud_catalog(cls, catalog: CloudCatalog, *, backend_label: str = "") -> BackendCatalog:
        return cls(
            account_id=catalog.account_id,
            server_types=frozenset(item.name for item in catalog.server_types),
            locations={item.code: item for item in catalog.locations},
            images=frozenset(item.name for item in catalog.images),
            server_type_specs={item.name: item for item in catalog.server_types},
            editable_spec_fields=catalog.editable_spec_fields,
            backend_label=backend_label,
        )


def backend_catalog_load(account: CloudAccount) -> BackendCatalog:
    """Load the server types, locations and images of `account` from its backend.

    Always calls the backend (and refreshes the offering form's cached copy). Raises
    ValidationError (not keyed by field) when the backend API call fails.
    """
    try:
        catalog = cloud_catalog_fetch(account)
    except CatalogUnavailable as exc:
        raise ValidationError(exc.message) from exc
    return BackendCatalog.from_cloud_catalog(catalog, backend_label=account.get_backend_display())


_SPEC_LABELS = {"vcpu": "vCPU", "memory_mib": "Memory (MiB)", "disk_gb": "Disk (GB)"}


def _spec_errors(offering: Offering, catalog: BackendCatalog) -> dict[str, str]:
    """Return an error per spec field that differs from a server type whose specs are fixed."""
    server_type = catalog.server_type_specs.get(offering.server_type)
    if server_type is None:
        return {}
    errors = {}
    for name in SPEC_FIELDS:
        if name in catalog.editable_spec_fields:
            continue
        expected = getattr(server_type, name)
        value = getattr(offering, name)
        if value != expected:
            backend = catalog.backend_label or "This backend"
            errors[name] = (
                f"{_SPEC_LABELS[name]} is {value}, but server type {offering.server_type!r} has {expected}; "
                f"set it to {expected}. {backend} creates servers of exactly the server type's size."
            )
    return errors


def _check_backend_catalog(offering: Offering, catalog: BackendCatalog | None = None) -> None:
    """Check server type, location, image and fixed specs against the cloud account's backend.

    Uses `catalog` when given (it must belong to the offering's cloud account), else loads the
    catalog from the backend. Fills in a blank country or city from the backend's location.
    """
    if catalog is None:
        catalog = backend_catalog_load(offering.cloud_account)
    elif catalog.account_id != offering.cloud_account_id:
        raise ValueError(
            f"The catalog of cloud account {catalog.account_id} cannot check an offering "
            f"on cloud account {offering.cloud_account_id}."
        )

    errors: dict[str, str] = {}
    if offering.server_type not in catalog.server_types:
        errors["server_type"] = (
            f"Unknown server type {offering.server_type!r} for {offering.cloud_account}. "
            f"Valid server types: {', '.join(sorted(catalog.server_types))}."
        )
    location = catalog.locations.get(offering.location_code)
    if location is None:
        errors["location_code"] = (
            f"Unknown location {offering.location_code!r} for {offering.cloud_account}. "
            f"Valid locations: {', '.join(sorted(catalog.locations))}."
        )
    if offering.image not in catalog.images:
        errors["image"] = (
            f"Unknown image {offering.image!r} for {offering.cloud_account}. "
            f"Valid images: {', '.join(sorted(catalog.images))}."
        )
    errors.update(_spec_errors(offering, catalog))
    if errors:
        raise ValidationError(errors)

    if not offering.country:
        offering.country = location.country.upper()
    if not offering.city:
        offering.city = location.city


def _apply(
    offering: Offering, *, user: User, values: Mapping[str, Any], catalog: BackendCatalog | None = None
) -> Offering:
    unknown = set(values) - set(OFFERING_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"Offering fields that cannot be set here: {', '.join(sorted(unknown))}")
    for name, value in values.items():
        setattr(offering, name, value)
    offering.country = (offering.country or "").strip().upper()
    offering.city = (offering.city or "").strip()
    offering.currency = (offering.currency or "").strip().upper()

    _check_price(offering.price_cents)
    _check_cloud_account(values.get("cloud_account", getattr(offering, "cloud_account", None)), user)
    _check_backend_catalog(offering, catalog)
    offering.full_clean()
    return offering


def _provider_of(user: User) -> ProviderProfile:
    profile = ProviderProfile.objects.filter(user=user).first()
    if profile is None:
        raise ValidationError("Create your provider profile before you add offerings.")
    return profile


def offering_validate(
    *,
    user: User,
    values: Mapping[str, Any],
    offering: Offering | None = None,
    slug: str = "",
    catalog: BackendCatalog | None = None,
) -> Offering:
    """Apply `values` to `offering` (or to a new offering of `user`) in memory and validate it.

    Runs the checks of `offering_create` and `offering_update` without saving, for previews.
    `offering` is changed in place; pass a fresh instance. Raises ValidationError keyed by field.
    """
    if offering is None:
        offering = Offering(provider=_provider_of(user))
        offering.slug = slug or _unique_slug(Offering, str(values.get("name") or ""), fallback="offering", max_length=140)
    elif offering.provider.user_id != user.pk:
        raise PermissionError(f"User {user.pk} does not own offering {offering.pk}.")
    return _apply(offering, user=user, values=values, catalog=catalog)


@transaction.atomic
def offering_create(
    *, user: User, values: Mapping[str, Any], slug: str = "", catalog: BackendCatalog | None = None
) -> Offering:
    """Create an offering of `user`'s provider profile from `values` (see OFFERING_EDITABLE_FIELDS).

    The slug is `slug` when given, else derived from the name. `catalog`, when given, is the
    preloaded catalog of the offering's cloud account. Raises ValidationError keyed by field:
    negative or non-integer `price_cents`, a cloud account of another user, a server type,
    location or image the backend does not offer, a vCPU, memory or disk value that differs
    from a server type whose backend fixes it, or a slug that is invalid or taken.
    """
    provider = _provider_of(user)
    offering = Offering(provider=provider)
    offering.slug = slug or _unique_slug(Offering, str(values.get("name") or ""), fallback="offering", max_length=140)
    _apply(offering, user=user, values=values, catalog=catalog)
    try:
        with transaction.atomic():
            offering.save()
    except IntegrityError as exc:
        logger.warning("Offering slug %s clashed for provider %s: %s", offering.slug, provider.pk, exc)
        if slug:
            raise ValidationError(
                {"slug": f"Another offering was just created with slug {slug!r}; choose another slug."}
            ) from exc
        # Two offerings with the same name created at the same moment got the same slug.
        raise ValidationError({"name": "Another offering was just created with this name; submit again."}) from exc
    logger.info("Offering %s (%s) created by user %s", offering.pk, offering.slug, user.pk)
    return offering


@transaction.atomic
def offering_update(
    *, offering: Offering, user: User, values: Mapping[str, Any], catalog: BackendCatalog | None = None
) -> Offering:
    """Change an offering of `user`; the slug stays, so existing links keep working.

    Existing rentals are not affected: each contract keeps the snapshot it was created with.
    """
    offering = Offering.objects.select_for_update(of=("self",)).select_related("provider", "cloud_account").get(pk=offering.pk)
    if offering.provider.user_id != user.pk:
        raise PermissionError(f"User {user.pk} does not own offering {offering.pk}.")
    if offering.resource_id is not None:
        # Its server, specs and stock are those of the listed VM, so only the listing form changes it.
        raise ValidationError(
            f"Offering {offering.slug!r} lists one of your resources; change its title, description and price "
            "with the List on marketplace form on the resource's page."
        )
    _apply(offering, user=user, values=values, catalog=catalog)
    offering.save()
    logger.info("Offering %s updated by user %s", offering.pk, user.pk)
    return offering
