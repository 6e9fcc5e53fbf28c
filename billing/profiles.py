"""Billing profiles: the details invoices are made out to, and their cross-field checks."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction

from billing.models import BillingProfile
from billing.vat import validate_vat_id, vat_country

logger = logging.getLogger(__name__)

PROFILE_FIELDS = (
    "legal_name", "address_line1", "address_line2", "postal_code", "city", "country", "is_business", "vat_id",
)


def billing_profile_errors(*, country: str, is_business: bool, vat_id: str, vat_id_label: str) -> dict[str, list[str]]:
    """Check the VAT id against its format, the business flag and the country; return errors keyed by field.

    A VAT id is only accepted for a business, and its prefix must name the billing country
    (EL for Greece), because the reverse charge depends on the buyer's member state.
    """
    if not vat_id:
        return {}
    try:
        normalized = validate_vat_id(vat_id)
    except ValidationError as error:
        return {vat_id_label: error.messages}
    if not is_business:
        return {
            vat_id_label: [
                f"VAT id {normalized} applies only to purchases by a business: tick 'Buying as a business' "
                "or clear the VAT id."
            ]
        }
    if country and vat_country(normalized) != country:
        return {
            vat_id_label: [
                f"VAT id {normalized} belongs to {vat_country(normalized)}, but the billing country is {country}: "
                "use the VAT id registered in your billing country, or correct the country."
            ]
        }
    return {}


@transaction.atomic
def billing_profile_save(*, user, actor, **fields) -> BillingProfile:
    """Create or replace `user`'s billing profile with `fields`, validated like the form.

    Invoices already issued keep the details they were issued with; only later ones use the new profile.
    """
    unknown = set(fields) - set(PROFILE_FIELDS)
    if unknown:
        raise TypeError(f"Unknown billing profile fields: {', '.join(sorted(unknown))}.")
    profile = BillingProfile.objects.select_for_update().filter(user=user).first() or BillingProfile(user=user)
    created = profile.pk is None
    for name, value in fields.items():
        setattr(profile, name, value)
    profile.full_clean()
    profile.save()
    logger.info("Billing profile %s of user %s %s by user %s", profile.pk, user.pk, "created" if created else "updated", actor.pk)
    return profile
