"""Cloud account changes: create, replace token, validate, mark invalid."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from marketplace.validators import validate_visible_text
from provisioning.backends import get_backend
from provisioning.backends.base import CloudError, CredentialsInvalid
from provisioning.models import Backend, CloudAccount, ValidationStatus

logger = logging.getLogger(__name__)


def cloud_account_create(*, owner, backend: str, label: str, token: str) -> CloudAccount:
    """Create a cloud account; a Hetzner token is checked against the API before it is saved."""
    label = label.strip()
    try:
        validate_visible_text(label)
    except ValidationError as exc:
        raise ValidationError({"label": exc.messages}) from exc
    if CloudAccount.objects.filter(owner=owner, label=label).exists():
        raise ValidationError({"label": f"You already have a cloud account labelled {label!r}; choose another label."})
    account = CloudAccount(owner=owner, backend=backend, label=label)
    if backend == Backend.HETZNER:
        token = token.strip()
        if not token:
            raise ValidationError({"token": "A Hetzner Cloud API token is required (Hetzner console: Security > API tokens)."})
        account.set_token(token)
        _check(account)
        if account.validation_status == ValidationStatus.INVALID:
            raise ValidationError({"token": account.last_error})
    else:
        account.validation_status = ValidationStatus.VALID
        account.validated_at = timezone.now()
    account.save()
    logger.info("Cloud account %s (%s) created by user %s", account.pk, backend, owner.pk)
    return account


def credentials_rejected_message(*, account: CloudAccount, error: CredentialsInvalid) -> str:
    """Return the message for the account's owner when the cloud rejected its token.

    For Hetzner the message names the HTTP status and the API's own reason (the `message` of
    the hcloud APIException the backend error was raised from) and where to create a token.
    """
    if account.backend != Backend.HETZNER:
        return str(error)
    reason = getattr(error.__cause__, "message", "") or ""
    details = [part for part in (f"HTTP {error.status_code}" if error.status_code else "", reason) if part]
    detail = f" ({': '.join(details)})" if details else ""
    return (
        f"Hetzner rejected this API token{detail}. Create a read/write token in the Hetzner Cloud console "
        "under Security > API tokens and paste it here."
    )


def _check(account: CloudAccount) -> None:
    try:
        get_backend(account).validate_credentials()
    except CredentialsInvalid as exc:
        logger.info("Cloud account %s: credentials rejected: %s", account.pk, exc)
        account.validation_status = ValidationStatus.INVALID
        account.last_error = credentials_rejected_message(account=account, error=exc)[:2000]
    except CloudError as exc:
        # The API gave no clear result, so keep the previous status and show the error.
        account.last_error = f"Could not check the token: {exc}"[:2000]
        logger.warning("Cloud account %s: validation inconclusive: %s", account.pk, exc)
        return
    else:
        account.validation_status = ValidationStatus.VALID
        account.last_error = ""
    account.validated_at = timezone.now()


def cloud_account_validate(*, account: CloudAccount) -> CloudAccount:
    """Check the account's stored token against its backend and save the outcome."""
    _check(account)
    account.save(update_fields=["validation_status", "last_error", "validated_at"])
    return account


@transaction.atomic
def cloud_account_mark_invalid(*, account_id: int, error: str) -> CloudAccount:
    """Record that the cloud rejected the account's credentials and tell its owner once."""
    from notifications.services import notify

    account = CloudAccount.objects.select_for_update().get(pk=account_id)
    was_invalid = account.validation_status == ValidationStatus.INVALID
    if was_invalid:
        # Keep the first error: later calls (cleanup, termination) fail for the same reason.
        return account
    account.validation_status = ValidationStatus.INVALID
    account.last_error = error[:2000]
    account.validated_at = timezone.now()
    account.save(update_fields=["validation_status", "last_error", "validated_at"])
    if not was_invalid:
        logger.warning("Cloud account %s marked invalid: %s", account.pk, error)
        notify(event="credentials_invalid", recipient=account.owner, context={"account": account})
    return account
