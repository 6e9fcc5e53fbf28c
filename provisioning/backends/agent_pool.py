"""The catalog side of an agent pool's cloud account, for the offering form.

The pool's agents create and delete the VMs, so this backend only lists sizes, the pool's
region and the images the agents reported. Server calls raise `NotImplementedError`: platform
workers skip agent-backed contracts.
"""

from __future__ import annotations

from .base import CloudBackend, Image, Location, ServerInfo, ServerSpec, ServerType
from .proxmox_settings import parse_server_types


class AgentPoolBackend(CloudBackend):
    """An agent pool seen as a cloud account; `account.agent_pool` must exist."""

    executes_recipes = False
    # Agents create VMs with the contract's own vCPU, memory and disk, not a fixed server type.
    editable_spec_fields = frozenset({"vcpu", "memory_mib", "disk_gb"})

    def __init__(self, *, account):
        self.account = account

    def validate_credentials(self) -> None:
        """Accept always: each agent authenticates itself with its own credential."""

    def list_server_types(self) -> list[ServerType]:
        """Return the sizes configured on the account, or the default pve-small, pve-medium and pve-large."""
        return parse_server_types(self.account.proxmox_server_types)

    def list_locations(self) -> list[Location]:
        pool = self.account.agent_pool
        return [Location(code=pool.region, city="", country="", description=f"Agent pool {pool.name} ({pool.region})")]

    def list_images(self) -> list[Image]:
        """Return the images the pool's agents listed in `capabilities.images` of their latest heartbeat."""
        names: set[str] = set()
        for capabilities in self.account.agent_pool.agents.filter(revoked_at__isnull=True).values_list(
            "capabilities", flat=True
        ):
            images = (capabilities or {}).get("images") or []
            names.update(str(name) for name in images if isinstance(name, str) and name)
        return [Image(name=name, description=f"{name} (reported by the pool's agents)") for name in sorted(names)]

    def create_server(self, spec: ServerSpec) -> ServerInfo:
        raise NotImplementedError("Agent pools' VMs are created by their agents.")

    def get_server(self, server_id: str) -> ServerInfo:
        raise NotImplementedError("Agent pools' VMs are looked up by their agents.")

    def find_servers(self, labels: dict[str, str]) -> list[ServerInfo]:
        raise NotImplementedError("Agent pools' VMs are listed by their agents.")

    def delete_server(self, server_id: str, *, labels: dict[str, str] | None = None) -> None:
        raise NotImplementedError("Agent pools' VMs are deleted by their agents.")

    def start_server(self, server_id: str) -> None:
        raise NotImplementedError("Agent pools' VMs are started by their agents.")

    def stop_server(self, server_id: str) -> None:
        raise NotImplementedError("Agent pools' VMs are stopped by their agents.")
