"""Read queries for the marketplace: catalog, offerings and rentals visible to a user."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from marketplace.models import Contract, Offering, Visibility
from provisioning.models import ValidationStatus


def catalog_offerings() -> QuerySet[Offering]:
    """Offerings anyone may browse: public, on a cloud account that is not known to be broken."""
    return (
        Offering.objects.filter(visibility=Visibility.PUBLIC)
        .exclude(cloud_account__validation_status=ValidationStatus.INVALID)
        .select_related("provider", "recipe_version__recipe", "cloud_account")
    )


def offering_visible_to(*, user) -> QuerySet[Offering]:
    """Offerings whose page `user` may open: the catalog plus the user's own."""
    queryset = Offering.objects.select_related("provider__user", "recipe_version__recipe", "cloud_account")
    public = Q(visibility=Visibility.PUBLIC) & ~Q(cloud_account__validation_status=ValidationStatus.INVALID)
    if user.is_authenticated:
        return queryset.filter(public | Q(provider__user=user))
    return queryset.filter(public)


def contracts_for_tenant(*, user) -> QuerySet[Contract]:
    return Contract.objects.filter(tenant=user).select_related("provider", "offering")


def contracts_for_provider(*, user) -> QuerySet[Contract]:
    return Contract.objects.filter(provider__user=user).select_related("tenant", "offering")


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
