"""Every change of a self-provisioned resource: one function per transition.

Each user-facing function locks the resource row, checks that the actor owns it and that the
current status allows the change, writes the change and a `ResourceEvent` in one transaction,
and schedules the cloud work with `transaction.on_commit`. Workers report progress through the
`resource_mark_*` functions, which are compare-and-set updates of the status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from marketplace.models import ENDED_STATUSES, Contract, Offering, StockStatus, User, Visibility
from marketplace.sshkeys import parse_public_key
from provisioning.models import Backend, CloudAccount, Resource, ResourceEvent, ResourceStatus

logger = logging.getLogger(__name__)


class ResourceInvalidTransition(Exception):
    """The resource is not in a status from which the requested change is allowed."""

    def __init__(self, resource: Resource, action: str):
        super().__init__(
            f"Resource {resource.name!r} cannot {action}: it is {resource.get_status_display().lower()}."
        )
        self.resource = resource


class ResourceRented(Exception):
    """The resource is lent to a tenant, so its owner cannot stop or delete it now."""

    def __init__(self, resource: Resource, action: str, contract: Contract):
        super().__init__(
            f"Resource {resource.name!r} cannot {action} while it is rented (rental {contract.public_id} is "
            f"{contract.get_status_display().lower()}). Unlist it and wait until the rental ends."
        )
        self.resource = resource
        self.contract = contract


def _lock(resource_id: int) -> Resource:
    return Resource.objects.select_for_update(of=("self",)).select_related("cloud_account").get(pk=resource_id)


def _require_owner(resource: Resource, actor: User) -> None:
    if resource.owner_id != actor.pk and not actor.is_staff:
        raise PermissionError(f"User {actor.pk} does not own resource {resource.pk}.")


def _actor_label(resource: Resource, actor: User) -> str:
    return "owner" if resource.owner_id == actor.pk else "staff"


def _move(
    resource: Resource,
    *,
    allowed_from: Iterable[str],
    to_status: str,
    action: str,
    actor: User | None,
    actor_label: str,
    reason: str = "",
    **fields,
) -> Resource:
    """Compare-and-set the status of a resource and write its history row."""
    if resource.status not in set(allowed_from):
        raise ResourceInvalidTransition(resource, action)
    from_status = resource.status
    updated = Resource.objects.filter(pk=resource.pk, status=from_status).update(
        status=to_status, status_reason=reason[:5000], updated_at=timezone.now(), **fields
    )
    if updated != 1:
        resource.refresh_from_db()
        raise ResourceInvalidTransition(resource, action)
    ResourceEvent.objects.create(
        resource=resource,
        from_status=from_status,
        to_status=to_status,
        step=fields.get("provisioning_step", ""),
        actor=actor,
        actor_label=actor_label,
        reason=reason[:5000],
    )
    resource.refresh_from_db()
    logger.info("Resource %s: %s -> %s by %s (%s)", resource.pk, from_status, to_status, actor_label, reason[:200])
    return resource


def resource_live_rental(resource: Resource) -> Contract | None:
    """Return the rental that has not ended of the resource's listing, or None."""
    return (
        Contract.objects.filter(offering__resource=resource)
        .exclude(status__in=ENDED_STATUSES)
        .order_by("-created_at")
        .first()
    )


def _reject_if_rented(resource: Resource, action: str) -> None:
    contract = resource_live_rental(resource)
    if contract is not None:
        raise ResourceRented(resource, action, contract)


# --- creation ---------------------------------------------------------------------------------


def _check_quota(owner: User) -> None:
    limit = settings.RESOURCE_QUOTA_PER_USER
    count = Resource.objects.filter(owner=owner).exclude(status=ResourceStatus.DELETED).count()
    if count >= limit:
        raise ValidationError(
            f"You have {count} resources, and the limit is {limit} per account (RESOURCE_QUOTA_PER_USER). "
            "Delete a resource you no longer need, or ask staff to raise the limit."
        )


def _check_cloud_account(account: CloudAccount, owner: User) -> None:
    if account.owner_id != owner.pk:
        raise ValidationError({"cloud_account": "This cloud account is not yours; choose one of your own accounts."})
    if account.deleted_at is not None:
        raise ValidationError({"cloud_account": f"Cloud account {account.label!r} was deleted; choose another account."})
    if account.backend == Backend.AGENT:
        # Agents provision only rentals that they claim; no platform worker can create a VM there.
        raise ValidationError(
            {"cloud_account": f"{account.label!r} is an agent pool; resources run on Hetzner Cloud or Proxmox VE accounts."}
        )
    if not account.is_usable:
        raise ValidationError(
            {"cloud_account": f"Cloud account {account.label!r} has invalid credentials; replace its token first."}
        )


def resource_create(
    *,
    owner: User,
    cloud_account: CloudAccount,
    name: str,
    location_code: str,
    server_type: str,
    image: str,
    ssh_public_key: str,
    recipe_version=None,
) -> Resource:
    """Create a VM for `owner`'s own use and queue its provisioning.

    Server type, location and image are checked against the cloud account's live catalog.
    Raises ValidationError (keyed by field where one field is at fault) for a foreign or
    unusable cloud account, an unknown catalog choice, an invalid SSH key, or when the owner
    already has RESOURCE_QUOTA_PER_USER resources that are not deleted.
    """
    from marketplace.services.providers import backend_catalog_load
    from provisioning.tasks import provision_resource_task

    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Give the resource a name, for example 'build server'."})
    _check_cloud_account(cloud_account, owner)
    try:
        parsed = parse_public_key(ssh_public_key)
    except ValidationError as exc:
        raise ValidationError({"ssh_public_key": exc.messages}) from exc
    # Cheap check before calling the cloud; checked again under the lock below.
    _check_quota(owner)

    catalog = backend_catalog_load(cloud_account)
    errors = {}
    size = catalog.server_type_specs.get(server_type)
    if server_type not in catalog.server_types or size is None:
        errors["server_type"] = (
            f"Unknown server type {server_type!r} for {cloud_account}. Valid server types: "
            f"{', '.join(sorted(catalog.server_types))}."
        )
    location = catalog.locations.get(location_code)
    if location is None:
        errors["location_code"] = (
            f"Unknown location {location_code!r} for {cloud_account}. Valid locations: {', '.join(sorted(catalog.locations))}."
        )
    if image not in catalog.images:
        errors["image"] = f"Unknown image {image!r} for {cloud_account}. Valid images: {', '.join(sorted(catalog.images))}."
    if errors:
        raise ValidationError(errors)

    resource = Resource(
        owner=owner,
        cloud_account=cloud_account,
        name=name,
        backend=cloud_account.backend,
        location_code=location_code,
        country=(location.country or "").upper()[:2],
        city=location.city or "",
        server_type=server_type,
        vcpu=size.vcpu,
        memory_mib=size.memory_mib,
        disk_gb=size.disk_gb,
        image=image,
        recipe_version=recipe_version,
        recipe_script=recipe_version.script if recipe_version is not None else "",
        ssh_public_key=parsed.normalized,
        ssh_key_fingerprint=parsed.fingerprint_sha256,
        provisioning_step="creating_server",
    )
    resource.full_clean(exclude=["owner", "cloud_account", "recipe_version"])
    with transaction.atomic():
        # Locking the owner's row serialises concurrent creations, so the quota holds.
        User.objects.select_for_update().get(pk=owner.pk)
        _check_quota(owner)
        # Check the account again under its row lock, because a deletion or an invalidation may
        # have committed during the catalog call. The lock also holds off a deletion until commit.
        _check_cloud_account(CloudAccount.all_objects.select_for_update().get(pk=cloud_account.pk), owner)
        resource.save()
        ResourceEvent.objects.create(
            resource=resource, to_status=resource.status, step=resource.provisioning_step,
            actor=owner, actor_label="owner", reason="Created by the owner.",
        )
        resource_pk = resource.pk
        transaction.on_commit(lambda: provision_resource_task.delay(resource_pk))
    logger.info("Resource %s created by user %s at cloud account %s", resource.pk, owner.pk, cloud_account.pk)
    return resource


# --- provisioning progress (called by workers) ------------------------------------------------


def resource_set_step(*, resource_id: int, step: str, worker: str) -> None:
    """Record that a provisioning resource entered `step`; a repeated step records nothing."""
    with transaction.atomic():
        changed = (
            Resource.objects.filter(pk=resource_id, status=ResourceStatus.PROVISIONING)
            .exclude(provisioning_step=step)
            .update(provisioning_step=step, updated_at=timezone.now())
        )
        if changed:
            ResourceEvent.objects.create(
                resource_id=resource_id, from_status=ResourceStatus.PROVISIONING,
                to_status=ResourceStatus.PROVISIONING, step=step, actor_label=worker,
            )
            return
    resource = Resource.objects.get(pk=resource_id)
    if resource.status != ResourceStatus.PROVISIONING:
        raise ResourceInvalidTransition(resource, f"enter step {step}")


@transaction.atomic
def resource_activate(*, resource_id: int, worker: str) -> Resource:
    resource = _lock(resource_id)
    if not resource.cloud_server_id or not resource.ip_address:
        raise ResourceInvalidTransition(resource, "start running without a server address")
    reason = "Server is running and the recipe succeeded." if resource.recipe_script else "Server is running."
    if resource.is_sandbox:
        reason = "Simulated server is running (Sandbox: no machine exists and no recipe ran)."
    return _move(
        resource, allowed_from={ResourceStatus.PROVISIONING}, to_status=ResourceStatus.RUNNING, action="start running",
        actor=None, actor_label=worker, reason=reason, provisioning_step="", lease_owner="", lease_expires_at=None,
        last_error="",
    )


@transaction.atomic
def resource_fail(*, resource_id: int, reason: str, worker: str, lease_owner: str | None = None) -> Resource:
    """Fail a provisioning resource and delete whatever was created for it at the cloud.

    A worker passes its `lease_owner`, so a worker that lost its lease cannot fail a resource
    that another worker is now provisioning.
    """
    from provisioning.tasks import cleanup_resource_servers_task

    resource = _lock(resource_id)
    if lease_owner is not None and resource.lease_owner != lease_owner:
        raise ResourceInvalidTransition(resource, f"be failed by {lease_owner}, which no longer holds its lease")
    resource = _move(
        resource, allowed_from={ResourceStatus.PROVISIONING}, to_status=ResourceStatus.FAILED, action="fail",
        actor=None, actor_label=worker, reason=reason, lease_owner="", lease_expires_at=None, last_error=reason[:2000],
    )
    resource_pk = resource.pk
    transaction.on_commit(lambda: cleanup_resource_servers_task.delay(resource_pk))
    return resource


# --- power ------------------------------------------------------------------------------------


@transaction.atomic
def resource_stop(*, resource: Resource, actor: User) -> Resource:
    """Power the VM off. Rejected while a tenant rents it."""
    from provisioning.tasks import resource_power_task

    resource = _lock(resource.pk)
    _require_owner(resource, actor)
    _reject_if_rented(resource, "be stopped")
    resource = _move(
        resource, allowed_from={ResourceStatus.RUNNING}, to_status=ResourceStatus.STOPPING, action="be stopped",
        actor=actor, actor_label=_actor_label(resource, actor), reason="Stop requested.", attempts=0,
    )
    # A listing of a stopped VM shows as out of stock; the stock returns once it runs again.
    Offering.objects.filter(resource=resource).update(stock_status=StockStatus.OUT_OF_STOCK, updated_at=timezone.now())
    resource_pk = resource.pk
    transaction.on_commit(lambda: resource_power_task.delay(resource_pk))
    return resource


@transaction.atomic
def resource_start(*, resource: Resource, actor: User) -> Resource:
    """Power a stopped VM on again."""
    from provisioning.tasks import resource_power_task

    resource = _lock(resource.pk)
    _require_owner(resource, actor)
    resource = _move(
        resource, allowed_from={ResourceStatus.STOPPED}, to_status=ResourceStatus.STARTING, action="be started",
        actor=actor, actor_label=_actor_label(resource, actor), reason="Start requested.", attempts=0,
    )
    resource_pk = resource.pk
    transaction.on_commit(lambda: resource_power_task.delay(resource_pk))
    return resource


@transaction.atomic
def resource_mark_power_done(*, resource_id: int, worker: str, ip_address: str | None = None) -> Resource:
    """Finish a stop (stopping -> stopped) or a start (starting -> running, with the new address)."""
    resource = _lock(resource_id)
    if resource.status == ResourceStatus.STOPPING:
        return _move(
            resource, allowed_from={ResourceStatus.STOPPING}, to_status=ResourceStatus.STOPPED, action="be marked stopped",
            actor=None, actor_label=worker, reason="Server stopped.", lease_owner="", lease_expires_at=None, last_error="",
        )
    fields = {"ip_address": ip_address} if ip_address else {}
    resource = _move(
        resource, allowed_from={ResourceStatus.STARTING}, to_status=ResourceStatus.RUNNING, action="be marked running",
        actor=None, actor_label=worker, reason="Server started.", lease_owner="", lease_expires_at=None, last_error="",
        **fields,
    )
    _return_stock_unless_rented(resource)
    return resource


def _return_stock_unless_rented(resource: Resource) -> None:
    """Give the listing's stock back once the VM runs again, unless a rental of it has not ended."""
    offering_id = Offering.objects.filter(resource=resource).values_list("pk", flat=True).first()
    if offering_id is not None and resource_live_rental(resource) is None:
        listing_stock_return(offering_id=offering_id)


@transaction.atomic
def resource_mark_power_failed(*, resource_id: int, worker: str, error: str) -> Resource:
    """Return a resource whose stop or start failed for good to its previous status, with the error."""
    resource = _lock(resource_id)
    if resource.status == ResourceStatus.STOPPING:
        back, action, message = ResourceStatus.RUNNING, "stay running", f"Stopping failed: {error}"
    else:
        back, action, message = ResourceStatus.STOPPED, "stay stopped", f"Starting failed: {error}"
    resource = _move(
        resource, allowed_from={ResourceStatus.STOPPING, ResourceStatus.STARTING}, to_status=back, action=action,
        actor=None, actor_label=worker, reason=message, lease_owner="", lease_expires_at=None, last_error=message[:2000],
    )
    if back == ResourceStatus.RUNNING:
        # resource_stop took the listing's stock, and the VM kept running.
        _return_stock_unless_rented(resource)
    return resource


# --- deletion ---------------------------------------------------------------------------------


@transaction.atomic
def resource_delete(*, resource: Resource, actor: User) -> Resource:
    """Delete the VM at the cloud. Rejected while a tenant rents it; a listing is hidden first."""
    from provisioning.tasks import delete_resource_task

    resource = _lock(resource.pk)
    _require_owner(resource, actor)
    _reject_if_rented(resource, "be deleted")
    Offering.objects.filter(resource=resource).update(
        visibility=Visibility.PRIVATE, stock_status=StockStatus.OUT_OF_STOCK, updated_at=timezone.now()
    )
    resource = _move(
        resource, allowed_from={ResourceStatus.RUNNING, ResourceStatus.STOPPED, ResourceStatus.FAILED, ResourceStatus.DELETE_FAILED},
        to_status=ResourceStatus.DELETING, action="be deleted", actor=actor, actor_label=_actor_label(resource, actor),
        reason="Deletion requested.", attempts=0,
    )
    resource_pk = resource.pk
    transaction.on_commit(lambda: delete_resource_task.delay(resource_pk))
    return resource


@transaction.atomic
def resource_mark_deleted(*, resource_id: int, worker: str) -> Resource:
    resource = _lock(resource_id)
    return _move(
        resource, allowed_from={ResourceStatus.DELETING}, to_status=ResourceStatus.DELETED, action="be marked deleted",
        actor=None, actor_label=worker, reason="Server deleted.", lease_owner="", lease_expires_at=None, last_error="",
        deleted_at=timezone.now(),
    )


@transaction.atomic
def resource_mark_delete_failed(*, resource_id: int, worker: str, error: str) -> Resource:
    resource = _lock(resource_id)
    message = f"Deleting the server failed: {error}"
    return _move(
        resource, allowed_from={ResourceStatus.DELETING}, to_status=ResourceStatus.DELETE_FAILED, action="be marked delete failed",
        actor=None, actor_label=worker, reason=message, lease_owner="", lease_expires_at=None, last_error=message[:2000],
    )


# --- marketplace listing -----------------------------------------------------------------------


@transaction.atomic
def resource_list(
    *,
    resource: Resource,
    actor: User,
    name: str,
    description: str,
    price_cents: int,
    currency: str,
    remove_owner_keys: bool,
    country: str = "",
) -> Offering:
    """List a running resource on the marketplace as a public offering with a stock of one.

    Creates the offering bound to the resource, or updates and shows it again when the resource
    was listed before. Relisting never changes the stock, which rentals take and return. Raises
    ValidationError keyed by field for an invalid price, name, description or country, and when
    the owner has no provider profile, the resource is not running or its cloud account's
    credentials are invalid. `country` is used only
    when the resource's location reports none.
    """
    from marketplace.models import ProviderProfile
    from marketplace.services.providers import _check_price, unique_offering_slug

    resource = _lock(resource.pk)
    _require_owner(resource, actor)
    if not resource.can_list():
        raise ValidationError(
            f"Resource {resource.name!r} is {resource.get_status_display().lower()}; only a running resource can be listed."
        )
    provider = ProviderProfile.objects.filter(user_id=resource.owner_id).first()
    if provider is None:
        raise ValidationError("Create your provider profile before you list a resource on the marketplace.")
    account = resource.cloud_account
    if not account.is_usable:
        # Every rent of the listing would fail while the platform cannot reach the VM's cloud.
        raise ValidationError(
            f"Cloud account {account.label!r} has invalid credentials; replace its token on the Cloud accounts page, "
            "then list the resource."
        )
    _check_price(price_cents)

    offering = Offering.objects.select_for_update(of=("self",)).filter(resource=resource).first()
    if offering is None:
        offering = Offering(resource=resource, provider=provider, slug=unique_offering_slug(name or resource.name))
    offering.cloud_account = resource.cloud_account
    offering.name = (name or "").strip()
    offering.description = (description or "").strip()
    offering.price_cents = price_cents
    offering.currency = (currency or "EUR").strip().upper()
    offering.vcpu, offering.memory_mib, offering.disk_gb = resource.vcpu, resource.memory_mib, resource.disk_gb
    offering.country = resource.country or (country or "").strip().upper()
    if not offering.country:
        # Proxmox VE locations report no country, so the owner states it.
        raise ValidationError(
            {"country": f"Location {resource.location_code!r} has no country; enter the server's country, for example DE."}
        )
    offering.city = resource.city or resource.location_code
    offering.location_code = resource.location_code
    offering.server_type = resource.server_type
    offering.image = resource.image
    offering.recipe_version = resource.recipe_version
    offering.visibility = Visibility.PUBLIC
    if offering.pk is None:
        offering.stock_status = StockStatus.IN_STOCK
    # A listed-before offering keeps its stock: a failed rental returns it only after the VM was
    # handed back (provisioning.tasks), and a rental that has not ended keeps it taken.
    offering.full_clean(exclude=["slug"] if offering.pk else None)
    offering.save()
    Resource.objects.filter(pk=resource.pk).update(remove_owner_keys_while_rented=remove_owner_keys, updated_at=timezone.now())
    ResourceEvent.objects.create(
        resource=resource, from_status=resource.status, to_status=resource.status, actor=actor,
        actor_label=_actor_label(resource, actor), reason=f"Listed on the marketplace as offering {offering.slug}.",
    )
    logger.info("Resource %s listed as offering %s by user %s", resource.pk, offering.pk, actor.pk)
    return offering


@transaction.atomic
def resource_unlist(*, resource: Resource, actor: User) -> Offering | None:
    """Hide the resource's offering from the marketplace; a running rental of it goes on until it ends."""
    resource = _lock(resource.pk)
    _require_owner(resource, actor)
    offering = Offering.objects.select_for_update(of=("self",)).filter(resource=resource).first()
    if offering is None or offering.visibility == Visibility.PRIVATE:
        return offering
    Offering.objects.filter(pk=offering.pk).update(visibility=Visibility.PRIVATE, updated_at=timezone.now())
    ResourceEvent.objects.create(
        resource=resource, from_status=resource.status, to_status=resource.status, actor=actor,
        actor_label=_actor_label(resource, actor), reason=f"Offering {offering.slug} hidden from the marketplace.",
    )
    logger.info("Resource %s: offering %s unlisted by user %s", resource.pk, offering.pk, actor.pk)
    offering.refresh_from_db()
    return offering


def listing_stock_take(*, offering: Offering) -> None:
    """Take the one unit of stock of a listed resource for a new rental; call it inside a transaction.

    Raises ValidationError when the stock is already taken or the resource is not running.
    """
    # Lock the resource before the offering, in the order resource_stop and resource_delete use,
    # so a rental cannot take the stock of a VM that a stop or deletion committed meanwhile.
    Resource.objects.select_for_update().filter(pk=offering.resource_id).first()
    locked = Offering.objects.select_for_update(of=("self",)).select_related("resource").get(pk=offering.pk)
    # A rental that has not ended keeps the VM even if the stock column was edited meanwhile.
    if locked.stock_status == StockStatus.OUT_OF_STOCK or resource_live_rental(locked.resource) is not None:
        raise ValidationError("This offering is out of stock.")
    if locked.resource.status != ResourceStatus.RUNNING:
        raise ValidationError("The server of this offering is not running at the moment; try again later.")
    Offering.objects.filter(pk=locked.pk).update(stock_status=StockStatus.OUT_OF_STOCK, updated_at=timezone.now())
    logger.info("Offering %s: stock of resource %s taken", locked.pk, locked.resource_id)


def listing_stock_return(*, offering_id: int) -> None:
    """Give the listed resource's one unit of stock back after its rental ended (and the VM was handed back)."""
    returned = Offering.objects.filter(
        pk=offering_id, resource__isnull=False, stock_status=StockStatus.OUT_OF_STOCK,
        resource__status=ResourceStatus.RUNNING,
    ).update(stock_status=StockStatus.IN_STOCK, updated_at=timezone.now())
    if returned:
        logger.info("Offering %s: stock returned", offering_id)
