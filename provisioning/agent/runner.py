"""The agent's main loop: heartbeats, the work queue, leases, provisioning jobs and reconciliation.

Threads: one sends heartbeats, one renews the leases of the contracts in flight, one sends
health reports on the VMs the agent serves, and a pool of
up to `max_parallel` threads runs provisioning and termination jobs. The main thread polls the
work queue and reconciles. A slow hypervisor call therefore never delays a heartbeat, except
the hypervisor health check that the heartbeat itself includes (bounded by the HTTP timeout).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from provisioning.agent.client import CredentialRejected, LeaseLost, PlatformClient, PlatformError
from provisioning.agent.config import AgentConfig
from provisioning.agent.health_reports import HealthReporter, ServedVm
from provisioning.agent.provisioners import Provisioner, ProvisionerError, VmResult

logger = logging.getLogger(__name__)

#: Maximum length of a server id the platform stores (`server_id` of the success and failure reports).
SERVER_ID_MAX_LENGTH = 64


class JobStopped(Exception):
    """The platform took the contract away (lease lost or cancelled); the job stops quietly."""


class AgentRunner:
    def __init__(self, *, config: AgentConfig, client: PlatformClient, provisioner: Provisioner):
        self.config = config
        self.client = client
        self.provisioner = provisioner
        self.stop_event = threading.Event()
        # Why the agent stopped on its own (for example a revoked credential); empty on a normal stop.
        self.fatal_error = ""
        self._lock = threading.Lock()
        # Contract id -> event set when the platform took the contract away.
        self._in_flight: dict[int, threading.Event] = {}
        self._lease_seconds = 300.0
        # Server id -> monotonic time of the first "terminate" decision the platform returned for it.
        self._orphans_seen: dict[str, float] = {}
        self._executor = ThreadPoolExecutor(max_workers=config.max_parallel, thread_name_prefix="job")
        # VMs of active contracts: added on success and by reconciliation, which also fills the list after a restart.
        self.health_reporter = HealthReporter(client=client, provisioner=provisioner, probe_timeout=config.health_probe_timeout)

    # --- lifecycle -----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until `stop()` or a rejected credential; return the process exit code."""
        logger.info(
            "Agent %s starting: platform %s, provisioner %s, up to %s jobs at once",
            self.config.agent_id, self.config.platform_url, self.provisioner.type, self.config.max_parallel,
        )
        self.send_heartbeat()
        threads = [
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self._lease_loop, name="leases", daemon=True),
            threading.Thread(target=self._health_loop, name="health", daemon=True),
        ]
        for thread in threads:
            thread.start()
        next_reconcile = time.monotonic()
        while not self.stop_event.is_set():
            try:
                self.poll_work()
                if time.monotonic() >= next_reconcile:
                    self.reconcile()
                    next_reconcile = time.monotonic() + self.config.reconcile_interval
            except CredentialRejected as exc:
                self._fatal(exc)
            except (PlatformError, ProvisionerError) as exc:
                logger.warning("Work poll or reconciliation failed, trying again in %.1f s: %s", self.config.poll_interval, exc)
            self.stop_event.wait(self.config.poll_interval)
        self._executor.shutdown(wait=True, cancel_futures=True)
        logger.info("Agent %s stopped%s", self.config.agent_id, f": {self.fatal_error}" if self.fatal_error else "")
        return 3 if self.fatal_error else 0

    def stop(self) -> None:
        self.stop_event.set()

    def _fatal(self, exc: Exception) -> None:
        logger.error("The platform rejected this agent's credential; stopping: %s", exc)
        self.fatal_error = str(exc)
        self.stop_event.set()

    # --- heartbeats and leases -----------------------------------------------------------------

    def send_heartbeat(self) -> dict[str, Any] | None:
        try:
            health = self.provisioner.health()
            free = health.get("free", {}) if isinstance(health, dict) else {}
            images = self.provisioner.images()
        except ProvisionerError as exc:
            logger.warning("Hypervisor health check failed: %s", exc)
            free, images = {}, []
        capabilities = {"provisioner": self.provisioner.type, "images": images, "max_parallel": self.config.max_parallel}
        try:
            response = self.client.heartbeat(capabilities=capabilities, free_resources=free)
        except CredentialRejected as exc:
            self._fatal(exc)
            return None
        except PlatformError as exc:
            logger.warning("Heartbeat failed: %s", exc)
            return None
        if not response.get("provisioner_matches", True):
            logger.error(
                "This agent runs provisioner %s but its pool uses %s; it gets no work until the configuration matches",
                self.provisioner.type, response.get("pool", {}).get("provisioner_type"),
            )
        return response

    def _heartbeat_loop(self) -> None:
        while not self.stop_event.wait(self.config.heartbeat_interval):
            self.send_heartbeat()

    def _health_loop(self) -> None:
        while not self.stop_event.wait(self.config.health_interval):
            try:
                self.health_reporter.report()
            except CredentialRejected as exc:
                self._fatal(exc)
            except PlatformError as exc:
                logger.warning("Sending health reports failed, trying again in %.1f s: %s", self.config.health_interval, exc)

    def _lease_loop(self) -> None:
        """Renew the lease of every contract in flight a few times per lease period."""
        while not self.stop_event.wait(max(0.5, self._lease_seconds / 4)):
            with self._lock:
                in_flight = dict(self._in_flight)
            for contract_id, taken_away in in_flight.items():
                self._renew(contract_id, taken_away)

    def _renew(self, contract_id: int, taken_away: threading.Event, step: str = "") -> None:
        try:
            self.client.progress(contract_id, step)
        except LeaseLost as exc:
            logger.warning("Contract %s: lease lost, stopping its job: %s", contract_id, exc)
            taken_away.set()
        except CredentialRejected as exc:
            taken_away.set()
            self._fatal(exc)
        except PlatformError as exc:
            logger.warning("Contract %s: lease renewal failed, trying again: %s", contract_id, exc)

    # --- work ----------------------------------------------------------------------------------

    def poll_work(self) -> None:
        for item in self.client.work():
            contract_id = item["id"]
            with self._lock:
                if contract_id in self._in_flight or len(self._in_flight) >= self.config.max_parallel:
                    continue
            try:
                spec = self.client.claim(contract_id)
            except LeaseLost as exc:
                logger.info("Contract %s: not claimed: %s", contract_id, exc)
                continue
            self._lease_seconds = float(spec.get("lease_seconds", self._lease_seconds))
            taken_away = threading.Event()
            with self._lock:
                self._in_flight[contract_id] = taken_away
            logger.info("Contract %s: claimed for %s", contract_id, spec["action"])
            self._executor.submit(self._run_job, spec, taken_away)

    def _run_job(self, spec: dict[str, Any], taken_away: threading.Event) -> None:
        contract_id = spec["id"]
        try:
            if spec["action"] == "terminate":
                self._terminate(spec, taken_away)
            else:
                self._provision(spec, taken_away)
        except JobStopped as exc:
            logger.info("Contract %s: job stopped: %s", contract_id, exc)
        except LeaseLost as exc:
            logger.warning("Contract %s: the platform rejected the report, the lease is gone: %s", contract_id, exc)
        except CredentialRejected as exc:
            self._fatal(exc)
        except PlatformError as exc:
            # The lease expires and the contract returns to the queue, where this or another agent retries.
            logger.error("Contract %s: reporting to the platform failed: %s", contract_id, exc)
        except Exception:  # A job thread must report and end, never die silently.
            logger.exception("Contract %s: unexpected error in the job", contract_id)
            self._report_failure(contract_id, ProvisionerError("provisioner_error", "The agent hit an internal error."))
        finally:
            with self._lock:
                self._in_flight.pop(contract_id, None)

    def _provision(self, spec: dict[str, Any], taken_away: threading.Event) -> None:
        contract_id = spec["id"]

        def progress(step: str) -> None:
            if taken_away.is_set() or self.stop_event.is_set():
                raise JobStopped(f"contract {contract_id} was taken away or the agent is stopping")
            self._renew(contract_id, taken_away, step)
            if taken_away.is_set():
                raise JobStopped(f"contract {contract_id} was taken away")

        try:
            result = self.provisioner.provision(spec, progress)
        except ProvisionerError as exc:
            logger.warning("Contract %s: provisioning failed (%s): %s", contract_id, exc.reason_code, exc)
            self._report_failure(contract_id, exc)
            return
        if taken_away.is_set():
            raise JobStopped(f"contract {contract_id} was taken away while its VM was created")
        if spec.get("recipe") and not self._run_recipe(spec, result, taken_away, progress):
            return
        try:
            self.client.succeed(
                contract_id,
                server_id=result.server_id,
                address=result.address,
                port=result.port,
                host_public_key=result.host_public_key,
            )
        except PlatformError as exc:
            if exc.status != 400:
                raise
            # Invalid details would be rejected again on every try, so the rental fails instead of
            # returning to the queue forever. The stored server id lets reconciliation delete the VM.
            logger.error("Contract %s: the platform rejected VM %s: %s", contract_id, result.server_id, exc)
            server_id = result.server_id if len(result.server_id) <= SERVER_ID_MAX_LENGTH else ""
            self._report_failure(
                contract_id,
                ProvisionerError("provisioner_error", f"The platform rejected the VM's details: {exc}", server_id=server_id),
            )
            return
        self.health_reporter.remember(
            ServedVm(contract_id=contract_id, server_id=result.server_id, name=spec["name"], address=result.address, port=result.port)
        )
        logger.info("Contract %s: active on VM %s at %s:%s", contract_id, result.server_id, result.address, result.port)

    def _run_recipe(self, spec: dict[str, Any], vm: VmResult, taken_away: threading.Event, progress) -> bool:
        """Run the contract's recipe on its new VM; return whether it succeeded (the platform failed the contract if not)."""
        from provisioning.agent.recipe_runs import RecipeTakenAway, run_contract_recipe

        progress("waiting_for_ssh")
        stop = threading.Event()

        def watch() -> None:
            # Kill the recipe when the platform takes the contract away or the agent stops.
            while not stop.is_set():
                if taken_away.is_set() or self.stop_event.is_set():
                    stop.set()
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, name=f"recipe-watch-{spec['id']}", daemon=True)
        watcher.start()
        try:
            succeeded = run_contract_recipe(
                client=self.client, spec=spec, vm=vm, ssh_wait_timeout=self.config.ssh_wait_timeout, should_stop=stop
            )
        except RecipeTakenAway as exc:
            raise JobStopped(str(exc)) from exc
        finally:
            stop.set()
        if not succeeded:
            logger.warning("Contract %s: the recipe failed; the platform failed the rental", spec["id"])
        return succeeded

    def _terminate(self, spec: dict[str, Any], taken_away: threading.Event) -> None:
        contract_id = spec["id"]
        self.health_reporter.forget(contract_id)
        try:
            self.provisioner.terminate(spec)
        except ProvisionerError as exc:
            logger.warning("Contract %s: deleting the VM failed (%s): %s", contract_id, exc.reason_code, exc)
            self._report_failure(contract_id, exc)
            return
        self.client.terminated(contract_id)
        logger.info("Contract %s: VM deleted and reported", contract_id)

    def _report_failure(self, contract_id: int, error: ProvisionerError) -> None:
        try:
            self.client.fail(contract_id, reason_code=error.reason_code, message=str(error), server_id=error.server_id)
        except LeaseLost as exc:
            logger.warning("Contract %s: failure not recorded, the lease is gone: %s", contract_id, exc)
        except PlatformError as exc:
            logger.error("Contract %s: reporting the failure failed: %s", contract_id, exc)

    # --- reconciliation ------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Send the host's VMs to the platform, and delete those it marks "terminate" once the grace period is over."""
        running = self.provisioner.list_running()
        decisions = self.client.reconcile(
            [{"server_id": vm.server_id, "contract_id": vm.contract_id} for vm in running]
        )
        by_server = {vm.server_id: vm for vm in running}
        now = time.monotonic()
        still_orphans = set()
        for decision in decisions:
            server_id = decision["server_id"]
            vm = by_server.get(server_id)
            if vm is None:
                continue
            if decision["decision"] == "keep" and decision.get("address") and decision.get("port"):
                self.health_reporter.remember(
                    ServedVm(
                        contract_id=vm.contract_id, server_id=server_id, name=vm.name,
                        address=decision["address"], port=decision["port"],
                    )
                )
            elif vm.contract_id is not None:
                self.health_reporter.forget(vm.contract_id)
            if decision["decision"] == "unknown":
                logger.warning("VM %s (%s) is unknown to the platform; leaving it alone: %s", server_id, vm.name, decision["reason"])
                continue
            if decision["decision"] != "terminate":
                continue
            with self._lock:
                busy = vm.contract_id in self._in_flight
            if busy:
                continue
            still_orphans.add(server_id)
            first_seen = self._orphans_seen.setdefault(server_id, now)
            if now - first_seen < self.config.orphan_grace_seconds:
                logger.warning(
                    "VM %s (%s) is an orphan (%s); deleting it after the grace period", server_id, vm.name, decision["reason"]
                )
                continue
            try:
                self.provisioner.terminate({"id": vm.contract_id, "name": vm.name, "cloud_server_id": server_id})
            except ProvisionerError as exc:
                logger.error("Orphan VM %s (%s): deleting failed: %s", server_id, vm.name, exc)
                continue
            logger.info("Orphan VM %s (%s) deleted: %s", server_id, vm.name, decision["reason"])
            still_orphans.discard(server_id)
        self._orphans_seen = {key: value for key, value in self._orphans_seen.items() if key in still_orphans}
