"""The provider's agent pool API: list, add, setup tokens, rename and revoke; other users get 404."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from provisioning.agent_services import secret_hash
from provisioning.models import Agent, AgentPool, AgentSetupToken, Backend
from tests.agent_helpers import make_agent, make_pool
from tests.factories import make_provider, make_user

pytestmark = pytest.mark.django_db

LIST_URL = reverse("api-agent-pool-list")


def api_client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_create_pool():
    provider = make_provider()

    response = api_client(provider.user).post(
        LIST_URL, {"name": "Home rack", "region": "fra-home-1", "provisioner_type": "script"}, format="json"
    )

    assert response.status_code == 201
    pool = AgentPool.objects.get()
    assert response.json()["cloud_account_id"] == pool.cloud_account_id
    assert pool.cloud_account.backend == Backend.AGENT


def test_create_pool_invalid_type_400():
    provider = make_provider()

    response = api_client(provider.user).post(
        LIST_URL, {"name": "Home rack", "region": "fra-home-1", "provisioner_type": "vmware"}, format="json"
    )

    assert response.status_code == 400
    assert "provisioner_type" in response.json()


def test_list_only_own_pools(django_assert_num_queries):
    _provider, pool, _offering = make_pool(name="Mine")
    make_agent(pool)
    make_agent(pool, name="host-2")
    make_pool(name="Theirs")
    client = api_client(pool.cloud_account.owner)

    with django_assert_num_queries(2):
        response = client.get(LIST_URL)

    assert response.status_code == 200
    assert [item["name"] for item in response.json()] == ["Mine"]
    agents = response.json()[0]["agents"]
    assert sorted(agent["name"] for agent in agents) == ["host-1", "host-2"]
    assert all(agent["online"] for agent in agents)
    assert "credential_hash" not in agents[0]


def test_setup_token_returned_once():
    _provider, pool, _offering = make_pool()
    client = api_client(pool.cloud_account.owner)

    response = client.post(reverse("api-agent-pool-setup-tokens", kwargs={"pk": pool.pk}))

    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    token = response.json()["token"]
    assert AgentSetupToken.objects.get().token_hash == secret_hash(token)
    assert token not in client.get(reverse("api-agent-pool-detail", kwargs={"pk": pool.pk})).content.decode()


def test_rename_and_revoke_agent():
    _provider, pool, _offering = make_pool()
    agent, _credential = make_agent(pool)
    client = api_client(pool.cloud_account.owner)

    renamed = client.post(
        reverse("api-agent-pool-rename-agent", kwargs={"pk": pool.pk, "agent_id": agent.pk}), {"name": "rack-2"}, format="json"
    )
    revoked = client.post(reverse("api-agent-pool-revoke-agent", kwargs={"pk": pool.pk, "agent_id": agent.pk}))

    assert renamed.status_code == 200
    assert renamed.json()["name"] == "rack-2"
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert revoked.json()["online"] is False


@pytest.mark.parametrize("name", ["detail", "setup-tokens", "rename-agent", "revoke-agent"])
def test_other_user_gets_404(name):
    _provider, pool, _offering = make_pool()
    agent, _credential = make_agent(pool)
    kwargs = {"pk": pool.pk}
    if name.endswith("-agent"):
        kwargs["agent_id"] = agent.pk
    client = api_client(make_user())
    url = reverse(f"api-agent-pool-{name}", kwargs=kwargs)

    response = client.get(url) if name == "detail" else client.post(url, {"name": "x"}, format="json")

    assert response.status_code == 404
    agent.refresh_from_db()
    assert agent.name == "host-1"
    assert agent.revoked_at is None
    assert AgentSetupToken.objects.count() == 1


def test_agent_of_other_pool_404():
    _provider, pool, _offering = make_pool()
    _other_provider, other_pool, _other_offering = make_pool(name="Other")
    other_agent, _credential = make_agent(other_pool)

    response = api_client(pool.cloud_account.owner).post(
        reverse("api-agent-pool-revoke-agent", kwargs={"pk": pool.pk, "agent_id": other_agent.pk})
    )

    assert response.status_code == 404
    assert Agent.objects.get(pk=other_agent.pk).revoked_at is None


def test_anonymous_401():
    response = APIClient().get(LIST_URL)

    assert response.status_code == 401
