"""Read queries for the marketplace: catalog, offerings and rentals visible to a user."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from marketplace.models import (
    RUNNING_STATUSES,
    Contract,
    Offering,
    OfferingAllowlistEntry,
    Visibility,
)
from provisioning.models import Agent, Backend, ValidationStatus

#: Up to this many shared offerings of one user are matched by id; more by a subquery.
_SHARED_IDS_INLINE_MAX = 1000


def _shared_with(user) -> Q | None:
    """Match the shared offerings whose allowlist contains `user`'s email address, in any letter case.

    Returns None when there are none. The ids are read first, so a user on no allowlist (almost
    everyone) gets the plain public catalog query and its ordered index scans. For the others,
    the partial index `offering_listed_price` keeps the price-ordered catalog fast: over
    bench/catalog.py's 100,000 offerings on local PostgreSQL 15, the unfiltered page of a user
    with 3 shared offerings took 18 ms median with it and 168 ms without it.
    """
    entries = OfferingAllowlistEntry.objects.filter(email=user.email.lower(), offering__visibility=Visibility.SHARED)
    ids = list(entries.values_list("offering_id", flat=True)[: _SHARED_IDS_INLINE_MAX + 1])
    if not ids:
        return None
    if len(ids) > _SHARED_IDS_INLINE_MAX:
        return Q(visibility=Visibility.SHARED, pk__in=entries.values("offering_id"))
    return Q(visibility=Visibility.SHARED, pk__in=ids)


def served_q(*, prefix: str = "") -> Q:
    """Match offerings whose cloud account can serve a rental now.

    An agent pool's offering needs an agent of the pool that is not revoked and sent a heartbeat
    within AGENT_OFFLINE_AFTER_SECONDS. The check runs in the query, so an offering comes back as
    soon as an agent reports again.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.AGENT_OFFLINE_AFTER_SECONDS)
    online_agents = Agent.objects.filter(
        pool__cloud_account=OuterRef(f"{prefix}cloud_account"), revoked_at__isnull=True, last_heartbeat_at__gte=cutoff
    )
    return ~Q(**{f"{prefix}cloud_account__backend": Backend.AGENT}) | Q(Exists(online_agents))


def catalog_offerings(*, user=None) -> QuerySet[Offering]:
    """Offerings `user` may browse, on a cloud account that is not known to be broken.

    Offerings of an agent pool with no online agent are left out (see `served_q`).

    Public offerings are listed for everyone. A signed-in `user` also gets the shared offerings whose
    allowlist contains their email address. Without `user`, only public offerings are returned.
    """
    listed = Q(visibility=Visibility.PUBLIC)
    shared = _shared_with(user) if user is not None and user.is_authenticated else None
    if shared is not None:
        listed |= shared
    return (
        Offering.objects.filter(listed)
        .filter(served_q())
        .exclude(cloud_account__validation_status=ValidationStatus.INVALID)
        .select_related("provider", "recipe_version__recipe", "cloud_account")
    )


def offering_visible_to(*, user) -> QuerySet[Offering]:
    """Offerings whose page `user` may open: the catalog as listed for `user`, plus the user's own."""
    queryset = Offering.objects.select_related("provider__user", "recipe_version__recipe", "cloud_account")
    public = Q(visibility=Visibility.PUBLIC)
    if not user.is_authenticated:
        return queryset.filter(public & served_q()).exclude(cloud_account__validation_status=ValidationStatus.INVALID)
    shared = _shared_with(user)
    listed = (
        (public | shared if shared is not None else public)
        & ~Q(cloud_account__validation_status=ValidationStatus.INVALID)
        & served_q()
    )
    return queryset.filter(listed | Q(provider__user=user))


def offering_is_shared_with(*, offering: Offering, user) -> bool:
    """Return whether `user` is on the allowlist of `offering` (whatever its visibility is now)."""
    if not user.is_authenticated:
        return False
    return OfferingAllowlistEntry.objects.filter(offering=offering, email=user.email.lower()).exists()


def offering_allowlist(*, offering: Offering) -> list[str]:
    """Return the email addresses on the allowlist of `offering`, sorted."""
    return list(offering.allowlist_entries.order_by("email").values_list("email", flat=True))


def offering_running_rental_count(*, offering: Offering) -> int:
    """Count the rentals of `offering` that are paid, provisioning or active."""
    return Contract.objects.filter(offering=offering, status__in=RUNNING_STATUSES).count()


def contracts_for_tenant(*, user) -> QuerySet[Contract]:
    return Contract.objects.filter(tenant=user).select_related("provider", "offering")


def contracts_for_provider(*, user) -> QuerySet[Contract]:
    return Contract.objects.filter(provider__user=user).select_related("tenant", "offering")


def rental_requests_for_provider(*, user) -> QuerySet[Contract]:
    """Rentals of `user`'s offerings for the rental requests page and API, newest first."""
    return (
        Contract.objects.filter(provider__user=user)
        .select_related("tenant", "offering", "provider")
        .order_by("-created_at", "-id")
    )


def contract_visible_to(*, user) -> QuerySet[Contract]:
    """Contracts `user` may see: as tenant, as provider, or all for staff."""
    queryset = Contract.objects.select_related("provider__user", "tenant", "offering", "cloud_account", "recipe_version__recipe")
    if user.is_staff:
        return queryset
    return queryset.filter(Q(tenant=user) | Q(provider__user=user))


CATALOG_COUNTRIES_CACHE_KEY = "catalog:countries:v1"


def catalog_countries() -> list[str]:
    """Country codes present in the catalog, for the filter menu; cached for five minutes.

    A DISTINCT over the whole catalog costs tens of milliseconds at 100,000 offerings, and the
    menu may lag a new country by the cache lifetime.
    """
    from django.core.cache import cache

    countries = cache.get(CATALOG_COUNTRIES_CACHE_KEY)
    if countries is None:
        countries = sorted(set(catalog_offerings().order_by().values_list("country", flat=True).distinct()))
        cache.set(CATALOG_COUNTRIES_CACHE_KEY, countries, 300)
    return countries
