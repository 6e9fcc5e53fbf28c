"""Offering writes of the offering form and the provider API: save, share, duplicate.

`offering_save` wraps `offering_create` and `offering_update` (which the CSV import also uses)
with the allowlist of shared offerings and the confirmation before a public offering is hidden.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction

from marketplace.models import (
    MAX_ALLOWLIST_ENTRIES,
    Offering,
    OfferingAllowlistEntry,
    User,
    Visibility,
)
from marketplace.selectors import offering_running_rental_count
from marketplace.services.providers import (
    OFFERING_EDITABLE_FIELDS,
    offering_create,
    offering_update,
    unique_offering_slug,
)

logger = logging.getLogger(__name__)


class HideConfirmationRequired(Exception):
    """Hiding a public offering needs the provider's confirmation; nothing was saved.

    `running_rentals` is the number of its rentals that are paid, provisioning or active.
    They keep running whatever the visibility.
    """

    def __init__(self, *, offering: Offering, visibility: str, running_rentals: int):
        self.offering = offering
        self.visibility = visibility
        self.running_rentals = running_rentals
        super().__init__(hide_confirmation_message(offering=offering, visibility=visibility, running_rentals=running_rentals))


def hide_confirmation_message(*, offering: Offering, visibility: str, running_rentals: int) -> str:
    """Return the question shown before a public offering becomes shared or private."""
    audience = (
        "only the users on its allowlist will see and rent it"
        if visibility == Visibility.SHARED
        else "only you will see it and nobody else can rent it"
    )
    rentals = f"{running_rentals} running rental{'s' if running_rentals != 1 else ''}"
    return (
        f"{offering.name!r} is public. If it becomes {Visibility(visibility).label.lower()}, it leaves the "
        f"catalog and {audience}. Its {rentals} continue unchanged."
    )


def offering_hide_needs_confirmation(*, offering: Offering | None, visibility: str | None) -> bool:
    """Return whether saving `visibility` would hide the public, saved `offering`."""
    return (
        offering is not None
        and offering.pk is not None
        and offering.visibility == Visibility.PUBLIC
        and visibility is not None
        and visibility != Visibility.PUBLIC
    )


def normalize_allowlist(emails: Iterable[str]) -> list[str]:
    """Return the addresses lower-cased, stripped, de-duplicated and sorted.

    Raises ValidationError keyed by "allowlist" naming the first invalid address, or when there
    are more than MAX_ALLOWLIST_ENTRIES addresses.
    """
    normalized = set()
    for raw in emails:
        email = (raw or "").strip().lower()
        if not email:
            continue
        try:
            validate_email(email)
        except ValidationError as exc:
            raise ValidationError(
                {"allowlist": f"{raw.strip()!r} is not a valid email address; correct it or remove it."},
                code="invalid_email",
            ) from exc
        normalized.add(email)
    if len(normalized) > MAX_ALLOWLIST_ENTRIES:
        raise ValidationError(
            {
                "allowlist": f"The allowlist has {len(normalized)} addresses; at most {MAX_ALLOWLIST_ENTRIES} "
                "are allowed. Remove some, or make the offering public."
            },
            code="too_many",
        )
    return sorted(normalized)


def _require_owner(offering: Offering, user: User) -> None:
    if offering.provider.user_id != user.pk:
        raise PermissionError(f"User {user.pk} does not own offering {offering.pk}.")


def _replace_allowlist(offering: Offering, emails: list[str]) -> None:
    current = set(offering.allowlist_entries.values_list("email", flat=True))
    new = set(emails)
    offering.allowlist_entries.filter(email__in=current - new).delete()
    OfferingAllowlistEntry.objects.bulk_create(
        [OfferingAllowlistEntry(offering=offering, email=email) for email in sorted(new - current)]
    )


@transaction.atomic
def offering_save(
    *,
    user: User,
    values: Mapping[str, Any],
    offering: Offering | None = None,
    allowlist: Iterable[str] | None = None,
    hide_confirmed: bool = False,
) -> Offering:
    """Create (no `offering`) or update an offering of `user`, and its allowlist when given.

    Server type, location and image are checked against a catalog loaded from the backend now,
    never a cached one. Raises HideConfirmationRequired, before any backend call, when a public
    offering would become shared or private and `hide_confirmed` is false. Raises
    ValidationError keyed by field, with "allowlist" for the allowlist.
    """
    normalized = normalize_allowlist(allowlist) if allowlist is not None else None
    if offering is not None:
        _require_owner(offering, user)
        visibility = values.get("visibility", offering.visibility)
        if not hide_confirmed and offering_hide_needs_confirmation(offering=offering, visibility=visibility):
            raise HideConfirmationRequired(
                offering=offering,
                visibility=visibility,
                running_rentals=offering_running_rental_count(offering=offering),
            )
        saved = offering_update(offering=offering, user=user, values=values)
    else:
        saved = offering_create(user=user, values=values)
    if normalized is not None:
        _replace_allowlist(saved, normalized)
        logger.info("Offering %s: allowlist set to %s addresses by user %s", saved.pk, len(normalized), user.pk)
    return saved


#: Maximum length of an offering name, from the model field.
_NAME_MAX_LENGTH = Offering._meta.get_field("name").max_length


def _copy_name(name: str) -> str:
    suffix = " (copy)"
    return name[: _NAME_MAX_LENGTH - len(suffix)].rstrip() + suffix


@transaction.atomic
def offering_duplicate(*, offering: Offering, user: User) -> Offering:
    """Copy `user`'s `offering` as a private draft with a new slug and its allowlist.

    The copy is not checked against the backend: it has the values the original was saved
    with, and saving it from the form checks them against a fresh catalog.
    """
    _require_owner(offering, user)
    source = Offering.objects.select_related("provider").get(pk=offering.pk)
    copy = Offering(provider=source.provider)
    for name in OFFERING_EDITABLE_FIELDS:
        setattr(copy, name, getattr(source, name))
    copy.name = _copy_name(source.name)
    copy.visibility = Visibility.PRIVATE
    copy.slug = unique_offering_slug(f"{source.slug}-copy")
    copy.full_clean()
    try:
        with transaction.atomic():
            copy.save()
    except IntegrityError as exc:
        logger.warning("Offering %s: slug %s of the copy clashed: %s", source.pk, copy.slug, exc)
        raise ValidationError("Another offering was just created with the same slug; duplicate it again.") from exc
    _replace_allowlist(copy, list(source.allowlist_entries.values_list("email", flat=True)))
    logger.info("Offering %s duplicated as offering %s (%s) by user %s", source.pk, copy.pk, copy.slug, user.pk)
    return copy


@transaction.atomic
def offering_visibility_set(
    *,
    offering: Offering,
    user: User,
    visibility: str,
    allowlist: Iterable[str] | None = None,
    hide_confirmed: bool = False,
) -> Offering:
    """Change only the visibility of `user`'s `offering`, and its allowlist when given.

    Needs no backend call. Raises HideConfirmationRequired when a public offering would be
    hidden without `hide_confirmed`, and ValidationError keyed by field for invalid values.
    """
    _require_owner(offering, user)
    if visibility not in Visibility.values:
        raise ValidationError(
            {"visibility": f"Unknown visibility {visibility!r}; use one of {', '.join(Visibility.values)}."}
        )
    normalized = normalize_allowlist(allowlist) if allowlist is not None else None
    locked = Offering.objects.select_for_update().select_related("provider").get(pk=offering.pk)
    if not hide_confirmed and offering_hide_needs_confirmation(offering=locked, visibility=visibility):
        raise HideConfirmationRequired(
            offering=locked, visibility=visibility, running_rentals=offering_running_rental_count(offering=locked)
        )
    if locked.resource_id is not None and visibility != Visibility.PRIVATE:
        from provisioning.models import ResourceStatus

        if locked.resource.status == ResourceStatus.DELETED:
            raise ValidationError(
                {"visibility": f"Offering {locked.slug!r} listed a resource that was deleted; it can only stay private."}
            )
    if locked.visibility != visibility:
        previous = locked.visibility
        locked.visibility = visibility
        locked.save(update_fields=["visibility", "updated_at"])
        logger.info("Offering %s: visibility %s -> %s by user %s", locked.pk, previous, visibility, user.pk)
    if normalized is not None:
        _replace_allowlist(locked, normalized)
        logger.info("Offering %s: allowlist set to %s addresses by user %s", locked.pk, len(normalized), user.pk)
    return locked


@transaction.atomic
def offering_publish(*, offering: Offering, user: User) -> Offering:
    """Make `user`'s private or shared `offering` public, so the catalog lists it for everyone.

    Raises PermissionError for another user's offering, and ValidationError keyed by
    cloud_account when the offering's cloud account is invalid or deleted, because the catalog
    hides offerings of invalid accounts. A public offering stays as it is.
    """
    _require_owner(offering, user)
    account = offering.cloud_account
    if not account.is_usable:
        state = "deleted" if account.deleted_at is not None else account.get_validation_status_display().lower()
        raise ValidationError(
            {
                "cloud_account": f"Cloud account {account.label!r} is {state}, so the catalog cannot list this "
                "offering; re-validate the account or move the offering to another account."
            },
            code="account_unusable",
        )
    return offering_visibility_set(offering=offering, user=user, visibility=Visibility.PUBLIC)
