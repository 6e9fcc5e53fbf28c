"""Saved SSH public keys: add and delete a user's keys."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from marketplace.models import SshKey, User
from marketplace.sshkeys import parse_public_key

logger = logging.getLogger(__name__)


def ssh_key_create(*, user: User, name: str, public_key: str) -> SshKey:
    """Validate and save a public key for `user`.

    Raises ValidationError keyed by field: an invalid key, or a key the user already saved.
    """
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the key a name, for example 'laptop'."})
    try:
        parsed = parse_public_key(public_key)
    except ValidationError as exc:
        raise ValidationError({"public_key": exc.messages}) from exc
    existing = SshKey.objects.filter(user=user, fingerprint=parsed.fingerprint_sha256).first()
    if existing is not None:
        raise ValidationError(
            {"public_key": f"You already saved this key as {existing.name!r} ({parsed.fingerprint_sha256})."},
            code="duplicate",
        )
    key = SshKey(
        user=user,
        name=name,
        public_key=parsed.normalized,
        key_type=parsed.key_type,
        fingerprint=parsed.fingerprint_sha256,
    )
    key.full_clean(exclude=["user"], validate_unique=False, validate_constraints=False)
    try:
        with transaction.atomic():
            key.save()
    except IntegrityError as exc:
        raise ValidationError({"public_key": "You already saved this key."}, code="duplicate") from exc
    logger.info("SSH key %s (%s) saved by user %s", key.pk, key.fingerprint, user.pk)
    return key


def ssh_key_delete(*, user: User, key_id: int) -> None:
    """Delete one of `user`'s saved keys; raises SshKey.DoesNotExist for another user's key.

    Contracts keep their own copy of the key, so running rentals are not affected.
    """
    key = SshKey.objects.get(user=user, pk=key_id)
    key.delete()
    logger.info("SSH key %s deleted by user %s", key_id, user.pk)
