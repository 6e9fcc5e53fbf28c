"""API tokens for scripts, sent as `Authorization: Token <key>`.

Tokens come from django-rest-knox, which stores only a hash of each key, so a key is shown once,
right after it was created, and cannot be read back from the database. A user has at most one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from knox.auth import TokenAuthentication
from knox.models import AuthToken
from knox.settings import CONSTANTS
from rest_framework.exceptions import AuthenticationFailed

from marketplace.models import User

logger = logging.getLogger(__name__)


class ApiTokenAuthentication(TokenAuthentication):
    """Knox token authentication that rejects a key that is not UTF-8 with 401.

    django-rest-knox 5.1.0 decodes the key with bytes.decode("utf-8") unguarded, so a header such as
    `Authorization: Token \\xff` raised UnicodeDecodeError and returned 500.
    """

    def authenticate_credentials(self, token: bytes):
        try:
            token.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AuthenticationFailed("Invalid token.") from exc
        return super().authenticate_credentials(token)


class ApiTokenScheme(KnoxTokenScheme):
    """Describes ApiTokenAuthentication in the OpenAPI document as knox's own scheme."""

    target_class = "marketplace.api.tokens.ApiTokenAuthentication"


@dataclass(frozen=True)
class IssuedToken:
    """A token just created: the stored row and the key, which exists only in memory."""

    token: AuthToken
    key: str


def api_token_for(*, user: User) -> AuthToken | None:
    """Return the user's API token row (no key, only its prefix), or None when they have none."""
    return AuthToken.objects.filter(user=user).order_by("-created").first()


def api_token_matches(*, token: AuthToken, key: str) -> bool:
    """Return whether `key` is the key of `token`, by the prefix knox stores in clear."""
    return bool(key) and key[: CONSTANTS.TOKEN_KEY_LENGTH] == token.token_key


def _issue(user: User) -> IssuedToken:
    # No expiry: the user revokes or regenerates the token on the token page.
    token, key = AuthToken.objects.create(user=user, expiry=None)
    return IssuedToken(token=token, key=key)


@transaction.atomic
def api_token_create(*, user: User) -> IssuedToken:
    """Create the user's API token; raise ValidationError if they already have one."""
    # Locking the user row serialises two concurrent creates of the same user.
    User.objects.select_for_update().filter(pk=user.pk).first()
    if AuthToken.objects.filter(user=user).exists():
        raise ValidationError("You already have an API token; regenerate it to get a new key.")
    issued = _issue(user)
    logger.info("API token created for user %s", user.pk)
    return issued


@transaction.atomic
def api_token_regenerate(*, user: User) -> IssuedToken:
    """Replace the user's API token with a new key (or create one); the old key stops working."""
    User.objects.select_for_update().filter(pk=user.pk).first()
    deleted, _ = AuthToken.objects.filter(user=user).delete()
    issued = _issue(user)
    logger.info("API token regenerated for user %s (old token deleted: %s)", user.pk, bool(deleted))
    return issued


def api_token_revoke(*, user: User) -> bool:
    """Delete the user's API token; return whether there was one."""
    deleted, _ = AuthToken.objects.filter(user=user).delete()
    if deleted:
        logger.info("API token revoked for user %s", user.pk)
    return bool(deleted)
