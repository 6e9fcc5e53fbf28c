"""Cloud account changes: create, rename, replace token, validate, mark invalid, delete."""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import Http404
from django.utils import timezone

from marketplace.validators import validate_visible_text
from provisioning.backends import get_backend
from provisioning.backends.base import CloudError, CredentialsInvalid, RequestRejected
from provisioning.backends.proxmox_settings import proxmox_settings_errors
from provisioning.models import Backend, CloudAccount, ValidationStatus
from provisioning.selectors import cloud_account_dependents

logger = logging.getLogger(__name__)

LABEL_MAX_LENGTH = CloudAccount._meta.get_field("label").max_length
#: The longest API token accepted; Hetzner tokens have 64 characters and Proxmox VE secrets 36.
TOKEN_MAX_LENGTH = 500
#: How many offerings and rentals a "cannot delete" message names before it ends with "and N more".
DEPENDENTS_NAMED = 10


class CloudAccountInUse(Exception):
    """The cloud account cannot be deleted because offerings, live rentals or resources use it."""

    def __init__(self, message: str, *, offerings: list, rentals: list, resources: list | None = None):
        super().__init__(message)
        self.offerings = offerings
        self.rentals = rentals
        self.resources = resources or []


class ValidationRateLimited(Exception):
    """The account was validated moments ago; it may be validated again in `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def cloud_account_create(*, owner, backend: str, label: str, token: str) -> CloudAccount:
    """Create a Hetzner or Sandbox cloud account; a Hetzner token is checked against the API before it is saved.

    Proxmox VE accounts need more settings and are created with `cloud_account_create_proxmox`.
    Raises `ValidationError` keyed by field (`label`, `token`), or without a field when the API
    could not be reached; nothing is saved then.
    """
    if backend == Backend.PROXMOX:
        raise ValidationError(
            {"backend": "A Proxmox VE account needs its API URL, token ID, token secret and node; "
             "add it with the Proxmox VE form on the Cloud accounts page."}
        )
    if backend == Backend.AGENT:
        raise ValidationError(
            {"backend": "An agent pool's account is created with the pool; add the pool on the Agent pools page."}
        )
    if backend not in Backend.values:
        raise ValidationError({"backend": f"Unknown backend {backend!r}; use one of {', '.join(Backend.values)}."})
    label = _clean_label(owner=owner, label=label)
    account = CloudAccount(owner=owner, backend=backend, label=label)
    if backend == Backend.HETZNER:
        token = _clean_token(token, missing="A Hetzner Cloud API token is required (Hetzner console: Security > API tokens).")
        account.set_token(token)
        _check_before_saving(account)
    account.validation_status = ValidationStatus.VALID
    account.validated_at = timezone.now()
    _save_new(account)
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
    errors: dict[str, Any] = {}
    try:
        label = _clean_label(owner=owner, label=label)
    except ValidationError as exc:
        errors.update(exc.message_dict)
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
    errors.update(_proxmox_field_errors(account))
    try:
        token_secret = _clean_token(
            token_secret, missing="The API token's secret is required; Proxmox VE shows it once, when the token is created."
        )
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    account.set_token(token_secret)

    _check_before_saving(account)
    account.validation_status = ValidationStatus.VALID
    account.validated_at = timezone.now()
    _save_new(account)
    logger.info(
        "Cloud account %s (proxmox, node %s, TLS verification %s) created by user %s",
        account.pk, account.proxmox_node, "on" if verify_tls else "off", owner.pk,
    )
    return account


def _lock_account(account: CloudAccount) -> CloudAccount:
    """Return the account's row locked for update; raise Http404 when a concurrent request deleted it.

    The views found the row before calling a service, so a missing row here means a delete
    in another request won the race. Http404 becomes a 404 page or a JSON 404 in the API.
    """
    locked = CloudAccount.objects.select_for_update().filter(pk=account.pk).first()
    if locked is None:
        logger.info("Cloud account %s was deleted by a concurrent request", account.pk)
        raise Http404(f"Cloud account {account.pk} was deleted.")
    return locked


def cloud_account_rename(*, account: CloudAccount, actor, label: str) -> CloudAccount:
    """Change the account's label; raises `ValidationError` on `label` when it is invalid or taken."""
    _check_owner(account, actor)
    label = _clean_label(owner=account.owner, label=label, exclude_pk=account.pk)
    try:
        with transaction.atomic():
            locked = _lock_account(account)
            old_label = locked.label
            locked.label = label
            locked.save(update_fields=["label"])
    except IntegrityError as exc:
        raise _label_taken(label) from exc
    logger.info("Cloud account %s renamed by user %s (label was %r, is %r)", account.pk, actor.pk, old_label, label)
    return locked


def cloud_account_replace_token(*, account: CloudAccount, actor, token: str, proxmox_token_id: str = "") -> CloudAccount:
    """Check a new API token against the backend and store it in place of the old one.

    For Proxmox VE `token` is the secret, and a non-empty `proxmox_token_id` replaces the token
    ID too. Raises `ValidationError` like the create services when the backend rejects the
    token or cannot be reached; the stored token is then unchanged. A valid token marks the
    account valid.
    """
    _check_owner(account, actor)
    if account.backend == Backend.SANDBOX:
        raise ValidationError({"token": "A Sandbox account has no API token."})
    if account.backend == Backend.AGENT:
        raise ValidationError(
            {"token": "An agent pool's account has no API token; each agent has its own credential on the Agent pools page."}
        )
    candidate = copy.copy(account)
    if account.backend == Backend.PROXMOX and (proxmox_token_id or "").strip():
        candidate.proxmox_token_id = proxmox_token_id.strip()
        errors = _proxmox_field_errors(candidate)
        if "proxmox_token_id" in errors:
            raise ValidationError({"proxmox_token_id": errors["proxmox_token_id"]})
    token = _clean_token(token, missing="Enter the new API token.")
    candidate.set_token(token)
    _check_before_saving(candidate)

    with transaction.atomic():
        locked = _lock_account(account)
        locked.set_token(token)
        locked.proxmox_token_id = candidate.proxmox_token_id
        locked.validation_status = ValidationStatus.VALID
        locked.last_error = ""
        locked.validated_at = timezone.now()
        locked.save(
            update_fields=[
                "token_ciphertext", "token_key_id", "proxmox_token_id", "validation_status", "last_error", "validated_at",
            ]
        )
    logger.info("Cloud account %s: token replaced and valid, by user %s", account.pk, actor.pk)
    return locked


def cloud_account_delete(*, account: CloudAccount, actor) -> bool:
    """Delete the account unless an offering, a live rental or a resource that is not deleted uses it.

    An account that ended rentals or deleted resources still refer to keeps its row for their history: it gets
    `deleted_at`, its token is erased and it disappears from every list. Other accounts are
    deleted with their Sandbox servers and orphan reports. Returns True when the row was
    removed and False when it was kept as deleted. Raises `CloudAccountInUse` naming the
    offerings and rentals that block the deletion.
    """
    _check_owner(account, actor)
    with transaction.atomic():
        locked = _lock_account(account)
        dependents = cloud_account_dependents(account=locked)
        if dependents.offerings or dependents.rentals or dependents.resources:
            raise CloudAccountInUse(
                _in_use_message(locked, dependents), offerings=dependents.offerings, rentals=dependents.rentals,
                resources=dependents.resources,
            )
        if locked.contracts.exists() or locked.resources.exists():
            locked.deleted_at = timezone.now()
            locked.token_ciphertext = ""
            locked.token_key_id = ""
            locked.validation_status = ValidationStatus.INVALID
            locked.last_error = "Deleted by its owner."
            locked.save(
                update_fields=["deleted_at", "token_ciphertext", "token_key_id", "validation_status", "last_error"]
            )
            removed = False
        else:
            locked.delete()
            removed = True
    logger.info(
        "Cloud account %s (%s) deleted by user %s (%s)",
        account.pk, account.backend, actor.pk, "row removed" if removed else "kept for ended rentals, token erased",
    )
    return removed


def _in_use_message(account: CloudAccount, dependents) -> str:
    parts = []
    if dependents.offerings:
        names = _name_list([repr(offering.name) for offering in dependents.offerings])
        noun = "offering" if len(dependents.offerings) == 1 else "offerings"
        parts.append(f"{noun} {names}")
    if dependents.rentals:
        names = _name_list([f"{contract.offering_name!r} ({contract.get_status_display().lower()})" for contract in dependents.rentals])
        noun = "live rental" if len(dependents.rentals) == 1 else "live rentals"
        parts.append(f"{noun} {names}")
    if dependents.resources:
        names = _name_list([repr(resource.name) for resource in dependents.resources])
        noun = "resource" if len(dependents.resources) == 1 else "resources"
        parts.append(f"{noun} {names}")
    steps = []
    if dependents.offerings:
        steps.append("move the offerings to another cloud account")
    if dependents.rentals:
        steps.append("wait until the rentals have ended")
    if dependents.resources:
        steps.append("delete the resources on the My resources page")
    return (
        f"Cloud account {account.label!r} is still used by {' and '.join(parts)}. "
        f"To delete it, first {' and '.join(steps)}."
    )


def _name_list(names: list[str]) -> str:
    shown = names[:DEPENDENTS_NAMED]
    text = ", ".join(shown)
    if len(names) > len(shown):
        text += f" and {len(names) - len(shown)} more"
    return text


def _check_owner(account: CloudAccount, actor) -> None:
    if account.owner_id != actor.pk:
        raise PermissionError(f"User {actor.pk} does not own cloud account {account.pk}.")


def _save_new(account: CloudAccount) -> None:
    """Insert a new account; a label another request took meanwhile becomes a `label` error."""
    try:
        with transaction.atomic():
            account.save()
    except IntegrityError as exc:
        raise _label_taken(account.label) from exc


def _label_taken(label: str) -> ValidationError:
    return ValidationError({"label": f"You already have a cloud account labelled {label!r}; choose another label."})


def _clean_label(*, owner, label: str, exclude_pk: int | None = None) -> str:
    label = (label or "").strip()
    if not label:
        raise ValidationError({"label": "The label is empty; enter a name for this account, for example 'Hetzner project A'."})
    if len(label) > LABEL_MAX_LENGTH:
        raise ValidationError(
            {"label": f"The label has {len(label)} characters; use at most {LABEL_MAX_LENGTH}."}
        )
    try:
        validate_visible_text(label)
    except ValidationError as exc:
        raise ValidationError({"label": exc.messages}) from exc
    same_label = CloudAccount.objects.filter(owner=owner, label=label)
    if exclude_pk is not None:
        same_label = same_label.exclude(pk=exclude_pk)
    if same_label.exists():
        raise _label_taken(label)
    return label


def _clean_token(token: str, *, missing: str) -> str:
    """Return the token without surrounding whitespace; raise `ValidationError` on `token` when it cannot be one.

    The messages never repeat the token.
    """
    token = (token or "").strip()
    if not token:
        raise ValidationError({"token": missing})
    if len(token) > TOKEN_MAX_LENGTH:
        raise ValidationError(
            {"token": f"The token has {len(token)} characters; the maximum is {TOKEN_MAX_LENGTH}. Paste only the token."}
        )
    for position, character in enumerate(token, start=1):
        if not ("!" <= character <= "~"):
            raise ValidationError(
                {"token": f"The token contains a space or a character other than printable ASCII at position {position}; "
                 "paste the token exactly as the cloud console shows it."}
            )
    return token


def _proxmox_field_errors(account: CloudAccount) -> dict[str, str]:
    """Return one message per invalid Proxmox setting, including the column lengths of the model."""
    errors = proxmox_settings_errors(account)
    for name in ("proxmox_api_url", "proxmox_token_id", "proxmox_node", "proxmox_ipconfig0"):
        limit = CloudAccount._meta.get_field(name).max_length
        value = getattr(account, name) or ""
        if len(value) > limit:
            label = CloudAccount._meta.get_field(name).verbose_name
            errors[name] = f"{label} has {len(value)} characters; use at most {limit}."
    return errors


def _check_before_saving(account: CloudAccount) -> None:
    """Call the backend with the account's token; raise `ValidationError` naming the problem unless it is accepted."""
    proxmox = account.backend == Backend.PROXMOX
    try:
        get_backend(account).validate_credentials()
    except CredentialsInvalid as exc:
        if proxmox:
            field = "proxmox_verify_tls" if exc.code == "tls_verification_failed" else "token"
            raise ValidationError({field: str(exc)}) from exc
        raise ValidationError({"token": credentials_rejected_message(account=account, error=exc)}) from exc
    except RequestRejected as exc:
        if proxmox:
            field = "proxmox_node" if exc.code == "node_not_found" else "proxmox_api_url"
            raise ValidationError({field: str(exc)}) from exc
        raise ValidationError(f"The Hetzner Cloud API rejected the check of the token: {exc}") from exc
    except CloudError as exc:
        if proxmox:
            raise ValidationError(
                {"proxmox_api_url": f"Could not check the account against the Proxmox VE API: {exc}. Check the URL and try again."}
            ) from exc
        raise ValidationError(
            f"Could not check the token against the Hetzner Cloud API: {exc}. Nothing was saved; try again in a minute."
        ) from exc


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
    """Check the account's stored token against its backend and save the outcome.

    The outcome is stored only if the token is still the one that was checked, so a check
    that overlaps a token replacement cannot mark the new token invalid.
    """
    checked_ciphertext = account.token_ciphertext
    _check(account)
    saved = CloudAccount.objects.filter(pk=account.pk, token_ciphertext=checked_ciphertext).update(
        validation_status=account.validation_status, last_error=account.last_error, validated_at=account.validated_at
    )
    if not saved:
        logger.info("Cloud account %s: token replaced or account deleted during the check; outcome not stored", account.pk)
        current = CloudAccount.objects.filter(pk=account.pk).first()
        if current is None:
            raise Http404(f"Cloud account {account.pk} was deleted.")
        return current
    return account


def cloud_account_revalidate(*, account: CloudAccount, actor) -> CloudAccount:
    """Validate the account at its owner's request, at most once per `CLOUD_ACCOUNT_VALIDATE_INTERVAL_SECONDS`.

    Raises `ValidationRateLimited` when the account was checked more recently than that.
    NOTE: the limit is kept in Django's cache, so without REDIS_URL it counts per process.
    """
    _check_owner(account, actor)
    interval = settings.CLOUD_ACCOUNT_VALIDATE_INTERVAL_SECONDS
    cache_key = f"cloud-account-validate:{account.pk}"
    now = time.time()
    if not cache.add(cache_key, now, timeout=interval):
        started = cache.get(cache_key) or now
        retry_after = max(1, math.ceil(started + interval - now))
        logger.info("Cloud account %s: validation by user %s rate-limited for %s s", account.pk, actor.pk, retry_after)
        raise ValidationRateLimited(
            f"Cloud account {account.label!r} was checked less than {interval} seconds ago; try again in {retry_after} seconds.",
            retry_after=retry_after,
        )
    account = cloud_account_validate(account=account)
    logger.info("Cloud account %s validated by user %s: %s", account.pk, actor.pk, account.validation_status)
    return account


@transaction.atomic
def cloud_account_mark_invalid(*, account_id: int, error: str) -> CloudAccount:
    """Record that the cloud rejected the account's credentials and tell its owner once."""
    from notifications.services import notify

    account = CloudAccount.all_objects.select_for_update().get(pk=account_id)
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
