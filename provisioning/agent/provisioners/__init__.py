"""Provisioners create and delete VMs on the agent's host, all behind the `Provisioner` interface."""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Failure reason codes the platform understands (provisioning.agent_work.AgentFailureReason).
RETRYABLE_REASONS = ("hypervisor_unavailable", "timeout", "rate_limited", "insufficient_resources")
PERMANENT_REASONS = ("image_not_found", "invalid_spec", "boot_failed", "provisioner_error")
REASON_CODES = RETRYABLE_REASONS + PERMANENT_REASONS

#: The `vm_state` of a VM that serves its tenant; health reports count every other state as down.
RUNNING_STATE = "running"
#: The `vm_state` of a VM the hypervisor does not have.
MISSING_STATE = "missing"

#: VM names the platform hands out: cm-<deployment>-<contract id>.
VM_NAME_RE = re.compile(r"^cm-(?P<deployment>[a-z0-9-]+?)-(?P<contract_id>\d+)$")


class ProvisionerError(Exception):
    """Creating, deleting or listing VMs failed; `reason_code` is one of REASON_CODES."""

    def __init__(self, reason_code: str, message: str, *, server_id: str = ""):
        if reason_code not in REASON_CODES:
            raise ValueError(f"Unknown reason code {reason_code!r}; use one of {', '.join(REASON_CODES)}.")
        super().__init__(message)
        self.reason_code = reason_code
        self.server_id = server_id


@dataclass(frozen=True)
class VmResult:
    """A running VM and how the tenant reaches it."""

    server_id: str
    address: str
    port: int
    host_public_key: str


@dataclass(frozen=True)
class RunningVm:
    """A VM found on the host; `contract_id` is None when its name names no contract."""

    server_id: str
    name: str
    contract_id: int | None


def contract_id_from_name(name: str) -> int | None:
    match = VM_NAME_RE.match(name or "")
    return int(match.group("contract_id")) if match else None


#: Called with a provisioning step value ("creating_server", "waiting_for_boot", ...).
ProgressCallback = Callable[[str], None]


class Provisioner(abc.ABC):
    """One hypervisor on the agent's host. Every method may raise `ProvisionerError`.

    `spec` is the contract spec the platform returns on claim: id, name, labels, vcpu,
    memory_mib, disk_gb, image, server_type, ssh_public_keys and cloud_server_id.
    """

    type: str = ""

    @abc.abstractmethod
    def provision(self, spec: dict[str, Any], progress: ProgressCallback) -> VmResult:
        """Create the contract's VM, or finish the one an earlier try created, and return it running."""

    @abc.abstractmethod
    def terminate(self, spec: dict[str, Any]) -> None:
        """Delete the contract's VM and its disks; a VM that does not exist is not an error."""

    @abc.abstractmethod
    def list_running(self) -> list[RunningVm]:
        """Return the VMs on the host that carry platform names, running or not."""

    @abc.abstractmethod
    def vm_state(self, spec: dict[str, Any]) -> str:
        """Return the hypervisor's state of the contract's VM, such as `running` or `stopped`; `missing` when it is gone.

        `spec` needs `id`, `name` and `cloud_server_id`.
        """

    @abc.abstractmethod
    def health(self) -> dict[str, Any]:
        """Return the hypervisor's state and free resources; raise `ProvisionerError` when it is unreachable."""

    def images(self) -> list[str]:
        """Return the image names offerings may use; empty when the provisioner cannot tell."""
        return []

    @property
    def endpoint(self) -> str:
        """Where the provisioner reaches its hypervisor (a URL, socket or command), for messages; never a secret."""
        return ""


def build_provisioner(settings: dict[str, Any]) -> Provisioner:
    """Build the provisioner that the configuration's `provisioner.type` names; raise `ValueError` otherwise."""
    kind = settings.get("type")
    if kind == "proxmox":
        from provisioning.agent.provisioners.proxmox import ProxmoxProvisioner

        return ProxmoxProvisioner(settings)
    if kind == "script":
        from provisioning.agent.provisioners.script import ScriptProvisioner

        return ScriptProvisioner(settings)
    if kind == "docker":
        from provisioning.agent.provisioners.docker import DockerProvisioner

        return DockerProvisioner(settings)
    raise ValueError(f"Unknown provisioner type {kind!r}; use proxmox, script or docker.")
