"""Agent pool pages: add a pool, create a setup token, rename and revoke agents, other users get 404."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from provisioning.agent_services import secret_hash
from provisioning.models import Agent, AgentPool, AgentSetupToken, Backend, CloudAccount
from tests.agent_helpers import make_agent, make_pool
from tests.factories import make_provider, make_user

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_add_pool_creates_agent_account():
    provider = make_provider()
    client = signed_in(provider.user)

    response = client.post(
        reverse("agents:pools"), {"name": "Home rack", "region": "fra-home-1", "provisioner_type": "script"}
    )

    pool = AgentPool.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("agents:pool", kwargs={"pk": pool.pk})
    assert pool.cloud_account.backend == Backend.AGENT
    assert pool.cloud_account.label == "Home rack"
    assert pool.provisioner_type == "script"


def test_add_pool_invalid_type_shows_error():
    provider = make_provider()

    response = signed_in(provider.user).post(
        reverse("agents:pools"), {"name": "Home rack", "region": "fra-home-1", "provisioner_type": "vmware"}
    )

    assert response.status_code == 400
    assert AgentPool.objects.count() == 0
    assert CloudAccount.objects.count() == 0


def test_add_pool_duplicate_name_error():
    provider = make_provider()
    client = signed_in(provider.user)
    data = {"name": "Home rack", "region": "fra-home-1", "provisioner_type": "proxmox"}
    client.post(reverse("agents:pools"), data)

    response = client.post(reverse("agents:pools"), data)

    assert response.status_code == 400
    assert "already have a cloud account labelled" in response.content.decode()
    assert AgentPool.objects.count() == 1


def test_setup_token_shown_once():
    _provider, pool, _offering = make_pool()
    client = signed_in(pool.cloud_account.owner)

    response = client.post(reverse("agents:setup_token_create", kwargs={"pk": pool.pk}))
    page = response.content.decode()
    token = page.split('<code id="setup-token">')[1].split("</code>")[0]
    later = client.get(reverse("agents:pool", kwargs={"pk": pool.pk})).content.decode()

    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert token.startswith("cmsetup_")
    assert AgentSetupToken.objects.get().token_hash == secret_hash(token)
    assert token not in later


def test_pool_page_shows_agent_status():
    _provider, pool, _offering = make_pool()
    make_agent(pool, name="host-online")
    make_agent(pool, name="host-offline", online=False)

    page = signed_in(pool.cloud_account.owner).get(reverse("agents:pool", kwargs={"pk": pool.pk})).content.decode()

    assert "host-online" in page
    assert "Online" in page
    assert "Offline" in page
    assert "0.1.0" in page


def test_rename_and_revoke_agent():
    _provider, pool, _offering = make_pool()
    agent, _credential = make_agent(pool)
    client = signed_in(pool.cloud_account.owner)

    renamed = client.post(reverse("agents:agent_rename", kwargs={"pk": pool.pk, "agent_pk": agent.pk}), {"name": "rack-2"})
    revoked = client.post(reverse("agents:agent_revoke", kwargs={"pk": pool.pk, "agent_pk": agent.pk}))

    agent.refresh_from_db()
    assert renamed.status_code == 302
    assert revoked.status_code == 302
    assert agent.name == "rack-2"
    assert agent.revoked_at is not None
    assert agent.revoked_by == pool.cloud_account.owner


def test_rename_empty_name_400():
    _provider, pool, _offering = make_pool()
    agent, _credential = make_agent(pool)

    response = signed_in(pool.cloud_account.owner).post(
        reverse("agents:agent_rename", kwargs={"pk": pool.pk, "agent_pk": agent.pk}), {"name": "  "}
    )

    assert response.status_code == 400
    assert Agent.objects.get(pk=agent.pk).name == "host-1"


@pytest.mark.parametrize(
    ("name", "method"),
    [("pool", "get"), ("setup_token_create", "post"), ("agent_rename", "post"), ("agent_revoke", "post")],
)
def test_other_user_gets_404(name, method):
    _provider, pool, _offering = make_pool()
    agent, _credential = make_agent(pool)
    kwargs = {"pk": pool.pk}
    if name.startswith("agent_"):
        kwargs["agent_pk"] = agent.pk

    response = getattr(signed_in(make_user()), method)(reverse(f"agents:{name}", kwargs=kwargs), {"name": "x"})

    assert response.status_code == 404
    agent.refresh_from_db()
    assert agent.revoked_at is None
    assert agent.name == "host-1"
    assert AgentSetupToken.objects.count() == 1


def test_pool_list_only_own_pools():
    _provider, pool, _offering = make_pool(name="Mine")
    _other_provider, _other_pool, _other_offering = make_pool(name="Theirs")

    page = signed_in(pool.cloud_account.owner).get(reverse("agents:pools")).content.decode()

    assert "Mine" in page
    assert "Theirs" not in page


def test_cloud_account_api_rejects_agent_backend():
    provider = make_provider()
    from provisioning.services import cloud_account_create

    with pytest.raises(ValidationError, match="Agent pools page"):
        cloud_account_create(owner=provider.user, backend=Backend.AGENT, label="x", token="")


def test_agent_account_page_has_no_token_form():
    _provider, pool, _offering = make_pool()
    client = signed_in(pool.cloud_account.owner)

    page = client.get(reverse("provisioning:cloud_account", kwargs={"pk": pool.cloud_account_id})).content.decode()
    response = client.post(reverse("provisioning:cloud_account_token", kwargs={"pk": pool.cloud_account_id}), {"token-token": "x"})

    assert "agents have their own credentials" in page
    assert reverse("agents:pool", kwargs={"pk": pool.pk}) in page
    assert response.status_code == 302
    assert not CloudAccount.objects.get(pk=pool.cloud_account_id).has_token


def test_offering_catalog_lists_agent_images():
    from marketplace.services.cloud_catalog import cloud_catalog_fetch

    _provider, pool, _offering = make_pool()
    make_agent(pool)

    catalog = cloud_catalog_fetch(pool.cloud_account)

    assert [image.name for image in catalog.images] == ["ubuntu-24.04"]
    assert [location.code for location in catalog.locations] == ["fra-home-1"]
    assert {"pve-small", "pve-medium", "pve-large"} == {server_type.name for server_type in catalog.server_types}
    assert "vcpu" in catalog.editable_spec_fields
