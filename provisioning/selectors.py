"""Cloud account reads: a user's accounts with their usage, and what depends on one account."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from marketplace.models import ENDED_STATUSES, Contract, Offering
from provisioning.models import CloudAccount, Resource, ResourceStatus


def live_rentals_of_accounts() -> QuerySet[Contract]:
    """Return the contracts that still need their cloud account: every status except the ended ones."""
    return Contract.objects.exclude(status__in=ENDED_STATUSES)


def _count_per_account(queryset: QuerySet) -> Coalesce:
    counted = (
        queryset.filter(cloud_account=OuterRef("pk"))
        .order_by()
        .values("cloud_account")
        .annotate(total=Count("pk"))
        .values("total")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def cloud_accounts_for_owner(*, user) -> QuerySet[CloudAccount]:
    """Return the user's cloud accounts, not deleted ones, with `offering_count` and `live_rental_count`."""
    return (
        CloudAccount.objects.filter(owner=user)
        .annotate(
            offering_count=_count_per_account(Offering.objects.all()),
            live_rental_count=_count_per_account(live_rentals_of_accounts()),
        )
        .order_by("label", "id")
    )


@dataclass(frozen=True)
class AccountDependents:
    """The offerings, live rentals and self-provisioned resources that use one cloud account."""

    offerings: list[Offering]
    rentals: list[Contract]
    resources: list[Resource] = field(default_factory=list)


def cloud_account_dependents(*, account: CloudAccount) -> AccountDependents:
    """Return every offering, live rental and resource that is not deleted on `account`, oldest first.

    The hidden offering of a deleted resource does not count: nobody can rent it any more.
    """
    offerings = list(
        Offering.objects.filter(cloud_account=account)
        .exclude(resource__status=ResourceStatus.DELETED)
        .order_by("created_at", "id")
    )
    rentals = list(live_rentals_of_accounts().filter(cloud_account=account).order_by("created_at", "id"))
    resources = list(
        Resource.objects.filter(cloud_account=account).exclude(status=ResourceStatus.DELETED).order_by("created_at", "id")
    )
    return AccountDependents(offerings=offerings, rentals=rentals, resources=resources)
