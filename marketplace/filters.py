"""The catalog filter set, shared by the marketplace page and the API."""

from __future__ import annotations

import django_filters
from django.db.models import Q

from marketplace.models import Contract, ContractStatus, Offering, ProductType

SORT_CHOICES = [
    ("price", "Price: low to high"),
    ("-price", "Price: high to low"),
    ("-vcpu", "Most vCPUs"),
    ("vcpu", "Fewest vCPUs"),
    ("-memory", "Most memory"),
    ("memory", "Least memory"),
    ("newest", "Newest"),
]

# NOTE: sorting and the price filters compare price_cents across currencies without conversion,
# so 5.00 SEK sorts next to 5.00 EUR. This stays so until the platform has exchange rates.
SORT_FIELDS = {
    "price": ("price_cents", "id"),
    "-price": ("-price_cents", "-id"),
    "vcpu": ("vcpu", "price_cents", "id"),
    "-vcpu": ("-vcpu", "price_cents", "id"),
    "memory": ("memory_mib", "price_cents", "id"),
    "-memory": ("-memory_mib", "price_cents", "id"),
    "newest": ("-created_at", "-id"),
}


class BoundedNumberFilter(django_filters.NumberFilter):
    """A number filter whose only upper bound is its own `max_value`.

    django-filter's NumberFilter adds a second maximum of 1e50, so a value such as 1e308 got
    two "less than or equal" messages.
    """

    def get_max_validator(self):
        return None


class OfferingFilter(django_filters.FilterSet):
    """Catalog filters; every value lives in the URL query string."""

    q = django_filters.CharFilter(method="filter_text", label="Search", max_length=200)
    product_type = django_filters.ChoiceFilter(choices=ProductType.choices, label="Type", empty_label="Any type")
    country = django_filters.CharFilter(method="filter_country", label="Country", max_length=2)
    price_min = BoundedNumberFilter(method="filter_price_min", label="Min price / month", min_value=0, max_value=1_000_000)
    price_max = BoundedNumberFilter(method="filter_price_max", label="Max price / month", min_value=0, max_value=1_000_000)
    min_vcpu = BoundedNumberFilter(field_name="vcpu", lookup_expr="gte", label="Min vCPU", min_value=0, max_value=1024)
    min_memory_gib = BoundedNumberFilter(method="filter_memory", label="Min memory (GiB)", min_value=0, max_value=1_000_000)
    min_disk_gb = BoundedNumberFilter(field_name="disk_gb", lookup_expr="gte", label="Min disk (GB)", min_value=0, max_value=1_000_000)
    gpu = django_filters.BooleanFilter(method="filter_gpu", label="GPU")
    has_recipe = django_filters.BooleanFilter(method="filter_has_recipe", label="Ready-made service (has recipe)")
    sort = django_filters.ChoiceFilter(choices=SORT_CHOICES, method="filter_sort", label="Sort", empty_label="Price: low to high")

    class Meta:
        model = Offering
        fields: list[str] = []

    def filter_queryset(self, queryset):
        queryset = super().filter_queryset(queryset)
        if not self.form.cleaned_data.get("sort"):
            queryset = queryset.order_by(*SORT_FIELDS["price"])
        return queryset

    def filter_text(self, queryset, name, value):
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(
            Q(name__icontains=value)
            | Q(description__icontains=value)
            | Q(city__icontains=value)
            | Q(provider__display_name__icontains=value)
            | Q(server_type__iexact=value)
        )

    def filter_country(self, queryset, name, value):
        return queryset.filter(country=value.strip().upper()) if value.strip() else queryset

    def filter_price_min(self, queryset, name, value):
        return queryset.filter(price_cents__gte=int(value * 100))

    def filter_price_max(self, queryset, name, value):
        return queryset.filter(price_cents__lte=int(value * 100))

    def filter_memory(self, queryset, name, value):
        return queryset.filter(memory_mib__gte=int(value * 1024))

    def filter_gpu(self, queryset, name, value):
        return queryset.filter(gpu_count__gt=0) if value else queryset.filter(gpu_count=0)

    def filter_has_recipe(self, queryset, name, value):
        return queryset.filter(recipe_version__isnull=not value)

    def filter_sort(self, queryset, name, value):
        return queryset.order_by(*SORT_FIELDS.get(value, SORT_FIELDS["price"]))


class ProviderRentalFilter(django_filters.FilterSet):
    """Filters of a provider's rental requests, shared by the rental requests page and the API."""

    status = django_filters.ChoiceFilter(choices=ContractStatus.choices, label="Status", empty_label="Any status")

    class Meta:
        model = Contract
        fields: list[str] = []
