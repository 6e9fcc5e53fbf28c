"""Agent API and agent pool services: setup, heartbeat, work queue, claims, reports, reconciliation, revoke."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import Refund
from marketplace.models import Contract, ContractStatus
from marketplace.selectors import catalog_offerings
from marketplace.services import contracts as contract_services
from provisioning import pipeline
from provisioning.agent_services import agent_revoke, agent_setup_token_create, secret_hash
from provisioning.health import health_rollups_update
from provisioning.models import Agent, AgentSetupToken, Backend, HealthCheck, HealthSource
from provisioning.pipeline import platform_private_key
from provisioning.tasks import agent_contracts_fail_overdue_task, provision_contract_task
from recipes.models import RecipeLogChunk, RecipeRun, RecipeRunStatus
from tests.agent_helpers import make_agent, make_pool
from tests.factories import make_contract, make_recipe, make_user, ssh_public_key

pytestmark = pytest.mark.django_db


def agent_client(credential: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {credential}")
    return client


def url(name: str, **kwargs) -> str:
    return reverse(f"api-agent-{name}", kwargs=kwargs or None)


def heartbeat(client: APIClient, provisioner: str = "proxmox"):
    return client.post(
        url("heartbeat"),
        {"version": "0.2.0", "capabilities": {"provisioner": provisioner, "images": ["debian-12"]}, "free_resources": {"vcpu": 4}},
        format="json",
    )


@pytest.fixture
def pool_with_agent():
    provider, pool, offering = make_pool()
    agent, credential = make_agent(pool)
    return pool, offering, agent, credential


# --- setup ----------------------------------------------------------------------------------


def test_setup_token_stored_hashed():
    _provider, pool, _offering = make_pool()

    row, token = agent_setup_token_create(pool=pool, actor=pool.cloud_account.owner)

    assert token.startswith("cmsetup_")
    assert row.token_hash == secret_hash(token)
    assert token not in AgentSetupToken.objects.filter(pk=row.pk).values_list("token_hash", flat=True)[0]


def test_setup_token_works_once():
    _provider, pool, _offering = make_pool()
    _row, token = agent_setup_token_create(pool=pool, actor=pool.cloud_account.owner)
    client = APIClient()

    first = client.post(url("setup"), {"token": token, "name": "host-1", "version": "0.1.0"}, format="json")
    second = client.post(url("setup"), {"token": token, "name": "host-2"}, format="json")

    assert first.status_code == 201
    assert first.json()["credential"].startswith("cmagent_")
    assert first.json()["pool"]["provisioner_type"] == "proxmox"
    assert second.status_code == 400
    assert "already used" in second.json()["token"][0]
    assert Agent.objects.filter(pool=pool).count() == 1
    stored = Agent.objects.get(pool=pool)
    assert stored.credential_hash == secret_hash(first.json()["credential"])


def test_setup_token_expired_rejected():
    _provider, pool, _offering = make_pool()
    row, token = agent_setup_token_create(pool=pool, actor=pool.cloud_account.owner)
    AgentSetupToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = APIClient().post(url("setup"), {"token": token, "name": "host-1"}, format="json")

    assert response.status_code == 400
    assert "expired" in response.json()["token"][0]


def test_setup_unknown_token_rejected():
    response = APIClient().post(url("setup"), {"token": "cmsetup_nothing", "name": "host-1"}, format="json")

    assert response.status_code == 400
    assert "unknown" in response.json()["token"][0]


@pytest.mark.django_db(transaction=True)
def test_setup_concurrent_double_use_one_credential():
    _provider, pool, _offering = make_pool()
    _row, token = agent_setup_token_create(pool=pool, actor=pool.cloud_account.owner)
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def use_token(index: int) -> None:
        try:
            barrier.wait()
            response = APIClient().post(url("setup"), {"token": token, "name": f"host-{index}"}, format="json")
            statuses.append(response.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=use_token, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201, 400, 400, 400]
    assert Agent.objects.filter(pool=pool).count() == 1


# --- authentication and heartbeat -------------------------------------------------------------


def test_heartbeat_stores_report(pool_with_agent):
    _pool, _offering, agent, credential = pool_with_agent

    response = heartbeat(agent_client(credential))

    assert response.status_code == 200
    assert response.json()["provisioner_matches"] is True
    agent.refresh_from_db()
    assert agent.version == "0.2.0"
    assert agent.capabilities["images"] == ["debian-12"]
    assert agent.free_resources == {"vcpu": 4}
    assert agent.is_online()


def test_heartbeat_without_credential_401():
    response = APIClient().post(url("heartbeat"), {}, format="json")

    assert response.status_code == 401
    assert "credential" in response.json()["detail"]


def test_heartbeat_unknown_credential_401():
    response = heartbeat(agent_client("cmagent_not-a-credential"))

    assert response.status_code == 401


def test_revoked_agent_refused_next_call(pool_with_agent):
    pool, _offering, agent, credential = pool_with_agent
    client = agent_client(credential)
    assert heartbeat(client).status_code == 200

    agent_revoke(agent=agent, actor=pool.cloud_account.owner)
    response = heartbeat(client)

    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert client.get(url("work")).status_code == 401


def test_revoke_by_other_user_rejected(pool_with_agent):
    _pool, _offering, agent, _credential = pool_with_agent

    with pytest.raises(PermissionError):
        agent_revoke(agent=agent, actor=make_user())


def test_heartbeat_rejects_non_object_capabilities(pool_with_agent):
    _pool, _offering, _agent, credential = pool_with_agent

    response = agent_client(credential).post(
        url("heartbeat"), {"version": "1", "capabilities": ["proxmox"], "free_resources": {}}, format="json"
    )

    assert response.status_code == 400
    assert "capabilities" in response.json()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("capabilities", {"provisioner": "proxmox", "images": ["debian\u0000-12"]}),
        ("capabilities", {"provisioner": "proxmox", "bad\u0000key": 1}),
        ("free_resources", {"notes": {"host": "rack\u0000"}}),
        ("capabilities", {"provisioner": "proxmox", "images": ["\ud800"]}),
        ("free_resources", {"\udc00": 1}),
    ],
)
def test_heartbeat_rejects_unstorable_json_text(pool_with_agent, field, value):
    _pool, _offering, agent, credential = pool_with_agent
    body = {"version": "1", "capabilities": {"provisioner": "proxmox"}, "free_resources": {}, field: value}

    # json.dumps writes the characters as \u escapes, which the test client's own encoder rejects for surrogates.
    response = agent_client(credential).post(url("heartbeat"), json.dumps(body), content_type="application/json")

    assert response.status_code == 400
    assert "character (U+" in response.json()[field][0]
    assert Agent.objects.get(pk=agent.pk).capabilities["provisioner"] == "proxmox"
    assert Agent.objects.get(pk=agent.pk).free_resources == {"vcpu": 8}


# --- catalog --------------------------------------------------------------------------------


def test_catalog_hides_pool_without_online_agent(settings):
    settings.AGENT_OFFLINE_AFTER_SECONDS = 60
    _provider, pool, offering = make_pool()
    assert offering not in catalog_offerings()

    agent, _credential = make_agent(pool)
    assert offering in catalog_offerings()

    Agent.objects.filter(pk=agent.pk).update(last_heartbeat_at=timezone.now() - timedelta(seconds=61))
    assert offering not in catalog_offerings()

    Agent.objects.filter(pk=agent.pk).update(last_heartbeat_at=timezone.now())
    assert offering in catalog_offerings()


def test_catalog_hides_pool_with_only_revoked_agent():
    _provider, pool, offering = make_pool()
    agent, _credential = make_agent(pool)

    agent_revoke(agent=agent, actor=pool.cloud_account.owner)

    assert offering not in catalog_offerings()


def test_rent_rejected_while_pool_offline():
    _provider, _pool, offering = make_pool()

    with pytest.raises(ValidationError, match="none of the provider's agents is online"):
        make_contract(tenant=make_user(), offering=offering)


# --- platform workers leave agent contracts alone ---------------------------------------------


def test_platform_worker_skips_agent_contract(pool_with_agent):
    _pool, offering, _agent, _credential = pool_with_agent
    contract = make_contract(tenant=make_user(), offering=offering)
    assert contract.status == ContractStatus.PROVISIONING
    assert contract.backend == Backend.AGENT

    provision_contract_task.apply(args=(contract.pk,))
    contract.refresh_from_db()
    Contract.objects.filter(pk=contract.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    provisioning_ids, _terminating_ids = pipeline.stalled_contract_ids()

    assert contract.lease_owner == ""
    assert contract.attempts == 0
    assert contract.pk not in provisioning_ids


# --- work queue and claims ------------------------------------------------------------------


def test_work_lists_only_accepted_contracts_of_pool(pool_with_agent):
    pool, offering, _agent, credential = pool_with_agent
    tenant = make_user()
    accepted = make_contract(tenant=tenant, offering=offering)
    unpaid = make_contract(tenant=tenant, offering=offering, pay=False)
    _other_provider, _other_pool, other_offering = make_pool(name="Other rack")
    make_agent(_other_pool)
    other = make_contract(tenant=tenant, offering=other_offering)

    response = agent_client(credential).get(url("work"))

    assert response.status_code == 200
    ids = [item["id"] for item in response.json()["items"]]
    assert ids == [accepted.pk]
    assert unpaid.pk not in ids
    assert other.pk not in ids


def test_work_waits_for_provider_acceptance():
    _provider, pool, offering = make_pool(auto_accept=False)
    _agent, credential = make_agent(pool)
    contract = make_contract(tenant=make_user(), offering=offering)
    assert contract.status == ContractStatus.PAID

    before = agent_client(credential).get(url("work")).json()["items"]
    contract_services.contract_accept(contract=contract, actor=pool.cloud_account.owner)
    after = agent_client(credential).get(url("work")).json()["items"]

    assert before == []
    assert after == [{"id": contract.pk, "action": "provision"}]


def test_work_empty_for_wrong_provisioner(pool_with_agent):
    _pool, offering, _agent, credential = pool_with_agent
    make_contract(tenant=make_user(), offering=offering)
    client = agent_client(credential)

    heartbeat(client, provisioner="script")
    response = client.get(url("work"))

    assert response.json()["items"] == []
    assert client.post(url("claim", pk=Contract.objects.get().pk)).status_code == 409


def test_claim_gives_spec_and_lease(pool_with_agent):
    _pool, offering, agent, credential = pool_with_agent
    contract = make_contract(tenant=make_user(), offering=offering)

    response = agent_client(credential).post(url("claim", pk=contract.pk))

    assert response.status_code == 200
    body = response.json()
    assert body["action"] == "provision"
    assert body["vcpu"] == contract.vcpu
    assert body["ssh_public_keys"] == [contract.ssh_public_key]
    assert body["labels"]["cloudmarket-contract"] == str(contract.pk)
    contract.refresh_from_db()
    assert contract.lease_owner == agent.lease_owner
    assert contract.attempts == 1


def test_second_agent_cannot_claim_leased_contract(pool_with_agent):
    pool, offering, _agent, credential = pool_with_agent
    _second, second_credential = make_agent(pool, name="host-2")
    contract = make_contract(tenant=make_user(), offering=offering)

    first = agent_client(credential).post(url("claim", pk=contract.pk))
    second = agent_client(second_credential).post(url("claim", pk=contract.pk))
    listed = agent_client(second_credential).get(url("work")).json()["items"]

    assert first.status_code == 200
    assert second.status_code == 409
    assert listed == []


def test_expired_lease_claimable_by_other_agent(pool_with_agent):
    pool, offering, _agent, credential = pool_with_agent
    second, second_credential = make_agent(pool, name="host-2")
    contract = make_contract(tenant=make_user(), offering=offering)
    agent_client(credential).post(url("claim", pk=contract.pk))
    Contract.objects.filter(pk=contract.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    response = agent_client(second_credential).post(url("claim", pk=contract.pk))
    stale_report = agent_client(credential).post(url("progress", pk=contract.pk), {"step": "waiting_for_boot"}, format="json")

    assert response.status_code == 200
    assert Contract.objects.get(pk=contract.pk).lease_owner == second.lease_owner
    assert stale_report.status_code == 409


def test_claim_other_pool_contract_404(pool_with_agent):
    _pool, _offering, _agent, credential = pool_with_agent
    _provider, other_pool, other_offering = make_pool(name="Other rack")
    make_agent(other_pool)
    contract = make_contract(tenant=make_user(), offering=other_offering)

    response = agent_client(credential).post(url("claim", pk=contract.pk))

    assert response.status_code == 404
    assert Contract.objects.get(pk=contract.pk).lease_owner == ""


def claimed_with_recipe(pool_with_agent, script: str = "echo ready\n"):
    _pool, offering, _agent, credential = pool_with_agent
    offering.recipe_version = make_recipe(author=offering.provider.user, script=script)
    offering.save()
    contract = make_contract(tenant=make_user(), offering=offering)
    client = agent_client(credential)
    claim = client.post(url("claim", pk=contract.pk))
    assert claim.status_code == 200
    return Contract.objects.get(pk=contract.pk), client, claim.json()


def test_claim_contract_with_recipe_gives_recipe(pool_with_agent, settings):
    settings.PROVISIONING_SSH_USERNAME = "root"

    contract, _client, spec = claimed_with_recipe(pool_with_agent)

    assert contract.status == ContractStatus.PROVISIONING
    assert contract.platform_public_key.startswith("ssh-ed25519 ")
    assert spec["ssh_public_keys"] == [contract.ssh_public_key, contract.platform_public_key]
    assert spec["recipe"]["script"] == "echo ready\n"
    assert spec["recipe"]["username"] == "root"
    assert spec["recipe"]["timeout_seconds"] == settings.RECIPE_TIMEOUT_SECONDS
    assert spec["recipe"]["max_output_bytes"] == settings.RECIPE_MAX_OUTPUT_BYTES
    assert spec["recipe"]["client_private_key"] == platform_private_key(contract)


def test_claim_contract_without_recipe_gives_none(pool_with_agent):
    _contract, _client, _agent = claimed(pool_with_agent)
    _pool, offering, _agent, credential = pool_with_agent
    other = make_contract(tenant=make_user(), offering=offering)

    spec = agent_client(credential).post(url("claim", pk=other.pk)).json()

    assert spec["recipe"] is None
    assert spec["ssh_public_keys"] == [other.ssh_public_key]


def test_recipe_log_chunks_idempotent_and_ordered(pool_with_agent):
    contract, client, _spec = claimed_with_recipe(pool_with_agent)
    run = client.post(url("recipe-run", pk=contract.pk))
    run_id = run.json()["id"]

    first = client.post(url("recipe-log", pk=contract.pk, run_id=run_id), {"sequence": 0, "text": "one\n"}, format="json")
    repeat = client.post(url("recipe-log", pk=contract.pk, run_id=run_id), {"sequence": 0, "text": "one\n"}, format="json")
    changed = client.post(url("recipe-log", pk=contract.pk, run_id=run_id), {"sequence": 0, "text": "other\n"}, format="json")
    gap = client.post(url("recipe-log", pk=contract.pk, run_id=run_id), {"sequence": 2, "text": "three\n"}, format="json")
    second = client.post(url("recipe-log", pk=contract.pk, run_id=run_id), {"sequence": 1, "text": "  two\n"}, format="json")

    assert run.status_code == 201
    assert Contract.objects.get(pk=contract.pk).provisioning_step == "running_recipe"
    assert first.status_code == 200
    assert repeat.status_code == 200
    assert changed.status_code == 409
    assert "already stored with other text" in changed.json()["detail"]
    assert gap.status_code == 409
    assert "send chunk 1 next" in gap.json()["detail"]
    assert second.status_code == 200
    assert RecipeRun.objects.get(pk=run_id).output == "one\n  two\n"


def test_recipe_log_of_other_pool_404(pool_with_agent):
    contract, client, _spec = claimed_with_recipe(pool_with_agent)
    run_id = client.post(url("recipe-run", pk=contract.pk)).json()["id"]
    _provider, other_pool, _offering = make_pool(name="Other rack")
    _other_agent, other_credential = make_agent(other_pool)

    response = agent_client(other_credential).post(
        url("recipe-log", pk=contract.pk, run_id=run_id), {"sequence": 0, "text": "x"}, format="json"
    )

    assert response.status_code == 404
    assert not RecipeLogChunk.objects.exists()


def test_success_before_recipe_result_409(pool_with_agent):
    contract, client, _spec = claimed_with_recipe(pool_with_agent)
    client.post(url("recipe-run", pk=contract.pk))

    response = client.post(
        url("success", pk=contract.pk),
        {"server_id": "100", "address": "192.0.2.10", "port": 22, "host_public_key": ssh_public_key()},
        format="json",
    )

    assert response.status_code == 409
    assert "has not succeeded yet" in response.json()["detail"]
    assert Contract.objects.get(pk=contract.pk).status == ContractStatus.PROVISIONING


def finish(client, contract, run_id, **overrides):
    body = {"exit_code": 0, "timed_out": False, "duration_seconds": 1.5, "output_bytes": 6, "truncated": False}
    body.update(overrides)
    return client.post(url("recipe-result", pk=contract.pk, run_id=run_id), body, format="json")


def test_recipe_success_then_contract_active(pool_with_agent):
    contract, client, _spec = claimed_with_recipe(pool_with_agent)
    run_id = client.post(url("recipe-run", pk=contract.pk)).json()["id"]

    result = finish(client, contract, run_id)
    success = client.post(
        url("success", pk=contract.pk),
        {"server_id": "100", "address": "192.0.2.10", "port": 22, "host_public_key": ssh_public_key()},
        format="json",
    )

    assert result.status_code == 200
    assert result.json()["run_status"] == RecipeRunStatus.SUCCEEDED
    run = RecipeRun.objects.get(pk=run_id)
    assert run.exit_code == 0
    assert run.duration_seconds == 1.5
    assert success.status_code == 200
    assert Contract.objects.get(pk=contract.pk).status == ContractStatus.ACTIVE


@pytest.mark.parametrize(
    ("overrides", "run_status", "reason"),
    [
        ({"exit_code": 3}, RecipeRunStatus.FAILED, "The recipe failed with exit code 3."),
        ({"exit_code": None, "timed_out": True}, RecipeRunStatus.TIMED_OUT, "The recipe timed out after 1800 seconds and was stopped."),
        (
            {"exit_code": None, "error": "SSH connection to 192.0.2.10:22 failed: refused"},
            RecipeRunStatus.FAILED,
            "The recipe run failed over SSH: SSH connection to 192.0.2.10:22 failed: refused",
        ),
    ],
)
def test_recipe_failure_fails_and_refunds(pool_with_agent, settings, overrides, run_status, reason):
    settings.RECIPE_TIMEOUT_SECONDS = 1800
    contract, client, _spec = claimed_with_recipe(pool_with_agent)
    run_id = client.post(url("recipe-run", pk=contract.pk)).json()["id"]

    response = finish(client, contract, run_id, server_id="100", **overrides)

    assert response.status_code == 200
    assert response.json()["run_status"] == run_status
    assert response.json()["contract"]["status"] == ContractStatus.FAILED
    contract.refresh_from_db()
    assert contract.status_reason == reason
    assert contract.cloud_server_id == "100"
    assert Refund.objects.filter(payment__contract=contract).exists()


def test_recipe_result_twice_409(pool_with_agent):
    contract, client, _spec = claimed_with_recipe(pool_with_agent)
    run_id = client.post(url("recipe-run", pk=contract.pk)).json()["id"]
    finish(client, contract, run_id)

    again = finish(client, contract, run_id)
    late_chunk = client.post(url("recipe-log", pk=contract.pk, run_id=run_id), {"sequence": 0, "text": "x"}, format="json")

    assert again.status_code == 409
    assert late_chunk.status_code == 409


def test_new_recipe_run_fails_running_one(pool_with_agent):
    contract, client, _spec = claimed_with_recipe(pool_with_agent)
    first = client.post(url("recipe-run", pk=contract.pk)).json()["id"]

    second = client.post(url("recipe-run", pk=contract.pk)).json()["id"]

    assert RecipeRun.objects.get(pk=first).status == RecipeRunStatus.FAILED
    assert "interrupted" in RecipeRun.objects.get(pk=first).error
    assert RecipeRun.objects.get(pk=second).status == RecipeRunStatus.RUNNING


# --- progress and results -------------------------------------------------------------------


def claimed(pool_with_agent):
    _pool, offering, agent, credential = pool_with_agent
    contract = make_contract(tenant=make_user(), offering=offering)
    client = agent_client(credential)
    assert client.post(url("claim", pk=contract.pk)).status_code == 200
    return contract, client, agent


def test_progress_records_step_and_renews_lease(pool_with_agent):
    contract, client, _agent = claimed(pool_with_agent)
    Contract.objects.filter(pk=contract.pk).update(lease_expires_at=timezone.now() + timedelta(seconds=5))

    response = client.post(url("progress", pk=contract.pk), {"step": "waiting_for_boot"}, format="json")

    assert response.status_code == 200
    contract.refresh_from_db()
    assert contract.provisioning_step == "waiting_for_boot"
    assert contract.lease_expires_at > timezone.now() + timedelta(seconds=60)


def test_success_activates_with_connection_details(pool_with_agent):
    contract, client, _agent = claimed(pool_with_agent)
    host_key = ssh_public_key("root@vm")

    response = client.post(
        url("success", pk=contract.pk),
        {"server_id": "123456", "address": "192.0.2.10", "port": 2222, "host_public_key": host_key},
        format="json",
    )

    assert response.status_code == 200
    assert response.json()["status"] == ContractStatus.ACTIVE
    contract.refresh_from_db()
    assert contract.status == ContractStatus.ACTIVE
    assert contract.cloud_server_id == "123456"
    assert contract.ip_address == "192.0.2.10"
    assert contract.ssh_port == 2222
    assert contract.host_public_key.split()[:2] == host_key.split()[:2]
    assert contract.lease_owner == ""


def test_success_invalid_host_key_400(pool_with_agent):
    contract, client, _agent = claimed(pool_with_agent)

    response = client.post(
        url("success", pk=contract.pk),
        {"server_id": "1", "address": "192.0.2.10", "port": 22, "host_public_key": "not a key"},
        format="json",
    )

    assert response.status_code == 400
    assert "host_public_key" in response.json()
    assert Contract.objects.get(pk=contract.pk).status == ContractStatus.PROVISIONING


def test_success_with_server_id_of_other_rental_400(pool_with_agent):
    # Found by a review: two rentals could share one VM id, so deleting one deleted the other's VM.
    _pool, offering, _agent, _credential = pool_with_agent
    running = make_contract(tenant=make_user(), offering=offering)
    Contract.objects.filter(pk=running.pk).update(status=ContractStatus.ACTIVE, cloud_server_id="vm-7")
    contract, client, _agent = claimed(pool_with_agent)

    response = client.post(
        url("success", pk=contract.pk),
        {"server_id": "vm-7", "address": "192.0.2.10", "port": 22, "host_public_key": ssh_public_key("root@vm")},
        format="json",
    )
    failure = client.post(
        url("failure", pk=contract.pk),
        {"reason_code": "invalid_spec", "message": "The platform rejected the VM details.", "server_id": "vm-7"},
        format="json",
    )

    contract.refresh_from_db()
    assert response.status_code == 400
    assert str(running.public_id) in response.json()["server_id"][0]
    assert failure.status_code == 200
    assert contract.status == ContractStatus.FAILED
    assert contract.cloud_server_id == ""


def test_retryable_failure_requeues_with_backoff(pool_with_agent):
    contract, client, _agent = claimed(pool_with_agent)

    response = client.post(
        url("failure", pk=contract.pk), {"reason_code": "hypervisor_unavailable", "message": "connection refused"}, format="json"
    )

    assert response.status_code == 200
    contract.refresh_from_db()
    assert contract.status == ContractStatus.PROVISIONING
    assert contract.lease_owner == ""
    assert contract.next_attempt_at > timezone.now()
    assert "connection refused" in contract.last_error
    assert client.get(url("work")).json()["items"] == []


def test_retryable_failure_fails_after_max_tries(pool_with_agent, settings):
    settings.AGENT_MAX_RETRIES = 1
    contract, client, _agent = claimed(pool_with_agent)

    response = client.post(url("failure", pk=contract.pk), {"reason_code": "timeout", "message": "boot"}, format="json")

    assert response.status_code == 200
    assert response.json()["status"] == ContractStatus.FAILED


def test_permanent_failure_fails_and_refunds(pool_with_agent):
    contract, client, _agent = claimed(pool_with_agent)

    response = client.post(
        url("failure", pk=contract.pk), {"reason_code": "image_not_found", "message": "no template debian-13"}, format="json"
    )

    assert response.status_code == 200
    contract.refresh_from_db()
    assert contract.status == ContractStatus.FAILED
    assert "no template debian-13" in contract.status_reason
    assert Refund.objects.filter(payment__contract=contract).exists()


def test_failure_unknown_reason_code_400(pool_with_agent):
    contract, client, _agent = claimed(pool_with_agent)

    response = client.post(url("failure", pk=contract.pk), {"reason_code": "oops"}, format="json")

    assert response.status_code == 400
    assert "reason_code" in response.json()


def test_report_without_lease_409(pool_with_agent):
    pool, offering, _agent, _credential = pool_with_agent
    contract = make_contract(tenant=make_user(), offering=offering)
    _other, other_credential = make_agent(pool, name="host-2")

    response = agent_client(other_credential).post(
        url("success", pk=contract.pk),
        {"server_id": "1", "address": "192.0.2.10", "port": 22, "host_public_key": ssh_public_key()},
        format="json",
    )

    assert response.status_code == 409
    assert Contract.objects.get(pk=contract.pk).status == ContractStatus.PROVISIONING


# --- cancellation, termination and reconciliation ---------------------------------------------


def activate(pool_with_agent) -> tuple[Contract, APIClient]:
    contract, client, _agent = claimed(pool_with_agent)
    client.post(
        url("success", pk=contract.pk),
        {"server_id": "100", "address": "192.0.2.10", "port": 22, "host_public_key": ssh_public_key()},
        format="json",
    )
    return Contract.objects.get(pk=contract.pk), client


def test_cancel_during_provisioning_queues_termination(pool_with_agent):
    contract, client, _agent = claimed(pool_with_agent)

    contract_services.contract_cancel(contract=contract, actor=contract.tenant)
    stale = client.post(url("progress", pk=contract.pk), {"step": "waiting_for_boot"}, format="json")
    work = client.get(url("work")).json()["items"]

    assert stale.status_code == 409
    assert work == [{"id": contract.pk, "action": "terminate"}]


def test_termination_claim_and_report(pool_with_agent):
    contract, client = activate(pool_with_agent)
    contract_services.contract_terminate(contract=contract, actor=None, actor_label="staff", reason="Test.")

    claim = client.post(url("claim", pk=contract.pk))
    done = client.post(url("terminated", pk=contract.pk))

    assert claim.status_code == 200
    assert claim.json()["action"] == "terminate"
    assert claim.json()["cloud_server_id"] == "100"
    assert done.status_code == 200
    assert Contract.objects.get(pk=contract.pk).status == ContractStatus.TERMINATED


def test_termination_failure_marks_termination_failed(pool_with_agent):
    contract, client = activate(pool_with_agent)
    contract_services.contract_terminate(contract=contract, actor=None, actor_label="staff", reason="Test.")
    client.post(url("claim", pk=contract.pk))

    response = client.post(url("failure", pk=contract.pk), {"reason_code": "provisioner_error", "message": "locked"}, format="json")

    assert response.status_code == 200
    assert Contract.objects.get(pk=contract.pk).status == ContractStatus.TERMINATION_FAILED


def test_reconcile_decisions(pool_with_agent):
    active, client = activate(pool_with_agent)
    _pool, offering, _agent, _credential = pool_with_agent
    failed = make_contract(tenant=make_user(), offering=offering)
    contract_services.contract_fail(contract_id=failed.pk, reason="Test.")
    _provider, _other_pool, other_offering = make_pool(name="Other rack")
    make_agent(_other_pool)
    foreign = make_contract(tenant=make_user(), offering=other_offering)

    response = client.post(
        url("reconcile"),
        {
            "servers": [
                {"server_id": "100", "contract_id": active.pk},
                {"server_id": "101", "contract_id": active.pk},
                {"server_id": "200", "contract_id": failed.pk},
                {"server_id": "300", "contract_id": foreign.pk},
                {"server_id": "400", "contract_id": None},
            ]
        },
        format="json",
    )

    assert response.status_code == 200
    decisions = {item["server_id"]: item["decision"] for item in response.json()["decisions"]}
    assert decisions == {"100": "keep", "101": "terminate", "200": "terminate", "300": "unknown", "400": "unknown"}
    kept = response.json()["decisions"][0]
    assert (kept["address"], kept["port"]) == ("192.0.2.10", 22)
    assert response.json()["decisions"][1]["address"] is None


# --- health reports ---------------------------------------------------------------------------


def health_report(contract_id, **overrides) -> dict:
    report = {"contract_id": contract_id, "checked_at": timezone.now().isoformat(), "up": True, "latency_ms": 2.5}
    report.update(overrides)
    return report


def test_health_report_stored_as_agent_check(pool_with_agent):
    contract, client = activate(pool_with_agent)

    response = client.post(
        url("health"), {"reports": [health_report(contract.pk, hypervisor_state="running", detail="ok")]}, format="json"
    )

    assert response.status_code == 200
    check = HealthCheck.objects.get(contract=contract)
    assert response.json()["results"] == [
        {"contract_id": contract.pk, "accepted": True, "health_check_id": check.pk, "reason": "", "stop_reporting": False}
    ]
    assert check.source == HealthSource.AGENT
    assert check.hypervisor_state == "running"
    assert check.latency_ms == 2.5


def test_health_report_without_credential_401():
    response = APIClient().post(url("health"), {"reports": [health_report(1)]}, format="json")

    assert response.status_code == 401


def test_health_report_from_revoked_agent_401(pool_with_agent):
    contract, client = activate(pool_with_agent)
    pool, _offering, agent, _credential = pool_with_agent
    agent_revoke(agent=agent, actor=pool.cloud_account.owner)

    response = client.post(url("health"), {"reports": [health_report(contract.pk)]}, format="json")

    assert response.status_code == 401
    assert not HealthCheck.objects.exists()


def test_health_report_future_time_rejected_per_item(pool_with_agent):
    contract, client = activate(pool_with_agent)
    future = (timezone.now() + timedelta(hours=1)).isoformat()

    response = client.post(
        url("health"), {"reports": [health_report(contract.pk, checked_at=future), health_report(contract.pk)]}, format="json"
    )

    assert response.status_code == 200
    first, second = response.json()["results"]
    assert first["accepted"] is False
    assert "is in the future" in first["reason"]
    # Found by a review: the agent stopped probing a VM after one report with a bad time.
    assert first["stop_reporting"] is False
    assert second["accepted"] is True
    assert HealthCheck.objects.filter(contract=contract).count() == 1


def test_health_report_for_unknown_contract_stops_reporting(pool_with_agent):
    _contract, client = activate(pool_with_agent)

    response = client.post(url("health"), {"reports": [health_report(987654)]}, format="json")

    result = response.json()["results"][0]
    assert result["accepted"] is False
    assert result["stop_reporting"] is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("latency_ms", -1, "(got -1)"),
        ("up", "maybe", "(got 'maybe')"),
        ("contract_id", "abc", "(got 'abc')"),
        ("checked_at", "yesterday", "(got 'yesterday')"),
    ],
)
def test_health_report_invalid_field_400(pool_with_agent, field, value, message):
    contract, client = activate(pool_with_agent)
    report = health_report(contract.pk)
    report[field] = value

    response = client.post(url("health"), {"reports": [report]}, format="json")

    assert response.status_code == 400
    assert message in response.json()["reports"]["0"][field][0]


def test_health_report_naive_time_400(pool_with_agent):
    contract, client = activate(pool_with_agent)
    naive = timezone.now().replace(tzinfo=None).isoformat()

    response = client.post(url("health"), {"reports": [health_report(contract.pk, checked_at=naive)]}, format="json")

    assert response.status_code == 400
    assert "has no timezone" in response.json()["reports"]["0"]["checked_at"][0]
    assert not HealthCheck.objects.exists()


@pytest.mark.parametrize("checked_at", ["0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z"])
def test_health_report_ancient_time_rejected_per_item(pool_with_agent, checked_at):
    contract, client = activate(pool_with_agent)
    health_rollups_update()

    response = client.post(
        url("health"), {"reports": [health_report(contract.pk, checked_at=checked_at), health_report(contract.pk)]}, format="json"
    )

    assert response.status_code == 200
    first, second = response.json()["results"]
    assert first["accepted"] is False
    assert "before the rental became active" in first["reason"]
    assert second["accepted"] is True
    assert HealthCheck.objects.filter(contract=contract).count() == 1


def test_health_report_empty_batch_400(pool_with_agent):
    _contract, client = activate(pool_with_agent)

    response = client.post(url("health"), {"reports": []}, format="json")

    assert response.status_code == 400
    assert "reports" in response.json()


def test_health_endpoint_in_openapi_schema(client):
    schema = client.get(reverse("api-schema"), {"format": "json"}).json()

    operation = schema["paths"]["/api/v1/agent/health/"]["post"]
    assert operation["summary"] == "Send health reports of the VMs this agent serves"
    assert "200" in operation["responses"]


def test_revoke_releases_leases(pool_with_agent):
    pool, offering, agent, credential = pool_with_agent
    contract = make_contract(tenant=make_user(), offering=offering)
    agent_client(credential).post(url("claim", pk=contract.pk))

    agent_revoke(agent=agent, actor=pool.cloud_account.owner)

    assert Contract.objects.get(pk=contract.pk).lease_owner == ""


# --- rentals no agent finishes ----------------------------------------------------------------


def _accepted_ago(contract: Contract, seconds: float) -> None:
    contract.events.filter(to_status=ContractStatus.PROVISIONING).update(
        created_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_overdue_agent_rental_failed_and_refunded(pool_with_agent, settings):
    # Found by a review: with the pool offline, a paid rental stayed in provisioning forever.
    settings.AGENT_PROVISIONING_DEADLINE_SECONDS = 600
    _pool, offering, agent, credential = pool_with_agent
    overdue = make_contract(tenant=make_user(), offering=offering)
    recent = make_contract(tenant=make_user(), offering=offering)
    working = make_contract(tenant=make_user(), offering=offering)
    agent_client(credential).post(url("claim", pk=working.pk))
    for contract in (overdue, working):
        _accepted_ago(contract, 601)
    _accepted_ago(recent, 300)

    failed = agent_contracts_fail_overdue_task.apply().get()

    statuses = dict(Contract.objects.filter(pk__in=[overdue.pk, recent.pk, working.pk]).values_list("pk", "status"))
    assert failed == [overdue.pk]
    assert statuses == {
        overdue.pk: ContractStatus.FAILED,
        recent.pk: ContractStatus.PROVISIONING,
        working.pk: ContractStatus.PROVISIONING,
    }
    assert "within 10 minutes of acceptance" in Contract.objects.get(pk=overdue.pk).status_reason
    assert Refund.objects.filter(payment__contract=overdue).exists()


def test_overdue_agent_rental_with_expired_lease_failed(pool_with_agent, settings):
    settings.AGENT_PROVISIONING_DEADLINE_SECONDS = 600
    _pool, offering, _agent, credential = pool_with_agent
    contract = make_contract(tenant=make_user(), offering=offering)
    agent_client(credential).post(url("claim", pk=contract.pk))
    Contract.objects.filter(pk=contract.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    _accepted_ago(contract, 601)

    failed = agent_contracts_fail_overdue_task.apply().get()

    assert failed == [contract.pk]
    assert Contract.objects.get(pk=contract.pk).status == ContractStatus.FAILED
