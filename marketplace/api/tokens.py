"""API tokens for scripts: each user has at most one DRF token, sent as `Authorization: Token <key>`.

DRF's `rest_framework.authtoken` stores the key itself (not a hash), so only the token page shows
it, once, right after it was created.
"""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from rest_framework.authtoken.models import Token

from marketplace.models import User

logger = logging.getLogger(__name__)


def api_token_for(*, user: User) -> Token | None:
    """Return the user's API token, or None when they have none."""
    return Token.objects.filter(user=user).first()


@transaction.atomic
def api_token_create(*, user: User) -> Token:
    """Create the user's API token; raise ValidationError if they already have one."""
    # Locking the user row serialises two concurrent creates of the same user.
    User.objects.select_for_update().filter(pk=user.pk).first()
    if Token.objects.filter(user=user).exists():
        raise ValidationError("You already have an API token; regenerate it to get a new key.")
    token = Token.objects.create(user=user)
    logger.info("API token created for user %s", user.pk)
    return token


@transaction.atomic
def api_token_regenerate(*, user: User) -> Token:
    """Replace the user's API token with a new key (or create one); the old key stops working."""
    User.objects.select_for_update().filter(pk=user.pk).first()
    deleted, _ = Token.objects.filter(user=user).delete()
    token = Token.objects.create(user=user)
    logger.info("API token regenerated for user %s (old token deleted: %s)", user.pk, bool(deleted))
    return token


def api_token_revoke(*, user: User) -> bool:
    """Delete the user's API token; return whether there was one."""
    deleted, _ = Token.objects.filter(user=user).delete()
    if deleted:
        logger.info("API token revoked for user %s", user.pk)
    return bool(deleted)
