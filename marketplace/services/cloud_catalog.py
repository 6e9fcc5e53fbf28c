"""The server types, locations and images of a provider's cloud account, cached briefly.

The offering form and the API read them through `cloud_catalog_get`, which keeps a copy in
Django's cache for OFFERING_CATALOG_CACHE_SECONDS. The cache key contains the account id and a
fingerprint of its credentials and connection settings, so a replaced token or a changed
setting never reads an old copy. Saving an offering checks it against `cloud_catalog_fetch`,
which always calls the backend and refreshes the cached copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from provisioning.backends import get_backend
from provisioning.backends.base import CloudError, CredentialsInvalid, Image, Location, ServerType
from provisioning.models import CloudAccount

logger = logging.getLogger(__name__)

#: Offering fields that a server type determines.
SPEC_FIELDS = ("vcpu", "memory_mib", "disk_gb")

_CACHE_KEY_VERSION = "v1"


@dataclass(frozen=True)
class CloudCatalog:
    """Server types, locations and images of one cloud account's backend, as loaded at `loaded_at`."""

    account_id: int
    backend: str
    server_types: tuple[ServerType, ...]
    locations: tuple[Location, ...]
    images: tuple[Image, ...]
    editable_spec_fields: frozenset[str]
    loaded_at: datetime

    def server_type(self, name: str) -> ServerType | None:
        return next((item for item in self.server_types if item.name == name), None)

    def location(self, code: str) -> Location | None:
        return next((item for item in self.locations if item.code == code), None)

    def image_names(self) -> list[str]:
        """Return the image names once each; backends list one image per architecture."""
        return sorted({item.name for item in self.images})

    def image_architectures(self, name: str) -> list[str]:
        return sorted({item.architecture for item in self.images if item.name == name})


class CatalogUnavailable(Exception):
    """The backend did not return the catalog; `message` is meant for the account's owner."""

    def __init__(self, message: str, *, account: CloudAccount, credentials_invalid: bool = False):
        super().__init__(message)
        self.message = message
        self.account = account
        self.credentials_invalid = credentials_invalid


def cloud_catalog_cache_key(account: CloudAccount) -> str:
    """Return the cache key of `account`'s catalog.

    The fingerprint is a SHA-256 hash of the encrypted token and every connection setting, so
    the key changes with the credentials without the token itself being read or stored.
    """
    material = json.dumps(
        [
            account.backend,
            account.token_key_id,
            account.token_ciphertext,
            account.proxmox_api_url,
            account.proxmox_token_id,
            account.proxmox_node,
            account.proxmox_server_types,
        ],
        sort_keys=True,
        default=str,
    )
    fingerprint = hashlib.sha256(material.encode()).hexdigest()[:24]
    return f"cloud-catalog:{_CACHE_KEY_VERSION}:{account.pk}:{fingerprint}"


def cloud_catalog_fetch(account: CloudAccount) -> CloudCatalog:
    """Load `account`'s catalog from its backend, store it in the cache and return it.

    Raises CatalogUnavailable when a backend call fails.
    """
    backend = get_backend(account)
    try:
        server_types = tuple(backend.list_server_types())
        locations = tuple(backend.list_locations())
        images = tuple(backend.list_images())
    except CloudError as exc:
        logger.warning(
            "Cloud account %s: listing server types, locations or images failed: %s",
            account.pk,
            exc,
        )
        raise CatalogUnavailable(
            f"Could not load server types, locations and images from {account}: {exc}. "
            "Try again in a minute.",
            account=account,
            credentials_invalid=isinstance(exc, CredentialsInvalid),
        ) from exc
    catalog = CloudCatalog(
        account_id=account.pk,
        backend=account.backend,
        server_types=tuple(sorted(server_types, key=lambda item: item.name)),
        locations=tuple(sorted(locations, key=lambda item: item.code)),
        images=tuple(sorted(images, key=lambda item: (item.name, item.architecture))),
        editable_spec_fields=frozenset(backend.editable_spec_fields),
        loaded_at=timezone.now(),
    )
    if account.pk is not None:
        cache.set(cloud_catalog_cache_key(account), catalog, settings.OFFERING_CATALOG_CACHE_SECONDS)
    logger.info(
        "Cloud account %s: loaded %s server types, %s locations and %s images",
        account.pk,
        len(catalog.server_types),
        len(catalog.locations),
        len(catalog.images),
    )
    return catalog


def cloud_catalog_get(account: CloudAccount) -> tuple[CloudCatalog, bool]:
    """Return `account`'s catalog and whether it came from the cache.

    A cached copy is at most OFFERING_CATALOG_CACHE_SECONDS old. On a cache miss the backend
    is asked. When the backend rejects the account's credentials, the account is marked
    invalid (which notifies its owner once). Raises CatalogUnavailable when a backend call fails.
    """
    cached = cache.get(cloud_catalog_cache_key(account))
    if isinstance(cached, CloudCatalog) and cached.account_id == account.pk:
        return cached, True
    try:
        return cloud_catalog_fetch(account), False
    except CatalogUnavailable as exc:
        if exc.credentials_invalid:
            from provisioning.services import (
                cloud_account_mark_invalid,
                credentials_rejected_message,
            )

            cause = exc.__cause__
            error = credentials_rejected_message(account=account, error=cause) if isinstance(cause, CredentialsInvalid) else exc.message
            exc.account = cloud_account_mark_invalid(account_id=account.pk, error=error)
        raise
