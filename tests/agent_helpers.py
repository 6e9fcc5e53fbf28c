"""Helpers shared by the agent tests: a pool with an offering, and agents set up through the services."""

from __future__ import annotations

from provisioning.agent_services import (
    agent_heartbeat,
    agent_pool_create,
    agent_setup,
    agent_setup_token_create,
)
from provisioning.models import Agent, AgentPool
from tests.factories import make_offering, make_provider


def make_pool(*, provisioner_type: str = "proxmox", auto_accept: bool = True, name: str = "Home rack"):
    """Create a provider with an agent pool and one public offering served by the pool."""
    provider = make_provider(auto_accept=auto_accept)
    pool = agent_pool_create(owner=provider.user, name=name, region="fra-home-1", provisioner_type=provisioner_type)
    offering = make_offering(
        provider=provider, cloud_account=pool.cloud_account, location_code="fra-home-1", server_type="pve-small"
    )
    return provider, pool, offering


def make_agent(pool: AgentPool, *, name: str = "host-1", online: bool = True) -> tuple[Agent, str]:
    """Set up an agent with a fresh setup token; with `online`, it sends a heartbeat naming the pool's provisioner."""
    _row, token = agent_setup_token_create(pool=pool, actor=pool.cloud_account.owner)
    agent, credential = agent_setup(token=token, name=name, version="0.1.0")
    if online:
        agent = agent_heartbeat(
            agent=agent,
            version="0.1.0",
            capabilities={"provisioner": pool.provisioner_type, "images": ["ubuntu-24.04"]},
            free_resources={"vcpu": 8},
        )
    return agent, credential
