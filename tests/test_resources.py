"""Self-provisioned resources: creation, quota, listing, stock, pages, API and authorization.

The cloud work itself (create, stop, start, delete, hand-over) runs in worker processes and is
tested in test_journey_resources.py.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace.models import ContractStatus, Offering, StockStatus, Visibility
from marketplace.services import contracts as contract_services
from provisioning.agent_services import agent_pool_create
from provisioning.models import (
    Backend,
    CloudAccount,
    Resource,
    ResourceEvent,
    ResourceStatus,
    ValidationStatus,
)
from provisioning.resource_services import (
    ResourceInvalidTransition,
    ResourceRented,
    resource_create,
    resource_delete,
    resource_list,
    resource_start,
    resource_stop,
    resource_unlist,
)
from tests.factories import make_cloud_account, make_provider, make_user, ssh_public_key

pytestmark = pytest.mark.django_db


def make_resource(*, owner, status: str = ResourceStatus.RUNNING, name: str = "Build box") -> Resource:
    """Create a resource row directly, as if a worker had provisioned it on the Sandbox."""
    account = make_cloud_account(owner=owner, backend=Backend.SANDBOX)
    key = ssh_public_key("owner@laptop")
    return Resource.objects.create(
        owner=owner, cloud_account=account, name=name, status=status, backend=Backend.SANDBOX,
        location_code="fsn1", country="DE", city="Falkenstein", server_type="cx22", vcpu=2, memory_mib=4096,
        disk_gb=40, image="ubuntu-24.04", ssh_public_key=key, ssh_key_fingerprint="SHA256:owner",
        cloud_server_id="1", ip_address="203.0.113.9",
    )


def list_resource(resource: Resource, *, price_cents: int = 1500) -> Offering:
    return resource_list(
        resource=resource, actor=resource.owner, name="Rent my build box", description="Fast disks.",
        price_cents=price_cents, currency="EUR", remove_owner_keys=True,
    )


# --- creation and quota -------------------------------------------------------------------------


def test_create_uses_live_catalog():
    owner = make_user()
    account = make_cloud_account(owner=owner, backend=Backend.SANDBOX)

    resource = resource_create(
        owner=owner, cloud_account=account, name="Build box", location_code="fsn1", server_type="cx22",
        image="ubuntu-24.04", ssh_public_key=ssh_public_key(),
    )

    assert resource.status == ResourceStatus.PROVISIONING
    assert resource.provisioning_step == "creating_server"
    assert (resource.vcpu, resource.memory_mib, resource.disk_gb) == (2, 4096, 40)
    assert resource.country == "DE"
    assert ResourceEvent.objects.filter(resource=resource, actor=owner).count() == 1


def test_create_rejects_unknown_choices():
    owner = make_user()
    account = make_cloud_account(owner=owner, backend=Backend.SANDBOX)

    with pytest.raises(ValidationError) as caught:
        resource_create(
            owner=owner, cloud_account=account, name="Box", location_code="mars1", server_type="cx999",
            image="plan9", ssh_public_key=ssh_public_key(),
        )

    errors = caught.value.message_dict
    assert "Unknown location 'mars1'" in errors["location_code"][0]
    assert "Unknown server type 'cx999'" in errors["server_type"][0]
    assert "Unknown image 'plan9'" in errors["image"][0]
    assert not Resource.objects.exists()


def test_create_rejects_agent_pool_account():
    owner = make_user()
    pool = agent_pool_create(owner=owner, name="Home rack", region="fra-home-1", provisioner_type="docker")

    with pytest.raises(ValidationError) as caught:
        resource_create(
            owner=owner, cloud_account=pool.cloud_account, name="Box", location_code="fra-home-1", server_type="small",
            image="debian", ssh_public_key=ssh_public_key(),
        )

    assert "is an agent pool" in caught.value.message_dict["cloud_account"][0]
    assert not Resource.objects.exists()


def test_create_rejects_foreign_cloud_account():
    owner = make_user()
    account = make_cloud_account(owner=make_user(), backend=Backend.SANDBOX)

    with pytest.raises(ValidationError) as caught:
        resource_create(
            owner=owner, cloud_account=account, name="Box", location_code="fsn1", server_type="cx22",
            image="ubuntu-24.04", ssh_public_key=ssh_public_key(),
        )

    assert "not yours" in caught.value.message_dict["cloud_account"][0]


def test_quota_error_names_limit(settings):
    settings.RESOURCE_QUOTA_PER_USER = 2
    owner = make_user()
    make_resource(owner=owner)
    make_resource(owner=owner, status=ResourceStatus.STOPPED)
    make_resource(owner=owner, status=ResourceStatus.DELETED)
    account = make_cloud_account(owner=owner, backend=Backend.SANDBOX)

    with pytest.raises(ValidationError) as caught:
        resource_create(
            owner=owner, cloud_account=account, name="Third", location_code="fsn1", server_type="cx22",
            image="ubuntu-24.04", ssh_public_key=ssh_public_key(),
        )

    message = " ".join(caught.value.messages)
    assert "You have 2 resources" in message
    assert "the limit is 2 per account" in message
    assert "RESOURCE_QUOTA_PER_USER" in message


def test_quota_default_is_ten(settings):
    from cloudmarket import settings as project_settings

    assert project_settings.RESOURCE_QUOTA_PER_USER == 10


# --- power and deletion ---------------------------------------------------------------------


def test_stop_start_delete_transitions():
    resource = make_resource(owner=make_user())

    resource = resource_stop(resource=resource, actor=resource.owner)
    assert resource.status == ResourceStatus.STOPPING
    with pytest.raises(ResourceInvalidTransition):
        resource_start(resource=resource, actor=resource.owner)

    Resource.objects.filter(pk=resource.pk).update(status=ResourceStatus.STOPPED)
    resource = resource_start(resource=resource, actor=resource.owner)
    assert resource.status == ResourceStatus.STARTING

    Resource.objects.filter(pk=resource.pk).update(status=ResourceStatus.RUNNING)
    resource = resource_delete(resource=resource, actor=resource.owner)
    assert resource.status == ResourceStatus.DELETING


# --- listing and stock -----------------------------------------------------------------------


def test_list_needs_provider_profile():
    resource = make_resource(owner=make_user())

    with pytest.raises(ValidationError) as caught:
        list_resource(resource)

    assert "provider profile" in " ".join(caught.value.messages)


def test_list_creates_offering_with_stock_one():
    owner = make_provider().user
    resource = make_resource(owner=owner)

    offering = list_resource(resource)

    assert offering.resource_id == resource.pk
    assert offering.visibility == Visibility.PUBLIC
    assert offering.stock_status == StockStatus.IN_STOCK
    assert offering.price_cents == 1500
    assert offering.cloud_account_id == resource.cloud_account_id
    assert (offering.vcpu, offering.memory_mib, offering.disk_gb) == (2, 4096, 40)
    resource.refresh_from_db()
    assert resource.remove_owner_keys_while_rented is True


def test_list_rejects_stopped_resource():
    resource = make_resource(owner=make_provider().user, status=ResourceStatus.STOPPED)

    with pytest.raises(ValidationError) as caught:
        list_resource(resource)

    assert "only a running resource can be listed" in " ".join(caught.value.messages)


def test_list_rejects_invalid_cloud_account():
    # Found by a review: the listing went public although every rent of it failed.
    resource = make_resource(owner=make_provider().user)
    CloudAccount.objects.filter(pk=resource.cloud_account_id).update(validation_status=ValidationStatus.INVALID)
    resource.refresh_from_db()

    with pytest.raises(ValidationError) as caught:
        list_resource(resource)

    assert "has invalid credentials" in " ".join(caught.value.messages)
    assert not Offering.objects.filter(resource=resource).exists()


def test_relist_reuses_offering():
    resource = make_resource(owner=make_provider().user)
    first = list_resource(resource)
    resource_unlist(resource=resource, actor=resource.owner)

    second = list_resource(resource, price_cents=900)

    assert second.pk == first.pk
    assert second.visibility == Visibility.PUBLIC
    assert second.price_cents == 900


def test_renting_takes_stock_and_cancel_returns_it():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)
    tenant = make_user()
    second_tenant = make_user()

    contract, created = contract_services.contract_create(
        tenant=tenant, offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="first"
    )

    assert created
    offering.refresh_from_db()
    assert offering.stock_status == StockStatus.OUT_OF_STOCK
    assert contract.commission_bps == 2000
    assert contract.price_cents == 1500
    with pytest.raises(ValidationError) as caught:
        contract_services.contract_create(
            tenant=second_tenant, offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="second"
        )
    assert "out of stock" in " ".join(caught.value.messages)

    contract_services.contract_cancel(contract=contract, actor=tenant)

    contract.refresh_from_db()
    offering.refresh_from_db()
    assert contract.status == ContractStatus.CANCELLED
    assert offering.stock_status == StockStatus.IN_STOCK


def test_rented_resource_refuses_stop_and_delete():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)
    contract_services.contract_create(
        tenant=make_user(), offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="rent"
    )

    with pytest.raises(ResourceRented) as stop_error:
        resource_stop(resource=resource, actor=resource.owner)
    with pytest.raises(ResourceRented) as delete_error:
        resource_delete(resource=resource, actor=resource.owner)

    assert "cannot be stopped while it is rented" in str(stop_error.value)
    assert "cannot be deleted while it is rented" in str(delete_error.value)
    resource.refresh_from_db()
    assert resource.status == ResourceStatus.RUNNING


def test_stopped_resource_cannot_be_rented():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)
    Resource.objects.filter(pk=resource.pk).update(status=ResourceStatus.STOPPED)

    with pytest.raises(ValidationError) as caught:
        contract_services.contract_create(
            tenant=make_user(), offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="rent"
        )

    assert "not running" in " ".join(caught.value.messages)


def test_delete_hides_listing():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)

    resource_delete(resource=resource, actor=resource.owner)

    offering.refresh_from_db()
    assert offering.visibility == Visibility.PRIVATE
    assert offering.stock_status == StockStatus.OUT_OF_STOCK


# --- pages -------------------------------------------------------------------------------------


def test_list_page_empty_state():
    client = Client()
    client.force_login(make_user())

    response = client.get(reverse("resources:list"))

    assert response.status_code == 200
    assert b"You have no resources yet." in response.content
    assert reverse("resources:create").encode() in response.content


def test_navigation_links_my_resources():
    client = Client()
    client.force_login(make_user())

    response = client.get(reverse("marketplace:catalog"))

    assert b">My resources</a>" in response.content


def test_wizard_creates_resource():
    owner = make_user()
    account = make_cloud_account(owner=owner, backend=Backend.SANDBOX)
    client = Client()
    client.force_login(owner)

    form_page = client.get(reverse("resources:create"), {"cloud_account": account.pk})
    response = client.post(
        reverse("resources:create"),
        {
            "cloud_account": account.pk, "location_code": "fsn1", "server_type": "cx22", "image": "ubuntu-24.04",
            "name": "Wizard box", "ssh_public_key": ssh_public_key(),
        },
    )

    assert form_page.status_code == 200
    assert b'value="cx22"' in form_page.content
    resource = Resource.objects.get(owner=owner)
    assert response.status_code == 302
    assert response["Location"] == resource.get_absolute_url()
    assert resource.name == "Wizard box"


def test_detail_page_shows_connection():
    resource = make_resource(owner=make_user())
    client = Client()
    client.force_login(resource.owner)

    response = client.get(resource.get_absolute_url())

    assert response.status_code == 200
    assert b"203.0.113.9" in response.content
    assert b"Only a running resource can be listed" not in response.content
    assert b"List on marketplace" in response.content


def test_stop_page_rented_shows_error():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)
    contract_services.contract_create(
        tenant=make_user(), offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="rent"
    )
    client = Client()
    client.force_login(resource.owner)

    confirm = client.get(reverse("resources:stop", kwargs={"public_id": resource.public_id}))
    response = client.post(reverse("resources:stop", kwargs={"public_id": resource.public_id}), follow=True)

    assert confirm.status_code == 200
    assert b"powered off" in confirm.content
    assert b"cannot be stopped while it is rented" in response.content


# --- authorization -----------------------------------------------------------------------------


PAGE_REQUESTS = [
    ("get", "detail", {}),
    ("get", "status", {}),
    ("post", "start", {}),
    ("get", "stop", {}),
    ("post", "stop", {}),
    ("get", "delete", {}),
    ("post", "delete", {}),
    ("post", "list_on_marketplace", {"name": "Mine now", "price": "1", "currency": "EUR"}),
    ("post", "unlist", {}),
]


@pytest.mark.parametrize(("method", "name", "data"), PAGE_REQUESTS, ids=[f"{m}-{n}" for m, n, _ in PAGE_REQUESTS])
def test_pages_of_other_users_resource_are_404(method, name, data):
    victim = make_resource(owner=make_provider().user, name="Victim box")
    intruder = make_provider().user
    client = Client()
    client.force_login(intruder)

    response = getattr(client, method)(reverse(f"resources:{name}", kwargs={"public_id": victim.public_id}), data)

    assert response.status_code == 404
    assert b"Victim box" not in response.content
    victim.refresh_from_db()
    assert victim.status == ResourceStatus.RUNNING
    assert not Offering.objects.filter(resource=victim).exists()


def test_list_page_hides_other_users_resources():
    make_resource(owner=make_user(), name="Victim box")
    client = Client()
    client.force_login(make_user())

    response = client.get(reverse("resources:list"))

    assert b"Victim box" not in response.content


API_REQUESTS = [
    ("get", ""),
    ("post", "start/"),
    ("post", "stop/"),
    ("delete", ""),
    ("post", "listing/"),
    ("post", "unlist/"),
]


@pytest.mark.parametrize(("method", "suffix"), API_REQUESTS, ids=[f"{m}-{s or 'detail'}" for m, s in API_REQUESTS])
def test_api_other_users_resource_is_404(method, suffix):
    victim = make_resource(owner=make_provider().user, name="Victim box")
    client = APIClient()
    client.force_authenticate(make_provider().user)
    data = {"name": "Mine now", "price_cents": 100} if suffix == "listing/" else None

    response = getattr(client, method)(f"/api/v1/resources/{victim.public_id}/{suffix}", data, format="json")

    assert response.status_code == 404
    victim.refresh_from_db()
    assert victim.status == ResourceStatus.RUNNING
    assert not Offering.objects.filter(resource=victim).exists()


def test_api_list_shows_only_own():
    mine = make_resource(owner=make_user(), name="My box")
    make_resource(owner=make_user(), name="Victim box")
    client = APIClient()
    client.force_authenticate(mine.owner)

    response = client.get("/api/v1/resources/")

    assert response.status_code == 200
    names = [item["name"] for item in response.json()["results"]] if "results" in response.json() else [
        item["name"] for item in response.json()
    ]
    assert names == ["My box"]


def test_api_create_with_foreign_account_is_400():
    intruder = make_user()
    account = make_cloud_account(owner=make_user(), backend=Backend.SANDBOX)
    client = APIClient()
    client.force_authenticate(intruder)

    response = client.post(
        "/api/v1/resources/",
        {"cloud_account": account.pk, "name": "x", "location_code": "fsn1", "server_type": "cx22",
         "image": "ubuntu-24.04", "ssh_public_key": ssh_public_key()},
        format="json",
    )

    assert response.status_code == 400
    assert "cloud_account" in response.json()
    assert not Resource.objects.exists()


def test_api_stop_rented_is_409():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)
    contract_services.contract_create(
        tenant=make_user(), offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="rent"
    )
    client = APIClient()
    client.force_authenticate(resource.owner)

    response = client.post(f"/api/v1/resources/{resource.public_id}/stop/")

    assert response.status_code == 409
    assert "while it is rented" in response.json()["detail"]


def test_api_listing_returns_offering_slug():
    resource = make_resource(owner=make_provider().user)
    client = APIClient()
    client.force_authenticate(resource.owner)

    response = client.post(
        f"/api/v1/resources/{resource.public_id}/listing/",
        {"name": "Rent my box", "price_cents": 1200, "remove_owner_keys": True},
        format="json",
    )

    assert response.status_code == 200
    offering = Offering.objects.get(resource=resource)
    assert response.json()["offering"] == offering.slug
    assert response.json()["remove_owner_keys_while_rented"] is True


def test_services_reject_other_users():
    victim = make_resource(owner=make_provider().user)
    intruder = make_provider().user

    for service in (resource_stop, resource_delete, resource_unlist):
        with pytest.raises(PermissionError):
            service(resource=victim, actor=intruder)
    with pytest.raises(PermissionError):
        resource_list(
            resource=victim, actor=intruder, name="x", description="", price_cents=1, currency="EUR",
            remove_owner_keys=False,
        )


# --- offerings, cloud accounts and reconciliation around resources -------------------------------


def test_offering_update_rejects_listed_resource():
    from marketplace.services.providers import offering_update

    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)

    with pytest.raises(ValidationError) as caught:
        offering_update(offering=offering, user=resource.owner, values={"price_cents": 1})

    assert "lists one of your resources" in " ".join(caught.value.messages)
    offering.refresh_from_db()
    assert offering.price_cents == 1500


def test_edited_stock_cannot_double_rent():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)
    contract_services.contract_create(
        tenant=make_user(), offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="first"
    )
    Offering.objects.filter(pk=offering.pk).update(stock_status=StockStatus.IN_STOCK)
    offering.refresh_from_db()

    with pytest.raises(ValidationError) as caught:
        contract_services.contract_create(
            tenant=make_user(), offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="second"
        )

    assert "out of stock" in " ".join(caught.value.messages)
    assert offering.contracts.count() == 1


def test_cloud_account_delete_blocked_by_resource():
    from provisioning.models import CloudAccount
    from provisioning.services import CloudAccountInUse, cloud_account_delete

    resource = make_resource(owner=make_user(), name="Build box")

    with pytest.raises(CloudAccountInUse) as caught:
        cloud_account_delete(account=resource.cloud_account, actor=resource.owner)
    Resource.objects.filter(pk=resource.pk).update(status=ResourceStatus.DELETED)
    removed = cloud_account_delete(account=resource.cloud_account, actor=resource.owner)

    assert "resource 'Build box'" in str(caught.value)
    assert "delete the resources" in str(caught.value)
    assert removed is False
    assert CloudAccount.all_objects.get(pk=resource.cloud_account_id).deleted_at is not None


def test_reconcile_keeps_resource_servers(settings):
    from provisioning.models import OrphanServer, SandboxServer
    from provisioning.reconcile import reconcile_account

    resource = make_resource(owner=make_user())
    server = SandboxServer.objects.create(
        account=resource.cloud_account, name="cm-r1", server_type="cx22", image="ubuntu-24.04", location="fsn1",
        labels={"cloudmarket-resource": str(resource.pk), "cloudmarket-deployment": settings.DEPLOYMENT_NAME},
        ipv4="203.0.113.9", boot_seconds=0.0,
    )

    first = reconcile_account(account=resource.cloud_account)
    Resource.objects.filter(pk=resource.pk).update(status=ResourceStatus.DELETED)
    second = reconcile_account(account=resource.cloud_account)

    assert first.orphans_reported == []
    assert second.orphans_reported == [str(server.pk)]
    assert OrphanServer.objects.get(server_id=str(server.pk)).reason == "no_contract_label"


def test_wizard_htmx_returns_partial():
    owner = make_user()
    account = make_cloud_account(owner=owner, backend=Backend.SANDBOX)
    client = Client()
    client.force_login(owner)

    response = client.get(reverse("resources:create"), {"cloud_account": account.pk}, HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    assert b'id="resource-wizard"' in response.content
    assert b"<html" not in response.content
    assert b'value="fsn1"' in response.content


def test_stalled_resources_found():
    from datetime import timedelta

    from django.utils import timezone

    from provisioning.pipeline import stalled_resources

    owner = make_user()
    stalled = make_resource(owner=owner, status=ResourceStatus.PROVISIONING)
    Resource.objects.filter(pk=stalled.pk).update(
        lease_owner="dead-worker", lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    leased = make_resource(owner=owner, status=ResourceStatus.DELETING)
    Resource.objects.filter(pk=leased.pk).update(
        lease_owner="live-worker", lease_expires_at=timezone.now() + timedelta(seconds=60)
    )
    make_resource(owner=owner, status=ResourceStatus.RUNNING)

    found = stalled_resources()

    assert found == [(stalled.pk, ResourceStatus.PROVISIONING)]


def test_status_partial_polls_while_busy():
    resource = make_resource(owner=make_user(), status=ResourceStatus.PROVISIONING)
    Resource.objects.filter(pk=resource.pk).update(provisioning_step="waiting_for_boot")
    client = Client()
    client.force_login(resource.owner)
    url = reverse("resources:status", kwargs={"public_id": resource.public_id})

    busy = client.get(url, {"shown": "provisioning"}, HTTP_HX_REQUEST="true")
    Resource.objects.filter(pk=resource.pk).update(status=ResourceStatus.RUNNING)
    settled = client.get(url, {"shown": "provisioning"}, HTTP_HX_REQUEST="true")

    assert b'hx-trigger="every 2s"' in busy.content
    assert b"Waiting for boot" in busy.content
    assert "HX-Refresh" not in busy
    assert b"hx-trigger" not in settled.content
    assert settled["HX-Refresh"] == "true"


def test_detail_page_shows_current_rental():
    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)
    contract, _ = contract_services.contract_create(
        tenant=make_user(), offering=offering, ssh_public_key=ssh_public_key(), idempotency_key="rent"
    )
    client = Client()
    client.force_login(resource.owner)

    response = client.get(resource.get_absolute_url())

    assert response.status_code == 200
    assert b"Rented:" in response.content
    assert contract.get_absolute_url().encode() in response.content
    assert b"Out of stock" in response.content
    assert b"Stop\xe2\x80\xa6" not in response.content
    assert b"Delete\xe2\x80\xa6" not in response.content
    assert b"blocked until the rental ends" in response.content


def test_stopped_listing_out_of_stock():
    from provisioning.resource_services import resource_mark_power_done

    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)

    resource_stop(resource=resource, actor=resource.owner)
    resource_mark_power_done(resource_id=resource.pk, worker="test-worker")
    stopped_stock = Offering.objects.get(pk=offering.pk).stock_status
    resource_start(resource=resource, actor=resource.owner)
    resource_mark_power_done(resource_id=resource.pk, worker="test-worker", ip_address="203.0.113.10")
    started_stock = Offering.objects.get(pk=offering.pk).stock_status

    assert stopped_stock == StockStatus.OUT_OF_STOCK
    assert started_stock == StockStatus.IN_STOCK
    resource.refresh_from_db()
    assert resource.ip_address == "203.0.113.10"


def test_list_without_country_asks_for_one():
    resource = make_resource(owner=make_provider().user)
    Resource.objects.filter(pk=resource.pk).update(country="", city="", location_code="pve")
    resource.refresh_from_db()

    with pytest.raises(ValidationError) as caught:
        list_resource(resource)
    offering = resource_list(
        resource=resource, actor=resource.owner, name="Rack box", description="", price_cents=100, currency="EUR",
        remove_owner_keys=False, country="at",
    )

    assert "Location 'pve' has no country" in caught.value.message_dict["country"][0]
    assert offering.country == "AT"
    assert offering.city == "pve"


def test_listing_form_asks_country_only_when_missing():
    with_country = make_resource(owner=make_provider().user)
    without_country = make_resource(owner=with_country.owner, name="Rack box")
    Resource.objects.filter(pk=without_country.pk).update(country="")
    client = Client()
    client.force_login(with_country.owner)

    known = client.get(with_country.get_absolute_url())
    unknown = client.get(without_country.get_absolute_url())

    assert b'name="country"' not in known.content
    assert b'name="country"' in unknown.content


def test_wizard_errors_keep_form():
    owner = make_user()
    account = make_cloud_account(owner=owner, backend=Backend.SANDBOX)
    client = Client()
    client.force_login(owner)

    no_account = client.post(reverse("resources:create"), {"name": "Box"})
    bad_key = client.post(
        reverse("resources:create"),
        {"cloud_account": account.pk, "location_code": "fsn1", "server_type": "cx22", "image": "ubuntu-24.04",
         "name": "Box", "ssh_public_key": "ssh-rsa not-a-key"},
    )

    assert no_account.status_code == 400
    assert b"This field is required." in no_account.content
    assert bad_key.status_code == 400
    assert b'value="Box"' in bad_key.content
    assert not Resource.objects.exists()


def test_deleted_resource_offering_stays_private():
    from marketplace.services.offerings import offering_visibility_set

    resource = make_resource(owner=make_provider().user)
    offering = list_resource(resource)
    resource_delete(resource=resource, actor=resource.owner)
    Resource.objects.filter(pk=resource.pk).update(status=ResourceStatus.DELETED)

    with pytest.raises(ValidationError) as caught:
        offering_visibility_set(offering=offering, user=resource.owner, visibility=Visibility.PUBLIC)

    assert "can only stay private" in caught.value.message_dict["visibility"][0]
    offering.refresh_from_db()
    assert offering.visibility == Visibility.PRIVATE
