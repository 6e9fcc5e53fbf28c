"""Cloud account changes: create, replace token, validate, mark invalid."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from marketplace.validators import validate_visible_text
from provisioning.backends import get_backend
from provisioning.backends.base import CloudError, CredentialsInvalid, RequestRejected
from provisioning.backends.proxmox_settings import proxmox_settings_errors
from provisioning.models import Backend, CloudAccount, ValidationStatus

logger = logging.getLogger(__name__)


def cloud_account_create(*, owner, backend: str, label: str, token: str) -> CloudAccount:
    """Create a Hetzner or Sandbox cloud account; a Hetzner token is checked against the API before it is saved.

    Proxmox VE accounts need more settings and are created with `cloud_account_create_proxmox`.
    """
    label = _clean_label(owner=owner, label=label)
    if backend == Backend.PROXMOX:
        raise ValidationError(
            {"backend": "A Proxmox VE account needs its API URL, token ID, token secret and node; add it with the Proxmox VE form."}
        )
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


def cloud_account_create_proxmox(
    *,
    owner,
    label: str,
    api_url: str,
    token_id: str,
    token_secret: str,
    node: str,
    verify_tls: bool = True,
    vmid_min: int | None = None,
    vmid_max: int | None = None,
    server_types: list[dict[str, Any]] | None = None,
    ipconfig0: str = "ip=dhcp",
) -> CloudAccount:
    """Create a Proxmox VE cloud account after its token and node were checked against the API.

    Raises `ValidationError` keyed by the model's field names (`token` for the secret) when a
    setting is invalid, the API rejects the token or its certificate, the node does not exist,
    or the API cannot be reached. Nothing is saved then.
    """
    label = _clean_label(owner=owner, label=label)
    account = CloudAccount(
        owner=owner,
        backend=Backend.PROXMOX,
        label=label,
        proxmox_api_url=(api_url or "").strip(),
        proxmox_token_id=(token_id or "").strip(),
        proxmox_node=(node or "").strip(),
        proxmox_verify_tls=verify_tls,
        proxmox_vmid_min=vmid_min,
        proxmox_vmid_max=vmid_max,
        proxmox_server_types=server_types or [],
        proxmox_ipconfig0=(ipconfig0 or "").strip() or "ip=dhcp",
    )
    errors = proxmox_settings_errors(account)
    token_secret = (token_secret or "").strip()
    if not token_secret:
        errors["token"] = "The API token's secret is required; Proxmox VE shows it once, when the token is created."
    if errors:
        raise ValidationError(errors)
    account.set_token(token_secret)

    try:
        get_backend(account).validate_credentials()
    except CredentialsInvalid as exc:
        field = "proxmox_verify_tls" if exc.code == "tls_verification_failed" else "token"
        raise ValidationError({field: str(exc)}) from exc
    except RequestRejected as exc:
        field = "proxmox_node" if exc.code == "node_not_found" else "proxmox_api_url"
        raise ValidationError({field: str(exc)}) from exc
    except CloudError as exc:
        raise ValidationError(
            {"proxmox_api_url": f"Could not check the account against the Proxmox VE API: {exc}. Check the URL and try again."}
        ) from exc
    account.validation_status = ValidationStatus.VALID
    account.validated_at = timezone.now()
    account.save()
    logger.info("Cloud account %s (proxmox, node %s) created by user %s", account.pk, account.proxmox_node, owner.pk)
    return account


def _clean_label(*, owner, label: str) -> str:
    label = label.strip()
    try:
        validate_visible_text(label)
    except ValidationError as exc:
        raise ValidationError({"label": exc.messages}) from exc
    if CloudAccount.objects.filter(owner=owner, label=label).exists():
        raise ValidationError({"label": f"You already have a cloud account labelled {label!r}; choose another label."})
    return label


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
    if account.backend == Backend.PROXMOX:
        errors = proxmox_settings_errors(account)
        if errors:
            account.validation_status = ValidationStatus.INVALID
            account.last_error = " ".join(errors.values())[:2000]
            account.validated_at = timezone.now()
            return
    try:
        get_backend(account).validate_credentials()
    except CredentialsInvalid as exc:
        logger.info("Cloud account %s: credentials rejected: %s", account.pk, exc)
        account.validation_status = ValidationStatus.INVALID
        account.last_error = credentials_rejected_message(account=account, error=exc)[:2000]
    except RequestRejected as exc:
        if account.backend != Backend.PROXMOX:
            _record_inconclusive(account, exc)
            return
        # A Proxmox node that does not exist (or another rejected request) is a definite result.
        logger.info("Cloud account %s: settings rejected: %s", account.pk, exc)
        account.validation_status = ValidationStatus.INVALID
        account.last_error = str(exc)[:2000]
    except CloudError as exc:
        _record_inconclusive(account, exc)
        return
    else:
        account.validation_status = ValidationStatus.VALID
        account.last_error = ""
    account.validated_at = timezone.now()


def _record_inconclusive(account: CloudAccount, exc: CloudError) -> None:
    # The API gave no clear result, so keep the previous status and show the error.
    account.last_error = f"Could not check the token: {exc}"[:2000]
    logger.warning("Cloud account %s: validation inconclusive: %s", account.pk, exc)


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
