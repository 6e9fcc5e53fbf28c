"""Health reports: the agent probes each VM it serves and sends the results to the platform.

A probe is a TCP connect to the VM's SSH port from the host (with its latency) plus the
provisioner's state of the VM. A VM counts as up only when both the connect succeeded and the
hypervisor reports it `running`, so a stopped VM is down even if another process accepts
connections on its port.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from provisioning.agent.client import PlatformClient
from provisioning.agent.probe import tcp_probe
from provisioning.agent.provisioners import RUNNING_STATE, Provisioner, ProvisionerError

logger = logging.getLogger(__name__)

#: Maximum number of reports the platform accepts in one request (provisioning.api.agent_serializers.HEALTH_REPORTS_MAX).
REPORTS_PER_REQUEST = 500
#: Maximum number of probes that run at once.
PROBE_CONCURRENCY = 8


@dataclass(frozen=True)
class ServedVm:
    """A VM of an active contract that this agent serves, and where tenants reach it."""

    contract_id: int
    server_id: str
    name: str
    address: str
    port: int


class HealthReporter:
    """Keeps the VMs this agent serves and reports their health; every method is thread-safe."""

    def __init__(self, *, client: PlatformClient, provisioner: Provisioner, probe_timeout: float):
        self.client = client
        self.provisioner = provisioner
        self.probe_timeout = probe_timeout
        self._lock = threading.Lock()
        self._served: dict[int, ServedVm] = {}

    def remember(self, vm: ServedVm) -> None:
        with self._lock:
            self._served[vm.contract_id] = vm

    def forget(self, contract_id: int) -> None:
        with self._lock:
            self._served.pop(contract_id, None)

    def served(self) -> list[ServedVm]:
        with self._lock:
            return sorted(self._served.values(), key=lambda vm: vm.contract_id)

    def probe(self, vm: ServedVm) -> dict[str, Any]:
        """Probe one VM and return its report in the platform's format."""
        checked_at = datetime.now(UTC)
        details = []
        try:
            state = self.provisioner.vm_state({"id": vm.contract_id, "name": vm.name, "cloud_server_id": vm.server_id})
        except ProvisionerError as exc:
            state = "unknown"
            details.append(f"Reading the VM's state failed: {exc}")
        result = tcp_probe(host=vm.address, port=vm.port, timeout=self.probe_timeout)
        if result.detail:
            details.append(result.detail)
        if state != RUNNING_STATE:
            details.append(f"The hypervisor reports VM {vm.server_id} as {state}.")
        up = result.up and state == RUNNING_STATE
        return {
            "contract_id": vm.contract_id,
            "checked_at": checked_at.isoformat(),
            "up": up,
            "latency_ms": result.latency_ms if up else None,
            "hypervisor_state": state,
            "detail": " ".join(details)[:500],
        }

    def report(self) -> int:
        """Probe every served VM, send the reports, and return how many the platform accepted.

        Raises `PlatformError` when sending fails. Rejected reports are logged; their contracts are
        forgotten when the platform returns `stop_reporting` (the contract is unknown or no longer
        active), and probed again next time otherwise.
        """
        served = self.served()
        if not served:
            return 0
        with ThreadPoolExecutor(max_workers=min(len(served), PROBE_CONCURRENCY), thread_name_prefix="probe") as pool:
            reports = list(pool.map(self.probe, served))
        accepted = 0
        for start in range(0, len(reports), REPORTS_PER_REQUEST):
            for result in self.client.health(reports[start : start + REPORTS_PER_REQUEST]):
                if result["accepted"]:
                    accepted += 1
                    continue
                logger.warning("Contract %s: health report rejected: %s", result["contract_id"], result["reason"])
                # A report rejected for its own values (a clock far off, say) does not end the probing.
                if result.get("stop_reporting", True):
                    self.forget(result["contract_id"])
        down = sum(not report["up"] for report in reports)
        logger.info("Sent %s health reports (%s down, %s accepted)", len(reports), down, accepted)
        return accepted
