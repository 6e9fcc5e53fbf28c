"""API tests: renting, rental detail and authorization, cancel, and the provider's accept/reject."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from marketplace.models import Contract, ContractStatus, Visibility
from marketplace.services.contracts import contract_activate
from recipes.models import RecipeLogChunk, RecipeRun, RecipeRunStatus
from tests.factories import (
    make_contract,
    make_offering,
    make_provider,
    make_superuser,
    make_user,
    ssh_public_key,
)

pytestmark = pytest.mark.django_db

IDEMPOTENCY_KEY = "rent-request-0001-abcdef"


@pytest.fixture
def provider():
    return make_provider(display_name="Acme Cloud")


@pytest.fixture
def offering(provider):
    return make_offering(provider=provider, slug="acme-small", name="Acme small")


@pytest.fixture
def tenant():
    return make_user(email="tenant@example.com")


@pytest.fixture
def tenant_api(tenant) -> APIClient:
    client = APIClient()
    client.force_login(tenant)
    return client


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def rent(client: APIClient, **body):
    return client.post("/api/v1/rentals/", body, format="json")


# --- renting --------------------------------------------------------------------------------


def test_rent_creates_paid_rental(tenant_api, offering, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = rent(tenant_api, offering="acme-small", ssh_public_key=ssh_public_key(), idempotency_key=IDEMPOTENCY_KEY)

    body = response.json()
    assert response.status_code == 201
    assert body["status"] == ContractStatus.PROVISIONING  # The provider accepts automatically.
    assert body["role"] == "tenant"
    assert body["offering"] == "acme-small"
    assert body["steps"][0] == {"step": "creating_server", "label": "Creating server", "state": "current"}
    assert [event["to_status"] for event in body["events"]] == ["requested", "paid", "provisioning"]
    assert body["connection"] is None
    assert Contract.objects.get(public_id=body["public_id"]).payments.count() == 1
    # Notifications and the provisioning task are queued after commit.
    assert len(callbacks) >= 2


def test_rent_replay_returns_same_rental(tenant_api, offering) -> None:
    key = ssh_public_key()

    first = rent(tenant_api, offering="acme-small", ssh_public_key=key, idempotency_key=IDEMPOTENCY_KEY)
    second = rent(tenant_api, offering="acme-small", ssh_public_key=key, idempotency_key=IDEMPOTENCY_KEY)

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["public_id"] == first.json()["public_id"]
    assert Contract.objects.count() == 1
    assert Contract.objects.get().payments.count() == 1


def test_rent_replay_with_other_offering_is_400(tenant_api, offering, provider) -> None:
    other = make_offering(provider=provider, slug="acme-large")
    rent(tenant_api, offering="acme-small", ssh_public_key=ssh_public_key(), idempotency_key=IDEMPOTENCY_KEY)

    response = rent(tenant_api, offering=other.slug, ssh_public_key=ssh_public_key(), idempotency_key=IDEMPOTENCY_KEY)

    assert response.status_code == 400
    assert "idempotency_key" in response.json()


def test_rent_with_saved_key(tenant_api, tenant, offering) -> None:
    from marketplace.services.ssh_keys import ssh_key_create

    saved = ssh_key_create(user=tenant, name="laptop", public_key=ssh_public_key())

    response = rent(tenant_api, offering="acme-small", ssh_key_id=saved.pk)

    assert response.status_code == 201
    assert response.json()["ssh_key_fingerprint"] == saved.fingerprint


def test_rent_with_another_users_saved_key_is_400(tenant_api, offering) -> None:
    from marketplace.services.ssh_keys import ssh_key_create

    foreign = ssh_key_create(user=make_user(), name="theirs", public_key=ssh_public_key())

    response = rent(tenant_api, offering="acme-small", ssh_key_id=foreign.pk)

    assert response.status_code == 400
    assert "ssh_key_id" in response.json()


@pytest.mark.parametrize(
    "bad_key",
    [
        "not a key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBROKEN",
    ],
)
def test_rent_bad_key_is_400_naming_field(tenant_api, offering, bad_key) -> None:
    response = rent(tenant_api, offering="acme-small", ssh_public_key=bad_key)

    assert response.status_code == 400
    assert list(response.json()) == ["ssh_public_key"]
    assert Contract.objects.count() == 0


def test_rent_without_key_is_400(tenant_api, offering) -> None:
    response = rent(tenant_api, offering="acme-small")

    assert response.status_code == 400
    assert "ssh_public_key" in response.json()


def test_rent_invalid_idempotency_key_is_400(tenant_api, offering) -> None:
    response = rent(tenant_api, offering="acme-small", ssh_public_key=ssh_public_key(), idempotency_key="short")

    assert response.status_code == 400
    assert "idempotency_key" in response.json()


def test_rent_private_offering_is_400(tenant_api, provider) -> None:
    make_offering(provider=provider, slug="hidden", visibility=Visibility.PRIVATE)

    response = rent(tenant_api, offering="hidden", ssh_public_key=ssh_public_key())

    assert response.status_code == 400
    assert "offering" in response.json()
    assert Contract.objects.count() == 0


def test_rent_out_of_stock_is_400_naming_offering(tenant_api, provider) -> None:
    make_offering(provider=provider, slug="sold-out", stock_status="out_of_stock")

    response = rent(tenant_api, offering="sold-out", ssh_public_key=ssh_public_key())

    assert response.status_code == 400
    assert "out of stock" in response.json()["offering"][0]


def test_rent_own_private_offering_is_free_self_rental(provider) -> None:
    make_offering(provider=provider, slug="mine", visibility=Visibility.PRIVATE)

    response = rent(client_for(provider.user), offering="mine", ssh_public_key=ssh_public_key())

    assert response.status_code == 201
    assert response.json()["is_self_rental"] is True
    assert response.json()["price_cents"] == 0


def test_rent_anonymous_is_401(offering) -> None:
    response = rent(APIClient(), offering="acme-small", ssh_public_key=ssh_public_key())

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert Contract.objects.count() == 0


def test_rent_requires_csrf_token_for_session(tenant, offering) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(tenant)

    response = rent(client, offering="acme-small", ssh_public_key=ssh_public_key())

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_rent_is_throttled(tenant_api, offering, monkeypatch) -> None:
    # DRF copies the rates onto the throttle class at import, so the class attribute is patched.
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"user": "600/min", "rent": "2/min"})

    statuses = [rent(tenant_api, offering="acme-small", ssh_public_key=ssh_public_key()).status_code for _ in range(3)]
    listing = tenant_api.get("/api/v1/rentals/")

    assert statuses == [201, 201, 429]
    assert listing.status_code == 200


# --- reading rentals -----------------------------------------------------------------------


def test_rental_list_shows_only_own(tenant_api, tenant, offering) -> None:
    own = make_contract(tenant=tenant, offering=offering)
    make_contract(tenant=make_user(), offering=offering)

    response = tenant_api.get("/api/v1/rentals/")

    assert response.status_code == 200
    assert [item["public_id"] for item in response.json()["results"]] == [str(own.public_id)]


def test_rental_list_query_count(tenant_api, tenant, provider, django_assert_num_queries) -> None:
    for _ in range(5):
        make_contract(tenant=tenant, offering=make_offering(provider=provider))

    # Session, user, COUNT and one SELECT with provider and offering joined.
    with django_assert_num_queries(4):
        response = tenant_api.get("/api/v1/rentals/")

    assert response.json()["count"] == 5


def test_rental_detail_for_tenant_provider_and_staff(tenant, offering, provider) -> None:
    contract = make_contract(tenant=tenant, offering=offering)
    url = f"/api/v1/rentals/{contract.public_id}/"

    as_tenant = client_for(tenant).get(url)
    as_provider = client_for(provider.user).get(url)
    as_staff = client_for(make_superuser()).get(url)

    assert as_tenant.json()["role"] == "tenant"
    assert as_provider.json()["role"] == "provider"
    assert as_staff.json()["role"] == "staff"


def test_rental_detail_of_another_user_is_404(tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering)
    stranger = client_for(make_user())

    detail = stranger.get(f"/api/v1/rentals/{contract.public_id}/")
    log = stranger.get(f"/api/v1/rentals/{contract.public_id}/recipe-log/")
    cancel = stranger.post(f"/api/v1/rentals/{contract.public_id}/cancel/")

    assert detail.status_code == 404
    assert log.status_code == 404
    assert cancel.status_code == 404
    assert Contract.objects.get(pk=contract.pk).status == ContractStatus.PROVISIONING


def test_rental_detail_anonymous_is_401(tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering)

    response = APIClient().get(f"/api/v1/rentals/{contract.public_id}/")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_rental_detail_shows_connection_when_active(tenant_api, tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering)
    Contract.objects.filter(pk=contract.pk).update(cloud_server_id="42", ip_address="203.0.113.9", host_public_key="ssh-ed25519 AAAAhost")
    contract_activate(contract_id=contract.pk, worker="test-worker")

    body = tenant_api.get(f"/api/v1/rentals/{contract.public_id}/").json()

    assert body["status"] == ContractStatus.ACTIVE
    assert body["connection"]["ssh_command"] == "ssh root@203.0.113.9"
    assert body["connection"]["host_public_key"] == "ssh-ed25519 AAAAhost"
    assert all(step["state"] == "done" for step in body["steps"])


def test_recipe_log_returns_newest_run_output(tenant_api, tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering)
    run = RecipeRun.objects.create(contract=contract, status=RecipeRunStatus.SUCCEEDED, exit_code=0, timeout_seconds=60)
    RecipeLogChunk.objects.create(run=run, sequence=1, text="installing\n")
    RecipeLogChunk.objects.create(run=run, sequence=2, text="done\n")

    log = tenant_api.get(f"/api/v1/rentals/{contract.public_id}/recipe-log/").json()
    detail = tenant_api.get(f"/api/v1/rentals/{contract.public_id}/").json()

    assert log["output"] == "installing\ndone\n"
    assert log["run"]["status"] == "succeeded"
    assert detail["recipe_run"]["exit_code"] == 0


def test_recipe_log_without_run_is_empty(tenant_api, tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering)

    log = tenant_api.get(f"/api/v1/rentals/{contract.public_id}/recipe-log/").json()

    assert log == {"run": None, "output": ""}


# --- cancel --------------------------------------------------------------------------------


def test_cancel_requested_rental(tenant_api, tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering, pay=False)

    response = tenant_api.post(f"/api/v1/rentals/{contract.public_id}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == ContractStatus.CANCELLED


def test_cancel_provisioning_rental_refunds(tenant_api, tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering)

    response = tenant_api.post(f"/api/v1/rentals/{contract.public_id}/cancel/")

    assert response.status_code == 200
    contract.refresh_from_db()
    assert contract.status == ContractStatus.TERMINATING
    assert contract.payments.get().status == "refunded"


def test_cancel_terminated_rental_is_409(tenant_api, tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering)
    Contract.objects.filter(pk=contract.pk).update(status=ContractStatus.TERMINATED)

    response = tenant_api.post(f"/api/v1/rentals/{contract.public_id}/cancel/")

    assert response.status_code == 409
    assert response.json()["status"] == ContractStatus.TERMINATED


def test_cancel_by_provider_is_403(tenant, offering, provider) -> None:
    contract = make_contract(tenant=tenant, offering=offering, pay=False)

    response = client_for(provider.user).post(f"/api/v1/rentals/{contract.public_id}/cancel/")

    assert response.status_code == 403
    assert Contract.objects.get(pk=contract.pk).status == ContractStatus.REQUESTED


# --- provider decisions --------------------------------------------------------------------


@pytest.fixture
def manual_provider():
    return make_provider(display_name="Careful Cloud", auto_accept=False)


@pytest.fixture
def paid_contract(tenant, manual_provider):
    offering = make_offering(provider=manual_provider, slug="careful-small")
    contract = make_contract(tenant=tenant, offering=offering)
    assert contract.status == ContractStatus.PAID
    return contract


def test_provider_rentals_lists_only_own(manual_provider, paid_contract, offering, tenant) -> None:
    make_contract(tenant=tenant, offering=offering)

    response = client_for(manual_provider.user).get("/api/v1/provider/rentals/")

    assert response.status_code == 200
    assert [item["public_id"] for item in response.json()["results"]] == [str(paid_contract.public_id)]


def test_provider_accepts_paid_rental(manual_provider, paid_contract, django_capture_on_commit_callbacks) -> None:
    client = client_for(manual_provider.user)

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(f"/api/v1/provider/rentals/{paid_contract.public_id}/accept/")

    assert response.status_code == 200
    assert response.json()["status"] == ContractStatus.PROVISIONING
    assert response.json()["events"][-1]["actor_label"] == "Provider"
    assert len(callbacks) == 1


def test_provider_accept_twice_is_409(manual_provider, paid_contract) -> None:
    client = client_for(manual_provider.user)
    client.post(f"/api/v1/provider/rentals/{paid_contract.public_id}/accept/")

    response = client.post(f"/api/v1/provider/rentals/{paid_contract.public_id}/accept/")

    assert response.status_code == 409
    assert response.json()["status"] == ContractStatus.PROVISIONING


def test_provider_rejects_paid_rental_with_reason(manual_provider, paid_contract) -> None:
    response = client_for(manual_provider.user).post(
        f"/api/v1/provider/rentals/{paid_contract.public_id}/reject/", {"reason": "Maintenance this week."}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["status"] == ContractStatus.REJECTED
    assert response.json()["status_reason"] == "Maintenance this week."
    assert paid_contract.payments.get().status == "refunded"


def test_provider_reject_after_accept_is_409(manual_provider, paid_contract) -> None:
    client = client_for(manual_provider.user)
    client.post(f"/api/v1/provider/rentals/{paid_contract.public_id}/accept/")

    response = client.post(f"/api/v1/provider/rentals/{paid_contract.public_id}/reject/", {"reason": "late"}, format="json")

    assert response.status_code == 409


def test_reject_reason_too_long_is_400(manual_provider, paid_contract) -> None:
    response = client_for(manual_provider.user).post(
        f"/api/v1/provider/rentals/{paid_contract.public_id}/reject/", {"reason": "x" * 5001}, format="json"
    )

    assert response.status_code == 400
    assert "reason" in response.json()


@pytest.mark.parametrize("action", ["accept", "reject"])
def test_accept_reject_by_others_is_404(action, tenant, paid_contract) -> None:
    other_provider = make_provider(display_name="Other Cloud")

    as_tenant = client_for(tenant).post(f"/api/v1/provider/rentals/{paid_contract.public_id}/{action}/")
    as_other = client_for(other_provider.user).post(f"/api/v1/provider/rentals/{paid_contract.public_id}/{action}/")

    assert as_tenant.status_code == 404
    assert as_other.status_code == 404
    assert Contract.objects.get(pk=paid_contract.pk).status == ContractStatus.PAID


@pytest.mark.parametrize("action", ["accept", "reject"])
def test_accept_reject_anonymous_is_401(action, paid_contract) -> None:
    response = APIClient().post(f"/api/v1/provider/rentals/{paid_contract.public_id}/{action}/")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_provider_rentals_unknown_id_is_404(manual_provider) -> None:
    response = client_for(manual_provider.user).post(
        "/api/v1/provider/rentals/00000000-0000-0000-0000-000000000000/accept/"
    )

    assert response.status_code == 404



# --- history labels, connection after the end, steps, body size -----------------------------


def test_rental_events_hide_worker_ids_from_tenant(tenant_api, tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering)
    Contract.objects.filter(pk=contract.pk).update(cloud_server_id="42", ip_address="203.0.113.9")
    contract_activate(contract_id=contract.pk, worker="worker-3.internal:77:abc")

    body = tenant_api.get(f"/api/v1/rentals/{contract.public_id}/").json()
    labels = [event["actor_label"] for event in body["events"]]

    assert labels == ["Tenant", "Tenant", "Platform", "Platform"]


def test_rental_events_show_raw_actor_to_staff(tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering)
    Contract.objects.filter(pk=contract.pk).update(cloud_server_id="42", ip_address="203.0.113.9")
    contract_activate(contract_id=contract.pk, worker="worker-3.internal:77:abc")

    body = client_for(make_superuser()).get(f"/api/v1/rentals/{contract.public_id}/").json()

    assert body["events"][-1]["actor_label"] == "worker-3.internal:77:abc"


@pytest.mark.parametrize(
    "status",
    [ContractStatus.TERMINATED, ContractStatus.FAILED, ContractStatus.CANCELLED, ContractStatus.REJECTED],
)
def test_ended_rental_has_no_connection(tenant_api, tenant, offering, status) -> None:
    contract = make_contract(tenant=tenant, offering=offering)
    Contract.objects.filter(pk=contract.pk).update(status=status, cloud_server_id="42", ip_address="203.0.113.9")

    body = tenant_api.get(f"/api/v1/rentals/{contract.public_id}/").json()

    assert body["connection"] is None


def test_plain_vm_steps_omit_running_recipe(tenant_api, tenant, offering) -> None:
    contract = make_contract(tenant=tenant, offering=offering)

    body = tenant_api.get(f"/api/v1/rentals/{contract.public_id}/").json()

    assert [step["step"] for step in body["steps"]] == [
        "creating_server",
        "waiting_for_boot",
        "waiting_for_ssh",
        "finalizing",
    ]


def test_request_body_over_limit_is_413_json(tenant_api, offering, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
    body = '{"offering": "acme-small", "ssh_public_key": "' + "A" * 2_700_000 + '"}'

    response = tenant_api.post("/api/v1/rentals/", body, content_type="application/json")

    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Request body too large: the limit is 2.5 MB."}
    assert Contract.objects.count() == 0


def test_form_body_over_limit_is_413_json(tenant_api, offering) -> None:
    body = "offering=acme-small&ssh_public_key=" + "A" * 2_700_000

    response = tenant_api.post("/api/v1/rentals/", body, content_type="application/x-www-form-urlencoded")

    assert response.status_code == 413
    assert response.json()["detail"].startswith("Request body too large")
